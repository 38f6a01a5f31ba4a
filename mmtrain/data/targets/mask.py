"""Segmentation masks: ``<task> (B, S, S)`` class ids, transformed with their image."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmtrain.data.targets.base import Target
from mmtrain.data.transforms.image import IGNORE_INDEX
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)


class MaskTarget(Target):
    """``(H, W)`` class ids per image (``255``: unlabelled), transformed together with their
    image by the image input (the same crop and flip, nearest resizing) and batched as
    ``(B, S, S)`` long. The class names are ``classes`` (index = class id, background
    included), never values of the training split (those are file names); the head gets them
    as ``class_names`` and ``num_classes``. Predicted masks are written as PNGs of class ids,
    ``<task>s_<split>/<id>.png``, listed in ``<task>_<split>.jsonl``.

    Args:
        classes: the names of the class ids (``data.targets.mask.classes=[background,person]``);
            None: the head needs ``head.<task>.num_classes``, and ids are not checked.

    Raises:
        ValueError: for classes that are not 2 to 255 distinct names.
    """

    inputs = ("image",)

    def __init__(self, classes: list[str] | None = None) -> None:
        if classes is not None:
            classes = [str(n) for n in classes]
            # ids are uint8 and 255 is the unlabelled id: at most 255 classes
            if not 2 <= len(classes) <= IGNORE_INDEX or len(set(classes)) != len(classes):
                raise ValueError(
                    f"classes must be 2 to {IGNORE_INDEX} distinct class names (index = class "
                    f"id), got {classes}"
                )
        self.classes = classes
        self._warned = False

    def _warn_without_classes(self) -> None:
        if self.classes is None and not self._warned:
            self._warned = True
            log.warning(
                "data.targets.%s.classes is not set: head/%s gets no class names, so "
                "head.%s.num_classes must be set (or set data.targets.%s.classes=[...], the "
                "names of the mask's class ids)",
                *[self.name] * 4,
            )

    def state_dict(self) -> dict[str, Any]:
        return {} if self.classes is None else {"classes": list(self.classes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("classes") is not None:
            self.classes = [str(c) for c in state["classes"]]

    def encode(self, item: dict[str, Any], train: bool, inputs: dict[str, Any]) -> dict[str, Any]:
        """``{"image": (3, S, S), task: (S, S) long}``: the same crop, flip and resize.

        Raises:
            MMTrainError: naming the sample, for a sample without its image, a mask that is
                not ``(H, W)`` ids of its image's size, or ids that are neither classes nor 255.
        """
        sample_id, mask = item["id"], item[self.name]
        if "image" not in item:
            raise MMTrainError(
                f"sample {sample_id}: the {self.name} target needs its image (it is cropped and "
                "resized with it), but the sample has none"
            )
        if self.classes is not None:
            ids = np.unique(np.asarray(mask))
            bad = [int(i) for i in ids if not (0 <= i < len(self.classes) or i == IGNORE_INDEX)]
            if bad:
                raise MMTrainError(
                    f"sample {sample_id}: mask class ids {bad[:5]} are not classes of "
                    f"data.targets.{self.name}.classes ({len(self.classes)} classes: ids "
                    f"0-{len(self.classes) - 1}, {IGNORE_INDEX} unlabelled)"
                )
        try:
            image, mask = inputs["image"](item["image"], train=train, mask=mask)
        except ValueError as err:  # a mask of the wrong shape or size
            raise MMTrainError(f"sample {sample_id}: {err}") from None
        return {"image": image, self.name: mask}

    def facts(self) -> dict[str, Any]:
        if self.classes is None:
            self._warn_without_classes()
            return {}
        return {"class_names": list(self.classes), "num_classes": len(self.classes)}

    def plain(self, value: Any, folder: Path, sample_id: str) -> Any:
        """Save a predicted mask as ``folder/<id>.png``; its path relative to the predictions
        folder (``folder``'s parent)."""
        if not isinstance(value, np.ndarray):
            return value
        name = re.sub(r"[^\w.-]+", "_", Path(str(sample_id)).stem or str(sample_id))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(value.astype(np.uint8)).save(folder / f"{name}.png")
        return f"{folder.name}/{name}.png"
