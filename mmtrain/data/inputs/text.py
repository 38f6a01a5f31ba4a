"""The text input: ``text (B, L)`` token ids + ``text_mask``; ``data.text``.

Its ids come from mmtrain's word tokenizer, fitted on the training split, or from a pretrained
model's tokenizer (``data.text.tokenizer=<folder>``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from mmtrain.contracts import Column
from mmtrain.data.collate import padded
from mmtrain.data.inputs.base import Input, settings_digest
from mmtrain.data.transforms.hf_tokenizer import PretrainedTokenizer, pretrained_tokenizer
from mmtrain.data.transforms.text import WordTokenizer


class TextInput(Input):
    """A string per sample, as token ids.

    By default a :class:`WordTokenizer` splits it into words, with a vocabulary fitted on the
    training split (and kept in the checkpoint). With ``tokenizer`` (the folder of a Hugging
    Face tokenizer, which a pretrained text encoder sets) the ids are that tokenizer's, exactly
    as calling it gives them (:class:`~mmtrain.data.transforms.hf_tokenizer.HFTokenizer`):
    special tokens added, truncated at ``max_length``, padded with its pad id on its padding
    side, ``text_mask`` its attention mask; nothing is fitted, and ``lowercase``,
    ``strip_punctuation``, ``min_freq`` and ``max_vocab`` do not apply (the tokenizer
    normalises as it was trained to). ``tokenizer: open_clip:<model>`` is open_clip's own
    tokenizer of that model, used the same way.

    Args:
        max_length: ids kept per text (longer texts are truncated), special tokens included.
        lowercase: lowercase before splitting.
        strip_punctuation: drop punctuation tokens.
        min_freq: words seen fewer times in training map to ``<unk>``.
        max_vocab: keep at most this many words (plus the specials); None keeps all.
        tokenizer: the folder of a Hugging Face tokenizer, ``open_clip:<model>``, or None for
            the word tokenizer.

    Raises:
        ValueError: what :class:`WordTokenizer` raises.
        MMTrainError: naming the folder, when ``tokenizer`` holds no tokenizer that
            transformers loads offline.
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
        tokenizer: str | None = None,
    ) -> None:
        self.tokenizer: WordTokenizer | PretrainedTokenizer
        if tokenizer is not None:
            self.tokenizer = pretrained_tokenizer(tokenizer, max_length)
        else:
            self.tokenizer = WordTokenizer(
                max_length, lowercase, strip_punctuation, min_freq, max_vocab
            )

    @property
    def fitted(self) -> bool:
        return not isinstance(self.tokenizer, WordTokenizer) or self.tokenizer.fitted

    def fit(self, column: Column) -> None:
        if not self.fitted:  # values of a wrong type are left out; loading them is the error
            self.tokenizer.fit([v for v in column.values() if isinstance(v, str)])

    def state_dict(self) -> dict[str, Any]:
        """The fitted vocabulary; nothing for a pretrained tokenizer (its files are the
        model's)."""
        if isinstance(self.tokenizer, WordTokenizer) and self.fitted:
            return self.tokenizer.state_dict()
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and isinstance(self.tokenizer, WordTokenizer):
            self.tokenizer.load_state_dict(state)

    def encode(self, value: str, train: bool) -> Tensor:
        return self.tokenizer.encode(value)

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
        if isinstance(self.tokenizer, WordTokenizer):
            return padded(self.name, values)
        ids, mask = self.tokenizer.pad(values)  # its pad id, on its padding side
        return {self.name: ids, f"{self.name}_mask": mask}

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]:
        """Tokens per text, as the tokenizer splits it, capped at ``max_length``."""
        texts = values("text")
        if not isinstance(self.tokenizer, WordTokenizer):
            counts = iter(self.tokenizer.count([str(v) for v in texts if v is not None]))
            return [0.0 if v is None else float(next(counts)) for v in texts]
        cap = self.tokenizer.max_length or math.inf
        split = self.tokenizer.split
        return [0.0 if v is None else float(min(len(split(str(v))), cap)) for v in texts]

    def facts(self) -> dict[str, Any]:
        return {"vocab_size": self.tokenizer.vocab_size, "pad_id": self.tokenizer.pad_id}

    def fingerprint(self) -> str:
        if isinstance(self.tokenizer, WordTokenizer):
            return settings_digest(self.tokenizer)  # its settings and vocabulary
        return self.tokenizer.fingerprint()  # its files and settings, not its folder
