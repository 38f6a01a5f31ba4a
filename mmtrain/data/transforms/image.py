"""Image preprocessing with torchvision transforms v2."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransform:
    """Resize, normalise and (in training) augment an RGB image into a ``(3, S, S)`` tensor.

    Training: ``RandomResizedCrop(size, crop_scale)``, horizontal flip with ``hflip`` and colour
    jitter of strength ``color_jitter``. Evaluation: a plain resize to ``(size, size)``.

    Args:
        size: output height and width.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        augment: apply the training augmentations on the training split.
        crop_scale: area range of the random crop.
        hflip: probability of a horizontal flip.
        color_jitter: brightness/contrast/saturation jitter; 0 disables it.

    Raises:
        ValueError: for a non-positive size or a bad crop range.
    """

    def __init__(
        self,
        size: int = 64,
        mean: list[float] = IMAGENET_MEAN,
        std: list[float] = IMAGENET_STD,
        augment: bool = True,
        crop_scale: list[float] = (0.8, 1.0),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {list(crop_scale)}")
        self.size = size
        finish = [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
        train_ops: list = [v2.RandomResizedCrop(size, scale=(lo, hi), antialias=True)]
        if hflip > 0:
            train_ops.append(v2.RandomHorizontalFlip(hflip))
        if color_jitter > 0:
            train_ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
        self.eval_transform = v2.Compose([v2.Resize((size, size), antialias=True), *finish])
        self.train_transform = v2.Compose([*train_ops, *finish]) if augment else self.eval_transform

    def __call__(self, image: Image.Image, train: bool = False) -> Tensor:
        """Transform one PIL image; ``train`` selects the augmenting pipeline."""
        return (self.train_transform if train else self.eval_transform)(image)
