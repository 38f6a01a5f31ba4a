"""FiLM (Perez et al., 2018): the other modalities modulate one target modality's tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class FiLMFusion(nn.Module):
    """Feature-wise linear modulation of a target modality's tokens by the other modalities.

    The ``target`` modality's tokens go through ``Linear(in_dim, dim)``. Every other
    (conditioning) modality is mean-pooled and projected to ``dim``; their sum ``c`` gives
    ``(delta_gamma, beta) = Linear(ReLU(c))`` and each target token becomes
    ``(1 + delta_gamma) * x + beta``. The output is the modulated target tokens with the target's
    mask, ``(B, N_target, dim)``.

    Missing modalities:

    * a conditioning modality absent from the input dict, or fully masked for a sample, adds
      nothing to ``c``; with no conditioning modality at all, ``gamma = 1, beta = 0``: the
      target's projected tokens pass unchanged.
    * the target absent from the input dict: the output is ``c``, the pooled conditioning
      features projected to ``dim``, as one token ``(B, 1, dim)``. The target fully masked for a
      sample: that sample's first token is replaced by ``c`` and unmasked, so its real tokens
      are the same as when the target is removed.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py); must hold
            ``target`` and at least one other modality.
        dim: output width ``out_dim``.
        target: the modality whose tokens are modulated.

    Raises:
        ValueError: if ``target`` is not in ``in_dims`` or there is no other modality, or (in
            ``forward``) no known modality is given.
    """

    def __init__(self, in_dims: dict[str, int], dim: int = 128, target: str = "image") -> None:
        super().__init__()
        if target not in in_dims or len(in_dims) < 2:
            raise ValueError(
                f"FiLMFusion needs target={target!r} and a conditioning modality in in_dims, got "
                f"{in_dims} (set fusion.target)"
            )
        self.target = target
        self.target_proj = nn.Linear(in_dims[target], dim)
        self.cond_proj = nn.ModuleDict(
            {m: nn.Linear(d, dim) for m, d in in_dims.items() if m != target}
        )
        self.film = nn.Sequential(nn.ReLU(), nn.Linear(dim, 2 * dim))
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; returns the target's tokens, or one token without the target."""
        cond: Tensor | None = None  # (B, dim)
        any_cond: Tensor | None = None  # (B,) bool
        for m, proj in self.cond_proj.items():
            if m in features:
                f = features[m]
                present = f.present()
                vector = proj(f.pooled()) * present.unsqueeze(-1).to(f.tokens.dtype)
                cond = vector if cond is None else cond + vector
                any_cond = present if any_cond is None else any_cond | present
        if self.target not in features:
            if cond is None:
                raise ValueError(f"no known modality in the input: got {sorted(features)}")
            return Features(cond.unsqueeze(1), None)  # (B, 1, dim)
        f = features[self.target]
        x = self.target_proj(f.tokens)  # (B, N, dim)
        if cond is None or any_cond is None:
            return Features(x, f.mask)
        delta_gamma, beta = self.film(cond).chunk(2, dim=-1)  # (B, dim) each
        on = any_cond.unsqueeze(-1).to(x.dtype)  # (B, 1): identity without conditioning
        x = (1 + delta_gamma * on).unsqueeze(1) * x + (beta * on).unsqueeze(1)
        if f.mask is None:
            return Features(x, None)
        # A sample without target tokens falls back to its conditioning features in token 0.
        fallback = torch.zeros_like(f.mask)
        fallback[:, 0] = ~f.mask.any(dim=1) & any_cond  # (B, N)
        x = torch.where(fallback.unsqueeze(-1), cond.unsqueeze(1), x)
        return Features(x, f.mask | fallback)
