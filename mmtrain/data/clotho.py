"""Clotho (v2) audio captioning, read as released (Zenodo 4783391): sounds and five captions each.

The layout after extracting the archives::

    <root>/clotho_captions_<subset>.csv   file_name,caption_1,...,caption_5
    <root>/<subset>/<file_name>           the WAV files (44.1 kHz mono)

with ``<subset>`` one of ``development``, ``validation`` and ``evaluation``; the audio folder may
also be named ``clotho_audio_<subset>/`` (the archive's name). File names hold spaces and, in a
few cases, commas, which the CSV quotes.

A training split has one item per (audio file, caption) pair; ``val`` and ``test`` have one item
per file, with all of its captions as references for the caption metrics.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.contracts import SPLITS
from mmtrain.data.io import load_audio
from mmtrain.errors import MMTrainError

SUBSETS = ("development", "validation", "evaluation")
_SEPARATORS = re.compile(r"[+,]")


@dataclass(frozen=True)
class CaptionedClip:
    """One audio file of a split: its name, path, captions and where its CSV row is."""

    id: str
    path: Path
    captions: tuple[str, ...]
    source: Path  # the captions CSV
    line: int


class ClothoDataset(Dataset):
    """Clotho sounds and their captions.

    Items are dicts with ``id`` (the file name) and the requested columns: ``audio`` as
    ``(samples (C, T) float32, rate)`` and ``caption`` (the raw caption, surrounding whitespace
    stripped). The ``train`` split has one item per (file, caption) pair; ``val`` and ``test``
    have one item per file whose ``caption`` is its first caption, plus ``caption_references``:
    all of its captions. Empty caption cells are left out; a file without captions is skipped.
    Files are sorted by name.

    The subsets of a split are its ``train`` / ``val`` / ``test`` argument, several joined with
    ``+`` or ``,`` (``development+validation``). A missing or unreadable audio file is an
    :class:`MMTrainError` naming ``<csv>:<line>`` when its item is loaded, so that
    ``data.on_error=skip`` can skip it.

    Args:
        root: the folder with ``clotho_captions_<subset>.csv`` and the audio folders.
        split: ``train``, ``val`` or ``test``.
        columns: the columns to load (set by the data module); None loads all.
        train: the training subsets.
        val: the validation subsets.
        test: the test subsets.

    Raises:
        ValueError: for an unknown split or a split with no subset named.
        MMTrainError: for a missing root, captions CSV or audio folder, a CSV without the
            ``file_name`` column or with a row longer than its header, or a file listed twice.
    """

    def __init__(
        self,
        root: str,
        split: str,
        columns: list[str] | None = None,
        train: str = "development",
        val: str = "validation",
        test: str = "evaluation",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split = Path(root), split
        self.train = split == "train"
        if not self.root.is_dir():
            raise MMTrainError(
                f"Clotho not found: data.root={self.root} is not a folder (set "
                "data.root=<folder with clotho_captions_development.csv and development/>)"
            )
        spec = {"train": train, "val": val, "test": test}[split]
        subsets = list(dict.fromkeys(s.strip() for s in _SEPARATORS.split(spec) if s.strip()))
        if not subsets:
            raise ValueError(f"no Clotho subset in {spec!r}; e.g. {SUBSETS[0]!r}")
        self.subsets = subsets
        clips = sorted((c for s in subsets for c in self._read_subset(s)), key=lambda c: c.id)
        for a, b in zip(clips, clips[1:]):
            if a.id == b.id:
                raise MMTrainError(
                    f"audio file {a.id!r} is listed twice: {a.source}:{a.line} and "
                    f"{b.source}:{b.line}"
                )
        self.clips = clips
        # (clip index, caption index): every pair in training, the first caption otherwise.
        self.index = [
            (i, j)
            for i, clip in enumerate(self.clips)
            for j in range(len(clip.captions) if self.train else 1)
        ]
        self.columns = ["audio", "caption"]
        self.load = list(self.columns if columns is None else columns)

    def _audio_folder(self, subset: str, csv_path: Path) -> Path:
        for folder in (self.root / subset, self.root / f"clotho_audio_{subset}"):
            if folder.is_dir():
                return folder
        raise MMTrainError(
            f"Clotho audio not found: expected the folder {self.root / subset} (or "
            f"{self.root / f'clotho_audio_{subset}'}) for {csv_path.name}; extract "
            f"clotho_audio_{subset}.7z into data.root"
        )

    def _read_subset(self, subset: str) -> list[CaptionedClip]:
        path = self.root / f"clotho_captions_{subset}.csv"
        if not path.is_file():
            there = sorted(p.name for p in self.root.glob("clotho_captions_*.csv"))
            raise MMTrainError(
                f"Clotho captions of the {self.split} split not found: expected {path}; "
                f"data.root has {', '.join(there) if there else 'no clotho_captions_*.csv'} "
                f"(set data.{self.split}=<subset>, one of {', '.join(SUBSETS)})"
            )
        folder = self._audio_folder(subset, path)
        clips = []
        # utf-8-sig: a byte-order mark is not part of the first column name.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "file_name" not in header:
                raise MMTrainError(
                    f"{path}: no file_name column (header {header}); expected "
                    "file_name,caption_1,...,caption_5"
                )
            caption_columns = [c for c in header if c.startswith("caption")]
            for row in reader:
                line = reader.line_num  # where the row ends; a quoted cell may span lines
                if None in row:
                    raise MMTrainError(
                        f"{path}:{line}: {len(row[None])} more field(s) than the header's "
                        f"{len(header)} columns"
                    )
                name = (row["file_name"] or "").strip()
                if not name:
                    raise MMTrainError(f"{path}:{line}: empty file_name")
                captions = tuple(c for c in ((row[k] or "").strip() for k in caption_columns) if c)
                if captions:
                    clips.append(CaptionedClip(name, folder / name, captions, path, line))
        return clips

    def __len__(self) -> int:
        return len(self.index)

    def where(self, index: int) -> str:
        """``<captions csv>:<line>`` of item ``index``, for error messages."""
        clip = self.clips[self.index[index][0]]
        return f"{clip.source}:{clip.line}"

    def values(self, column: str) -> list[Any]:
        """All values of a column over the split, without reading audio.

        ``caption`` gives every caption of the split (of every file, also in ``val`` and
        ``test``), e.g. to build a vocabulary; ``audio`` the audio path of each item;
        ``caption_references`` the caption list of each item; ``id`` the file name of each item.

        Raises:
            MMTrainError: for a column this data does not have.
        """
        if column == "caption":
            return [caption for clip in self.clips for caption in clip.captions]
        if column == "audio":
            return [str(self.clips[i].path) for i, _ in self.index]
        if column == "caption_references":
            return [list(self.clips[i].captions) for i, _ in self.index]
        if column == "id":
            return [self.clips[i].id for i, _ in self.index]
        raise MMTrainError(f"Clotho: no column {column!r}; the data has {self.columns}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip_index, caption_index = self.index[index]
        clip = self.clips[clip_index]
        item: dict[str, Any] = {"id": clip.id}
        for column in self.load:
            if column == "audio":
                try:
                    item["audio"] = load_audio(clip.path)
                except MMTrainError as err:
                    raise MMTrainError(f"{self.where(index)}: {err}") from None
            elif column == "caption":
                item["caption"] = clip.captions[caption_index]
                if not self.train:
                    item["caption_references"] = list(clip.captions)
            elif column == "caption_references":
                item["caption_references"] = list(clip.captions)
            else:
                raise MMTrainError(
                    f"{self.where(index)}: no column {column!r}; the data has {self.columns}"
                )
        return item
