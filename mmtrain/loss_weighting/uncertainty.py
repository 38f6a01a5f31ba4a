"""Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.loss_weighting.base import LossWeighting


class UncertaintyWeighting(LossWeighting):
    """Learned log-variances ``s_i``: total = sum_i ``exp(-s_i) * L_i + s_i``.

    This is Kendall et al.'s objective (their eq. 7, ``L / (2 sigma^2) + log sigma``) times 2,
    with ``s = log sigma^2``, so that every weight ``exp(-s_i)`` starts at 1 like fixed equal
    weights. For a fixed loss ``L_i`` the total is smallest at ``s_i = log L_i``, i.e. weight
    ``1 / L_i``: noisier (larger-loss) tasks are down-weighted, and the ``+ s_i`` term keeps
    the weights from collapsing to 0. The ``s_i`` are parameters of the model, trained by its
    optimizer (without weight decay: they are a vector, which ``model.no_decay`` leaves out;
    with ``model.no_decay=false`` they get the optimizer's). The total can be negative; only
    its gradient matters.

    Args:
        names: the task names (wired by build.py).
        init_log_var: the starting ``s_i`` of every task.
        warmup_steps: steps with all weights 1 first (the ``s_i`` then get no gradient).
    """

    def __init__(self, names: list[str], init_log_var: float = 0.0, warmup_steps: int = 0) -> None:
        super().__init__(names, warmup_steps)
        self.log_vars = nn.Parameter(torch.full((len(self.names),), float(init_log_var)))

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: torch.exp(-self.log_vars[self.index[t]]) for t in losses}

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        weights = self.weights(losses)
        total = sum(weights[t] * loss + self.log_vars[self.index[t]] for t, loss in losses.items())
        return total, weights
