"""GradNorm (Chen et al., ICML 2018): weights balancing gradient norms at the last shared layer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mmtrain.contracts import SharedParameters
from mmtrain.loss_weighting.base import GradientWeighting, mean_over_ranks, task_gradients


class GradNormWeighting(GradientWeighting):
    """Task weights ``w_i`` moved every step toward equal (rate-adjusted) gradient norms.

    With ``G_i = ||grad_W w_i L_i||`` at the last shared layer ``W``, the mean ``G`` and the
    relative inverse training rate ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``, GradNorm
    minimises ``L_grad = sum_i |G_i - G * r_i^alpha|`` over the weights, the target held
    constant. Its gradient is ``sign(G_i - target_i) * ||grad_W L_i||``; one step of size
    ``lr`` is taken after the step's backward pass, and the weights of the batch's tasks are
    renormalised to keep their sum (all start at 1, so they sum to the number of tasks).
    ``alpha`` sets how strongly slower tasks (higher ``r_i``) are pushed: 0 asks for equal
    norms. ``L_i(0)`` is the task's first training loss. The weights are buffers, so the
    model's optimizer does not touch them; norms and loss ratios are averaged over the
    processes of a distributed run, keeping the weights equal on all.

    Args:
        names: the task names (wired by build.py).
        alpha: the asymmetry ``alpha`` (the paper uses 0.12 to 3; 1.5 by default).
        lr: step size of the weight update.
        min_weight: the smallest weight a task can get.
        warmup_steps: steps with all weights 1 (and no updates) first.

    Raises:
        ValueError: for a negative alpha, a non-positive lr or min_weight.
    """

    def __init__(
        self,
        names: list[str],
        alpha: float = 1.5,
        lr: float = 0.025,
        min_weight: float = 1e-3,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(names, warmup_steps)
        if alpha < 0 or lr <= 0 or min_weight <= 0:
            raise ValueError(
                f"need alpha >= 0, lr > 0 and min_weight > 0, got {alpha}, {lr}, {min_weight}"
            )
        self.alpha, self.lr, self.min_weight = float(alpha), float(lr), float(min_weight)
        self.register_buffer("task_weights", torch.ones(len(self.names)))
        self.register_buffer("initial_losses", torch.full((len(self.names),), float("nan")))

    def observe(self, losses: dict[str, Tensor]) -> None:
        for task, loss in losses.items():
            i = self.index[task]
            # L_i(0): the first loss seen (no sync: where() keeps a recorded value)
            self.initial_losses[i] = torch.where(
                torch.isnan(self.initial_losses[i]), loss.float(), self.initial_losses[i]
            )

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        # A copy: the update after backward must not change a tensor saved for backward.
        return {t: self.task_weights[self.index[t]].clone() for t in losses}

    def gradient_step(
        self,
        losses: dict[str, Tensor],
        total: Tensor,
        shared: SharedParameters,
        backward: Callable[[Tensor], None],
        scale: float,
    ) -> None:
        grads = task_gradients(losses, shared.last, scale)
        backward(total)
        idx = torch.tensor([self.index[t] for t in losses], device=self.task_weights.device)
        norms = torch.stack([grads[t].norm() / scale for t in losses]).float()  # ||grad L_i||
        rates = torch.stack([losses[t].detach().float() for t in losses])
        rates = rates / self.initial_losses[idx].clamp_min(1e-12)  # L_i / L_i(0)
        norms, rates = mean_over_ranks(norms), mean_over_ranks(rates)
        self.task_weights[idx] = self.update(self.task_weights[idx], norms, rates)

    def update(self, weights: Tensor, norms: Tensor, rates: Tensor) -> Tensor:
        """One GradNorm step on ``weights`` (K,) given ``||grad_W L_i||`` and ``L_i / L_i(0)``.

        Returns:
            The new weights, at least ``min_weight``, with the same sum as ``weights``.
        """
        g = weights * norms  # G_i, (K,)
        r = rates / rates.mean().clamp_min(1e-12)  # relative inverse training rate
        target = g.mean() * r.pow(self.alpha)  # held constant (no gradient through it)
        step = torch.sign(g - target) * norms  # d L_grad / d w_i
        new = (weights - self.lr * step).clamp_min(self.min_weight)
        return new * (weights.sum() / new.sum())
