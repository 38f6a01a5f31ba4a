"""A data set described by manifests: JSON Lines or CSV, one sample a line.

Columns: ``id`` (optional), the modalities ``image`` and ``audio`` (file paths, relative to the
manifest file) and ``text`` (a string), and one column per task target, named after the task
(``label``: a class name or an integer; ``caption``, ``transcript``: strings; ``mask``: the file
path of a PNG of class ids, relative to the manifest file like ``image``).

A split comes from one file (``path``) or is picked by name from the ``train`` / ``val`` /
``test`` files that ``data=manifest`` sets (``data.train=...``), as the data module calls it.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.contracts import SPLITS
from mmtrain.data.io import load_audio, load_image, load_mask
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

FILE_COLUMNS = ("image", "audio", "mask")
LOADERS: dict[str, Callable[[Path], Any]] = {
    "image": load_image,
    "audio": load_audio,
    "mask": load_mask,
}
STRING_COLUMNS = ("text",)


def _kind(value: Any) -> str:
    """``list [1, 2]``: the JSON-ish type name and a short repr, for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_value(column: str, value: Any) -> str | None:
    """What is wrong with ``value`` in ``column``, or None if it has the column's type.

    ``image`` / ``audio`` / ``mask``: a non-empty string (a path); ``text``: a string;
    ``<task>_references``: a list of strings; any other column (a target): a non-blank string
    or a number (an integer class, a score), not a list, an object or a boolean. A blank
    target (``"caption": " "``) would teach an empty caption or a class without a name.
    """
    if column in FILE_COLUMNS:
        if not isinstance(value, str) or not value.strip():
            return f"{column} must be a file path (a non-empty string), got {_kind(value)}"
    elif column in STRING_COLUMNS:
        if not isinstance(value, str):
            return f"{column} must be a string, got {_kind(value)}"
    elif column.endswith("_references"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{column} must be a list of strings, got {_kind(value)}"
    elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"{column} must be a string or a number, got {_kind(value)}"
    elif isinstance(value, str) and not value.strip():
        return f"{column} is blank ({value!r}): a target must not be empty"
    return None


def split_file(
    path: str | None,
    split: str | None,
    train: str | None,
    val: str | None,
    test: str | None,
    what: str,
    example: str,
) -> tuple[str, str]:
    """``(key prefix for messages, file)`` of a split of a data set read from one file per
    split (``data.train``, ``data.val``, ``data.test``), or the ``path`` given directly. An
    unset test split is the validation split, with a warning.

    Args:
        path: the file, given directly (then no split files).
        split: ``train``, ``val`` or ``test``.
        train: the training split's file.
        val: the validation split's file.
        test: the test split's file.
        what: what the file is, for the message when it is not set (``"a manifest"``).
        example: its file names, for the same message (``"file.jsonl or file.csv"``).

    Raises:
        ValueError: for an unknown split, or both ``path`` and split files.
        MMTrainError: naming the key, when the split's file is not set.
    """
    if path is not None:
        if any(f is not None for f in (train, val, test)):
            raise ValueError(f"give path or train/val/test files, not both (path={path!r})")
        return "", path
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = {"train": train, "val": val, "test": test}
    if split == "test" and test is None and val is not None:
        log.warning("data.test is not set: the test split is data.val (%s)", val)
        split = "val"
    if files[split] is None:
        raise MMTrainError(
            f"data.{split} is not set: the {split} split needs {what} (data.{split}=<{example}>)"
        )
    return f"data.{split}: ", files[split]


class ManifestDataset(Dataset):
    """Samples listed in a ``.jsonl`` or ``.csv`` manifest (any other suffix reads as JSONL).

    Items are dicts: ``id`` (the ``id`` column, else the sample's index), ``image`` as a PIL RGB
    image, ``audio`` as ``(samples (C, T) float32, rate)``, ``text`` as a string, ``mask`` as
    ``(H, W)`` uint8 class ids (:func:`~mmtrain.data.io.load_mask`) and other targets as
    written in the manifest, for the requested columns. An empty CSV cell and a JSON ``null``
    are an absent value.

    Which file: ``path`` if given, else the file of ``split`` among ``train``, ``val`` and
    ``test``; ``test=None`` tests on ``val`` (logged). A relative manifest path is resolved
    against ``root`` if given, else the working directory; the ``image`` / ``audio`` / ``mask``
    paths in a manifest are relative to the manifest's own folder (absolute paths are used as
    they are).

    A bad sample (a missing column, a wrong type, a missing or unreadable file) is an
    :class:`MMTrainError` naming the manifest and its line (``train.jsonl:7: ...``) when the
    item is loaded, so that ``data.on_error=skip`` can skip it; a file that cannot be parsed
    (a line that is not JSON, a CSV row with more fields than its header) fails at once.

    Args:
        path: the manifest file.
        columns: the columns to load (None loads all); ``id`` is always present.
        split: with ``path=None``, the split whose file to read: ``train``, ``val`` or ``test``.
        root: the folder that relative manifest paths are relative to (None: the working
            directory).
        train: the training manifest.
        val: the validation manifest.
        test: the test manifest; None uses ``val``.
        optional: columns a sample may lack (left out of its item): a tabular input's, with
            ``data.tabular.missing=mean``.

    Raises:
        ValueError: for an unknown split, or both ``path`` and split files.
        MMTrainError: for an unset, missing or empty manifest, a file that cannot be parsed, or
            a line that is not an object.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        columns: list[str] | None = None,
        split: str | None = None,
        root: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        optional: list[str] = (),
    ) -> None:
        self.optional = set(optional)
        example = "file.jsonl or file.csv"
        key, path = split_file(path, split, train, val, test, "a manifest", example)
        self.path = Path(path)
        if not self.path.is_absolute() and root is not None:
            self.path = Path(root) / self.path
        if not self.path.is_file():
            raise MMTrainError(f"{key}manifest not found: {self.path.absolute()}")
        self.base = self.path.parent  # media paths in the manifest are relative to its folder
        self.records = self._read()
        if not self.records:
            raise MMTrainError(f"{key}{self.path}: the manifest has no samples")
        self.columns = sorted({k for r in self.records for k in r} - {"id", "_line"})
        self.load = list(self.columns if columns is None else columns)

    def _read(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column.
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            if self.path.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                for row in reader:
                    # line_num: the line the row ends on (blank lines are skipped by the reader).
                    line_no = reader.line_num
                    if None in row:
                        raise MMTrainError(
                            f"{self.path}:{line_no}: {len(row[None])} more field(s) than the "
                            f"header's {len(reader.fieldnames or [])} columns"
                        )
                    records.append(
                        {k: v for k, v in row.items() if v not in (None, "")} | {"_line": line_no}
                    )
            else:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise MMTrainError(
                            f"{self.path}:{line_no}: not valid JSON: {err}"
                        ) from None
                    if not isinstance(row, dict):
                        raise MMTrainError(f"{self.path}:{line_no}: expected a JSON object")
                    records.append(
                        {k: v for k, v in row.items() if v is not None} | {"_line": line_no}
                    )
        for i, r in enumerate(records):
            r.setdefault("id", str(i))
        return records

    def __len__(self) -> int:
        return len(self.records)

    def where(self, index: int) -> str:
        """``<manifest>:<line>`` of sample ``index``, for error messages."""
        return f"{self.path}:{self.records[index]['_line']}"

    def values(self, column: str) -> list[Any]:
        """The raw values of one column over all samples (None where absent)."""
        return [r.get(column) for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item: dict[str, Any] = {"id": str(record["id"])}
        for col in self.load:
            if col not in record and col in self.optional:
                continue
            if col not in record:
                raise MMTrainError(f"{self.where(index)}: missing column {col!r}")
            value = record[col]
            problem = check_value(col, value)
            if problem is not None:
                raise MMTrainError(f"{self.where(index)}: {problem}")
            if col in FILE_COLUMNS:
                file = self.path.parent / value
                try:
                    value = LOADERS[col](file)
                except MMTrainError as err:
                    raise MMTrainError(f"{self.where(index)}: {err}") from None
            item[col] = value
        return item
