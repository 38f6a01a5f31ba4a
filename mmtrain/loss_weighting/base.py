"""What every loss weighting shares: the warm-up, the step count and the gradient hook.

A weighting maps ``{task: loss}`` (the tasks of this batch) to ``(total, {task: weight})``
(ARCHITECTURE.md). Subclasses choose the weights (:meth:`LossWeighting.weights`); those that
need per-task gradients of the shared parameters (GradNorm, PCGrad) subclass
:class:`GradientWeighting`, whose :meth:`~GradientWeighting.backward` the module calls in place
of backpropagating the total: that is the explicit hook, and the simple contract stays simple.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmtrain.contracts import SharedParameters


def mean_over_ranks(t: Tensor) -> Tensor:
    """The mean of ``t`` over the processes of a distributed run (``t`` itself otherwise).

    Weightings whose state is not a parameter (GradNorm's weights, DWA's loss history) average
    what they measured, so that every rank keeps the same weights.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


class LossWeighting(nn.Module, ABC):
    """Total loss = sum over the tasks of the batch of ``weight[task] * loss[task]``.

    Training steps are counted (a buffer, so a resumed run goes on from the same count). For
    the first ``warmup_steps`` of them every weight is 1 and adaptive state is left alone
    (losses are still observed), so an adaptive scheme starts from a trained-in model.
    Evaluation uses the current weights and changes nothing.

    Args:
        names: the task names (wired by build.py from the heads).
        warmup_steps: training steps with equal weights before the scheme takes over.

    Raises:
        ValueError: for a negative ``warmup_steps`` or no task names.
    """

    def __init__(self, names: Sequence[str], warmup_steps: int = 0) -> None:
        super().__init__()
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not names:
            raise ValueError("a loss weighting needs at least one task name")
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.warmup_steps = int(warmup_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.in_warmup = warmup_steps > 0  # whether the latest training step was in warm-up

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss and the (detached) weight of each task in ``losses``.

        Raises:
            ValueError: if ``losses`` is empty or names a task without a head.
        """
        if not losses:
            raise ValueError("no task losses to weight: the batch carries no known target")
        unknown = sorted(set(losses) - set(self.names))
        if unknown:
            raise ValueError(f"losses of unknown tasks {unknown}; the tasks are {self.names}")
        if self.training:
            self.in_warmup = int(self.step) < self.warmup_steps
            self.observe({t: loss.detach() for t, loss in losses.items()})
        if self.training and self.in_warmup:
            weights = {t: torch.ones((), device=loss.device) for t, loss in losses.items()}
            total = sum(loss for loss in losses.values())
        else:
            total, weights = self.combine(losses)
        if self.training:
            self.step += 1
        return total, {t: w.detach() for t, w in weights.items()}

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Total and weights outside warm-up; the weighted sum unless a scheme adds a term."""
        weights = self.weights(losses)
        total = sum(weights[t] * loss for t, loss in losses.items())
        return total, weights

    @abstractmethod
    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{task: weight}`` for the tasks of ``losses`` (a 0-d tensor each)."""

    def observe(self, losses: dict[str, Tensor]) -> None:
        """Sees the detached losses of every training step, warm-up included."""

    def epoch_end(self) -> None:
        """Called by the module at the end of every training epoch."""


class GradientWeighting(LossWeighting):
    """A weighting that needs the per-task gradients of the shared parameters.

    The module calls :meth:`backward` instead of backpropagating the total. In warm-up, or with
    fewer than two tasks in the batch, it backpropagates the total as is; otherwise
    :meth:`gradient_step` does (one backward pass through the whole model, so distributed
    gradient averaging and gradient accumulation see a single ordinary backward).
    """

    def backward(
        self,
        losses: dict[str, Tensor],
        total: Tensor,
        shared: SharedParameters,
        backward: Callable[[Tensor], None],
        scale: float = 1.0,
    ) -> None:
        """Backpropagate one training step.

        Args:
            losses: the unweighted task losses of the step (still attached to the graph).
            total: the tensor the trainer would backpropagate: the total loss, already
                multiplied by ``scale``.
            shared: the parameters shared by all tasks (encoders and fusion), and those of the
                last shared layer.
            backward: runs the trainer's backward on a tensor (precision plugin, strategy).
            scale: the loss scale of fp16 mixed precision (1.0 otherwise).
        """
        if self.in_warmup or len(losses) < 2 or not shared.all:
            backward(total)
        else:
            self.gradient_step(losses, total, shared, backward, scale)

    @abstractmethod
    def gradient_step(
        self,
        losses: dict[str, Tensor],
        total: Tensor,
        shared: SharedParameters,
        backward: Callable[[Tensor], None],
        scale: float,
    ) -> None:
        """The scheme's backward pass (arguments as :meth:`backward`)."""


def task_gradients(
    losses: dict[str, Tensor], params: Sequence[Tensor], scale: float = 1.0
) -> dict[str, Tensor]:
    """``{task: flat gradient of scale * loss w.r.t. params}``, without touching ``.grad``.

    ``torch.autograd.grad`` leaves ``.grad`` and distributed gradient hooks alone; the graph
    is kept for the backward pass that follows. A parameter a task does not reach gets zeros.
    """
    out = {}
    for task, loss in losses.items():
        grads = torch.autograd.grad(loss * scale, params, retain_graph=True, allow_unused=True)
        out[task] = torch.cat(
            [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]
        )
    return out
