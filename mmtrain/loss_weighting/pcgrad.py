"""PCGrad gradient surgery (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mmtrain.contracts import SharedParameters
from mmtrain.loss_weighting.base import GradientWeighting, task_gradients
from mmtrain.loss_weighting.fixed import check_weights


def project_conflicting(
    grads: list[Tensor], generator: torch.Generator | None = None
) -> list[Tensor]:
    """PCGrad's projection of each task gradient (flat, ``(P,)``) off the ones it conflicts with.

    For each task ``i``, in a random order of the other tasks ``j``: if ``g_i . g_j < 0``,
    ``g_i -= (g_i . g_j) / ||g_j||^2 g_j`` (``g_j`` the original gradient, ``g_i`` the one
    projected so far). Gradients that do not conflict pass unchanged.
    """
    out = []
    for i, g in enumerate(grads):
        projected = g.clone()
        for j in torch.randperm(len(grads), generator=generator).tolist():
            if j == i:
                continue
            dot = torch.dot(projected, grads[j])
            if dot < 0:
                projected -= dot / grads[j].square().sum().clamp_min(1e-20) * grads[j]
        out.append(projected)
    return out


class PCGradWeighting(GradientWeighting):
    """Fixed weights, and per-task gradients of the shared parameters made non-conflicting.

    Every task's gradient of the shared parameters (encoders and fusion) is computed on its
    own; each is projected off the others it conflicts with (:func:`project_conflicting`) and
    their sum replaces the shared parameters' gradient in the step's single backward pass
    (task-specific parameters, the heads, get their usual gradients). Costs one extra backward
    per task, and memory for one flat copy of the shared gradient per task. The random order of
    the projections is seeded with ``seed`` and the step count.

    Args:
        names: the task names (wired by build.py).
        weights: ``{task: weight}`` applied to the losses first; unlisted tasks get 1.0.
        seed: seed of the projection order.
        warmup_steps: steps with all weights 1 and plain backward first.
    """

    def __init__(
        self,
        names: list[str],
        weights: dict[str, float] | None = None,
        seed: int = 0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(names, warmup_steps)
        self.fixed = check_weights(names, weights)
        self.seed = int(seed)

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: torch.tensor(self.fixed[t], device=loss.device) for t, loss in losses.items()}

    def gradient_step(
        self,
        losses: dict[str, Tensor],
        total: Tensor,
        shared: SharedParameters,
        backward: Callable[[Tensor], None],
        scale: float,
    ) -> None:
        weighted = {t: self.fixed[t] * loss for t, loss in losses.items()}
        grads = task_gradients(weighted, shared.all, scale)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        surgery = torch.stack(project_conflicting(list(grads.values()), generator)).sum(0)
        # The backward of the total then brings each shared parameter its slice of `surgery`
        # in place of the plain sum of task gradients (a hook on the parameter replaces the
        # gradient before it is accumulated, so DDP averages the surgered one).
        handles, offset = [], 0
        for p in shared.all:
            piece = surgery[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            handles.append(p.register_hook(lambda _grad, piece=piece: piece))
        try:
            backward(total)
        finally:
            for handle in handles:
                handle.remove()
