"""Image preprocessing with torchvision transforms v2, and the segmentation mask along with it."""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255  # mask value of unlabelled pixels (the segmentation head's ignore_index)


def as_mask(mask: np.ndarray | Tensor | Image.Image) -> tv_tensors.Mask:
    """A ``(1, H, W)`` uint8 :class:`tv_tensors.Mask` of class ids.

    Args:
        mask: ``(H, W)`` class ids: an array, a tensor or a single-channel PIL image.

    Returns:
        The mask, which v2 transforms resize with nearest interpolation and which photometric
        transforms and normalisation leave untouched.

    Raises:
        ValueError: for a mask that is not ``(H, W)`` or has ids outside ``[0, 255]``.
    """
    ids = mask if isinstance(mask, Tensor) else torch.tensor(np.asarray(mask))  # a copy
    if ids.ndim != 2:
        raise ValueError(f"a mask must be (H, W) class ids, got shape {tuple(ids.shape)}")
    if ids.dtype != torch.uint8:
        if ids.is_floating_point() or ids.dtype == torch.bool:
            ids = ids.to(torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > IGNORE_INDEX):
            raise ValueError(
                f"mask class ids must be in [0, {IGNORE_INDEX}], got "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
        ids = ids.to(torch.uint8)  # nearest resizing of uint8 is exact; ids fit in 8 bits
    return tv_tensors.Mask(ids.unsqueeze(0))


class ImageTransform:
    """Resize, normalise and (in training) augment an RGB image into a ``(3, S, S)`` tensor.

    Training: ``RandomResizedCrop(size, crop_scale)``, horizontal flip with ``hflip`` and colour
    jitter of strength ``color_jitter``. Evaluation: a plain resize to ``(size, size)``.

    With a segmentation mask (``mask=``), the mask goes through the same pipeline in the same
    call, as a :class:`torchvision.tv_tensors.Mask`: the same crop and flip as its image,
    resized with nearest interpolation (class ids are never blended; torchvision's
    ``NEAREST``), never colour-jittered or normalised. None of these operations reads outside
    the image, so no pixel needs a fill; the ids, ``255`` (unlabelled) included, are kept as
    they are. Passing a mask draws the same random numbers in the same order as passing none.

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
        # ToImage converts the PIL image only; ToDtype (one dtype) and Normalize touch images
        # only: a Mask passes through all three unchanged.
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

    @overload
    def __call__(self, image: Image.Image, train: bool = False, mask: None = None) -> Tensor: ...

    @overload
    def __call__(
        self, image: Image.Image, train: bool = False, *, mask: np.ndarray | Tensor | Image.Image
    ) -> tuple[Tensor, Tensor]: ...

    def __call__(
        self,
        image: Image.Image,
        train: bool = False,
        mask: np.ndarray | Tensor | Image.Image | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Transform one PIL image, and its mask with the same geometric operations.

        Args:
            image: the RGB image.
            train: use the augmenting pipeline.
            mask: ``(H, W)`` class ids of the image's pixels (``255``: unlabelled), or None.

        Returns:
            The ``(3, S, S)`` float image; with a mask, ``(image, mask (S, S) long)``.

        Raises:
            ValueError: if the mask is not ``(H, W)`` with the image's height and width, or has
                ids outside ``[0, 255]``.
        """
        transform = self.train_transform if train else self.eval_transform
        if mask is None:
            return transform(image)
        ids = as_mask(mask)
        height, width = v2.functional.get_size(image)
        if tuple(ids.shape[-2:]) != (height, width):
            raise ValueError(
                f"the mask is {ids.shape[-2]}x{ids.shape[-1]} (HxW), its image {height}x{width}: "
                "a mask must have its image's size"
            )
        out_image, out_mask = transform(image, ids)
        return out_image, out_mask.as_subclass(Tensor).squeeze(0).long()  # (S, S)
