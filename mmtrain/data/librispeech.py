"""LibriSpeech (OpenSLR 12), read as released: read English speech and its transcripts.

The layout of an extracted subset (``scripts/download_librispeech.py`` fetches them)::

    <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac
    <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

where a ``.trans.txt`` line is ``<speaker>-<chapter>-<utterance> TRANSCRIPT WORDS`` (uppercase,
no punctuation but the apostrophe). The tarballs extract to ``LibriSpeech/<subset>``, so
``root`` may also be the folder that holds ``LibriSpeech/``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.contracts import SPLITS
from mmtrain.data.io import load_audio
from mmtrain.errors import MMTrainError

ARCHIVE_FOLDER = "LibriSpeech"
SUBSETS = (
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
)
_SEPARATORS = re.compile(r"[+,]")


@dataclass(frozen=True)
class Utterance:
    """One utterance: its id, audio file, transcript and where the transcript was read."""

    id: str
    path: Path
    transcript: str
    source: Path  # the .trans.txt file
    line: int


def parse_subsets(spec: str) -> list[str]:
    """``"train-clean-100+train-clean-360"`` (or with commas) -> the subset names, in order.

    Raises:
        ValueError: if ``spec`` names no subset.
    """
    names = [name.strip() for name in _SEPARATORS.split(spec)]
    names = list(dict.fromkeys(name for name in names if name))  # a repeat is read once
    if not names:
        raise ValueError(f"no LibriSpeech subset in {spec!r}; e.g. 'train-clean-100'")
    return names


def _subset_folders(root: Path) -> list[str]:
    """The folders under ``root`` and ``root/LibriSpeech`` that may be subsets, for hints."""
    found: set[str] = set()
    for folder in (root, root / ARCHIVE_FOLDER):
        if folder.is_dir():
            found.update(
                e.name
                for e in os.scandir(folder)
                if e.is_dir() and not e.name.startswith(".") and e.name != ARCHIVE_FOLDER
            )
    return sorted(found)


def read_transcripts(path: Path) -> list[Utterance]:
    """The utterances of one ``<speaker>-<chapter>.trans.txt`` (audio files are not checked).

    Raises:
        MMTrainError: for a line that is not ``<utterance id> TRANSCRIPT``.
    """
    utterances = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                raise MMTrainError(
                    f"{path}:{line_no}: expected '<speaker>-<chapter>-<utterance> TRANSCRIPT', "
                    f"got {line.strip()[:60]!r}"
                )
            utt_id, transcript = parts
            utterances.append(
                Utterance(utt_id, path.parent / f"{utt_id}.flac", transcript, path, line_no)
            )
    return utterances


class LibriSpeechDataset(Dataset):
    """Utterances of one or more LibriSpeech subsets and their transcripts.

    Items are dicts with ``id`` (the utterance id, ``<speaker>-<chapter>-<utterance>``) and the
    requested columns: ``audio`` as ``(samples (C, T) float32, rate)`` (16 kHz mono FLAC) and
    ``transcript`` as written (uppercase). Utterances are sorted by id (as strings, the order
    of torchaudio's ``LIBRISPEECH``).

    The subsets of a split are its ``train`` / ``val`` / ``test`` argument, several joined with
    ``+`` or ``,`` (``train-clean-100+train-clean-360``); each is looked for at
    ``root/<subset>``, then ``root/LibriSpeech/<subset>``. Opening a split reads the transcripts
    only: a transcript line whose ``.flac`` is missing or unreadable is an
    :class:`MMTrainError` naming ``<.trans.txt>:<line>`` when its item is loaded, so that
    ``data.on_error=skip`` can skip it.

    Args:
        root: the folder with the subsets (or with ``LibriSpeech/``).
        split: ``train``, ``val`` or ``test``.
        columns: the columns to load (set by the data module); None loads all.
        train: the training subsets.
        val: the validation subsets.
        test: the test subsets.

    Raises:
        ValueError: for an unknown split or a split with no subset named.
        MMTrainError: for a missing root or subset folder (naming the subsets that are there),
            a subset without transcripts, a malformed transcript line or a repeated utterance id.
    """

    def __init__(
        self,
        root: str,
        split: str,
        columns: list[str] | None = None,
        train: str = "train-clean-100",
        val: str = "dev-clean",
        test: str = "test-clean",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise MMTrainError(
                f"LibriSpeech not found: data.root={self.root} is not a folder (set "
                "data.root=<folder with dev-clean/ ... or LibriSpeech/>; "
                "scripts/download_librispeech.py fetches it)"
            )
        spec = {"train": train, "val": val, "test": test}[split]
        self.subsets = parse_subsets(spec)
        self.folders = [self._find(subset) for subset in self.subsets]
        utterances = [u for folder in self.folders for u in self._read_subset(folder)]
        utterances.sort(key=lambda u: u.id)
        for a, b in zip(utterances, utterances[1:]):
            if a.id == b.id:
                raise MMTrainError(
                    f"utterance {a.id} is listed twice: {a.source}:{a.line} and {b.source}:{b.line}"
                )
        self.utterances = utterances
        self.columns = ["audio", "transcript"]
        self.load = list(self.columns if columns is None else columns)

    def _find(self, subset: str) -> Path:
        for folder in (self.root / subset, self.root / ARCHIVE_FOLDER / subset):
            if folder.is_dir():
                return folder
        there = _subset_folders(self.root)
        raise MMTrainError(
            f"LibriSpeech subset {subset!r} of the {self.split} split not found: expected the "
            f"folder {self.root / subset} or {self.root / ARCHIVE_FOLDER / subset}; "
            f"data.root has {', '.join(there) if there else 'no subset folders'} (set "
            f"data.{self.split}=<subset>[+<subset>...], one of {', '.join(SUBSETS)})"
        )

    def _read_subset(self, folder: Path) -> list[Utterance]:
        files = sorted(folder.glob("*/*/*.trans.txt"))
        if not files:
            raise MMTrainError(
                f"{folder}: no transcripts (<speaker>/<chapter>/<speaker>-<chapter>.trans.txt): "
                "not an extracted LibriSpeech subset"
            )
        return [u for path in files for u in read_transcripts(path)]

    def __len__(self) -> int:
        return len(self.utterances)

    def where(self, index: int) -> str:
        """``<.trans.txt>:<line>`` of utterance ``index``, for error messages."""
        utterance = self.utterances[index]
        return f"{utterance.source}:{utterance.line}"

    def values(self, column: str) -> list[Any]:
        """The raw values of a column over the split, without reading audio.

        ``transcript`` gives the transcripts (e.g. to build a vocabulary), ``audio`` the FLAC
        paths, ``id`` the utterance ids.

        Raises:
            MMTrainError: for a column this data does not have.
        """
        if column == "transcript":
            return [u.transcript for u in self.utterances]
        if column == "audio":
            return [str(u.path) for u in self.utterances]
        if column == "id":
            return [u.id for u in self.utterances]
        raise MMTrainError(f"LibriSpeech: no column {column!r}; the data has {self.columns}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        utterance = self.utterances[index]
        item: dict[str, Any] = {"id": utterance.id}
        for column in self.load:
            if column == "audio":
                try:
                    item["audio"] = load_audio(utterance.path)
                except MMTrainError as err:
                    raise MMTrainError(f"{self.where(index)}: {err}") from None
            elif column == "transcript":
                item["transcript"] = utterance.transcript
            else:
                raise MMTrainError(
                    f"{self.where(index)}: no column {column!r}; the data has {self.columns}"
                )
        return item
