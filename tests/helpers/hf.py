"""Hugging Face ``datasets`` data sets (``data=hf``) in their real on-disk layouts, for tests:
the samples of :mod:`helpers.manifest` (the same image and WAV files), as ``Image``, ``Audio``
and ``ClassLabel`` columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.manifest import WORDS, sample_rows

# ClassLabel names in label-id order; sorted as data class names are, they would be
# ["ten", "two", "zero"], so a test can tell which order a list of names comes from.
NAMES = ["zero", "two", "ten"]


def hf_split(
    folder: Path, split: str, n: int, image: str = "image", embed: bool = True
) -> tuple[Any, list[dict[str, Any]]]:
    """``n`` samples of :func:`helpers.manifest.sample_rows` (media written under ``folder``) as
    a ``datasets.Dataset``, and the manifest rows they came from.

    Columns: ``id``, ``image`` (named ``image``; an ``Image``), ``audio`` (an ``Audio``),
    ``text``, ``caption`` and ``label`` (a ``ClassLabel`` of :data:`NAMES`). Media are stored as
    bytes with ``embed``, else as paths relative to ``folder``. Audio columns are cast, not
    encoded (encoding audio needs torchcodec, which mmtrain does not).
    """
    import datasets

    rows = sample_rows(folder, split, n)

    def media(path: str) -> dict[str, Any]:
        if embed:
            return {"bytes": (folder / path).read_bytes(), "path": Path(path).name}
        return {"bytes": None, "path": path}

    data = datasets.Dataset.from_dict(
        {
            "id": [r["id"] for r in rows],
            image: [media(r["image"]) for r in rows],
            "audio": [media(r["audio"]) for r in rows],
            "text": [r["text"] for r in rows],
            "caption": [r["caption"] for r in rows],
            "label": [NAMES.index(WORDS[r["label"]]) for r in rows],
        },
        split=split,
    )
    data = data.cast_column(image, datasets.Image()).cast_column("audio", datasets.Audio())
    return data.cast_column("label", datasets.ClassLabel(names=NAMES)), rows


def write_hf(folder: Path, n_train: int = 6, n_val: int = 3, n_test: int = 3) -> Path:
    """A ``save_to_disk`` folder of a ``DatasetDict`` (``train``, ``validation``, ``test``) at
    ``folder/saved``, media embedded; returns it."""
    import datasets

    splits = {
        name: hf_split(folder / "media", name, n)[0]
        for name, n in (("train", n_train), ("validation", n_val), ("test", n_test))
    }
    datasets.DatasetDict(splits).save_to_disk(str(folder / "saved"))
    return folder / "saved"
