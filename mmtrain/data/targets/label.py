"""Class labels: ``<task> (B,)`` class ids; the default target of a task."""

from __future__ import annotations

import re
from typing import Any

import torch

from mmtrain.contracts import Column
from mmtrain.data.targets.base import Target
from mmtrain.errors import MMTrainError

_INT = re.compile(r"[+-]?\d+")


def class_order(name: str) -> tuple[int, int, str]:
    """Sort key of class names: integers by value ("2" before "10"), then the rest by string."""
    return (0, int(name), name) if _INT.fullmatch(name) else (1, 0, name)


def is_class(value: Any) -> bool:
    """A class name (a string) or number (an integer); not a bool, float or container."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


class LabelTarget(Target):
    """A class per sample (a name or an integer). The classes are those the data set declares
    (a Hugging Face ``ClassLabel``, in its id order), else the training split's values sorted
    (integers by value, then names), kept in the checkpoint. The head gets ``class_names`` and
    ``num_classes``; predictions are class names, written as ``<task>_<split>.jsonl``."""

    def __init__(self) -> None:
        self.classes: list[str] | None = None

    @property
    def fitted(self) -> bool:
        return self.classes is not None

    def fit(self, column: Column) -> None:
        if self.fitted:
            return
        if column.classes is not None:
            self.classes = [str(c) for c in column.classes]
            return
        names = {str(v) for v in column.values() if is_class(v)}
        if names:  # none: the head needs its num_classes (build.py says so)
            self.classes = sorted(names, key=class_order)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.classes is None else {"classes": list(self.classes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("classes") is not None:
            self.classes = [str(c) for c in state["classes"]]

    def encode(self, item: dict[str, Any], train: bool, inputs: dict[str, Any]) -> dict[str, Any]:
        """``{task: class id}``.

        Raises:
            MMTrainError: naming the sample, for a value that is not a training class.
        """
        value, sample_id = item[self.name], item["id"]
        if self.classes is None:
            raise MMTrainError(f"no classes for target {self.name!r} of sample {sample_id}")
        try:
            return {self.name: torch.tensor(self.classes.index(str(value)))}
        except ValueError:
            raise MMTrainError(
                f"sample {sample_id}: {self.name}={value!r} is not a class of the training split "
                f"({len(self.classes)} classes)"
            ) from None

    def facts(self) -> dict[str, Any]:
        if self.classes is None:
            return {}
        return {"class_names": list(self.classes), "num_classes": len(self.classes)}
