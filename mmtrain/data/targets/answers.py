"""VQA soft answers: ``<task> (B, A)`` the answer ids of every human answer + ``<task>_mask``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from mmtrain.contracts import REFERENCES, Column, PredictionFile
from mmtrain.data.collate import padded
from mmtrain.data.targets.base import Target, references, write_official
from mmtrain.data.transforms.answers import AnswerVocabulary


class AnswersTarget(Target):
    """The answers of a question as soft targets: the K most frequent normalised training
    answers are the classes (an :class:`AnswerVocabulary`, kept in the checkpoint), and each
    question carries the ids of all its human answers (up to ``max_answers``), from which the
    head builds the official VQA soft score. The answer strings go along as
    ``<task>_references`` for the VQA accuracy. The head gets the vocabulary as ``tokenizer``,
    ``vocab_size`` and ``pad_id``. Predictions are written as ``<task>s_<split>.json`` in the
    VQA results format ``[{"question_id": int, "answer": str}]``.

    Args:
        top_k: answer classes (3129, as in the VQA v2 literature).
        max_answers: human answers kept per question.
    """

    def __init__(self, top_k: int = 3129, max_answers: int = 10) -> None:
        self.vocabulary = AnswerVocabulary(top_k, max_answers)

    @property
    def fitted(self) -> bool:
        return self.vocabulary.fitted

    def fit(self, column: Column) -> None:
        if not self.fitted:
            self.vocabulary.fit(
                [str(v) for v in column.values() if isinstance(v, (str, int, float))]
            )

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.vocabulary.state_dict()} if self.fitted else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tokenizer"):
            self.vocabulary.load_state_dict(state["tokenizer"])

    def encode(self, item: dict[str, Any], train: bool, inputs: dict[str, Any]) -> dict[str, Any]:
        refs = references(item, self.name)
        return {self.name: self.vocabulary.encode_answers(refs), f"{self.name}{REFERENCES}": refs}

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
        return padded(self.name, values)

    def facts(self) -> dict[str, Any]:
        vocabulary = self.vocabulary
        return {
            "tokenizer": vocabulary,
            "vocab_size": vocabulary.vocab_size,
            "pad_id": vocabulary.pad_id,
        }

    def write(
        self,
        rows: list[dict[str, Any]],
        folder: Path,
        split: str,
        normalize: Callable[[str], str] | None = None,
    ) -> PredictionFile:
        return write_official(rows, folder, split, self.name, "vqa")
