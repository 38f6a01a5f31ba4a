"""Single-stream fusion: one Transformer encoder over the tokens of all modalities."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmtrain.contracts import Features
from mmtrain.encoders.transformer import MaskedTransformer
from mmtrain.fusions.concat import ConcatFusion


class TransformerFusion(nn.Module):
    """Concatenate every modality's tokens (plus an optional [CLS]) and run a Transformer on them.

    Single-stream, as in VisualBERT or UNITER: each modality's tokens go through
    ``Linear(in_dim, dim)`` plus a learned modality embedding, the sequences are concatenated
    after an optional learned [CLS] token (the joining is :class:`ConcatFusion`), and
    ``num_layers`` pre-norm layers (:class:`MaskedTransformer`) run over the whole sequence with
    the key padding mask. No position embedding is added:
    the encoders' tokens carry their own. The output is every token with its mask
    (``output="tokens"``, the [CLS] first when there is one), or the [CLS] token alone
    ``(B, 1, dim)`` (``output="cls"``).

    Missing modalities: a modality absent from the input dict contributes no tokens; a modality
    fully masked for a sample is padding for that sample, so no token attends to it and its
    output tokens stay masked: the other tokens (and the [CLS]) are those of removing it. A
    sample with no real token at all (possible only without [CLS]) attends to its padding to
    stay finite, and its output tokens are all masked.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: model width, ``out_dim``.
        num_layers: number of Transformer encoder layers.
        num_heads: attention heads; must divide ``dim``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout in the encoder layers.
        cls_token: prepend a learned [CLS] token.
        output: ``"tokens"`` (all tokens with the mask) or ``"cls"`` (needs ``cls_token``).

    Raises:
        ValueError: for an empty ``in_dims``, bad sizes, an unknown ``output``,
            ``output="cls"`` without ``cls_token``, or (in ``forward``) no known modality.
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        ff_mult: int = 2,
        dropout: float = 0.1,
        cls_token: bool = True,
        output: Literal["tokens", "cls"] = "tokens",
    ) -> None:
        super().__init__()
        if output not in ("tokens", "cls") or (output == "cls" and not cls_token):
            raise ValueError(
                f"output must be 'tokens' or 'cls' (with cls_token=true), got output={output!r}, "
                f"cls_token={cls_token}"
            )
        self.embed = ConcatFusion(in_dims, dim)  # projection + modality embedding, joined
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim)) if cls_token else None
        self.encoder = MaskedTransformer(dim, num_layers, num_heads, ff_mult, dropout)
        self.output = output
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; ``output="tokens"`` gives ``[CLS] + sum(N_m)`` tokens, ``"cls"`` one."""
        joined = self.embed(features)
        x = joined.tokens  # (B, sum N_m, dim)
        mask = joined.mask if joined.mask is not None else x.new_ones(x.shape[:2], dtype=bool)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            mask = torch.cat([mask.new_ones(x.shape[0], 1), mask], dim=1)
        x = self.encoder(x, mask)  # (B, N, dim), padded tokens zeroed
        if self.output == "cls":
            return Features(x[:, :1], None)  # (B, 1, dim)
        return Features(x, None if joined.mask is None else mask)  # no mask in, none out
