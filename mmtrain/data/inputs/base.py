"""What every input (one modality on the data side) does unless it says otherwise.

An input is configured at ``data.<modality>`` (``data.image.size=128``); the data module gives
it its ``name`` and calls it for each sample and batch. See :class:`mmtrain.contracts.Input`.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from mmtrain.contracts import Column
from mmtrain.data.collate import stacked
from mmtrain.errors import MMTrainError


def settings_digest(obj: Any) -> str:
    """A short hash of an object's class and settings (its attributes that are not tensors),
    without memory addresses: what its output depends on besides the data."""
    settings = sorted((k, v) for k, v in vars(obj).items() if not isinstance(v, Tensor))
    text = re.sub(r" at 0x[0-9a-f]+", "", f"{type(obj).__qualname__}{settings!r}")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Input(ABC):
    """The defaults of an input: one column named after the modality, nothing to fit, a
    fixed-size tensor per sample (stacked), no length for bucketing."""

    name: str = ""
    bucketable = False  # has lengths() (text: tokens, audio: seconds)

    @property
    def columns(self) -> list[str]:
        """The data set columns this input reads (one, named after the modality)."""
        return [self.name]

    @property
    def optional(self) -> list[str]:
        """Columns that a sample may lack without being a bad sample (none by default)."""
        return []

    def read(self, item: dict[str, Any]) -> Any:
        """This input's value in a raw item (a file's content, a string, numbers); None when
        the sample has none."""
        return item.get(self.name)

    @property
    def fitted(self) -> bool:
        return True

    def fit(self, column: Column) -> None:
        """Learn from the training split (nothing by default)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use what :meth:`state_dict` saved (nothing by default)."""
        return None

    @abstractmethod
    def encode(self, value: Any, train: bool) -> Tensor:
        """One sample's value as a tensor: its preprocessing (augmented when ``train``)."""

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
        """Stack same-shaped tensors into ``{name: (B, ...)}``."""
        return stacked(self.name, values)

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]:
        raise MMTrainError(f"data.bucket_by={self.name!r}: the {self.name} input has no length")

    def facts(self) -> dict[str, Any]:
        """What the encoder of this modality gets from the data (nothing by default)."""
        return {}

    def fingerprint(self) -> str:
        """This input's part of the feature-cache key: its class, settings and fitted state."""
        return settings_digest(self) + repr(sorted(self.state_dict().items()))
