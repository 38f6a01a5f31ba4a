"""VQA accuracy as the official VQA evaluation computes it, as a torchmetrics metric: the mean
of :func:`mmtrain.utils.vqa_answers.vqa_accuracy` over questions (DDP-safe: two summed states).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from mmtrain.utils.vqa_answers import vqa_accuracy


class VQAAccuracy(Metric):
    """The mean official VQA accuracy (:func:`vqa_accuracy`) over the questions seen.

    The states are a running sum of accuracies and a question count, both summed across
    processes in DDP; ``compute()`` returns their ratio as a scalar tensor (``nan`` before any
    ``update``).

    Args:
        **kwargs: passed to ``torchmetrics.Metric`` (``process_group``...).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    sum: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # float32, not float64, so that the metric can live on MPS; each update adds one
        # batch total computed in Python floats, which keeps the rounding error small.
        self.add_state("sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
        """Add a batch: one predicted answer and the human answers per question.

        Args:
            predictions: the predicted answers, raw.
            answers: for each question, its human answers, raw.

        Raises:
            ValueError: when the lengths differ, or a prediction or answer list is malformed.
        """
        if isinstance(predictions, str) or len(predictions) != len(answers):
            raise ValueError(
                f"predictions must be a list with one entry per answer list; got {predictions!r} "
                f"for {len(answers)} answer lists"
            )
        total = sum(vqa_accuracy(p, refs) for p, refs in zip(predictions, answers))
        self.sum += total
        self.count += len(predictions)

    def compute(self) -> Tensor:
        """The mean accuracy over all questions (on every process), a scalar tensor."""
        return self.sum / self.count
