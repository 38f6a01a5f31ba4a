"""Random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting", 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from mmtrain.loss_weighting.base import LossWeighting


class RandomWeighting(LossWeighting):
    """Fresh random weights every training step: ``K * softmax(z)``, ``z ~ N(0, 1)``.

    ``K`` is the number of tasks in the batch, so the weights average 1 like fixed equal
    weights; evaluation uses those expected weights (all 1). The draws come from a generator
    seeded with ``seed`` and the step count, so they are the same on every process of a
    distributed run and after a resume.

    Args:
        names: the task names (wired by build.py).
        seed: seed of the weight draws.
        warmup_steps: steps with all weights 1 first.
    """

    def __init__(self, names: list[str], seed: int = 0, warmup_steps: int = 0) -> None:
        super().__init__(names, warmup_steps)
        self.seed = int(seed)

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        device = next(iter(losses.values())).device
        if not self.training:
            return {t: torch.ones((), device=device) for t in losses}
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        z = torch.randn(len(self.names), generator=generator)  # one draw per known task
        idx = torch.tensor([self.index[t] for t in losses])
        w = len(losses) * torch.softmax(z[idx], dim=0)
        return {t: w[i].to(device) for i, t in enumerate(losses)}
