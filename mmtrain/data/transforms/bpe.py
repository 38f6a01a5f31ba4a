"""A byte-level BPE (subword) tokenizer trained on the training split with HF ``tokenizers``.

A drop-in for :class:`mmtrain.data.transforms.text.WordTokenizer` (same ids for the specials,
same ``fit``/``encode``/``decode``/``state_dict`` interface), for text targets whose rare words
should be spelled out of subwords rather than mapped to ``<unk>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from mmtrain.data.transforms.text import _WORD, _WORD_ONLY, SPECIALS, UNK

# The 256 byte symbols are always in the vocabulary: any text encodes without <unk>.
_ALPHABET = pre_tokenizers.ByteLevel.alphabet()
MIN_VOCAB_SIZE = len(SPECIALS) + len(_ALPHABET)
_PARALLELISM = "TOKENIZERS_PARALLELISM"


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Train without the library's thread pool, unless the user set ``TOKENIZERS_PARALLELISM``.

    DataLoader workers fork the process; forking after the pool has run is what the library's
    "disabling parallelism to avoid deadlocks" warning (printed once per worker by older
    versions) is about. One thread trains on COCO's captions in about 15 s.
    """
    if _PARALLELISM in os.environ:
        yield
        return
    os.environ[_PARALLELISM] = "false"
    try:
        yield
    finally:
        os.environ.pop(_PARALLELISM, None)


class BPETokenizer:
    """Splits text like :class:`WordTokenizer`, then into byte-level BPE subwords.

    The text is normalised as ``WordTokenizer`` does (lowercased, split into words and
    punctuation, or words only with ``strip_punctuation``) and re-joined by single spaces;
    a byte-level BPE model (GPT-2 style: a word's first piece carries its leading space) is
    trained on the training split. Ids 0..3 are ``<pad> <unk> <bos> <eos>``, then the 256 byte
    symbols, then the merges in the order learned. Every text encodes without ``<unk>``, and
    :meth:`decode` gives the normalised text back. Training is deterministic: the same texts,
    in any order, give the same vocabulary.

    Args:
        vocab_size: target number of ids, the 4 specials and 256 byte symbols included; a
            small corpus can give fewer (no pair left that is seen ``min_frequency`` times).
        max_length: ids kept per text (longer texts are truncated).
        lowercase: lowercase before splitting.
        strip_punctuation: drop punctuation (keep only ``\\w+`` runs, as ``WordTokenizer``).
        min_frequency: a pair of symbols is merged only if seen this many times in training.
        min_freq: alias of ``min_frequency`` (``WordTokenizer``'s name), so that a word
            tokenizer's config node composes with only its ``_target_`` swapped; when set, it
            is used (a different non-default ``min_frequency`` is an error).

    Raises:
        ValueError: for ``vocab_size`` below 260, a non-positive ``max_length`` or minimum
            frequency, or ``min_freq`` and ``min_frequency`` both set to different values.
    """

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(
        self,
        vocab_size: int = 8000,
        max_length: int = 32,
        lowercase: bool = True,
        strip_punctuation: bool = False,
        min_frequency: int = 2,
        min_freq: int | None = None,
    ) -> None:
        if min_freq is not None and min_frequency not in (2, min_freq):
            raise ValueError(
                f"min_freq is an alias of min_frequency; got both: {min_freq}, {min_frequency}"
            )
        min_frequency = min_frequency if min_freq is None else min_freq
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be at least {MIN_VOCAB_SIZE} (4 specials + 256 bytes), "
                f"got {vocab_size}"
            )
        if max_length <= 0 or min_frequency <= 0:
            raise ValueError(
                f"max_length and min_frequency must be positive, got {max_length}, {min_frequency}"
            )
        self.target_vocab_size = vocab_size
        self.max_length = max_length
        self.lowercase = lowercase
        self.strip_punctuation = strip_punctuation
        self.min_frequency = min_frequency
        self._tokenizer: Tokenizer | None = None
        self._vocab: list[str] = list(SPECIALS)

    # ---- vocabulary ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (4 before :meth:`fit`)."""
        return len(self._vocab)

    @property
    def fitted(self) -> bool:
        """Whether a trained model is present (from :meth:`fit` or :meth:`load_state_dict`)."""
        return self._tokenizer is not None

    @property
    def vocab(self) -> list[str]:
        """Token strings in id order (byte-level: ``Ġ`` stands for a leading space)."""
        return list(self._vocab)

    def split(self, text: str) -> list[str]:
        """Words and punctuation of ``text``, exactly as ``WordTokenizer.split``."""
        pattern = _WORD_ONLY if self.strip_punctuation else _WORD
        return pattern.findall(text.lower() if self.lowercase else text)

    def normalize(self, text: str) -> str:
        """``text`` as the model sees it (and as :meth:`decode` gives it back)."""
        return " ".join(self.split(text))

    def fit(self, texts: Iterable[str]) -> BPETokenizer:
        """Train the BPE model on ``texts`` (the training split), after normalising them.

        Args:
            texts: the training strings.

        Returns:
            This tokenizer, fitted.

        Raises:
            ValueError: if ``texts`` hold no word at all.
        """
        normalized = [n for n in map(self.normalize, texts) if n]
        if not normalized:
            raise ValueError("BPETokenizer.fit got no words to train on (empty texts)")
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.target_vocab_size,
            min_frequency=self.min_frequency,
            special_tokens=list(SPECIALS),  # in this order: ids 0..3
            initial_alphabet=_ALPHABET,
            show_progress=False,
        )
        with _single_threaded():
            tokenizer.train_from_iterator(normalized, trainer, length=len(normalized))
        self._use(tokenizer)
        return self

    def _use(self, tokenizer: Tokenizer) -> None:
        vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}, got {vocab[:4]}")
        self._tokenizer, self._vocab = tokenizer, vocab

    def state_dict(self) -> dict[str, Any]:
        """The trained model (the library's JSON; None before :meth:`fit`) and the text
        normalisation, as plain types (saved in checkpoints and data_state.json)."""
        return {
            "tokenizer": None if self._tokenizer is None else self._tokenizer.to_str(),
            "lowercase": self.lowercase,
            "strip_punctuation": self.strip_punctuation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the saved model and normalisation replace this one's
        (they decide the ids); ``max_length`` stays as configured.

        Raises:
            ValueError: if the saved vocabulary does not start with the four specials.
        """
        self.lowercase = bool(state.get("lowercase", self.lowercase))
        self.strip_punctuation = bool(state.get("strip_punctuation", self.strip_punctuation))
        if state.get("tokenizer") is None:
            self._tokenizer, self._vocab = None, list(SPECIALS)
        else:
            self._use(Tokenizer.from_str(state["tokenizer"]))

    # Pickled (DataLoader workers under spawn) through the same plain state as checkpoints.
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_tokenizer"}
        state["_tokenizer"] = None if self._tokenizer is None else self._tokenizer.to_str()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("_tokenizer")
        self.__dict__.update(state)
        self._tokenizer = None if saved is None else Tokenizer.from_str(saved)

    # ---- ids ----------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = False) -> Tensor:
        """Ids of ``text`` as a 1-D long tensor, truncated to ``max_length``.

        Args:
            text: the string.
            add_special: wrap in ``<bos> ... <eos>`` (for generation targets).

        Raises:
            RuntimeError: before :meth:`fit` or :meth:`load_state_dict`.
        """
        if self._tokenizer is None:
            raise RuntimeError("BPETokenizer.encode needs fit() or load_state_dict() first")
        normalized = self.normalize(text)
        ids = self._tokenizer.encode(normalized, add_special_tokens=False).ids if normalized else []
        if add_special:
            ids = [self.bos_id, *ids[: self.max_length - 2], self.eos_id]
        return torch.tensor(ids[: self.max_length], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, stopping at ``<eos>`` and skipping specials and unknown ids.

        Pieces re-join into the words they came from (``Ġ`` is a space), so the ids of a text
        decode to :meth:`normalize` of it.
        """
        kept = []
        for i in ids:
            if i == self.eos_id:
                break
            if len(SPECIALS) <= i < len(self._vocab):
                kept.append(int(i))
        if not kept or self._tokenizer is None:
            return ""
        text = self._tokenizer.decode(kept, skip_special_tokens=True)
        # Generated ids may end mid-character: drop the bytes that are not UTF-8 (decoded as
        # U+FFFD) rather than show them. The first word's leading space goes too.
        return text.replace("\ufffd", "").strip()
