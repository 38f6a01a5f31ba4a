"""Early, token-level fusion: project every modality to one width and concatenate the tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class ConcatFusion(nn.Module):
    """Concatenate the token sequences of all modalities after a per-modality projection.

    Each modality's tokens go through ``Linear(in_dim, dim)`` plus a learned modality embedding,
    then all sequences are concatenated along the token axis, masks included.

    Missing modalities: a modality absent from the input dict contributes no tokens; a
    modality whose mask is all False for a sample contributes only masked tokens for it, so
    downstream masked pooling and attention ignore it. If every modality is absent, a
    ``ValueError`` is raised.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: output width ``out_dim``.
    """

    def __init__(self, in_dims: dict[str, int], dim: int = 128) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("ConcatFusion needs at least one modality, got in_dims={}")
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in in_dims})
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; the output has ``sum(N_m)`` tokens over the modalities present."""
        tokens: list[Tensor] = []
        masks: list[Tensor] = []
        for m, proj in self.proj.items():
            if m not in features:
                continue
            f = features[m]
            tokens.append(proj(f.tokens) + self.modality_embed[m])  # (B, N_m, dim)
            masks.append(
                f.mask
                if f.mask is not None
                else torch.ones(f.tokens.shape[:2], dtype=torch.bool, device=f.tokens.device)
            )
        if not tokens:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        # No mask when no input has one: decided without reading the mask's values, which
        # would make the host wait for the device every step (and break torch.compile graphs).
        masked = any(features[m].mask is not None for m in self.proj if m in features)
        mask = torch.cat(masks, dim=1) if masked else None  # (B, sum N_m)
        return Features(torch.cat(tokens, dim=1), mask)
