"""A character-level tokenizer for transcripts (the CTC head's targets).

A drop-in for :class:`mmtrain.data.transforms.text.WordTokenizer` (same ids for the specials,
same ``fit``/``encode``/``decode``/``state_dict`` interface): CTC emits one symbol per audio
frame at most, so a small alphabet keeps every word spellable without ``<unk>``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from mmtrain.data.transforms.text import SPECIALS


class CharTokenizer:
    """Maps the characters of a normalised text to ids; the space is a token of its own.

    Texts are normalised first (:meth:`normalize`: lowercased if configured, whitespace runs
    collapsed to one space, ends stripped). Ids 0..3 are ``<pad> <unk> <bos> <eos>``; the rest
    are the training split's characters ordered by decreasing frequency (ties by character), so
    the same data, in any order, gives the same vocabulary.

    Args:
        max_length: ids kept per text (longer texts are truncated).
        lowercase: lowercase while normalising.
        min_freq: characters seen fewer times in training map to ``<unk>``.
        max_vocab: keep at most this many characters (plus the specials); None keeps all.

    Raises:
        ValueError: for a non-positive ``max_length``, ``min_freq`` or ``max_vocab``.
    """

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(
        self,
        max_length: int = 512,
        lowercase: bool = True,
        min_freq: int = 1,
        max_vocab: int | None = None,
    ) -> None:
        if max_length <= 0 or min_freq <= 0:
            raise ValueError(
                f"max_length and min_freq must be positive, got {max_length}, {min_freq}"
            )
        if max_vocab is not None and max_vocab <= 0:
            raise ValueError(f"max_vocab must be positive or None, got {max_vocab}")
        self.max_length = max_length
        self.lowercase = lowercase
        self.min_freq = min_freq
        self.max_vocab = max_vocab
        self.vocab: list[str] = list(SPECIALS)
        self._index: dict[str, int] = {c: i for i, c in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self.vocab)

    @property
    def fitted(self) -> bool:
        """Whether a vocabulary beyond the specials is present."""
        return len(self.vocab) > len(SPECIALS)

    def normalize(self, text: str) -> str:
        """``text`` as the model sees it (and as :meth:`decode` gives it back)."""
        return " ".join((text.lower() if self.lowercase else text).split())

    def split(self, text: str) -> list[str]:
        """Characters of the normalised ``text``, spaces included."""
        return list(self.normalize(text))

    def fit(self, texts: Iterable[str]) -> CharTokenizer:
        """Build the vocabulary from ``texts`` (the training split).

        Args:
            texts: the training strings.

        Returns:
            This tokenizer, fitted.
        """
        counts = Counter(c for t in texts for c in self.split(t))
        chars = sorted(
            (c for c, n in counts.items() if n >= self.min_freq), key=lambda c: (-counts[c], c)
        )
        if self.max_vocab is not None:
            chars = chars[: self.max_vocab]
        self.set_vocab([*SPECIALS, *chars])
        return self

    def set_vocab(self, vocab: list[str]) -> None:
        """Use a saved vocabulary (from a checkpoint or run directory).

        Args:
            vocab: the specials, then one single-character string per id.

        Raises:
            ValueError: if the specials are not its first four entries, or another entry is
                not a single character or is repeated.
        """
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}, got {vocab[:4]}")
        chars = vocab[len(SPECIALS) :]
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad or len(set(chars)) != len(chars):
            repeated = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(
                f"a character vocabulary needs distinct single characters after the specials; "
                f"got entries {bad[:5]!r} and repeats {repeated[:5]!r}"
            )
        self.vocab = list(vocab)
        self._index = {c: i for i, c in enumerate(self.vocab)}

    def state_dict(self) -> dict[str, Any]:
        """The vocabulary and the case folding, as plain types (checkpoints, data_state.json)."""
        return {"vocab": list(self.vocab), "lowercase": self.lowercase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the saved case folding replaces this one's (it decides
        the ids), ``max_length`` stays as configured."""
        self.lowercase = bool(state.get("lowercase", self.lowercase))
        self.set_vocab(list(state["vocab"]))

    def encode(self, text: str, add_special: bool = False) -> Tensor:
        """Ids of the characters of ``text`` as a 1-D long tensor, truncated to ``max_length``.

        Args:
            text: the string.
            add_special: wrap in ``<bos> ... <eos>`` (as the data module encodes text targets).

        Returns:
            The ids; unseen characters are ``<unk>``.
        """
        ids = [self._index.get(c, self.unk_id) for c in self.split(text)]
        if add_special:
            ids = [self.bos_id, *ids[: self.max_length - 2], self.eos_id]
        return torch.tensor(ids[: self.max_length], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """Characters of ``ids`` joined, stopping at ``<eos>``, skipping specials and unknown
        ids; whitespace is normalised as in :meth:`normalize` (a decoder may emit two spaces in
        a row, or one at either end)."""
        chars = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if len(SPECIALS) <= i < len(self.vocab):
                chars.append(self.vocab[i])
        return " ".join("".join(chars).split())
