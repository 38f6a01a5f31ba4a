"""The encoders' tokens as they are: what an LLM head's projector reads (LLaVA)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class TokensFusion(nn.Module):
    """Concatenate the modalities' token sequences unchanged, no weights of its own (LLaVA:
    the vision tower's patch tokens go straight to the LM head's projector).

    Missing modalities: an absent modality contributes no tokens; a fully masked one only
    masked tokens, which the LM head leaves out. If every modality is absent, a
    ``ValueError`` is raised.

    Modalities of different widths: the narrower ones are zero-padded to the widest (a fixed
    embedding of their tokens, no weights); ``fusion=concat`` learns a projection instead.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).

    Raises:
        ValueError: when there is no modality.
    """

    def __init__(self, in_dims: dict[str, int]) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("TokensFusion needs at least one modality, got in_dims={}")
        self.modalities = list(in_dims)
        self.out_dim = max(in_dims.values())

    def forward(self, features: dict[str, Features]) -> Features:
        """``(B, sum N_m, D)``; the mask is None when no input has one."""
        present = [features[m] for m in self.modalities if m in features]
        if not present:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        tokens: list[Tensor] = [
            nn.functional.pad(f.tokens, (0, self.out_dim - f.tokens.shape[-1])) for f in present
        ]
        if all(f.mask is None for f in present):
            return Features(torch.cat(tokens, dim=1))
        masks = [
            f.mask
            if f.mask is not None
            else torch.ones(f.tokens.shape[:2], dtype=torch.bool, device=f.tokens.device)
            for f in present
        ]
        return Features(torch.cat(tokens, dim=1), torch.cat(masks, dim=1))
