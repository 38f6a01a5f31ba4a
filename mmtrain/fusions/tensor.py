"""Tensor Fusion Network (Zadeh et al., 2017): the outer product of [x_m; 1] over modalities."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class TensorFusion(nn.Module):
    """Outer product of the ``[h_m; 1]`` vectors of all modalities, flattened, then an MLP.

    Each modality is mean-pooled and projected to ``h_m`` of width ``dim_per_modality`` (``k``);
    appending a constant 1 and taking the outer product over the modalities gives every
    unimodal, bimodal and trimodal product term of the paper. The ``(k + 1) ** M`` products are
    flattened (modality order of ``in_dims``) and mapped by
    ``Linear -> ReLU -> Dropout -> Linear`` to ``dim``, one token per sample ``(B, 1, dim)``.
    Keep ``k`` small: the product grows as ``(k + 1) ** M`` (729 for k=8 and 3 modalities).

    Missing modalities: a modality absent from the input dict, or fully masked for a sample, is
    the vector ``[0, ..., 0, 1]``: every product term involving it vanishes and the terms of the
    other modalities stay, so masking a modality out gives the output of removing it.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: output width ``out_dim``.
        dim_per_modality: width ``k`` each modality is projected to before the product.
        hidden_dim: hidden width of the MLP after the product.
        dropout: dropout in that MLP.

    Raises:
        ValueError: if ``in_dims`` is empty, or (in ``forward``) no known modality is given.
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        dim: int = 128,
        dim_per_modality: int = 8,
        hidden_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("TensorFusion needs at least one modality, got in_dims={}")
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim_per_modality) for m, d in in_dims.items()})
        self.mlp = nn.Sequential(
            nn.Linear((dim_per_modality + 1) ** len(in_dims), hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
        )
        self.dim_per_modality = dim_per_modality
        self.out_dim = dim

    def outer(self, features: dict[str, Features]) -> Tensor:
        """The flattened outer product ``(B, (k + 1) ** M)`` of the ``[h_m; 1]`` vectors."""
        known = [features[m].tokens for m in self.proj if m in features]
        if not known:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        ref = known[0]
        product = ref.new_ones(ref.shape[0], 1)  # (B, 1)
        for m, proj in self.proj.items():
            if m in features:
                f = features[m]
                h = proj(f.pooled()) * f.present().unsqueeze(-1).to(ref.dtype)  # (B, k)
            else:
                h = ref.new_zeros(ref.shape[0], self.dim_per_modality)
            z = torch.cat([h, h.new_ones(h.shape[0], 1)], dim=-1)  # (B, k + 1)
            product = (product.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)  # (B, P * (k + 1))
        return product

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; returns one token per sample."""
        return Features(self.mlp(self.outer(features)).unsqueeze(1), None)  # (B, 1, dim)
