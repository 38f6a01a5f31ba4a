"""Low-rank Multimodal Fusion (Liu et al., 2018): tensor fusion with rank-r weight factors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class LowRankFusion(nn.Module):
    """Tensor fusion whose weight tensor is a sum of ``rank`` outer products of modality factors.

    Each modality is mean-pooled to ``x_m`` and its ``rank`` factors ``W_m (rank, d_m + 1, dim)``
    are applied to ``[x_m; 1]``; the results are multiplied elementwise over the modalities and
    summed over the rank with learned weights, plus a bias:
    ``out = sum_r w_r * prod_m ([x_m; 1] @ W_m[r]) + b``, one token per sample ``(B, 1, dim)``.
    This equals a :class:`~mmtrain.fusions.tensor.TensorFusion` linear layer whose weight tensor
    has rank ``rank``, at a cost linear in the number of modalities.

    Missing modalities: a modality absent from the input dict, or fully masked for a sample, is
    ``[0, ..., 0, 1]`` as in tensor fusion (its factor is then the constant row ``W_m[:, -1]``),
    so masking a modality out gives the output of removing it.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: output width ``out_dim``.
        rank: number of rank-one terms.

    Raises:
        ValueError: for an empty ``in_dims`` or ``rank < 1``, or (in ``forward``) no known
            modality in the input.
    """

    def __init__(self, in_dims: dict[str, int], dim: int = 128, rank: int = 4) -> None:
        super().__init__()
        if not in_dims or rank < 1:
            raise ValueError(f"LowRankFusion needs modalities and rank >= 1, got {in_dims}, {rank}")
        # std 1/sqrt(d + 1): each factor output has about the scale of its input.
        self.factors = nn.ParameterDict(
            {
                m: nn.Parameter(torch.randn(rank, d + 1, dim) / (d + 1) ** 0.5)
                for m, d in in_dims.items()
            }
        )
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; returns one token per sample."""
        known = [features[m].tokens for m in self.factors if m in features]
        if not known:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        ref = known[0]
        product: Tensor | None = None
        for m, factor in self.factors.items():
            if m in features:
                f = features[m]
                x = f.pooled() * f.present().unsqueeze(-1).to(ref.dtype)  # (B, d_m)
            else:
                x = ref.new_zeros(ref.shape[0], factor.shape[1] - 1)
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=-1)  # (B, d_m + 1)
            term = torch.einsum("bi,rio->rbo", x, factor)  # (rank, B, dim)
            product = term if product is None else product * term
        fused = torch.einsum("r,rbo->bo", self.rank_weights, product) + self.bias  # (B, dim)
        return Features(fused.unsqueeze(1), None)  # (B, 1, dim)
