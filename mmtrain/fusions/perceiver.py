"""A token compressor: Flamingo's Perceiver resampler (Alayrac et al., 2022).

A fixed number of learned latents read every modality's tokens: hundreds of encoder tokens
(576 patch tokens of a CLIP ViT-L/14 at 336 px) become ``num_queries`` (32 or 64), what a
language model's context can afford. BLIP-2's Q-Former is the other compressor
(:mod:`mmtrain.fusions.qformer`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features
from mmtrain.fusions.concat import ConcatFusion


def joined_tokens(embed: ConcatFusion, features: dict[str, Features]) -> tuple[Tensor, Tensor]:
    """Every modality's tokens projected and concatenated ``(B, N, dim)``, and the key padding
    mask of attention (True: ignore). A sample with no real token at all attends to its
    (zeroed) padding, so that attention stays finite; its queries then read nothing useful."""
    joined = embed(features)
    x = joined.tokens
    real = joined.mask if joined.mask is not None else x.new_ones(x.shape[:2], dtype=torch.bool)
    ignore = ~real
    ignore[~real.any(dim=1)] = False  # (B, N): nothing to read: read the padding, not NaN
    return x * real.unsqueeze(-1).to(x.dtype), ignore


def check_sizes(dim: int, num_queries: int, num_layers: int, num_heads: int, ff_mult: int) -> None:
    """The sizes of a token compressor (this resampler, the Q-Former).

    Raises:
        ValueError: for a non-positive size, or ``num_heads`` not dividing ``dim``.
    """
    if min(dim, num_queries, num_layers, num_heads, ff_mult) < 1 or dim % num_heads:
        raise ValueError(
            "need positive sizes and num_heads dividing dim, got "
            f"dim={dim}, num_queries={num_queries}, num_layers={num_layers}, "
            f"num_heads={num_heads}, ff_mult={ff_mult}"
        )


class PerceiverLayer(nn.Module):
    """One resampler layer: the latents attend to ``[media tokens; latents]`` (Flamingo's
    keys include the latents themselves), then a feed-forward block; pre-norm, residual.

    Args:
        dim: width.
        num_heads: attention heads; must divide ``dim``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout in attention and feed-forward.
    """

    def __init__(self, dim: int, num_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, ff_mult * dim, bias=False),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * dim, dim, bias=False),
        )

    def forward(self, latents: Tensor, media: Tensor, ignore: Tensor) -> Tensor:
        """``latents (B, Q, D)`` updated from ``media (B, N, D)`` (``ignore (B, N)``)."""
        queries = self.norm_latents(latents)
        keys = torch.cat([self.norm_media(media), queries], dim=1)  # (B, N + Q, D)
        ignore = torch.cat([ignore, ignore.new_zeros(latents.shape[:2])], dim=1)
        read, _ = self.attn(queries, keys, keys, key_padding_mask=ignore, need_weights=False)
        latents = latents + read
        return latents + self.ff(latents)


class PerceiverFusion(nn.Module):
    """Flamingo's Perceiver resampler: ``num_queries`` learned latents read the tokens of all
    modalities through ``num_layers`` of :class:`PerceiverLayer`; the output is the latents,
    ``(B, num_queries, dim)``, whatever the number of input tokens.

    Each modality's tokens are first projected to ``dim`` with a learned modality embedding
    (:class:`~mmtrain.fusions.concat.ConcatFusion`).

    Missing modalities: an absent modality contributes no tokens and a fully masked one is
    ignored by every latent; the latents always have themselves to attend to, so the output
    is finite, and it has no mask (every latent is a real token).

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: width, ``out_dim``.
        num_queries: the number of latents, the output's token count.
        num_layers: resampler layers (Flamingo: 6).
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
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_sizes(dim, num_queries, num_layers, num_heads, ff_mult)
        self.embed = ConcatFusion(in_dims, dim)
        self.latents = nn.Parameter(0.02 * torch.randn(num_queries, dim))
        self.layers = nn.ModuleList(
            PerceiverLayer(dim, num_heads, ff_mult, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """``(B, num_queries, dim)`` latents, no mask."""
        media, ignore = joined_tokens(self.embed, features)  # (B, N, D), (B, N)
        latents = self.latents.expand(media.shape[0], -1, -1)  # (B, Q, D)
        for layer in self.layers:
            latents = layer(latents, media, ignore)
        return Features(self.norm(latents), None)
