"""Late fusion: one small tower per modality, combined by a (learned) average."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class LateFusion(nn.Module):
    """Run one MLP tower per modality on its pooled features and average the towers' outputs.

    Each modality is mean-pooled over its real tokens and goes through its own tower
    ``Linear(in_dim, hidden_dim) -> ReLU -> Dropout -> Linear(hidden_dim, dim)``. The outputs are
    combined with weights that sum to one over the modalities present: equal weights
    (``combine="mean"``) or a softmax of one learned logit per modality (``combine="learned"``).
    One token per sample ``(B, 1, dim)``.

    Because the weights sum to one, a linear head ``W v + b`` on the fused vector gives exactly
    the weighted average of the per-modality logits ``W y_m + b``: with a linear head this is
    classic late fusion, averaging the predictions of one model per modality.

    Missing modalities: a modality absent from the input dict, or fully masked for a sample, gets
    weight zero for that sample and the other weights are renormalised over the modalities
    present, so masking a modality out gives the output of removing it. A sample with no
    modality at all gets a zero vector.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: output width ``out_dim``.
        hidden_dim: width of each tower's hidden layer.
        combine: ``"mean"`` (equal weights) or ``"learned"`` (softmax of learned logits).
        dropout: dropout inside the towers.

    Raises:
        ValueError: if ``in_dims`` is empty, ``combine`` is unknown, or (in ``forward``) no known
            modality is given.
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        dim: int = 128,
        hidden_dim: int = 128,
        combine: Literal["mean", "learned"] = "mean",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("LateFusion needs at least one modality, got in_dims={}")
        if combine not in ("mean", "learned"):
            raise ValueError(f"combine must be 'mean' or 'learned', got {combine!r}")
        self.towers = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(d, hidden_dim),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                    nn.Linear(hidden_dim, dim),
                )
                for m, d in in_dims.items()
            }
        )
        self.combine = combine
        self.logits = nn.Parameter(torch.zeros(len(in_dims))) if combine == "learned" else None
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; returns one token per sample."""
        outputs: list[Tensor] = []
        present: list[Tensor] = []
        index: list[int] = []
        for i, (m, tower) in enumerate(self.towers.items()):
            if m in features:
                outputs.append(tower(features[m].pooled()))  # (B, dim)
                present.append(features[m].present())  # (B,)
                index.append(i)
        if not outputs:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        stacked = torch.stack(outputs, dim=1)  # (B, M, dim)
        is_real = torch.stack(present, dim=1)  # (B, M)
        logits = torch.zeros_like(is_real, dtype=stacked.dtype)
        if self.logits is not None:
            logits = logits + self.logits[index]
        logits = logits.masked_fill(~is_real, float("-inf"))
        # A sample with no modality would softmax all -inf (NaN): zero logits, then zero weights.
        logits = logits.masked_fill(~is_real.any(dim=1, keepdim=True), 0.0)
        weights = torch.softmax(logits, dim=1) * is_real  # (B, M)
        fused = (weights.unsqueeze(-1) * stacked).sum(dim=1, keepdim=True)  # (B, 1, dim)
        return Features(fused, None)
