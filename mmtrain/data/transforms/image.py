"""Image preprocessing with torchvision transforms v2, and the segmentation mask along with it.

Besides mmtrain's own default (a square resize), the evaluation pipeline reproduces the
preprocessing of pretrained models (Hugging Face processors, timm, open_clip) to float
precision: where the image is resized (PIL or uint8 tensor), how (square, shorter side, longer
side), with which interpolation, and how the centre crop is placed.
:mod:`mmtrain.utils.preprocessing` turns a model's own description into these keys.
"""

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
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255  # mask value of unlabelled pixels (the segmentation head's ignore_index)
AUTO = "auto"  # ImageTransform(size=AUTO): the size is fitted on the training images (fit_size)
AUTO_MIN, AUTO_MAX, AUTO_STEP = 32, 224, 8  # what an auto size can be: a multiple of 8 in range
MAX_UPSCALE = 2.0  # fit_size warns when images are enlarged more than this
RESIZES = ("square", "shortest", "longest")  # ImageTransform(resize=...)
BACKENDS = ("pil", "tensor")  # ImageTransform(resize_backend=...): what is resized
ANCHORS = ("round", "floor")  # ImageTransform(crop_anchor=...): torchvision's, transformers'
PIL_ONLY = (InterpolationMode.BOX, InterpolationMode.HAMMING)  # no tensor kernel in torchvision

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


class ResizeLongest(v2.Transform):
    """Resize so that the longer side is ``size``, keeping the aspect ratio.

    Each side becomes ``round(side / ratio)`` with ``ratio = max(height, width) / size``, as
    timm's and open_clip's ``ResizeKeepRatio(longest=1)`` compute it (torchvision's
    ``Resize(max_size=...)`` truncates instead of rounding). Masks are resized with nearest
    interpolation.

    Args:
        size: the longer side after resizing.
        interpolation: the interpolation of images.
    """

    def __init__(self, size: int, interpolation: InterpolationMode) -> None:
        super().__init__()
        self.size = size
        self.interpolation = interpolation

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(flat_inputs[0])  # an image and its mask share their size
        ratio = max(height / self.size, width / self.size)
        return {"size": [round(height / ratio), round(width / ratio)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize, inpt, params["size"], interpolation=self.interpolation, antialias=True
        )


class CenterCropOrPad(v2.Transform):
    """Keep the centre ``size`` x ``size``, padding a side that is shorter than ``size``.

    The padding is centred (the extra pixel of an odd difference goes right and bottom), as
    torchvision's ``CenterCrop`` and transformers' ``center_crop`` pad. Where the crop starts
    differs between them when the difference is odd: torchvision rounds half of it
    (``anchor="round"``, also timm and open_clip), transformers floors it (``"floor"``).
    Images are padded with ``fill``, masks with 255 (unlabelled).

    Args:
        size: the output height and width.
        anchor: ``"round"`` or ``"floor"``.
        fill: the padding colour: one value for every channel or one per channel (0..255).
    """

    def __init__(self, size: int, anchor: str = "round", fill: int | list[int] = 0) -> None:
        super().__init__()
        self.size = size
        self.anchor = anchor
        self.fill = fill

    def _start(self, extra: int) -> int:
        """Where the crop starts along a side ``extra`` pixels longer than the crop."""
        return int(round(extra / 2.0)) if self.anchor == "round" else int(extra / 2.0)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = F.get_size(inpt)
        if self.size > height or self.size > width:
            wide, high = max(self.size - width, 0), max(self.size - height, 0)
            padding = [wide // 2, high // 2, (wide + 1) // 2, (high + 1) // 2]  # l, t, r, b
            fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else self.fill
            inpt = self._call_kernel(F.pad, inpt, padding, fill=fill)
            height, width = F.get_size(inpt)
        top, left = self._start(height - self.size), self._start(width - self.size)
        return self._call_kernel(F.crop, inpt, top, left, self.size, self.size)


class ImageTransform:
    """Resize, normalise and (in training) augment an RGB image into a ``(3, S, S)`` tensor.

    Evaluation resizes the image to ``resize_size`` (default: ``size``), then keeps its centre
    ``size`` x ``size``:

    - ``resize="square"`` (the default): both sides to ``resize_size`` (the aspect ratio is not
      kept); with ``resize_size == size`` nothing is cropped;
    - ``"shortest"``: the shorter side to ``resize_size``, keeping the aspect ratio (the
      longer side becomes ``int(resize_size * longer / shorter)``), then the centre crop;
    - ``"longest"``: the longer side to ``resize_size``, keeping the aspect ratio, then the
      centre crop, padded with ``fill`` where the image is smaller (letterboxing).

    ``resize_backend`` says what is resized: ``"pil"`` (the default; timm and open_clip) the PIL
    image, ``"tensor"`` (Hugging Face image processors) its uint8 tensor, with antialiasing.
    The two give slightly different pixels, so a pretrained model's own choice is reproduced.
    ``crop_anchor`` places an odd centre crop (see :class:`CenterCropOrPad`).
    :mod:`mmtrain.utils.preprocessing` gives these keys for a pretrained model.

    Training: ``RandomResizedCrop(size, crop_scale)`` with the same interpolation (and on the
    same backend), horizontal flip with ``hflip`` and colour jitter of strength
    ``color_jitter``; then the same normalisation.

    ``size="auto"`` follows the data: :meth:`fit_size` sets it from the training images' sizes
    (the median shorter side, rounded to a multiple of 8, clamped to [32, 224]), and
    :meth:`state_dict` / :meth:`load_state_dict` carry the fitted size, so that a checkpoint
    rebuilds the same preprocessing. :meth:`fit_size` also warns (once) when the images are
    enlarged more than 2x, with a fixed size too: upscaled pixels carry no detail, and a
    small encoder sees a blurred fragment of the image.

    With a segmentation mask (``mask=``), the mask goes through the same pipeline in the same
    call, as a :class:`torchvision.tv_tensors.Mask`: the same resize, crop and flip as its
    image, resized with nearest interpolation (class ids are never blended; torchvision's
    ``NEAREST``), never colour-jittered or normalised. Only ``resize="longest"`` (or a crop
    larger than the resized image) reads outside the image: there the mask is padded with
    ``255`` (unlabelled); otherwise the ids are kept as they are. Passing a mask draws the
    same random numbers in the same order as passing none.

    Args:
        size: output height and width, or ``"auto"`` (fitted by :meth:`fit_size`).
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        augment: apply the training augmentations on the training split.
        crop_scale: area range of the random crop.
        hflip: probability of a horizontal flip.
        color_jitter: brightness/contrast/saturation jitter; 0 disables it.
        resize: ``"square"``, ``"shortest"`` or ``"longest"`` (evaluation; see above).
        resize_size: the side the image is resized to before the centre crop; None: ``size``.
        interpolation: a torchvision interpolation: ``nearest``, ``nearest-exact``,
            ``bilinear``, ``bicubic``, ``lanczos``, and with PIL ``box`` and ``hamming``.
        resize_backend: ``"pil"`` or ``"tensor"``: what is resized and cropped.
        crop_anchor: ``"round"`` (torchvision) or ``"floor"`` (transformers).
        fill: the colour of padded pixels: one value or one per channel, in 0..255.

    Raises:
        ValueError: for a size that is neither positive nor ``"auto"``, a bad crop range, an
            unknown resize, backend, anchor or interpolation, an interpolation the tensor
            backend lacks, a ``resize_size`` that is not positive (or set with ``"auto"``), or
            a fill outside 0..255.
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
        resize: str = "square",
        resize_size: int | None = None,
        interpolation: str = "bilinear",
        resize_backend: str = "pil",
        crop_anchor: str = "round",
        fill: int | list[int] = 0,
    ) -> None:
        if size != AUTO:
            _check_size(size)
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {list(crop_scale)}")
        for key, value, allowed in (
            ("resize", resize, RESIZES),
            ("resize_backend", resize_backend, BACKENDS),
            ("crop_anchor", crop_anchor, ANCHORS),
        ):
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        if resize_size is not None:
            _check_size(resize_size, "resize_size")
            if size == AUTO:
                raise ValueError(
                    f"resize_size={resize_size} needs a fixed size, got size='auto' (the crop "
                    "would be fitted, the resize not)"
                )
        self.interpolation = _interpolation(interpolation)
        if resize_backend == "tensor" and self.interpolation in PIL_ONLY:
            raise ValueError(
                f"interpolation={interpolation!r} resizes PIL images only: use "
                "resize_backend=pil, or another interpolation"
            )
        self.fill = _check_fill(fill)
        self.mean, self.std = list(mean), list(std)
        self.augment = augment
        self.crop_scale = (lo, hi)
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.resize = resize
        self.resize_size = resize_size
        self.resize_backend = resize_backend
        self.crop_anchor = crop_anchor
        self.size: int | str = AUTO
        self.eval_transform: v2.Compose | None = None
        self.train_transform: v2.Compose | None = None
        if size != AUTO:
            self._set_size(int(size))

    def _set_size(self, size: int) -> None:
        """Fix the output size and build the pipelines for it."""
        self.size = size
        # ToImage converts the PIL image only; ToDtype (one dtype) and Normalize touch images
        # only: a Mask passes through all three unchanged. The tensor backend converts first,
        # so that resizing and cropping work on the uint8 tensor (a no-op the second time).
        start = [v2.ToImage()] if self.resize_backend == "tensor" else []
        finish = [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ]
        side = self.resize_size or size
        mode = self.interpolation
        resize: list[v2.Transform]
        if self.resize == "square":
            resize = [v2.Resize((side, side), interpolation=mode, antialias=True)]
        elif self.resize == "shortest":
            resize = [v2.Resize(side, interpolation=mode, antialias=True)]
        else:
            resize = [ResizeLongest(side, mode)]
        if self.resize != "square" or side != size:
            resize.append(CenterCropOrPad(size, self.crop_anchor, self.fill))
        train_ops: list = [
            v2.RandomResizedCrop(size, scale=self.crop_scale, interpolation=mode, antialias=True)
        ]
        if self.hflip > 0:
            train_ops.append(v2.RandomHorizontalFlip(self.hflip))
        if self.color_jitter > 0:
            jitter = self.color_jitter
            train_ops.append(v2.ColorJitter(jitter, jitter, jitter))
        self.eval_transform = v2.Compose([*start, *resize, *finish])
        self.train_transform = (
            v2.Compose([*start, *train_ops, *finish]) if self.augment else self.eval_transform
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


def _check_size(size: Any, key: str = "size") -> None:
    """Raise ``ValueError`` unless ``size`` is a positive integer."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        also = " or 'auto'" if key == "size" else ""
        raise ValueError(f"{key} must be positive (an integer){also}, got {size!r}")


def _interpolation(name: str) -> InterpolationMode:
    """The torchvision interpolation called ``name`` (``nearest_exact`` is ``nearest-exact``).

    Raises:
        ValueError: for another name.
    """
    try:
        return InterpolationMode(str(name).lower().replace("_", "-"))
    except ValueError:
        names = ", ".join(m.value for m in InterpolationMode)
        raise ValueError(f"interpolation must be one of {names}, got {name!r}") from None


def _check_fill(fill: Any) -> int | list[int]:
    """``fill`` as an int or a list of 3 ints in 0..255.

    Raises:
        ValueError: for anything else.
    """
    several = isinstance(fill, Sequence) and not isinstance(fill, str)
    values = list(fill) if several else [fill]
    if len(values) not in (1, 3) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
    ):
        raise ValueError(f"fill must be one value or 3 (RGB) in 0..255, got {fill!r}")
    return [int(v) for v in values] if several else int(fill)
