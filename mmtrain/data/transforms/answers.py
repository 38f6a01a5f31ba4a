"""VQA answers as a classification target: the K most frequent normalised training answers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from mmtrain.utils.vqa_answers import answer_vocabulary, normalize_answer

PAD, UNK = "<pad>", "<unk>"


class AnswerVocabulary:
    """The answer classes of ``head/answer=vqa``, used as the ``answer`` target's tokenizer.

    Ids 0 and 1 are ``<pad>`` and ``<unk>`` (an answer outside the K classes); then the ``top_k``
    most frequent normalised training answers (the VQA evaluation's normalisation), by count
    then alphabetically. With ``soft_targets`` the data module encodes each question's target
    as the ids of all its human answers (``encode_answers``), from which the head builds the
    soft scores; ``encode`` maps one answer.

    Args:
        top_k: answer classes kept (3129 is the usual choice for VQA v2).
        max_answers: human answers kept per question (VQA v2 has 10).

    Raises:
        ValueError: for a non-positive ``top_k`` or ``max_answers``.
    """

    pad_id, unk_id = 0, 1
    bos_id = eos_id = None  # no sequence markers: a class, not a sentence
    soft_targets = True

    def __init__(self, top_k: int = 3129, max_answers: int = 10) -> None:
        if top_k <= 0 or max_answers <= 0:
            raise ValueError(f"top_k and max_answers must be positive, got {top_k}, {max_answers}")
        self.top_k, self.max_answers = top_k, max_answers
        self.set_vocab([PAD, UNK])

    @property
    def vocab_size(self) -> int:
        """Number of ids, ``<pad>`` and ``<unk>`` included."""
        return len(self.vocab)

    @property
    def fitted(self) -> bool:
        return len(self.vocab) > 2

    def fit(self, answers: Iterable[str]) -> AnswerVocabulary:
        """Keep the ``top_k`` most frequent normalised answers of ``answers`` (training)."""
        self.set_vocab([PAD, UNK, *answer_vocabulary([[a] for a in answers], self.top_k)])
        return self

    def set_vocab(self, vocab: list[str]) -> None:
        """Use a saved vocabulary.

        Raises:
            ValueError: if it does not start with ``<pad>``, ``<unk>``.
        """
        if vocab[:2] != [PAD, UNK]:
            raise ValueError(f"an answer vocabulary must start with {[PAD, UNK]}, got {vocab[:2]}")
        self.vocab = list(vocab)
        self._index = {a: i for i, a in enumerate(self.vocab)}

    def state_dict(self) -> dict[str, Any]:
        return {"vocab": list(self.vocab)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_vocab(list(state["vocab"]))

    def id(self, answer: str) -> int:
        """The class of one answer (``<unk>`` when it is not one of the K)."""
        return self._index.get(normalize_answer(answer), self.unk_id)

    def encode(self, text: str, add_special: bool = False) -> Tensor:
        """``(1,)`` long: the class of one answer (``add_special`` is ignored)."""
        return torch.tensor([self.id(text)], dtype=torch.long)

    def encode_answers(self, answers: Sequence[str]) -> Tensor:
        """``(A,)`` long: the classes of a question's human answers (at most ``max_answers``)."""
        return torch.tensor([self.id(a) for a in answers[: self.max_answers]], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """The answer of the first id that is a class (``""`` if none is)."""
        for i in ids:
            if i > self.unk_id:
                return self.vocab[i]
        return ""
