"""Multimodal Factorized Bilinear pooling, MFB (Yu et al., 2017), over pairs of modalities."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtrain.contracts import Features


class BilinearFusion(nn.Module):
    """MFB: factorised bilinear pooling of pooled modality vectors, summed over pairs.

    Each modality is mean-pooled and projected to ``factor * dim`` (``U_m x_m``). For a pair,
    the two projections are multiplied elementwise, sum-pooled over windows of ``factor`` to
    ``dim``, then power-normalised (signed square root) and L2-normalised: a rank-``factor``
    bilinear form per output feature. With three modalities the elementwise products of all
    pairs are summed before pooling (each modality's projection is shared by its pairs). One
    token per sample ``(B, 1, dim)``, of unit L2 norm.

    Missing modalities: pairs with a modality absent from the input dict, or fully masked for a
    sample, are skipped for that sample, so masking a modality out gives the output of removing
    it. A sample with a single modality present gets its own projection ``U_m x_m``, pooled and
    normalised the same way; a sample with none gets a zero vector.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: output width ``out_dim`` (the paper's ``o``).
        factor: the factor ``k`` of the factorised bilinear form.
        dropout: dropout on the elementwise products.

    Raises:
        ValueError: for an empty ``in_dims`` or ``factor < 1``, or (in ``forward``) no known
            modality in the input.
    """

    def __init__(
        self, in_dims: dict[str, int], dim: int = 128, factor: int = 5, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if not in_dims or factor < 1:
            raise ValueError(
                f"BilinearFusion needs modalities and factor >= 1, got {in_dims}, {factor}"
            )
        self.proj = nn.ModuleDict({m: nn.Linear(d, factor * dim) for m, d in in_dims.items()})
        self.drop = nn.Dropout(dropout)
        self.factor = factor
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; returns one token per sample."""
        vectors: list[Tensor] = []
        present: list[Tensor] = []
        for m, proj in self.proj.items():
            if m in features:
                f = features[m]
                is_real = f.present().unsqueeze(-1).to(f.tokens.dtype)  # (B, 1)
                vectors.append(proj(f.pooled()) * is_real)  # (B, k * dim), 0 if missing
                present.append(is_real)
        if not vectors:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        # Missing vectors are zero, so their pairs vanish; the sum of singles is the one present.
        pairs = itertools.combinations(range(len(vectors)), 2)
        z = sum((vectors[i] * vectors[j] for i, j in pairs), torch.zeros_like(vectors[0]))
        single = torch.stack(present).sum(dim=0) < 2  # (B, 1)
        z = torch.where(single, sum(vectors), self.drop(z))  # (B, k * dim)
        z = z.view(z.shape[0], self.out_dim, self.factor).sum(dim=-1)  # (B, dim)
        # Signed sqrt; the eps keeps the gradient at 0 finite (1e-4 = sqrt(eps): 0 stays 0).
        z = torch.sign(z) * ((z.abs() + 1e-8).sqrt() - 1e-4)
        return Features(F.normalize(z, dim=-1).unsqueeze(1), None)  # (B, 1, dim)
