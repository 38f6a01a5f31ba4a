"""A data set described by a manifest: JSON Lines or CSV, one sample a line.

Columns: ``id`` (optional), modalities ``image`` / ``audio`` (paths relative to the manifest)
and ``text`` (a string), and one column per task target (``label``, ``caption``...).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.data.io import load_audio, load_image
from mmtrain.errors import MMTrainError

FILE_COLUMNS = ("image", "audio")


class ManifestDataset(Dataset):
    """Samples listed in a ``.jsonl`` or ``.csv`` manifest.

    Items are dicts: ``id``, ``image`` as a PIL image, ``audio`` as ``(samples, rate)``,
    ``text`` as a string and targets as written in the manifest, for the requested columns.

    Args:
        path: the manifest file.
        columns: the columns to load (None loads all); ``id`` is always present.

    Raises:
        MMTrainError: for a missing or unreadable manifest, or a line that is not an object.
    """

    def __init__(self, path: str | Path, columns: list[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MMTrainError(f"manifest not found: {self.path}")
        self.records = self._read()
        self.columns = sorted({k for r in self.records for k in r} - {"id", "_line"})
        self.load = list(self.columns if columns is None else columns)

    def _read(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        with self.path.open(newline="", encoding="utf-8") as f:
            if self.path.suffix == ".csv":
                for line_no, row in enumerate(csv.DictReader(f), start=2):
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
                    records.append(row | {"_line": line_no})
        for i, r in enumerate(records):
            r.setdefault("id", str(i))
        return records

    def __len__(self) -> int:
        return len(self.records)

    def values(self, column: str) -> list[Any]:
        """The raw values of one column over all samples (None where absent)."""
        return [r.get(column) for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item: dict[str, Any] = {"id": str(record["id"])}
        for col in self.load:
            if col not in record:
                raise MMTrainError(f"{self.path}:{record['_line']}: missing column {col!r}")
            value = record[col]
            if col in FILE_COLUMNS:
                file = self.path.parent / str(value)
                try:
                    value = load_image(file) if col == "image" else load_audio(file)
                except MMTrainError as err:
                    raise MMTrainError(f"{self.path}:{record['_line']}: {err}") from None
            item[col] = value
        return item
