"""The image input: ``image (B, 3, S, S)`` float, normalised; ``data.image``."""

from __future__ import annotations

from typing import Any

from PIL import Image
from torch import Tensor

from mmtrain.contracts import Column
from mmtrain.data.inputs.base import Input
from mmtrain.data.transforms.image import ImageTransform

SIZE_SAMPLE = 64  # training images whose sizes an ``auto`` size is fitted on


class ImageInput(ImageTransform, Input):
    """RGB images (PIL, as items give them) through :class:`ImageTransform`: resize,
    normalisation and, in training, its augmentation. The keys of ``data.image`` are those of
    :class:`ImageTransform` (``data.image.size=128``).

    With ``size: auto`` the size is fitted on the sizes of up to 64 training images spread
    over the split, and kept in the checkpoint. A segmentation mask goes through the same call
    as its image (:class:`~mmtrain.data.targets.MaskTarget`).
    """

    name = "image"

    @property
    def fitted(self) -> bool:
        return self.size != "auto"

    def fit(self, column: Column) -> None:
        if not self.fitted:
            images = [v for v in column.decoded(SIZE_SAMPLE) if isinstance(v, Image.Image)]
            self.fit_size([image.size for image in images])

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = state.get("size")
        if size is not None and size != self.size and not self.fitted:
            self.fit_size([(int(size), int(size))])

    def encode(self, value: Image.Image, train: bool) -> Tensor:
        return self(value, train=train)

    def facts(self) -> dict[str, Any]:
        return {"image_size": self.size}
