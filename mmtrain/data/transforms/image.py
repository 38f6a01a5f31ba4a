"""Image preprocessing with torchvision transforms v2, and the segmentation mask along with it."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from typing import Any, overload

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255  # mask value of unlabelled pixels (the segmentation head's ignore_index)
AUTO = "auto"  # ImageTransform(size=AUTO): the size is fitted on the training images (fit_size)
AUTO_MIN, AUTO_MAX, AUTO_STEP = 32, 224, 8  # what an auto size can be: a multiple of 8 in range
MAX_UPSCALE = 2.0  # fit_size warns when images are enlarged more than this

log = logging.getLogger(__name__)


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

    ``size="auto"`` follows the data: :meth:`fit_size` sets it from the training images' sizes
    (the median shorter side, rounded to a multiple of 8, clamped to [32, 224]), and
    :meth:`state_dict` / :meth:`load_state_dict` carry the fitted size, so that a checkpoint
    rebuilds the same preprocessing. :meth:`fit_size` also warns (once) when the images are
    enlarged more than 2x, with a fixed size too: upscaled pixels carry no detail, and a
    small encoder sees a blurred fragment of the image.

    With a segmentation mask (``mask=``), the mask goes through the same pipeline in the same
    call, as a :class:`torchvision.tv_tensors.Mask`: the same crop and flip as its image,
    resized with nearest interpolation (class ids are never blended; torchvision's
    ``NEAREST``), never colour-jittered or normalised. None of these operations reads outside
    the image, so no pixel needs a fill; the ids, ``255`` (unlabelled) included, are kept as
    they are. Passing a mask draws the same random numbers in the same order as passing none.

    Args:
        size: output height and width, or ``"auto"`` (fitted by :meth:`fit_size`).
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        augment: apply the training augmentations on the training split.
        crop_scale: area range of the random crop.
        hflip: probability of a horizontal flip.
        color_jitter: brightness/contrast/saturation jitter; 0 disables it.

    Raises:
        ValueError: for a size that is neither positive nor ``"auto"``, or a bad crop range.
    """

    def __init__(
        self,
        size: int | str = 64,
        mean: list[float] = IMAGENET_MEAN,
        std: list[float] = IMAGENET_STD,
        augment: bool = True,
        crop_scale: list[float] = (0.8, 1.0),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
    ) -> None:
        if size != AUTO:
            _check_size(size)
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {list(crop_scale)}")
        self.mean, self.std = list(mean), list(std)
        self.augment = augment
        self.crop_scale = (lo, hi)
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.size: int | str = AUTO
        self.eval_transform: v2.Compose | None = None
        self.train_transform: v2.Compose | None = None
        if size != AUTO:
            self._set_size(int(size))

    def _set_size(self, size: int) -> None:
        """Fix the output size and build the pipelines for it."""
        self.size = size
        # ToImage converts the PIL image only; ToDtype (one dtype) and Normalize touch images
        # only: a Mask passes through all three unchanged.
        finish = [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ]
        train_ops: list = [v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True)]
        if self.hflip > 0:
            train_ops.append(v2.RandomHorizontalFlip(self.hflip))
        if self.color_jitter > 0:
            jitter = self.color_jitter
            train_ops.append(v2.ColorJitter(jitter, jitter, jitter))
        self.eval_transform = v2.Compose([v2.Resize((size, size), antialias=True), *finish])
        self.train_transform = (
            v2.Compose([*train_ops, *finish]) if self.augment else self.eval_transform
        )

    def fit_size(self, sizes: Sequence[tuple[int, int]]) -> int:
        """Resolve ``size="auto"`` from the training images' sizes, and check the upscaling.

        ``auto`` becomes the median shorter side of ``sizes``, rounded to a multiple of 8 and
        clamped to ``[32, 224]``: 32 keeps a few tokens of a small CNN's grid, 224 is where
        photos are usually classified (and what pretrained towers expect). A fixed size is
        kept. Either way, when the output size is more than twice the shorter side of some of
        the images, one warning names those sizes (upscaled pixels carry no detail).

        Args:
            sizes: ``(width, height)`` of training images, as PIL's ``Image.size`` (a sample of
                a few dozen is enough).

        Returns:
            The output size in pixels.

        Raises:
            ValueError: for no sizes, or a size that is not two positive numbers.
        """
        shorter = []
        for pair in sizes:
            width, height = pair
            if min(width, height) <= 0:
                raise ValueError(f"image sizes must be positive (width, height), got {pair}")
            shorter.append(min(width, height))
        if not shorter:
            raise ValueError("fit_size needs the sizes of some training images, got none")
        if self.size == AUTO:
            median = statistics.median(shorter)
            rounded = AUTO_STEP * round(median / AUTO_STEP)
            self._set_size(min(max(rounded, AUTO_MIN), AUTO_MAX))
            log.info(
                "data.image.size=auto: %d px (the median shorter side of %d training images "
                "is %g px)",
                self.size,
                len(shorter),
                median,
            )
        enlarged = sorted(s for s in shorter if self.size > MAX_UPSCALE * s)
        if enlarged:
            log.warning(
                "%d of %d training images are upscaled more than %gx to %d px (shorter sides "
                "%d to %d px): the enlarged pixels add no detail and cost compute; "
                "data.image.size=auto follows the images",
                len(enlarged),
                len(shorter),
                MAX_UPSCALE,
                self.size,
                enlarged[0],
                enlarged[-1],
            )
        return int(self.size)

    def state_dict(self) -> dict[str, Any]:
        """The fitted state: ``{"size": <int, or "auto" before fit_size>}``."""
        return {"size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use the size that :meth:`state_dict` saved (a fitted ``auto`` size).

        Raises:
            ValueError: for a saved size that is not a positive integer or ``"auto"``.
        """
        size = state.get("size", self.size)
        if size != AUTO:
            _check_size(size)
            self._set_size(int(size))

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
            RuntimeError: if the size is still ``"auto"`` (:meth:`fit_size` was not called).
            ValueError: if the mask is not ``(H, W)`` with the image's height and width, or has
                ids outside ``[0, 255]``.
        """
        transform = self.train_transform if train else self.eval_transform
        if transform is None:
            raise RuntimeError(
                "ImageTransform(size='auto') is not fitted: call fit_size() with the training "
                "images' (width, height) first, or set a size (data.image.size=128)"
            )
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


def _check_size(size: Any) -> None:
    """Raise ``ValueError`` unless ``size`` is a positive integer."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be positive (an integer) or 'auto', got {size!r}")
