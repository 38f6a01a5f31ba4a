"""Classification head: pooled fused features -> class logits."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from mmtrain.contracts import Features


class ClassificationHead(nn.Module):
    """An MLP on the masked mean of the fused tokens; cross-entropy loss.

    Metrics: ``accuracy`` (micro) and ``f1`` (macro over classes).

    Args:
        in_dim: width of the fused features (wired by build.py).
        num_classes: number of classes (wired by build.py from the data).
        class_names: names for decoding, index = class id (wired by build.py from the data).
        hidden_dim: hidden width of the MLP; 0 gives a single linear layer.
        dropout: dropout before each linear layer.
        label_smoothing: cross-entropy label smoothing.

    Raises:
        ValueError: for fewer than 2 classes or class names that do not match ``num_classes``.
    """

    unfused = False  # reads the fused features (contracts.Head)
    modalities: tuple[str, ...] = ()  # runs on every batch that has its target

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        class_names: list[str] | None = None,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        if hidden_dim > 0:
            self.mlp = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(in_dim, hidden_dim),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, num_classes),
            )
        else:
            self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.label_smoothing = label_smoothing

    def forward(
        self, features: Features, target: Tensor | None = None, target_mask: Tensor | None = None
    ) -> Tensor:
        """Return logits ``(B, num_classes)``; the target is not needed."""
        return self.mlp(features.pooled())

    def loss(self, outputs: Tensor, target: Tensor, target_mask: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of logits ``(B, C)`` against class ids ``(B,)``."""
        return F.cross_entropy(outputs, target, label_smoothing=self.label_smoothing)

    def make_metrics(self) -> MetricCollection:
        """A fresh metric collection for one split."""
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(self.num_classes, average="micro"),
                "f1": MulticlassF1Score(self.num_classes, average="macro"),
            }
        )

    def update_metrics(
        self,
        metrics: MetricCollection,
        outputs: Tensor,
        target: Tensor,
        target_mask: Tensor | None = None,
        predictions: list[Any] | None = None,
        references: list[Any] | None = None,
    ) -> None:
        """Accumulate one batch of logits and class ids into ``metrics``."""
        metrics.update(outputs, target)

    def predict(self, features: Features, outputs: Tensor | None = None) -> list[str | int]:
        """Decoded predictions; reuses ``outputs`` (the logits) when given."""
        return self.decode(self(features) if outputs is None else outputs)

    def decode(self, outputs: Tensor) -> list[str | int]:
        """Predicted class name per sample (the class id when names are unknown)."""
        ids = outputs.argmax(dim=-1).tolist()
        return [self.class_names[i] for i in ids] if self.class_names else ids
