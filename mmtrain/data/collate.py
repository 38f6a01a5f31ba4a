"""Batching items into the flat batch dict of ARCHITECTURE.md, padding sequences with masks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mmtrain.contracts import Batch


def _is_sequence(t: Tensor) -> bool:
    # Token ids (L,) long and features (D, T) float have a variable last axis; everything else
    # (images, scalar targets, fixed-size masks) is stacked as is.
    return (t.ndim == 1 and not t.is_floating_point()) or (t.ndim == 2 and t.is_floating_point())


def pad_last(tensors: list[Tensor], value: float = 0) -> tuple[Tensor, Tensor]:
    """Pad tensors along their last axis; returns ``(padded (B, ..., T), mask (B, T) bool)``."""
    length = max(t.shape[-1] for t in tensors)
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-1], length), value)
    mask = torch.zeros(len(tensors), length, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-1]] = t
        mask[i, : t.shape[-1]] = True
    return out, mask


def padded(name: str, values: list[Tensor]) -> dict[str, Tensor]:
    """Pad along the last axis: ``{name: (B, ..., T), name_mask: (B, T) bool}``."""
    batch, mask = pad_last(values)
    return {name: batch, f"{name}_mask": mask}


def stacked(name: str, values: list[Tensor]) -> dict[str, Tensor]:
    """Stack same-shaped tensors: ``{name: (B, ...)}``.

    Raises:
        ValueError: naming the shapes, when samples differ in shape.
    """
    shapes = sorted({tuple(v.shape) for v in values})
    if len(shapes) > 1:
        raise ValueError(f"cannot stack {name!r}: samples have shapes {shapes}")
    return {name: torch.stack(values)}


def collate(items: list[dict[str, Any]], parts: Mapping[str, Any] | None = None) -> Batch:
    """Collate item dicts into a batch.

    A key that names one of ``parts`` (the data module's inputs and targets) is batched by its
    ``collate`` (padding and mask included); other tensors (cached features) are stacked when
    fixed-size, padded with a ``<key>_mask`` when sequences; non-tensor values (ids, raw
    strings) are kept as lists.
    """
    batch: Batch = {}
    parts = parts or {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in parts and isinstance(values[0], Tensor):
            batch.update(parts[key].collate(values))
        elif not isinstance(values[0], Tensor):
            batch[key] = values
        elif _is_sequence(values[0]):
            batch[key], batch[f"{key}_mask"] = pad_last(values)
        else:
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack {key!r}: samples have shapes {sorted(shapes)}")
            batch[key] = torch.stack(values)
    return batch
