"""The text input: ``text (B, L)`` token ids + ``text_mask``; ``data.text``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from mmtrain.contracts import Column
from mmtrain.data.collate import padded
from mmtrain.data.inputs.base import Input, settings_digest
from mmtrain.data.transforms.text import WordTokenizer


class TextInput(Input):
    """A string per sample, split into words by a :class:`WordTokenizer` whose vocabulary is
    fitted on the training split (and kept in the checkpoint). The keys are the tokenizer's
    (``data.text.max_length=64``).

    Args:
        max_length: ids kept per text (longer texts are truncated).
        lowercase: lowercase before splitting.
        strip_punctuation: drop punctuation tokens.
        min_freq: words seen fewer times in training map to ``<unk>``.
        max_vocab: keep at most this many words (plus the specials); None keeps all.

    Raises:
        ValueError: what :class:`WordTokenizer` raises.
    """

    name = "text"
    bucketable = True

    def __init__(
        self,
        max_length: int = 32,
        lowercase: bool = True,
        strip_punctuation: bool = False,
        min_freq: int = 1,
        max_vocab: int | None = None,
    ) -> None:
        self.tokenizer = WordTokenizer(
            max_length, lowercase, strip_punctuation, min_freq, max_vocab
        )

    @property
    def fitted(self) -> bool:
        return self.tokenizer.fitted

    def fit(self, column: Column) -> None:
        if not self.fitted:  # values of a wrong type are left out; loading them is the error
            self.tokenizer.fit([v for v in column.values() if isinstance(v, str)])

    def state_dict(self) -> dict[str, Any]:
        return self.tokenizer.state_dict() if self.fitted else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.tokenizer.load_state_dict(state)

    def encode(self, value: str, train: bool) -> Tensor:
        return self.tokenizer.encode(value)

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
        return padded(self.name, values)

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]:
        """Tokens per text, as the tokenizer splits it, capped at ``max_length``."""
        cap = self.tokenizer.max_length or math.inf
        split = self.tokenizer.split
        return [0.0 if v is None else float(min(len(split(str(v))), cap)) for v in values("text")]

    def facts(self) -> dict[str, Any]:
        return {"vocab_size": self.tokenizer.vocab_size, "pad_id": self.tokenizer.pad_id}

    def fingerprint(self) -> str:
        return settings_digest(self.tokenizer)  # its settings and vocabulary
