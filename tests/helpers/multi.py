"""Two manifest data sets with different columns, and a ``data=multi`` data module over them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from helpers.manifest import sample_rows, write_rows
from mmtrain.data.inputs import AudioInput, ImageInput, TextInput
from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.multi import DataSource, MultiDataModule
from mmtrain.data.targets import TextTarget
from mmtrain.data.transforms import WordTokenizer


def _strip(rows: list[dict[str, Any]], *columns: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in columns} for r in rows]


def write_two_sources(root: Path) -> dict[str, dict[str, Path]]:
    """``captions``: image + text -> caption (no audio, no label); ``labels``: all -> label.
    conftest's ``two_sources`` fixture writes them into the test's folder."""
    out = {}
    for name, n_train, drop in (("captions", 6, ("audio", "label")), ("labels", 9, ("caption",))):
        folder = root / name
        out[name] = {}
        for split, n in (("train", n_train), ("val", 3)):
            rows = _strip(sample_rows(folder, f"{name}_{split}", n), *drop)
            out[name][split] = write_rows(folder / f"{split}.jsonl", rows)
    return out


def multi_datamodule(files: dict[str, dict[str, Path]], **kwargs: Any) -> MultiDataModule:
    """A ``MultiDataModule`` over ``files`` (from :func:`write_two_sources`) with small
    transforms; ``kwargs`` override its arguments."""
    dataset = functools.partial(ManifestDataset)
    sources = {
        name: DataSource(dataset, train=str(f["train"]), val=str(f["val"]))
        for name, f in files.items()
    }
    defaults: dict[str, Any] = {
        "sources": sources,
        "image": ImageInput(size=16),
        "text": TextInput(max_length=8),
        "audio": AudioInput(n_mels=16),
        "targets": {"caption": TextTarget(WordTokenizer(max_length=8))},
        "modalities": ["image", "text", "audio"],
        "tasks": ["caption", "label"],
        "batch_size": 2,
    }
    return MultiDataModule(**{**defaults, **kwargs})
