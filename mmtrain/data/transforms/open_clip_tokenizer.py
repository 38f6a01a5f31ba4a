"""open_clip's own tokenizer for a text input (``data.text.tokenizer: open_clip:<model>``).

The open_clip text encoders (:mod:`mmtrain.encoders.openclip`) set ``data.text.tokenizer`` to
``open_clip:<model>`` and ``max_length`` to the model's context length; the text input encodes
each text with :class:`OpenCLIPTokenizer` and pads a batch with :attr:`OpenCLIPTokenizer.pad_id`.

open_clip is imported when a tokenizer is made: importing this module does not import it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmtrain.utils import hub
from mmtrain.utils.open_clip_models import find_model


class OpenCLIPTokenizer:
    """The tokenizer open_clip uses for a model (``open_clip.get_tokenizer``), one text at a
    time and without padding.

    For a model whose text config names a Hugging Face tokenizer (``hf_tokenizer_name``: the
    SigLIP models), that tokenizer's repository is found offline by design
    (:func:`mmtrain.utils.hub.resolve`) rather than by open_clip's own download.

    Args:
        name: an open_clip model name (``ViT-B-32``), ``hf-hub:<org/name>``, or a model folder
            (``local-dir:<folder>`` or the folder itself) with ``open_clip_config.json``.
        max_length: the most ids a text gets (open_clip truncates to it, keeping the
            end-of-text token); None: the model's context length, the most it takes.
        model_dir: ``paths.model_dir``, searched first for hub ids.

    Attributes:
        name: the name given.
        max_length: the most ids a text gets.
        pad_id: the id open_clip pads with (0 for CLIP's tokenizer).
        eot_id: the end-of-text id, the last of every encoded text.

    Raises:
        ValueError: for an unknown model name, or a ``max_length`` that is not in
            ``[1, context length]``.
        MMTrainError: for a model or tokenizer that is not available offline.
    """

    def __init__(
        self, name: str, max_length: int | None = None, model_dir: str | Path | None = None
    ) -> None:
        import open_clip

        self.name = name
        model = find_model(name, "data.text.tokenizer", model_dir=model_dir)
        text_cfg = model.model_cfg.get("text_cfg", {})
        if model.folder is not None:
            tokenizer = open_clip.get_tokenizer(f"local-dir:{model.folder}")
        else:
            tokenizer = _registry_tokenizer(model.name, text_cfg, model_dir)
        self.tokenizer = tokenizer
        self.text_cfg = text_cfg
        context = int(tokenizer.context_length)
        if max_length is not None and (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or not 0 < max_length <= context
        ):
            raise ValueError(
                f"data.text.max_length must be in [1, {context}] (the context length of "
                f"open_clip:{name}), got {max_length!r}"
            )
        self.max_length = context if max_length is None else max_length
        inner = getattr(tokenizer, "tokenizer", None)  # the transformers tokenizer, if any
        if inner is None:  # CLIP's SimpleTokenizer: zeros after the end-of-text token
            self.pad_id, self.eot_id = 0, int(tokenizer.eot_token_id)
            self._vocab_size = int(tokenizer.vocab_size)
        else:
            self.pad_id = int(inner.pad_token_id or 0)
            eot = inner.eos_token_id if inner.eos_token_id is not None else inner.sep_token_id
            self.eot_id = int(eot) if eot is not None else None
            self._vocab_size = len(inner)

    @property
    def vocab_size(self) -> int:
        """The number of ids (the text tower's embedding rows cover them)."""
        return self._vocab_size

    def encode(self, text: str) -> Tensor:
        """``(L,)`` long: the ids of ``text`` as open_clip's tokenizer gives them (start token,
        text, end-of-text token; truncated to :attr:`max_length`), without the padding."""
        ids = self.tokenizer([text], context_length=self.max_length)[0]  # (max_length,)
        ends = (ids == self.eot_id).nonzero() if self.eot_id is not None else ids.new_empty(0, 1)
        if len(ends):
            return ids[: int(ends[0, 0]) + 1].clone()
        real = (ids != self.pad_id).nonzero()  # no end token (a tokenizer without one)
        return ids[: int(real[-1, 0]) + 1].clone() if len(real) else ids[:0].clone()

    def count(self, texts: list[str]) -> list[int]:
        """Ids per text (what :meth:`encode` gives), for length bucketing."""
        return [len(self.encode(text)) for text in texts]

    def pad(self, values: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(ids (B, L), mask (B, L) bool)``: padded on the right with :attr:`pad_id`, as
        open_clip pads (to the longest of the batch, not to the context length: the encoder
        pads to it), the mask marking the real ids."""
        length = max((v.shape[-1] for v in values), default=0)
        ids = torch.full((len(values), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(values), length, dtype=torch.bool)
        for row, value in enumerate(values):
            ids[row, : value.shape[-1]], mask[row, : value.shape[-1]] = value, True
        return ids, mask

    def fingerprint(self) -> str:
        """A short hash of what the ids depend on: the tokenizer's kind, the model's text
        config, the context length and the special ids (not where the model folder is)."""
        settings = {
            "kind": type(self.tokenizer).__name__,
            "text_cfg": self.text_cfg,
            "max_length": self.max_length,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "eot_id": self.eot_id,
        }
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _registry_tokenizer(name: str, text_cfg: dict[str, Any], model_dir: str | Path | None) -> Any:
    """open_clip's tokenizer of a registry model; a Hugging Face tokenizer it names is read
    from the folder :func:`mmtrain.utils.hub.resolve` finds (as ``get_tokenizer`` builds it)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return open_clip.get_tokenizer(name)
    folder = hub.resolve(hf_name, "data.text.tokenizer", model_dir=model_dir)
    return HFTokenizer(
        str(folder),
        context_length=text_cfg.get("context_length", 77),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        **text_cfg.get("tokenizer_kwargs", {}),
    )
