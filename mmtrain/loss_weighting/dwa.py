"""Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from mmtrain.loss_weighting.base import LossWeighting, mean_over_ranks


class DWAWeighting(LossWeighting):
    """Weights from how fast each task's loss went down over the last two epochs.

    ``w_i(t) = K exp(r_i / T) / sum_j exp(r_j / T)`` with ``r_i = L_i(t-1) / L_i(t-2)``, the
    ratio of the task's mean training loss in the two previous epochs, over the ``K`` tasks of
    the batch: a task whose loss fell more slowly gets more weight. ``T`` smooths the weights
    (T -> infinity: all 1). Until a task has two epochs of history every weight is 1 (the
    paper's first two epochs). The epoch means are kept in buffers (saved in checkpoints) and
    averaged over the processes of a distributed run.

    Args:
        names: the task names (wired by build.py).
        temperature: ``T`` (the paper uses 2).
        warmup_steps: steps with all weights 1 first; losses are still recorded.

    Raises:
        ValueError: for a non-positive temperature.
    """

    def __init__(self, names: list[str], temperature: float = 2.0, warmup_steps: int = 0) -> None:
        super().__init__(names, warmup_steps)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        n = len(self.names)
        self.register_buffer("loss_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(n, dtype=torch.float64))
        # history[0] = mean loss of epoch t-2, history[1] = of epoch t-1 (NaN: not seen yet)
        self.register_buffer("history", torch.full((2, n), float("nan"), dtype=torch.float64))

    def observe(self, losses: dict[str, Tensor]) -> None:
        for task, loss in losses.items():
            self.loss_sum[self.index[task]] += loss.double()  # on the device: no sync a step
            self.loss_count[self.index[task]] += 1

    def epoch_end(self) -> None:
        """Push this epoch's mean losses into the history (tasks not seen keep theirs)."""
        sums = mean_over_ranks(self.loss_sum.clone())
        counts = mean_over_ranks(self.loss_count.clone())
        seen = counts > 0
        mean = sums / counts.clamp_min(1)
        self.history[0, seen] = self.history[1, seen]
        self.history[1, seen] = mean[seen]
        self.loss_sum.zero_()
        self.loss_count.zero_()

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        tasks = list(losses)
        idx = torch.tensor([self.index[t] for t in tasks])
        device = next(iter(losses.values())).device
        ratio = self.history[1, idx] / self.history[0, idx]  # (K,)
        if torch.isnan(ratio).any():  # a task without two epochs of history
            return {t: torch.ones((), device=device) for t in tasks}
        w = len(tasks) * torch.softmax(ratio / self.temperature, dim=0)
        return {t: w[i].float().to(device) for i, t in enumerate(tasks)}
