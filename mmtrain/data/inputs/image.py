"""The image input: ``image (B, 3, S, S)`` float, normalised; ``data.image``."""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image
from torch import Tensor

from mmtrain.contracts import Column
from mmtrain.data.inputs.base import Input
from mmtrain.data.transforms.image import AUTO, MAX_UPSCALE, ImageTransform

log = logging.getLogger(__name__)

SIZE_SAMPLE = 64  # training images whose sizes an ``auto`` size is fitted on


class ImageInput(ImageTransform, Input):
    """RGB images (PIL, as items give them) through :class:`ImageTransform`: resize,
    normalisation and, in training, its augmentation. The keys of ``data.image`` are those of
    :class:`ImageTransform` (``data.image.size=128``); a pretrained image encoder sets them to
    its model's preprocessing (size, resize and crop, interpolation, mean and std; see
    :mod:`mmtrain.utils.preprocessing`).

    With ``size: auto`` the size is fitted on the sizes of up to 64 training images spread
    over the split, and kept in the checkpoint. Images upscaled more than 2x get one warning
    (per process). A segmentation mask goes through the same call as its image
    (:class:`~mmtrain.data.targets.MaskTarget`).
    """

    name = "image"
    _warned = False  # the upscaling warning, once per process

    @property
    def fitted(self) -> bool:
        return self.size != AUTO

    def fit(self, column: Column) -> None:
        """Resolve ``size: auto`` on the sizes of training images (this warns about images
        upscaled more than 2x)."""
        if not self.fitted:
            images = [v for v in column.decoded(SIZE_SAMPLE) if isinstance(v, Image.Image)]
            self.fit_size([image.size for image in images])
            self._warned = True

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A fitted ``auto`` size; a size set in the config is kept."""
        if not self.fitted:
            super().load_state_dict(state)

    def encode(self, value: Image.Image, train: bool) -> Tensor:
        if not self._warned and self.size > MAX_UPSCALE * min(value.size):
            self._warned = True
            log.warning(
                "data.image.size=%d upscales images more than %gx (a %dx%d image): enlarged "
                "pixels add no detail and cost compute; data.image.size=auto follows the images",
                self.size,
                MAX_UPSCALE,
                *value.size,
            )
        return self(value, train=train)

    def facts(self) -> dict[str, Any]:
        return {"image_size": self.size}
