"""Sum of the projected, pooled modality features."""

from __future__ import annotations

from torch import Tensor, nn

from mmtrain.contracts import Features


class SumFusion(nn.Module):
    """Pool each modality, project it to ``dim`` and sum over the modalities present.

    Each modality is mean-pooled over its real tokens and goes through ``Linear(in_dim, dim)``;
    the projections are summed, one token per sample ``(B, 1, dim)``. The simplest fusion: a
    baseline for the others.

    Missing modalities: a modality absent from the input dict, or fully masked for a sample,
    contributes exactly zero to that sample's sum (its projection, bias included, is multiplied
    by its presence), so masking a modality out gives the output of removing it. A sample with
    no modality at all gets a zero vector.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: output width ``out_dim``.

    Raises:
        ValueError: if ``in_dims`` is empty, or (in ``forward``) no known modality is given.
    """

    def __init__(self, in_dims: dict[str, int], dim: int = 128) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("SumFusion needs at least one modality, got in_dims={}")
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; returns one token per sample."""
        fused: Tensor | None = None
        for m, proj in self.proj.items():
            if m not in features:
                continue
            f = features[m]
            present = f.present().unsqueeze(-1).to(f.tokens.dtype)  # (B, 1)
            vector = proj(f.pooled()) * present  # (B, dim)
            fused = vector if fused is None else fused + vector
        if fused is None:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        return Features(fused.unsqueeze(1), None)  # (B, 1, dim)
