"""Token sequences: ``<task> (B, L)`` ids ``<bos> ... <eos>`` + ``<task>_mask`` (captions,
transcripts)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from mmtrain.contracts import REFERENCES, Column, PredictionFile, Tokenizer
from mmtrain.data.collate import padded
from mmtrain.data.targets.base import Target, references, write_lines, write_official

RESULTS = ("coco", "transcripts", "jsonl")


class TextTarget(Target):
    """A string per sample, encoded by ``tokenizer`` (word, character or BPE, fitted on the
    training split and kept in the checkpoint) as ``<bos> ids <eos>``. Its references for the
    metrics go along as ``<task>_references``: every reference of the sample when the data set
    gives them (COCO's five captions), else the target string. The head gets the tokenizer,
    ``vocab_size`` and ``pad_id``.

    Predictions are written as ``results``:

    - ``coco``: ``<task>s_<split>.json``, COCO's caption results format
      ``[{"image_id": int, "caption": str}]``;
    - ``transcripts``: ``<task>s_<split>.jsonl`` with ``{"id", "reference", "hypothesis",
      "reference_raw"}`` a line, reference and hypothesis normalised as they were scored (the
      head's ``normalize``), so any WER scorer on the file gives the logged WER;
    - ``jsonl``: ``<task>_<split>.jsonl`` with ``{"id", "prediction"}`` a line.

    Args:
        tokenizer: :class:`~mmtrain.data.transforms.WordTokenizer`, ``CharTokenizer`` or
            ``BPETokenizer`` (``data.targets.caption.tokenizer.max_length=22``).
        results: the predictions file's format (above).

    Raises:
        ValueError: for an unknown ``results``.
    """

    bucketable = True

    def __init__(
        self, tokenizer: Tokenizer, results: Literal["coco", "transcripts", "jsonl"] = "jsonl"
    ) -> None:
        if results not in RESULTS:
            raise ValueError(f"results must be one of {RESULTS}, got {results!r}")
        self.tokenizer, self.results = tokenizer, results

    @property
    def fitted(self) -> bool:
        return bool(self.tokenizer.fitted)

    def fit(self, column: Column) -> None:
        if not self.fitted:  # values of a wrong type are left out; loading them is the error
            texts = [str(v) for v in column.values() if isinstance(v, (str, int, float))]
            self.tokenizer.fit(texts)

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.state_dict()} if self.fitted else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tokenizer"):
            self.tokenizer.load_state_dict(state["tokenizer"])

    def encode(self, item: dict[str, Any], train: bool, inputs: dict[str, Any]) -> dict[str, Any]:
        ids = self.tokenizer.encode(str(item[self.name]), add_special=True)
        return {self.name: ids, f"{self.name}{REFERENCES}": references(item, self.name)}

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
        return padded(self.name, values)

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]:
        """Tokens per target, ``<bos>`` and ``<eos>`` included (words for BPE), capped at the
        tokenizer's ``max_length``."""
        split = getattr(self.tokenizer, "split", str.split)
        cap = getattr(self.tokenizer, "max_length", None) or math.inf
        return [
            0.0 if v is None else float(min(len(split(str(v))) + 2, cap)) for v in values(self.name)
        ]

    def facts(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "vocab_size": self.tokenizer.vocab_size,
            "pad_id": self.tokenizer.pad_id,
        }

    def write(
        self,
        rows: list[dict[str, Any]],
        folder: Path,
        split: str,
        normalize: Callable[[str], str] | None = None,
    ) -> PredictionFile:
        task = self.name
        if self.results == "coco":
            return write_official(rows, folder, split, task, "coco")
        if self.results == "jsonl":
            return super().write(rows, folder, split, normalize)
        return write_transcripts(rows, folder, split, task, normalize)


def write_transcripts(
    rows: list[dict[str, Any]],
    folder: Path,
    split: str,
    task: str,
    normalize: Callable[[str], str] | None = None,
) -> PredictionFile:
    """``<task>s_<split>.jsonl`` in ``folder``: ``{"id", "reference", "hypothesis",
    "reference_raw"}`` a line, reference and hypothesis normalised by ``normalize`` (as they
    were scored), the reference being the first of ``<task>_references``."""
    normalize = normalize or str
    lines = []
    for r in rows:  # as scored: the WER of the file is the logged one
        reference = (r.get(f"{task}{REFERENCES}") or [None])[0]
        lines.append(
            {
                "id": r["id"],
                **({"source": r["source"]} if "source" in r else {}),
                "reference": None if reference is None else normalize(reference),
                "hypothesis": normalize(r[task]),
                "reference_raw": reference,
            }
        )
    path = folder / f"{task}s_{split}.jsonl"
    return write_lines(path, lines, task, split, value_key="hypothesis", reference_key="reference")
