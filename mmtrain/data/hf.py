"""A Hugging Face ``datasets`` data set: a ``save_to_disk`` folder, parquet/arrow files, or a
hub id from the local cache (``data=hf``).

Columns keep their names (rename them with ``data.dataset.rename.<column>=<name>``): the
modalities ``image``, ``audio``, ``text`` and one column per task target, as in manifests. The
media of ``Image`` and ``Audio`` columns are read undecoded (``decode=False``) and decoded by
mmtrain's own loaders (:mod:`mmtrain.data.io`: PIL and soundfile), so a sample is the same as
the same file read through a manifest. A ``ClassLabel`` column gives class names, not ids.

``datasets`` is imported when a data set is opened, never when this module is: the CLI and
config composition do not pay for it. Nothing is downloaded: hub ids are looked up offline.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.contracts import SPLITS
from mmtrain.data.io import (
    load_audio,
    load_audio_bytes,
    load_image,
    load_image_bytes,
    load_mask,
    load_mask_bytes,
)
from mmtrain.data.manifest import FILE_COLUMNS, check_value
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".arrow")
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "name" or "namespace/name"
FILE_LOADERS = {"image": load_image, "audio": load_audio, "mask": load_mask}
BYTES_LOADERS = {"image": load_image_bytes, "audio": load_audio_bytes, "mask": load_mask_bytes}


@contextmanager
def offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the block, whatever the environment says: ``datasets`` and
    ``huggingface_hub`` read their caches and never reach the network (not even to count a
    load)."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (
        datasets.config.HF_HUB_OFFLINE,
        datasets.config.HF_DATASETS_OFFLINE,
        hub.HF_HUB_OFFLINE,
    )
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        (
            datasets.config.HF_HUB_OFFLINE,
            datasets.config.HF_DATASETS_OFFLINE,
            hub.HF_HUB_OFFLINE,
        ) = saved


def _first_line(err: BaseException) -> str:
    """``Type: the first line of its message``."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _what(path: Path) -> str:
    """What a ``data.root`` that is no Hugging Face data set is, for its error."""
    if not path.exists():
        return "does not exist (and is not a hub id)"
    if path.is_file():
        return f"is a {path.suffix or 'file without suffix'} file, not .parquet or .arrow"
    return "is a folder without dataset_dict.json or state.json, and without .parquet or .arrow"


def _load_files(folder: Path, cache_dir: str | None) -> Any:
    """The ``DatasetDict`` of the parquet (or, if more, arrow) files in ``folder``, split by
    their names as ``load_dataset(<folder>)`` splits them (``train*``, ``valid*``,
    ``test-00000-of-00001.parquet``, ``data/validation/``...; no split name: all ``train``).
    Other files (images next to the tables) are not data files here."""
    import datasets
    from datasets.data_files import DataFilesDict, get_data_patterns

    tables = [p.suffix.lower() for p in folder.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES]
    suffix = max(TABLE_SUFFIXES, key=tables.count)  # parquet on a tie
    found = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    data_files = {
        split: [f for f in files if f.lower().endswith(suffix)] for split, files in found.items()
    }
    data_files = {split: files for split, files in data_files.items() if files}
    return datasets.load_dataset(suffix.lstrip("."), data_files=data_files, cache_dir=cache_dir)


def open_splits(root: str, cache_dir: str | None = None) -> tuple[dict[str, Any], Path | None]:
    """The splits of the data set at ``root`` and the folder that relative file paths in it
    are relative to (None for a hub id).

    Tried in this order: a ``save_to_disk`` folder (a ``DatasetDict`` or one ``Dataset``, whose
    split is its own ``split`` or ``train``); a ``.parquet`` / ``.arrow`` file (the ``train``
    split, as ``load_dataset("parquet", data_files=...)`` makes it); a folder of such files
    (split by file and folder names as ``load_dataset(<folder>)`` splits them; converted once
    into the ``datasets`` cache); a hub id (``name`` or ``namespace/name``) prepared earlier in
    the ``datasets`` cache, looked up offline.

    Args:
        root: the folder, file or hub id (``data.root``).
        cache_dir: the ``datasets`` cache (None: ``HF_DATASETS_CACHE``, ``~/.cache/huggingface/
            datasets`` by default).

    Raises:
        MMTrainError: naming ``data.root`` and what was tried, for a source that is none of
            these or that ``datasets`` cannot read.
    """
    import datasets

    path = Path(root).expanduser()
    try:
        with offline():
            if path.is_dir() and any(
                (path / name).is_file() for name in ("dataset_dict.json", "state.json")
            ):
                loaded, base = datasets.load_from_disk(str(path)), path
            elif path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
                builder = path.suffix.lower().lstrip(".")
                loaded = datasets.load_dataset(
                    builder, data_files={"train": str(path.absolute())}, cache_dir=cache_dir
                )
                base = path.parent
            elif path.is_dir() and any(
                p.suffix.lower() in TABLE_SUFFIXES for p in path.rglob("*") if p.is_file()
            ):
                loaded = _load_files(path, cache_dir)
                base = path
            elif not path.exists() and HUB_ID.fullmatch(root):
                loaded, base = datasets.load_dataset(root, cache_dir=cache_dir), None
            else:
                raise MMTrainError(
                    f"data.root={root}: not a Hugging Face data set: it {_what(path)}. data=hf "
                    "reads a save_to_disk folder, a .parquet/.arrow file or a folder of them, or "
                    "a hub id (namespace/name) already in the local datasets cache"
                )
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        if isinstance(err, MMTrainError):
            raise
        why = _first_line(err)
        if err.__cause__ is not None:  # DatasetGenerationError: the reason is its cause
            why += f" ({_first_line(err.__cause__)})"
        if path.exists():
            raise MMTrainError(f"data.root={root}: cannot read it with datasets: {why}") from None
        cache = cache_dir or datasets.config.HF_DATASETS_CACHE
        raise MMTrainError(
            f"data.root={root}: no folder or file of that name, and the hub id {root!r} is not "
            f"in the local datasets cache {cache} (looked up offline: data=hf never downloads; "
            "load it once online with datasets.load_dataset, or set data.dataset.cache_dir or "
            f"HF_DATASETS_CACHE to the cache that holds it) ({why})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded), base
    return {str(loaded.split or "train"): loaded}, base


class HFDataset(Dataset):
    """One split of a Hugging Face data set (``datasets.Dataset``), items keyed like the batch.

    Items are dicts: ``id`` (the ``id`` column, else the sample's index), ``image`` as a PIL RGB
    image, ``audio`` as ``(samples (C, T) float32, rate)``, ``text`` as a string, ``mask`` as
    ``(H, W)`` uint8 class ids and other targets as stored (a ``ClassLabel`` as its class
    name), for the requested columns. ``Image`` and ``Audio`` columns are cast to
    ``decode=False`` and their bytes (else their file, a path relative to the data set's folder
    if it is there, else to the working directory) decoded by :mod:`mmtrain.data.io`, as a
    manifest's files are; a string column named ``image``, ``audio`` or ``mask`` is a file path,
    read the same way.

    Which split: ``split`` (``train``, ``val`` or ``test``) picks the data set's split named
    ``train``, ``val`` or ``test`` (``data.train=train``, ``data.val=validation``...); ``test=
    None`` tests on ``val`` (logged). Where the data come from: see :func:`open_splits`.

    A bad sample (a missing value, a wrong type, bytes or a file that do not decode) is an
    :class:`MMTrainError` naming the data set, its split and the sample's index
    (``<root>[validation]:7: ...``) when the item is loaded, so that ``data.on_error=skip`` can
    skip it.

    Attributes:
        columns: the columns of the split, after renaming (``id`` aside).
        class_names: ``{column: names}`` of each ``ClassLabel`` column, in label-id order.

    Args:
        split: ``train``, ``val`` or ``test``.
        columns: the columns to load (None loads all); ``id`` is always present.
        root: the ``save_to_disk`` folder, ``.parquet`` / ``.arrow`` file or folder, or hub id.
        train: the name of the training split in the data set.
        val: the name of the validation split.
        test: the name of the test split; None uses ``val``.
        rename: ``{column in the data set: mmtrain's name}``, e.g. ``{"picture": "image"}``.
        cache_dir: the ``datasets`` cache that hub ids are found in and that parquet/arrow
            files are converted into (None: ``HF_DATASETS_CACHE``).
        optional: columns whose null values are absent values rather than bad samples (a
            tabular input's, with ``data.tabular.missing=mean``).

    Raises:
        ValueError: for an unknown split.
        MMTrainError: for an unset ``root``, a source that does not open, a split or a
            requested column that the data set does not have (listing those it has), or a
            ``rename`` of a column it does not have.
    """

    def __init__(
        self,
        split: str,
        columns: list[str] | None = None,
        root: str | None = None,
        train: str | None = "train",
        val: str | None = "validation",
        test: str | None = "test",
        rename: dict[str, str] | None = None,
        cache_dir: str | None = None,
        optional: list[str] = (),
    ) -> None:
        import datasets

        self.optional = set(optional)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if root is None or not str(root).strip():
            raise MMTrainError("data.root is not set: data=hf needs data.root=<folder, file or id>")
        names = {"train": train, "val": val, "test": test}
        if split == "test" and test is None and val is not None:
            log.warning("data.test is not set: the test split is data.val (%s)", val)
            split = "val"
        name = names[split]
        if name is None:
            raise MMTrainError(f"data.{split} is not set: the name of the {split} split")
        self.root, self.split_name = str(root), str(name)
        splits, self.base = open_splits(self.root, cache_dir)
        if self.split_name not in splits:
            raise MMTrainError(
                f"data.{split}={self.split_name}: data.root={self.root} has no split "
                f"{self.split_name!r}; its splits: {sorted(splits)}"
            )
        data = splits[self.split_name]
        rename = {str(k): str(v) for k, v in (rename or {}).items() if str(k) != str(v)}
        unknown = [k for k in rename if k not in data.column_names]
        if unknown:
            raise MMTrainError(
                f"data.dataset.rename.{unknown[0]}: {self.where_split()} has no column "
                f"{unknown[0]!r}; its columns: {data.column_names}"
            )
        data = data.rename_columns(rename) if rename else data
        self.media: dict[str, str] = {}  # {column: "image" | "audio"}: Image / Audio features
        for column, feature in data.features.items():
            if isinstance(feature, datasets.Image):
                data = data.cast_column(column, datasets.Image(decode=False))
                self.media[column] = "image"
            elif isinstance(feature, datasets.Audio):
                data = data.cast_column(column, datasets.Audio(decode=False))
                self.media[column] = "audio"
        self.class_names: dict[str, list[str]] = {
            c: list(f.names)
            for c, f in data.features.items()
            if isinstance(f, datasets.ClassLabel) and c != "id"
        }
        self.columns = [c for c in data.column_names if c != "id"]
        self.load = list(self.columns if columns is None else columns)
        missing = [c for c in self.load if c not in self.columns]
        if missing:
            raise MMTrainError(
                f"{self.where_split()} has no column {missing[0]!r}; its columns: "
                f"{self.columns} (rename one with data.dataset.rename.<column>={missing[0]})"
            )
        self.data = data
        self.items = data.select_columns(self.load + (["id"] if "id" in data.column_names else []))

    def where_split(self) -> str:
        """``<root>[<split>]``, for error messages."""
        return f"{self.root}[{self.split_name}]"

    def where(self, index: int) -> str:
        """``<root>[<split>]:<index>`` of sample ``index``, for error messages."""
        return f"{self.where_split()}:{index}"

    def __len__(self) -> int:
        return len(self.data)

    def values(self, column: str) -> list[Any]:
        """The raw values of one column over all samples, nothing decoded: class names for a
        ``ClassLabel`` column (None for ``-1``, no label), the file path (as stored) for an
        ``Image`` or ``Audio`` column, the stored values otherwise (None where absent).

        Raises:
            MMTrainError: for a column that the data set does not have, listing those it has.
        """
        import pyarrow.compute as pc

        if column not in self.data.column_names:
            raise MMTrainError(
                f"{self.where_split()} has no column {column!r}; its columns: {self.columns}"
            )
        array = self.data.select_columns([column]).with_format("arrow")[:][column]
        if column in self.media:
            return pc.struct_field(array, "path").to_pylist()
        values = array.to_pylist()
        names = self.class_names.get(column)
        if names is not None:
            return [names[v] if v is not None and 0 <= v < len(names) else None for v in values]
        return values

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.items[index]
        item: dict[str, Any] = {"id": str(record["id"]) if "id" in record else str(index)}
        for column in self.load:
            value = record[column]
            names = self.class_names.get(column)
            if names is not None and value is not None:
                if not 0 <= value < len(names):
                    raise MMTrainError(
                        f"{self.where(index)}: {column} has no label ({value}; classes 0 to "
                        f"{len(names) - 1})"
                    )
                value = names[value]
            if value is None and column in self.optional:  # a missing tabular value
                continue
            if value is None:
                raise MMTrainError(f"{self.where(index)}: no value in column {column!r}")
            if column in self.media or column in FILE_COLUMNS:
                value = self._decode(column, value, index)
            else:
                problem = check_value(column, value)
                if problem is not None:
                    raise MMTrainError(f"{self.where(index)}: {problem}")
            item[column] = value
        return item

    def _decode(self, column: str, value: Any, index: int) -> Any:
        """A media value (``{"bytes", "path"}`` or a path) decoded by mmtrain's loaders.

        Raises:
            MMTrainError: naming the sample, for a value without bytes or path, or one that
                does not decode.
        """
        # A mask is decoded as a mask; other image columns as images, audio columns as audio.
        kind = "mask" if column == "mask" else self.media.get(column, column)
        if kind not in FILE_LOADERS:
            raise MMTrainError(f"{self.where(index)}: {column} is not an image, audio or mask")
        if isinstance(value, dict):  # an Image / Audio value: {"bytes": ..., "path": ...}
            data, path = value.get("bytes"), value.get("path")
        else:  # a string column: a file path
            data, path = None, value
        try:
            if data is not None:
                name = f"{path} (column {column!r})" if path else f"in column {column!r}"
                return BYTES_LOADERS[kind](data, name)
            if not isinstance(path, str) or not path.strip():
                raise MMTrainError(f"{column} has neither bytes nor a file path")
            return FILE_LOADERS[kind](self._file(path))
        except MMTrainError as err:
            raise MMTrainError(f"{self.where(index)}: {err}") from None

    def _file(self, path: str) -> Path:
        """A stored file path: relative to the data set's folder if the file is there, else as
        it is (relative to the working directory, as ``datasets`` reads it)."""
        file = Path(path)
        if not file.is_absolute() and self.base is not None and (self.base / file).exists():
            return self.base / file
        return file
