"""Semantic (and text-guided) segmentation head: the fused image token grid -> per-pixel logits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from mmtrain.contracts import Features

_FUSION_HINT = (
    "use a fusion that keeps the image token grid (fusion=film fusion.target=image, or an "
    "image-only model), or set head.<task>.grid=[h,w] when the image grid comes first in the "
    "fused tokens (fusion=concat with the image encoder listed first)"
)


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: statistics do not depend on the (small) batch or grid size.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(out_ch, 8), out_ch),
        nn.ReLU(inplace=True),
    )


class SegmentationHead(nn.Module):
    """A small convolutional decoder on the image token grid; cross-entropy + Dice loss.

    Where the grid comes from (the contract with the fusion): the fused tokens carry no layout,
    so the head reads the image grid as the first ``h * w`` fused tokens, row-major:

    * ``grid=[h, w]`` set: the first ``h * w`` tokens, whatever follows them. This fits
      ``fusion=concat`` (and ``fusion=transformer`` without [CLS]), which put each modality's
      tokens in encoder order, the image first in the default config. ``[h, w]`` is the image
      size over the encoder's stride: 4x4 for ``encoder/image=cnn`` at 64 px, 7x7 for ResNet at
      224 px. Nothing in the tokens says where the image ends: a wrong ``grid`` (or a batch
      without images) is not detected beyond ``N >= h * w``.
    * ``grid=None``: the fused tokens must be exactly a square grid, ``N = s * s`` with
      ``s > 1``, as ``fusion=film fusion.target=image`` or an image-only model give; otherwise
      a ``ValueError`` names the token count and the fusions to use.

    Text guidance comes from the fusion, not from the head: FiLM scales and shifts every image
    token by the pooled text (and audio), so the same image segments differently for another
    prompt; with no text the tokens pass unchanged and this is plain semantic segmentation.
    Grid tokens that the fused mask marks as padding (a dropped image) are zeroed first.

    Decoder: a 3x3 conv block (conv, GroupNorm, ReLU) to ``dim`` channels on the ``(h, w)``
    grid, then ``log2(upsample)`` times a bilinear x2 upsampling and a conv block, dropout, a
    1x1 conv to the classes, and a final bilinear resize to the target's ``(H, W)`` (to
    ``(h * upsample, w * upsample)`` without a target: what ``predict`` returns).

    Loss: ``ce_weight * CE + dice_weight * (1 - mean_c Dice_c)``. CE is the mean over the
    pixels whose target is not ``ignore_index``. With ``p_c`` the softmax probability of class
    ``c`` and ``y_c`` its one-hot target, summed over the non-ignored pixels of the whole batch,
    ``Dice_c = 2 * sum(p_c * y_c) / (sum(p_c) + sum(y_c))``; the mean runs over the classes
    present in the (non-ignored) target, so an absent class neither helps nor hurts. A batch
    whose pixels are all ignored has loss 0.

    Metrics: ``miou``, torchmetrics' ``MulticlassJaccardIndex(average="macro")``: the mean of the
    per-class IoUs over the classes that occur in the target or in the prediction (torchmetrics
    1.x gives a class absent from both weight 0, not IoU 0 or 1), accumulated over the whole
    split as one confusion matrix; ``pixel_accuracy``, the fraction of non-ignored pixels
    predicted right. Pixels whose target is ``ignore_index`` count nowhere.

    Args:
        in_dim: width of the fused features (wired by build.py).
        num_classes: number of classes, background included (wired by build.py from the data).
        class_names: names of the class ids, index = id (wired by build.py from the data).
        dim: channels of the decoder.
        upsample: learned upsampling factor of the grid, a power of 2 (1: none).
        ce_weight: weight of the cross-entropy term.
        dice_weight: weight of the Dice term.
        ignore_index: target value of pixels left out of the loss and the metrics; outside
            ``[0, num_classes)``.
        dropout: channel dropout before the 1x1 classifier.
        grid: ``[h, w]`` of the image token grid at the front of the fused tokens, or ``None``
            for fused tokens that are exactly a square grid (see above).

    Raises:
        ValueError: for fewer than 2 or more than 256 classes (masks are uint8), class names
            that do not match ``num_classes``, an ``ignore_index`` inside ``[0, num_classes)``,
            an ``upsample`` that is not a power of 2, negative or all-zero loss weights, or a
            ``grid`` that is not two positive ints.
    """

    unfused = False  # reads the fused features (contracts.Head)
    modalities = ("image",)  # nothing to segment without it: skipped when the image is absent

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        class_names: list[str] | None = None,
        dim: int = 64,
        upsample: int = 4,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int = 255,
        dropout: float = 0.1,
        grid: list[int] | None = None,
    ) -> None:
        super().__init__()
        if not 2 <= num_classes <= 256:
            raise ValueError(f"num_classes must be in [2, 256] (uint8 masks), got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is a class id (num_classes={num_classes}); use "
                "a value outside [0, num_classes), e.g. 255"
            )
        if upsample < 1 or upsample & (upsample - 1):
            raise ValueError(f"upsample must be a power of 2 (1, 2, 4, ...), got {upsample}")
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got ce_weight={ce_weight}, "
                f"dice_weight={dice_weight}"
            )
        if grid is not None:
            grid = [int(g) for g in grid]
            if len(grid) != 2 or min(grid) < 1:
                raise ValueError(f"grid must be [h, w] with h, w >= 1, or null, got {grid}")
        blocks: list[nn.Module] = [_conv_block(in_dim, dim)]
        for _ in range(int(math.log2(upsample))):
            blocks += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            blocks += [_conv_block(dim, dim)]
        self.decoder = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(dim, num_classes, 1))
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.upsample = upsample
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.grid = tuple(grid) if grid is not None else None

    def image_grid(self, features: Features) -> Tensor:
        """The image token grid of the fused features, ``(B, N, D) -> (B, D, h, w)``.

        Raises:
            ValueError: if ``grid`` is set and there are fewer than ``h * w`` tokens, or
                ``grid`` is None and the tokens are not a square grid of more than one token.
        """
        tokens, mask = features.tokens, features.mask  # (B, N, D), (B, N) | None
        batch, count, width = tokens.shape
        if self.grid is not None:
            h, w = self.grid
            if count < h * w:
                raise ValueError(
                    f"grid={list(self.grid)} needs {h * w} image tokens, the fused features "
                    f"have {count}; set head.<task>.grid to the image encoder's grid"
                )
        else:
            side = math.isqrt(count)
            if count < 2 or side * side != count:
                raise ValueError(
                    f"the segmentation head needs the image token grid, got {count} fused "
                    f"tokens, not a square grid: {_FUSION_HINT}"
                )
            h = w = side
        x = tokens[:, : h * w]  # (B, h*w, D)
        if mask is not None:
            x = x * mask[:, : h * w, None].to(x.dtype)  # padding (a dropped image) carries nothing
        return x.transpose(1, 2).reshape(batch, width, h, w)  # row-major, as the encoders flatten

    def forward(
        self, features: Features, target: Tensor | None = None, target_mask: Tensor | None = None
    ) -> Tensor:
        """Per-pixel class logits.

        Args:
            features: fused features whose first ``h * w`` tokens are the image grid.
            target: ``(B, H, W)`` class ids; only its size is used, the logits' size.
            target_mask: unused (ignored pixels carry ``ignore_index``).

        Returns:
            ``(B, C, H, W)`` logits, or ``(B, C, h * upsample, w * upsample)`` without a target.

        Raises:
            ValueError: for a target that is not ``(B, H, W)``, or no image grid (see
                :meth:`image_grid`).
        """
        if target is not None and target.ndim != 3:
            raise ValueError(f"target must be (B, H, W) class ids, got shape {tuple(target.shape)}")
        x = self.decoder(self.image_grid(features))  # (B, dim, h*up, w*up)
        logits = self.classifier(x)  # (B, C, h*up, w*up)
        if target is not None and tuple(target.shape[-2:]) != tuple(logits.shape[-2:]):
            logits = F.interpolate(
                logits, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False
            )
        return logits

    def _check(self, outputs: Tensor, target: Tensor) -> None:
        if outputs.ndim != 4 or target.shape != (outputs.shape[0], *outputs.shape[2:]):
            raise ValueError(
                f"logits (B, C, H, W) and target (B, H, W) do not match: "
                f"{tuple(outputs.shape)} vs {tuple(target.shape)} (pass the target to forward)"
            )

    def loss(self, outputs: Tensor, target: Tensor, target_mask: Tensor | None = None) -> Tensor:
        """``ce_weight * CE + dice_weight * (1 - mean Dice)`` over the non-ignored pixels.

        Args:
            outputs: ``(B, C, H, W)`` logits.
            target: ``(B, H, W)`` class ids, ``ignore_index`` for pixels left out.
            target_mask: unused.

        Returns:
            The scalar loss (0, with a gradient, when every pixel is ignored).

        Raises:
            ValueError: if the logits and the target sizes differ.
        """
        self._check(outputs, target)
        valid = target != self.ignore_index  # (B, H, W)
        count = valid.sum().clamp_min(1)
        ce = F.cross_entropy(outputs, target, ignore_index=self.ignore_index, reduction="sum")
        ce = ce / count
        probs = outputs.softmax(dim=1) * valid.unsqueeze(1).to(outputs.dtype)  # (B, C, H, W)
        onehot = F.one_hot(torch.where(valid, target, 0), self.num_classes)  # (B, H, W, C)
        onehot = onehot.permute(0, 3, 1, 2).to(outputs.dtype) * valid.unsqueeze(1)
        intersection = (probs * onehot).sum(dim=(0, 2, 3))  # (C,)
        support = onehot.sum(dim=(0, 2, 3))  # (C,)
        present = support > 0
        dice = 2 * intersection / (probs.sum(dim=(0, 2, 3)) + support).clamp_min(1e-6)  # (C,)
        dice_loss = (1 - dice[present].mean()) if bool(present.any()) else outputs.sum() * 0
        return self.ce_weight * ce + self.dice_weight * dice_loss

    def make_metrics(self) -> MetricCollection:
        """A fresh metric collection for one split: ``miou`` and ``pixel_accuracy``."""
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(
                    self.num_classes, average="macro", ignore_index=self.ignore_index
                ),
                "pixel_accuracy": MulticlassAccuracy(
                    self.num_classes,
                    average="micro",
                    multidim_average="global",
                    ignore_index=self.ignore_index,
                ),
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
        """Accumulate one batch of logits ``(B, C, H, W)`` and class ids ``(B, H, W)``.

        Raises:
            ValueError: if the logits and the target sizes differ.
        """
        self._check(outputs, target)
        metrics.update(outputs.argmax(dim=1), target)

    def predict(self, features: Features, outputs: Tensor | None = None) -> list[np.ndarray]:
        """Predicted masks; reuses ``outputs`` (the logits) when given."""
        return self.decode(self(features) if outputs is None else outputs)

    def decode(self, outputs: Tensor) -> list[np.ndarray]:
        """One ``(H, W)`` uint8 mask of class ids per sample, from logits ``(B, C, H, W)``."""
        ids = outputs.argmax(dim=1).to(torch.uint8).cpu().numpy()  # (B, H, W)
        return list(ids)
