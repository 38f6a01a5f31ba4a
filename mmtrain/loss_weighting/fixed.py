"""Fixed per-task loss weights from config."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FixedWeighting(nn.Module):
    """Total loss = sum over the tasks present of ``weight[task] * loss[task]``.

    Args:
        names: the task names (wired by build.py from the heads).
        weights: ``{task: weight}``; tasks not listed get 1.0.

    Raises:
        ValueError: if ``weights`` names a task that has no head, or a weight is negative.
    """

    def __init__(self, names: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"weights for unknown tasks {unknown}; the tasks are {sorted(names)}")
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")
        self.weights = {name: float(weights.get(name, 1.0)) for name in names}

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of the losses present in this batch."""
        if not losses:
            raise ValueError("no task losses to weight: the batch carries no known target")
        used = {task: torch.tensor(self.weights[task]) for task in losses}
        total = sum(used[task] * loss for task, loss in losses.items())
        return total, used
