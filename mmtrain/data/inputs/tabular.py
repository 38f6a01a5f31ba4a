"""The tabular input: numeric columns of a manifest as ``tabular (B, F)`` float; ``data.tabular``.

    mmtrain fit experiment=manifest_label data.train=train.csv data.val=val.csv \
        data.tabular.columns=[age,bmi,glucose] +encoder/tabular=mlp
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from mmtrain.contracts import Column
from mmtrain.data.inputs.base import Input
from mmtrain.errors import MMTrainError

MISSING = ("mean", "error")


def _number(column: str, value: Any) -> float | None:
    """``value`` of ``column`` as a float; None when absent (``None``, an empty string, NaN).

    Raises:
        MMTrainError: naming the column and the value, for a value that is not a number.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MMTrainError(f"tabular column {column!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise MMTrainError(f"tabular column {column!r} must be a number, got {value!r}") from None
    if math.isinf(number):
        raise MMTrainError(f"tabular column {column!r} is infinite ({value!r})")
    return None if math.isnan(number) else number


class TabularInput(Input):
    """Numeric columns, standardised with the mean and standard deviation of the training split
    (fitted once, kept in the checkpoint): ``(value - mean) / std`` per column.

    Missing values (an empty CSV cell, a JSON ``null`` or NaN), by ``missing``:

    - ``mean`` (the default): the value becomes the column's training mean (0 once
      standardised) and a missingness flag per column is appended, 1 where the value was
      missing, so the model can tell a mean from a gap: ``tabular (B, 2F)``;
    - ``error``: a missing value is a bad sample (an error naming the column; with
      ``data.on_error=skip`` the sample is skipped): ``tabular (B, F)``.

    A sample with none of the columns has no tabular input at all (a missing modality, as a
    sample without its image). A column constant in training keeps std 1.

    Args:
        columns: the data set's numeric columns, in order (``data.tabular.columns=[age,bmi]``).
        missing: ``mean`` or ``error`` (see above).

    Raises:
        ValueError: for repeated columns or an unknown ``missing`` (no columns is an error
            of the data module, once the modality is loaded).
    """

    name = "tabular"

    def __init__(self, columns: list[str], missing: Literal["mean", "error"] = "mean") -> None:
        names = [str(c) for c in columns or []]
        if len(set(names)) != len(names):
            raise ValueError(f"columns must be distinct column names, got {names}")
        if missing not in MISSING:
            raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
        self._columns, self.missing = names, missing
        self.mean: list[float] | None = None
        self.std: list[float] | None = None

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    @property
    def optional(self) -> list[str]:
        """With ``missing=mean`` a sample may lack any of the columns."""
        return self.columns if self.missing == "mean" else []

    def read(self, item: dict[str, Any]) -> dict[str, Any] | None:
        values = {c: item.get(c) for c in self._columns}
        return None if all(v is None for v in values.values()) else values

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, column: Column) -> None:
        """The mean and std of each column over the training samples that have it.

        Raises:
            MMTrainError: for a non-numeric value, or a column with no value in training.
        """
        if self.fitted:
            return
        rows = [row for row in column.values() if row is not None]
        mean, std = [], []
        for name in self._columns:
            numbers = [n for row in rows if (n := _number(name, row.get(name))) is not None]
            if not numbers:
                raise MMTrainError(
                    f"data.tabular.columns: column {name!r} has no value in the training split"
                )
            m = sum(numbers) / len(numbers)
            s = math.sqrt(sum((n - m) ** 2 for n in numbers) / len(numbers))
            mean.append(m)
            std.append(s if s > 0 else 1.0)
        self.mean, self.std = mean, std

    def state_dict(self) -> dict[str, Any]:
        if not self.fitted:
            return {}
        return {"columns": self.columns, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if list(state["columns"]) != self._columns:
            raise MMTrainError(
                f"data.tabular.columns={self._columns} differs from the checkpoint's "
                f"{list(state['columns'])}: the model was trained on those columns"
            )
        self.mean, self.std = list(state["mean"]), list(state["std"])

    def encode(self, value: dict[str, Any], train: bool) -> Tensor:
        """``(F,)`` standardised values, plus ``(F,)`` missingness flags with ``missing=mean``.

        Raises:
            MMTrainError: for a value that is not a number, or (``missing=error``) a missing
                value.
        """
        if self.mean is None or self.std is None:
            raise MMTrainError("the tabular input is not fitted: its statistics come from train")
        out, flags = [], []
        for name, m, s in zip(self._columns, self.mean, self.std):
            number = _number(name, value.get(name))
            if number is None and self.missing == "error":
                raise MMTrainError(
                    f"tabular column {name!r} is missing (data.tabular.missing=error; "
                    "missing=mean fills it with the training mean and flags it)"
                )
            out.append(0.0 if number is None else (number - m) / s)
            flags.append(1.0 if number is None else 0.0)
        return torch.tensor(out + flags if self.missing == "mean" else out, dtype=torch.float32)

    def facts(self) -> dict[str, Any]:
        """``num_features``: the width of a sample (``2F`` with ``missing=mean``)."""
        per_column = 2 if self.missing == "mean" else 1
        return {"num_features": per_column * len(self._columns)}
