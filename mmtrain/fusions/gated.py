"""Gated Multimodal Unit (Arevalo et al., 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class GatedFusion(nn.Module):
    """Gated Multimodal Unit: per-feature gates, computed from all inputs, mix the modalities.

    Each modality is mean-pooled to ``x_m`` and mapped to ``h_m = tanh(W_m x_m)``. The gates see
    the concatenation of every input, ``g = W_z [x_1; ...; x_M]``, reshaped to one logit per
    modality and feature; a softmax over the modalities gives ``z_m`` and the output is
    ``sum_m z_m * h_m``, one token per sample ``(B, 1, dim)``. With two modalities the softmax is
    the sigmoid of the logit difference: the paper's ``z * h_1 + (1 - z) * h_2``. As ``z`` sums
    to one and ``|h_m| < 1``, every output feature lies in ``(-1, 1)``.

    Missing modalities: a modality absent from the input dict, or fully masked for a sample,
    enters the gate input as zeros (what a fully masked modality pools to) and its gate logits
    are masked out before the softmax, so masking a modality out gives the output of removing
    it. A sample with no modality at all gets a zero vector.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: output width ``out_dim``.

    Raises:
        ValueError: if ``in_dims`` is empty, or (in ``forward``) no known modality is given.
    """

    def __init__(self, in_dims: dict[str, int], dim: int = 128) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("GatedFusion needs at least one modality, got in_dims={}")
        self.in_dims = dict(in_dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.gate = nn.Linear(sum(in_dims.values()), len(in_dims) * dim)
        self.out_dim = dim

    def gates(self, features: dict[str, Features]) -> tuple[Tensor, Tensor]:
        """The gates ``z`` and the states ``h``, each ``(B, M, dim)`` in the order of ``in_dims``.

        ``z`` is zero for the modalities missing in a sample and sums to one over the others.
        """
        known = [features[m] for m in self.proj if m in features]
        if not known:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        ref = known[0].tokens
        inputs, states, present = [], [], []
        for m, proj in self.proj.items():
            if m in features:
                x = features[m].pooled()  # (B, d_m); zeros where fully masked
                is_real = features[m].present()  # (B,)
            else:
                x = ref.new_zeros(ref.shape[0], self.in_dims[m])
                is_real = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
            inputs.append(x)
            states.append(torch.tanh(proj(x)))  # (B, dim)
            present.append(is_real)
        h = torch.stack(states, dim=1)  # (B, M, dim)
        is_real = torch.stack(present, dim=1).unsqueeze(-1)  # (B, M, 1)
        logits = self.gate(torch.cat(inputs, dim=-1)).view_as(h)  # (B, M, dim)
        logits = logits.masked_fill(~is_real, float("-inf"))
        # A sample with no modality would softmax all -inf (NaN): zero logits, then zero gates.
        logits = logits.masked_fill(~is_real.any(dim=1, keepdim=True), 0.0)
        z = torch.softmax(logits, dim=1) * is_real  # (B, M, dim)
        return z, h

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; returns one token per sample."""
        z, h = self.gates(features)
        return Features((z * h).sum(dim=1, keepdim=True), None)  # (B, 1, dim)
