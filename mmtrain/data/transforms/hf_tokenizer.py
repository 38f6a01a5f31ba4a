"""A Hugging Face tokenizer from a folder, as the text input uses it (``data.text.tokenizer``).

transformers is imported when a tokenizer is loaded, never at import: runs without a
pretrained tokenizer do not import it. :func:`pretrained_tokenizer` also makes open_clip's
(``open_clip:<model>``, :mod:`mmtrain.data.transforms.open_clip_tokenizer`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from mmtrain.errors import MMTrainError
from mmtrain.utils.preprocessing import preprocessing_digest, tokenizer_folder

OPEN_CLIP = "open_clip:"  # data.text.tokenizer=open_clip:<model>: open_clip's own tokenizer


class PretrainedTokenizer(Protocol):
    """What the text input uses of a pretrained model's tokenizer: ids per text (special
    tokens added, at most ``max_length``), their count, a padded batch and its mask, and the
    feature-cache key."""

    max_length: int
    pad_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> Tensor: ...

    def count(self, texts: list[str]) -> list[int]: ...

    def pad(self, values: list[Tensor]) -> tuple[Tensor, Tensor]: ...

    def fingerprint(self) -> str: ...


def pretrained_tokenizer(spec: str, max_length: int) -> PretrainedTokenizer:
    """The tokenizer ``data.text.tokenizer`` names.

    Args:
        spec: a Hugging Face tokenizer folder, or ``open_clip:<model>`` (open_clip's own).
        max_length: ids kept per text, special tokens included.

    Returns:
        An :class:`HFTokenizer`, or open_clip's ``OpenCLIPTokenizer``.

    Raises:
        MMTrainError: naming the folder or model, when it cannot be loaded offline.
        ValueError: for a bad ``max_length``.
    """
    if str(spec).startswith(OPEN_CLIP):
        # Lazily: open_clip and its tokenizer module load only for open_clip text towers.
        from mmtrain.data.transforms.open_clip_tokenizer import OpenCLIPTokenizer

        return OpenCLIPTokenizer(str(spec)[len(OPEN_CLIP) :], max_length)
    return HFTokenizer(spec, max_length)


class HFTokenizer:
    """A pretrained tokenizer's ids, exactly as calling it gives them.

    A text becomes ``tokenizer(text, truncation=True, max_length=max_length)["input_ids"]``:
    its special tokens added (``[CLS] ... [SEP]``, ``<s> ... </s>``), truncated on the
    tokenizer's own side. Batches are padded with its pad id on its padding side, the mask
    marking the real tokens (its attention mask). A tokenizer without a pad token (GPT-2) pads
    with its end-of-text id, else 0: the mask says which ids are padding either way.

    Args:
        folder: the tokenizer's folder (a model folder, or a checkpoint's model files).
        max_length: ids kept per text, special tokens included.

    Raises:
        MMTrainError: naming the folder, when it holds no tokenizer or transformers cannot
            load it (offline, no remote code).
        ValueError: for a non-positive ``max_length``.
    """

    def __init__(self, folder: str | Path, max_length: int) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        path = tokenizer_folder(folder)
        from transformers import AutoTokenizer  # lazily: only runs that use one import it

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MMTrainError(f"cannot load the tokenizer in {folder}: {first[:300]}") from None
        self.folder = str(folder)
        self.max_length = max_length
        tokenizer = self._tokenizer
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.padding_side = str(tokenizer.padding_side)
        self._digest = preprocessing_digest(path)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(tokenizer)``)."""
        return len(self._tokenizer)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, as the tokenizer gives them (specials added, truncated)."""
        return self._tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def encode(self, text: str) -> Tensor:
        """Ids of ``text`` as a 1-D long tensor (specials added, at most ``max_length``)."""
        return torch.tensor(self._ids([text])[0], dtype=torch.long)

    def count(self, texts: list[str]) -> list[int]:
        """Ids per text (what :meth:`encode` gives), for length bucketing."""
        return [len(ids) for ids in self._ids(texts)] if texts else []

    def pad(self, values: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(ids (B, L), mask (B, L) bool)``: padded with the pad id on the tokenizer's side."""
        length = max(v.shape[-1] for v in values)
        ids = torch.full((len(values), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(values), length, dtype=torch.bool)
        for i, v in enumerate(values):
            n = v.shape[-1]
            if n == 0:
                continue
            span = slice(length - n, length) if self.padding_side == "left" else slice(0, n)
            ids[i, span], mask[i, span] = v, True
        return ids, mask

    def settings(self) -> dict[str, Any]:
        """What the ids depend on: the tokenizer's files (hashed), class and settings."""
        tokenizer = self._tokenizer
        return {
            "files": self._digest,
            "class": type(tokenizer).__name__,
            "max_length": self.max_length,
            "padding_side": self.padding_side,
            "truncation_side": str(tokenizer.truncation_side),
            "pad_id": self.pad_id,
            "vocab_size": self.vocab_size,
        }

    def fingerprint(self) -> str:
        """A hash of :meth:`settings` (the feature-cache key of a pretrained tokenizer)."""
        text = repr(sorted(self.settings().items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
