"""A word-level tokenizer whose vocabulary is built from the training split."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
_WORD = re.compile(r"\w+|[^\w\s]")
_WORD_ONLY = re.compile(r"\w+")


class WordTokenizer:
    """Splits text into words and punctuation and maps them to ids.

    Ids 0..3 are ``<pad> <unk> <bos> <eos>``; the rest are the training split's words ordered by
    decreasing frequency (ties alphabetically), so the same data gives the same vocabulary.

    Args:
        max_length: ids kept per text (longer texts are truncated).
        lowercase: lowercase before splitting.
        strip_punctuation: drop punctuation tokens (the usual for COCO caption targets).
        min_freq: words seen fewer times in training map to ``<unk>``.
        max_vocab: keep at most this many words (plus the specials); None keeps all.

    Raises:
        ValueError: for a non-positive ``max_length`` or ``min_freq``.
    """

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(
        self,
        max_length: int = 32,
        lowercase: bool = True,
        strip_punctuation: bool = False,
        min_freq: int = 1,
        max_vocab: int | None = None,
    ) -> None:
        if max_length <= 0 or min_freq <= 0:
            raise ValueError(
                f"max_length and min_freq must be positive, got {max_length}, {min_freq}"
            )
        self.max_length = max_length
        self.lowercase = lowercase
        self.pattern = _WORD_ONLY if strip_punctuation else _WORD
        self.min_freq = min_freq
        self.max_vocab = max_vocab
        self.vocab: list[str] = list(SPECIALS)
        self._index: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self.vocab)

    @property
    def fitted(self) -> bool:
        """Whether a vocabulary beyond the specials is present."""
        return len(self.vocab) > len(SPECIALS)

    def split(self, text: str) -> list[str]:
        """Words and punctuation of ``text``."""
        return self.pattern.findall(text.lower() if self.lowercase else text)

    def fit(self, texts: Iterable[str]) -> WordTokenizer:
        """Build the vocabulary from ``texts`` (the training split)."""
        counts = Counter(w for t in texts for w in self.split(t))
        words = sorted(
            (w for w, c in counts.items() if c >= self.min_freq and w not in SPECIALS),
            key=lambda w: (-counts[w], w),
        )
        if self.max_vocab is not None:
            words = words[: self.max_vocab]
        self.set_vocab([*SPECIALS, *words])
        return self

    def set_vocab(self, vocab: list[str]) -> None:
        """Use a saved vocabulary (from a checkpoint or run directory).

        Raises:
            ValueError: if the specials are not its first four entries.
        """
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}, got {vocab[:4]}")
        self.vocab = list(vocab)
        self._index = {w: i for i, w in enumerate(self.vocab)}

    def state_dict(self) -> dict[str, Any]:
        """The vocabulary, as plain types (saved in checkpoints and data_state.json)."""
        return {"vocab": list(self.vocab)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.set_vocab(list(state["vocab"]))

    def encode(self, text: str, add_special: bool = False) -> Tensor:
        """Ids of ``text`` as a 1-D long tensor, truncated to ``max_length``.

        Args:
            text: the string.
            add_special: wrap in ``<bos> ... <eos>`` (for generation targets).
        """
        ids = [self._index.get(w, self.unk_id) for w in self.split(text)]
        if add_special:
            ids = [self.bos_id, *ids[: self.max_length - 2], self.eos_id]
        return torch.tensor(ids[: self.max_length], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """Words of ``ids`` joined by spaces, stopping at ``<eos>`` and skipping specials."""
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                words.append(self.vocab[i] if i < len(self.vocab) else UNK)
        return " ".join(words)
