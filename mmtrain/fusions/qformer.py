"""A token compressor: BLIP-2's querying transformer (Li et al., 2023), its query branch.

Learned queries read every modality's tokens through cross-attention: hundreds of encoder tokens
become ``num_queries`` (BLIP-2: 32). Flamingo's Perceiver resampler is the other compressor
(:mod:`mmtrain.fusions.perceiver`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.contracts import Features
from mmtrain.fusions.concat import ConcatFusion
from mmtrain.fusions.perceiver import check_sizes, joined_tokens


class QFormerFusion(nn.Module):
    """BLIP-2's Q-Former, its query branch: ``num_queries`` learned queries pass through
    ``num_layers`` BERT-style (post-norm) layers of self-attention among the queries,
    cross-attention to the tokens of all modalities and a feed-forward block
    (``nn.TransformerDecoderLayer`` without a causal mask); the output is the queries,
    ``(B, num_queries, dim)``.

    Each modality's tokens are first projected to ``dim`` with a learned modality embedding
    (:class:`~mmtrain.fusions.concat.ConcatFusion`).

    Missing modalities: an absent modality contributes no tokens and a fully masked one is
    ignored by the cross-attention; a sample with no real token at all reads its zeroed
    padding, so the output stays finite. The output has no mask.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: width, ``out_dim`` (BLIP-2: 768, BERT-base's).
        num_queries: the number of queries (BLIP-2: 32).
        num_layers: layers (BLIP-2: 12, cross-attention in every other one).
        num_heads: attention heads; must divide ``dim``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout in attention and feed-forward.

    Raises:
        ValueError: for an empty ``in_dims`` or non-positive sizes.
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        dim: int = 128,
        num_queries: int = 32,
        num_layers: int = 2,
        num_heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_sizes(dim, num_queries, num_layers, num_heads, ff_mult)
        self.embed = ConcatFusion(in_dims, dim)
        self.queries = nn.Parameter(0.02 * torch.randn(num_queries, dim))
        self.norm = nn.LayerNorm(dim)  # BERT's embedding norm, on the queries
        layer = nn.TransformerDecoderLayer(
            dim, num_heads, ff_mult * dim, dropout, activation="gelu", batch_first=True
        )
        self.layers = nn.TransformerDecoder(layer, num_layers)
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """``(B, num_queries, dim)`` queries, no mask."""
        media, ignore = joined_tokens(self.embed, features)  # (B, N, D), (B, N)
        queries = self.norm(self.queries).expand(media.shape[0], -1, -1)  # (B, Q, D)
        out = self.layers(queries, media, memory_key_padding_mask=ignore)
        return Features(out, None)
