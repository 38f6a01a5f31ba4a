"""Attention-weighted sum of pooled modality features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class AttentionFusion(nn.Module):
    """Pool each modality, project to one width, and sum them with learned attention weights.

    Each modality is mean-pooled over its real tokens and projected to ``dim``; a small scorer
    gives each modality a logit per sample, a softmax over modalities turns the logits into
    weights, and the output is the weighted sum, one token per sample ``(B, 1, dim)``.

    Missing modalities: a modality absent from the input dict, or fully masked for a sample,
    gets weight zero for that sample (its logit is set to -inf before the softmax); a sample
    with no modality at all gets a zero vector.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: output width ``out_dim``.
        hidden_dim: width of the attention scorer.
    """

    def __init__(self, in_dims: dict[str, int], dim: int = 128, hidden_dim: int = 64) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("AttentionFusion needs at least one modality, got in_dims={}")
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.scorer = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1))
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; returns one token per sample."""
        vectors: list[Tensor] = []
        present: list[Tensor] = []
        for m, proj in self.proj.items():
            if m in features:
                vectors.append(proj(features[m].pooled()))  # (B, dim)
                present.append(features[m].present())  # (B,)
        if not vectors:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        stacked = torch.stack(vectors, dim=1)  # (B, M, dim)
        is_real = torch.stack(present, dim=1)  # (B, M)
        logits = self.scorer(stacked).squeeze(-1).masked_fill(~is_real, float("-inf"))
        # nan_to_num: a sample with every modality missing has all -inf logits -> zero weights.
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # (B, M)
        fused = (weights.unsqueeze(-1) * stacked).sum(dim=1, keepdim=True)  # (B, 1, dim)
        return Features(fused, None)
