"""Fixed per-task loss weights from config."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmtrain.loss_weighting.base import LossWeighting


def check_weights(names: Sequence[str], weights: dict[str, float] | None) -> dict[str, float]:
    """``{task: weight}`` for every task (1.0 where not listed).

    Raises:
        ValueError: if ``weights`` names a task that has no head, or a weight is negative.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"weights for unknown tasks {unknown}; the tasks are {sorted(names)}")
    negative = {k: v for k, v in weights.items() if v < 0}
    if negative:
        raise ValueError(f"loss weights must be >= 0, got {negative}")
    return {name: float(weights.get(name, 1.0)) for name in names}


class FixedWeighting(LossWeighting):
    """Total loss = sum over the tasks present of ``weight[task] * loss[task]``.

    Args:
        names: the task names (wired by build.py from the heads).
        weights: ``{task: weight}``; tasks not listed get 1.0.
        warmup_steps: steps with all weights 1 first (see :class:`LossWeighting`).

    Raises:
        ValueError: if ``weights`` names a task that has no head, or a weight is negative.
    """

    def __init__(
        self,
        names: list[str],
        weights: dict[str, float] | None = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(names, warmup_steps)
        self.fixed = check_weights(names, weights)

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: torch.tensor(self.fixed[t], device=loss.device) for t, loss in losses.items()}
