"""``model.nonfinite``: what a training step with a NaN or infinite loss or gradient does.

Checked before the optimizer step, per task for the losses and per parameter for the
gradients (a head's parameters name its task). ``raise`` stops the run with a message naming
the step, the tasks or parameters and the batch's sample ids; ``skip`` leaves the parameters
and the optimizer state as they were (no gradient reaches the optimizer), counts the step
(``train/nonfinite_steps``) and stops the run once more than ``budget`` steps were skipped.
Under fp16 mixed precision, infinite gradients are the loss scaler's business (it skips those
steps itself and lowers the scale), so only the losses are checked there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

POLICIES = ("raise", "skip")


class NonFiniteGuard:
    """Finds non-finite losses and gradients, and raises or counts them.

    Args:
        policy: ``raise`` or ``skip``.
        budget: with ``skip``, the most steps skipped in a run.

    Raises:
        ValueError: for an unknown policy or a negative budget.
    """

    def __init__(self, policy: str = "raise", budget: int = 10) -> None:
        if policy not in POLICIES:
            raise ValueError(f"nonfinite must be one of {POLICIES}, got {policy!r}")
        if budget < 0:
            raise ValueError(f"nonfinite_budget must be >= 0, got {budget}")
        self.policy, self.budget = policy, budget
        self.skipped = 0  # steps skipped so far (restored on resume)

    @staticmethod
    def bad_losses(losses: Mapping[str, Tensor]) -> dict[str, float]:
        """``{task: value}`` of the non-finite losses (one device sync for all)."""
        if not losses:
            return {}
        values = torch.stack([loss.detach().float() for loss in losses.values()])
        if bool(torch.isfinite(values).all()):
            return {}
        return {t: v for t, v in zip(losses, values.tolist()) if not math.isfinite(v)}

    @staticmethod
    def bad_gradients(named: Iterable[tuple[str, torch.nn.Parameter]]) -> list[str]:
        """The names of the parameters whose gradient is not finite (one device sync when all
        are finite)."""
        params = [(n, p.grad) for n, p in named if p.grad is not None]
        if not params:
            return []
        # one fused pass: a non-finite entry makes the sum of the norms non-finite
        norms = torch._foreach_norm([g for _, g in params])
        if bool(torch.isfinite(torch.stack(norms).sum())):
            return []
        return [n for n, g in params if not bool(torch.isfinite(g).all())]

    def handle(self, problem: str, where: str) -> None:
        """Stop the run (``raise``), or count a skipped step and stop over the budget.

        Args:
            problem: what is not finite (tasks and values, or parameters).
            where: the step, epoch, batch and its sample ids.

        Raises:
            MMTrainError: with ``raise``, or once the skipped steps exceed the budget.
        """
        if self.policy == "raise":
            raise MMTrainError(
                f"{problem} at {where} (model.nonfinite=skip skips such steps, within "
                "model.nonfinite_budget)"
            )
        self.skipped += 1
        if self.skipped > self.budget:
            raise MMTrainError(
                f"model.nonfinite=skip: {self.skipped} steps skipped, over the budget "
                f"model.nonfinite_budget={self.budget}; the latest: {problem} at {where}"
            )
        log.warning("skipped a step (%d of at most %d): %s at %s", self.skipped, self.budget,
                    problem, where)  # fmt: skip


def describe_parameters(names: list[str], shown: int = 4) -> str:
    """``heads.caption.x (task caption), encoders.image.y (shared)...`` for messages."""
    parts = []
    for name in names[:shown]:
        bits = name.split(".")
        owner = f"task {bits[1]}" if bits[0] == "heads" and len(bits) > 1 else "shared"
        parts.append(f"{name} ({owner})")
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(parts) + more
