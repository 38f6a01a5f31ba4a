"""Image-caption data sets: COCO Captions, and Flickr8k / Flickr30k through Karpathy's splits.

Two sources of captions, both read as released (nothing is downloaded or converted):

* the official COCO layout under ``root``: ``annotations/captions_{train,val}{year}.json`` and
  the images in ``{train,val}{year}/`` (``scripts/download_coco.sh`` fetches COCO 2017);
* a Karpathy split file (``dataset_coco.json``, ``dataset_flickr8k.json``,
  ``dataset_flickr30k.json``) that assigns each image to ``train``, ``val``, ``test`` or
  ``restval`` and lists its sentences.

A training split has one item per (image, caption) pair; ``val`` and ``test`` have one item per
image, with all of its captions as references for the caption metrics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.contracts import SPLITS
from mmtrain.data.io import load_image
from mmtrain.errors import MMTrainError

YEARS = (2014, 2017)
FORMATS = ("coco", "flickr8k", "flickr30k")
NAMES = {"coco": "COCO captions", "flickr8k": "Flickr8k", "flickr30k": "Flickr30k"}
# The image folders of the real releases ("Flicker" is how the Flickr8k zip spells it).
IMAGE_DIRS = {"flickr8k": "Flicker8k_Dataset", "flickr30k": "flickr30k-images"}
LOADABLE = ("image", "caption", "caption_references")
OFFICIAL_FIELDS = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "caption")}


@dataclass(frozen=True)
class CaptionedImage:
    """One image of a split: its id, its file and its captions (raw, in annotation order).

    ``caption_ids`` name each caption in its file, for error messages: ``annotation <id>`` in
    the official layout, ``sentid <id>`` in a Karpathy split file.
    """

    id: str
    path: Path
    captions: tuple[str, ...]
    caption_ids: tuple[str, ...] = ()


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise MMTrainError(f"{path}: not valid JSON: {err}") from None


def _int_id(value: Any) -> int | None:
    """An id as an integer (``42``, ``"42"``), or None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _id_key(raw_id: int | str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, before other ids in string order."""
    return (0, int(raw_id), "") if str(raw_id).isdigit() else (1, 0, str(raw_id))


class CaptionDataset(Dataset):
    """Images and their captions, from the official COCO layout or a Karpathy split file.

    Items are dicts with ``id`` (the COCO image id, the Karpathy ``cocoid``, or for Flickr the
    ``imgid`` or else the file name stem) and the requested columns: ``image`` (a PIL RGB image;
    grayscale and CMYK JPEGs are converted) and ``caption`` (the raw caption, surrounding
    whitespace stripped). The ``train`` split has one item per (image, caption) pair; ``val``
    and ``test`` have one item per image whose ``caption`` is its first caption, plus
    ``caption_references``: all of its captions. Images are sorted by id and captions by
    annotation id (``sentid`` in a split file); images without captions are skipped. A missing
    image file or a blank caption is an :class:`MMTrainError` naming the file, the image and
    (for a caption) its annotation when its item is loaded, so that ``data.on_error=skip`` can
    skip it.

    COCO has no public test captions, so without a split file ``test`` reads ``val{year}``, the
    same images as ``val``; use Karpathy's split (``split_file=.../dataset_coco.json``) for a
    held-out test set. That file names the COCO 2014 files (``val2014/COCO_val2014_*.jpg``);
    where ``root`` has ``train2017/`` and ``val2017/`` instead, each image is read from the
    one of them that holds ``<cocoid as 12 digits>.jpg``.

    Args:
        root: the data folder: for COCO the one with ``annotations/`` and ``train2017/``
            (or ``train2014/``), for Flickr the one with the images folder.
        split: ``train``, ``val`` or ``test``.
        columns: the columns to load (set by the data module); None loads all.
        year: the COCO release of the official layout, 2014 or 2017.
        split_file: a Karpathy split file; required for Flickr, where it defaults to
            ``root/dataset_flickr8k.json`` / ``root/dataset_flickr30k.json``.
        restval: with a split file, train on the ``restval`` images too.
        format: ``coco``, ``flickr8k`` or ``flickr30k``.
        image_dir: with a split file, the images folder under ``root`` (default: the entry's
            ``filepath`` for COCO, ``Flicker8k_Dataset`` and ``flickr30k-images`` for Flickr).
        retrieval: image-text retrieval: every split has one item per (image, caption) pair,
            and the caption is also the ``text`` input (the text tower's).

    Raises:
        ValueError: for an unknown split, year or format, or ``image_dir`` without a split file.
        MMTrainError: for a missing root, annotation file, split file or image folder, or a
            file that is not in the expected layout (naming the entry, ``annotations[3]``).
    """

    def __init__(
        self,
        root: str,
        split: str,
        columns: list[str] | None = None,
        year: int = 2017,
        split_file: str | None = None,
        restval: bool = True,
        format: str = "coco",
        image_dir: str | None = None,
        retrieval: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if year not in YEARS:
            raise ValueError(f"year must be one of {YEARS}, got {year!r}")
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if format != "coco" and split_file is None:
            split_file = str(Path(root) / f"dataset_{format}.json")
        if image_dir is not None and split_file is None:
            raise ValueError(
                f"image_dir={image_dir!r} needs a split_file: the official COCO layout reads "
                f"train{year}/ and val{year}/"
            )
        self.root, self.split, self.year, self.format = Path(root), split, year, format
        self.train = split == "train"
        self.retrieval = retrieval
        if not self.root.is_dir():
            raise MMTrainError(
                f"{NAMES[format]} not found: data.root={self.root} is not a folder "
                f"({self._root_hint()})"
            )
        if split_file is None:
            self.source = self.root / "annotations" / f"captions_{self._folder()}.json"
            self.images = self._read_official()
        else:
            self.source = Path(split_file)
            self.images = self._read_split_file(restval, image_dir)
        # (image index, caption index): every pair in training, the first caption otherwise.
        self.index = [
            (i, j)
            for i, image in enumerate(self.images)
            for j in range(len(image.captions) if self.train or retrieval else 1)
        ]
        # Retrieval: each caption is also the `text` input, and every split has every pair
        # (the Karpathy protocol ranks 5k images against all 25k captions).
        self.columns = ["caption", "image", "text"] if retrieval else ["caption", "image"]
        default = ["image", "caption", "text"] if retrieval else ["image", "caption"]
        self.load = default if columns is None else list(columns)

    def _folder(self) -> str:
        return f"{'train' if self.train else 'val'}{self.year}"

    def _root_hint(self) -> str:
        if self.format == "coco":
            return (
                f"set data.root=<folder with annotations/ and train{self.year}/>; "
                "scripts/download_coco.sh fetches it"
            )
        return f"set data.root=<folder with {IMAGE_DIRS[self.format]}/>"

    def _read_official(self) -> list[CaptionedImage]:
        if not self.source.is_file():
            raise MMTrainError(
                f"COCO captions not found: expected {self.source} ({self._root_hint()})"
            )
        folder = self.root / self._folder()
        if not folder.is_dir():
            raise MMTrainError(
                f"COCO images not found: expected the folder {folder} for {self.source.name} "
                f"({self._root_hint()})"
            )
        data = _read_json(self.source)
        entries = self._official_entries(data)
        files = {image_id: file_name for image_id, file_name in entries["images"]}
        annotations = sorted(entries["annotations"])
        captions: dict[int, list[tuple[int, str]]] = {}  # by image id, then annotation id
        for image_id, annotation_id, caption in annotations:
            if image_id not in files:
                raise MMTrainError(
                    f"{self.source}: annotation {annotation_id} is of image_id {image_id}, "
                    "which is not in images[]"
                )
            captions.setdefault(image_id, []).append((annotation_id, caption.strip()))
        return [
            CaptionedImage(
                str(i),
                folder / files[i],
                tuple(c for _, c in caps),
                tuple(f"annotation {a}" for a, _ in caps),
            )
            for i, caps in captions.items()
        ]

    def _official_entries(self, data: Any) -> dict[str, list[tuple[Any, ...]]]:
        """``images`` as ``(id, file_name)`` and ``annotations`` as ``(image_id, id, caption)``.

        Raises:
            MMTrainError: naming the first entry (``annotations[3] (id 1201)``) that lacks a
                field or has one of the wrong type.
        """

        def bad(problem: str) -> MMTrainError:
            return MMTrainError(
                f"{self.source}: not the official COCO captions JSON: {problem}; expected "
                "images[] with id/file_name and annotations[] with id/image_id/caption"
            )

        if not isinstance(data, dict):
            raise bad(f"the top level is a {type(data).__name__}, not an object")
        entries: dict[str, list[tuple[Any, ...]]] = {}
        for key, fields in OFFICIAL_FIELDS.items():
            if not isinstance(data.get(key), list):
                raise bad(f"no {key!r} list")
            entries[key] = []
            for i, entry in enumerate(data[key]):
                where = f"{key}[{i}]"
                if not isinstance(entry, dict):
                    raise bad(f"{where} is a {type(entry).__name__}, not an object")
                if "id" in entry:
                    where += f" (id {entry['id']!r})"
                for field in fields:
                    if field not in entry:
                        raise bad(f"{where} has no {field!r}")
                ids = {f: _int_id(entry[f]) for f in fields if f.endswith("id")}
                for field, value in ids.items():
                    if value is None:
                        raise bad(f"{where}: {field}={entry[field]!r} is not an integer")
                text_field = fields[-1]  # file_name or caption
                text = entry[text_field]
                if not isinstance(text, str):
                    raise bad(f"{where}: {text_field}={text!r} is not a string")
                if text_field == "file_name" and not text.strip():
                    raise bad(f"{where}: empty file_name")
                if key == "images":
                    entries[key].append((ids["id"], text))
                else:
                    entries[key].append((ids["image_id"], ids["id"], text))
        return entries

    def _read_split_file(self, restval: bool, image_dir: str | None) -> list[CaptionedImage]:
        if not self.source.is_file():
            raise MMTrainError(
                f"Karpathy split file not found: expected {self.source} (set "
                f"data.dataset.split_file=<path to dataset_{self.format}.json>)"
            )
        wanted = {self.split} | ({"restval"} if self.train and restval else set())
        data = _read_json(self.source)
        images: list[tuple[tuple[int, int, str], CaptionedImage]] = []
        where = "the top level"  # the entry being read, for errors
        try:
            for i, entry in enumerate(data["images"]):
                where = f"images[{i}]"
                if entry["split"] not in wanted:
                    continue
                sentences = entry["sentences"]
                if all("sentid" in s for s in sentences):
                    sentences = sorted(sentences, key=lambda s: int(s["sentid"]))
                named = [
                    (f"sentid {s['sentid']}" if "sentid" in s else f"sentences[{j}]", s["raw"])
                    for j, s in enumerate(sentences)
                ]
                if any(not isinstance(raw, str) for _, raw in named):
                    raise TypeError("a sentence's raw is not a string")
                captions = tuple(raw.strip() for _, raw in named)
                if not captions:
                    continue
                filename = str(entry["filename"])
                raw_id = entry.get("cocoid", entry.get("imgid", Path(filename).stem))
                folder = image_dir or entry.get("filepath") or IMAGE_DIRS.get(self.format)
                if folder is None:
                    raise MMTrainError(
                        f"{self.source}: image {filename} has no filepath; set "
                        "data.dataset.image_dir=<its folder under data.root>"
                    )
                path = self.root / folder / filename
                image = CaptionedImage(
                    str(raw_id), path, captions, tuple(name for name, _ in named)
                )
                images.append((_id_key(raw_id), image))
        except MMTrainError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise MMTrainError(
                f"{self.source}: not a Karpathy split file ({where}: {type(err).__name__}: "
                f"{err}); expected images[] with filename/split/sentences[].raw"
            ) from None
        images.sort(key=lambda pair: pair[0])
        return self._check_folders([image for _, image in images], image_dir)

    def _check_folders(
        self, images: list[CaptionedImage], image_dir: str | None
    ) -> list[CaptionedImage]:
        """Fail early for a missing images folder; map COCO 2014 names onto a 2017 layout."""
        train17, val17 = self.root / "train2017", self.root / "val2017"
        in_val17: set[str] | None = None
        is_dir: dict[Path, bool] = {}
        checked: list[CaptionedImage] = []
        for image in images:
            folder = image.path.parent
            if folder not in is_dir:  # one stat a folder, not one an image
                is_dir[folder] = folder.is_dir()
            if is_dir[folder]:
                checked.append(image)
                continue
            if self.format == "coco" and image_dir is None and image.id.isdigit():
                if in_val17 is None and train17.is_dir() and val17.is_dir():
                    in_val17 = set(os.listdir(val17))
                if in_val17 is not None:
                    name = f"{int(image.id):012d}.jpg"
                    path = (val17 if name in in_val17 else train17) / name
                    checked.append(replace(image, path=path))
                    continue
            hint = (
                f"set data.root=<folder with {folder.name}/>"
                if image_dir is None
                else "set data.root= and data.dataset.image_dir="
            )
            raise MMTrainError(
                f"{NAMES[self.format]} images not found: expected the folder {folder} for "
                f"{self.source.name} ({hint})"
            )
        return checked

    def __len__(self) -> int:
        return len(self.index)

    def values(self, column: str) -> list[Any]:
        """All values of a column over the split.

        ``caption`` gives every caption of the split (of every image, also in ``val`` and
        ``test``), e.g. to build a vocabulary; ``image`` the image path of each item;
        ``caption_references`` the caption list of each item.

        Raises:
            MMTrainError: for a column this data does not have.
        """
        if column == "caption":
            return [caption for image in self.images for caption in image.captions]
        if column == "image":
            return [str(self.images[i].path) for i, _ in self.index]
        if column == "caption_references":
            return [list(self.images[i].captions) for i, _ in self.index]
        if column == "text" and self.retrieval:
            return [self.images[i].captions[j] for i, j in self.index]
        raise MMTrainError(f"{self.source}: no column {column!r}; the data has {self.columns}")

    def _caption(self, image: CaptionedImage, k: int) -> str:
        """Caption ``k`` of ``image``.

        Raises:
            MMTrainError: naming the file, the image and the annotation, for a blank caption.
        """
        caption = image.captions[k]
        if not caption:
            name = image.caption_ids[k] if k < len(image.caption_ids) else f"caption {k + 1}"
            raise MMTrainError(f"{self.source.name}: image {image.id}: {name}: empty caption")
        return caption

    def _references(self, image: CaptionedImage) -> list[str]:
        return [self._caption(image, k) for k in range(len(image.captions))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, caption_index = self.index[index]
        image = self.images[image_index]
        item: dict[str, Any] = {"id": image.id}
        for column in self.load:
            if column == "image":
                try:
                    item["image"] = load_image(image.path)
                except MMTrainError as err:
                    raise MMTrainError(f"{self.source.name}: image {image.id}: {err}") from None
            elif column == "caption":
                item["caption"] = self._caption(image, caption_index)
                if not self.train:
                    item["caption_references"] = self._references(image)
            elif column == "caption_references":
                item["caption_references"] = self._references(image)
            elif column == "text" and self.retrieval:
                item["text"] = self._caption(image, caption_index)
            else:
                raise MMTrainError(
                    f"{self.source.name}: no column {column!r}; the data has {self.columns}"
                )
        return item
