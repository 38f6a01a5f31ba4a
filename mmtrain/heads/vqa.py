"""VQA head: classification over the K most frequent answers, trained on soft scores."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection

from mmtrain.contracts import Answers, Features
from mmtrain.metrics.vqa import VQAAccuracy


class VQAHead(nn.Module):
    """An MLP on the pooled fused features scoring every answer class (bottom-up/Pythia style).

    The target of a question is the ids of its human answers (``answer (B, A)`` with a mask,
    see :class:`AnswerVocabulary`); its soft score for class ``c`` is ``min(#answers == c / 3,
    1)``. Loss: binary cross-entropy with logits against those scores, summed over the classes
    and averaged over the questions (as ``bce * num_classes`` in bottom-up attention). The
    ``<pad>`` and ``<unk>`` classes get no score and are never predicted. Metric:
    ``vqa_accuracy``, the official VQA accuracy of the predicted answers against all the human
    answers (:class:`~mmtrain.metrics.vqa.VQAAccuracy`).

    Args:
        in_dim: width of the fused features (wired by build.py).
        vocab_size: answer classes, ``<pad>`` and ``<unk>`` included (wired by build.py).
        tokenizer: the target's answer classes (an ``AnswerVocabulary``, wired by build.py).
        pad_id: its padding id (wired by build.py).
        hidden_dim: hidden width of the MLP; 0 gives a single linear layer.
        dropout: dropout before each linear layer.

    Raises:
        ValueError: for fewer than one answer class, or a negative width.
    """

    unfused = False  # reads the fused features (contracts.Head)
    modalities: tuple[str, ...] = ()  # runs on every batch that has its target

    def __init__(
        self,
        in_dim: int,
        vocab_size: int,
        tokenizer: Answers,
        pad_id: int = 0,
        hidden_dim: int = 512,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if vocab_size < 3 or hidden_dim < 0:
            raise ValueError(
                f"need vocab_size >= 3 (<pad>, <unk> and an answer) and hidden_dim >= 0, "
                f"got {vocab_size}, {hidden_dim}"
            )
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden_dim > 0:
            layers += [nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden_dim or in_dim, vocab_size))
        self.mlp = nn.Sequential(*layers)
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.specials = [pad_id, tokenizer.unk_id]

    def forward(
        self, features: Features, target: Tensor | None = None, target_mask: Tensor | None = None
    ) -> Tensor:
        """Answer logits ``(B, vocab_size)``; the target is not needed."""
        return self.mlp(features.pooled())

    def soft_scores(self, target: Tensor, target_mask: Tensor | None = None) -> Tensor:
        """``(B, vocab_size)`` scores ``min(count / 3, 1)`` from the answer ids ``(B, A)``."""
        real = torch.ones_like(target, dtype=torch.bool) if target_mask is None else target_mask
        counts = torch.zeros(target.shape[0], self.vocab_size, device=target.device)
        counts.scatter_add_(1, target, real.to(counts.dtype))
        counts[:, self.specials] = 0.0  # padding and out-of-vocabulary answers score nothing
        return (counts / 3.0).clamp(max=1.0)

    def loss(self, outputs: Tensor, target: Tensor, target_mask: Tensor | None = None) -> Tensor:
        """BCE with logits against the soft scores, summed over classes, mean over questions."""
        scores = self.soft_scores(target, target_mask)
        bce = F.binary_cross_entropy_with_logits(outputs.float(), scores, reduction="none")
        return bce.sum(dim=1).mean()

    def make_metrics(self) -> MetricCollection:
        """``vqa_accuracy`` over a split."""
        return MetricCollection({"vqa_accuracy": VQAAccuracy()})

    def update_metrics(
        self,
        metrics: MetricCollection,
        outputs: Tensor,
        target: Tensor,
        target_mask: Tensor | None = None,
        predictions: list[Any] | None = None,
        references: list[Any] | None = None,
    ) -> None:
        """Official accuracy of the predictions against each question's human answers.

        Without ``references`` (the raw answers) the answers are decoded from the target ids,
        out-of-vocabulary ones lost: pass the references for the official number.
        """
        hypotheses = self.decode(outputs) if predictions is None else list(predictions)
        if references is None:
            keep = torch.ones_like(target, dtype=torch.bool) if target_mask is None else target_mask
            references = [
                [self.tokenizer.vocab[i] for i in row[real].tolist()]
                for row, real in zip(target, keep)
            ]
        metrics.update(hypotheses, [list(r) for r in references])

    def predict(self, features: Features, outputs: Tensor | None = None) -> list[str]:
        return self.decode(self(features) if outputs is None else outputs)

    def decode(self, outputs: Tensor) -> list[str]:
        """The highest-scoring answer of each question (never ``<pad>`` or ``<unk>``)."""
        logits = outputs.detach().clone()
        logits[:, self.specials] = float("-inf")
        return [self.tokenizer.vocab[i] for i in logits.argmax(dim=-1).tolist()]
