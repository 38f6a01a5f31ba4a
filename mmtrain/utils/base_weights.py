"""Trimmed checkpoints (``model.save_frozen=false``): the frozen weights of pretrained bases
are left out, and the checkpoint records where they come from.

A *base* is a pretrained part loaded with its weights: a pretrained encoder
(``encoders.<modality>``) or the LM of a causal-LM head (``heads.<task>.lm``). Its frozen
weights are the same as in the model folder, so a trimmed checkpoint keeps only what trained
(projector, adapters, compressor) and, per base, ``{"model", "revision", "module", "keys",
"fingerprint"}`` under ``checkpoint["mmtrain"]["base"]``. A rebuild loads the base from
``model``, checks its fingerprint, then loads the checkpoint over it.

The fingerprint hashes each trimmed tensor's name, shape, dtype and up to 1024 values evenly
spread over it: any other weights file (another fine-tune, another size) differs there, and
it costs milliseconds where hashing a 7B model would take a minute.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from mmtrain.adapters import is_adapter
from mmtrain.errors import MMTrainError

SAMPLES = 1024  # values of each tensor in the fingerprint


def canonical(key: str) -> str:
    """A state_dict key without peft's wrapping (``q_proj.base_layer.weight`` ->
    ``q_proj.weight``), so that keys match with and without adapters."""
    return key.replace(".base_layer.", ".")


def frozen_keys(model: torch.nn.Module, module_path: str) -> list[str]:
    """The state_dict keys under ``module_path`` that do not train: frozen parameters and
    buffers, adapters excepted."""
    prefix = module_path + "."
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return [
        k
        for k in model.state_dict(keep_vars=True)
        if k.startswith(prefix) and k not in trainable and not is_adapter(k)
    ]


def whole(tensor: Tensor) -> Tensor:
    """``tensor`` whole: a DTensor (``trainer=fsdp2``) gathered from every rank (collective)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def fingerprint(tensors: dict[str, Tensor]) -> str:
    """A short hash of ``tensors`` (see the module docstring); keys are compared canonical."""
    digest = hashlib.sha256()
    for key in sorted(tensors, key=canonical):
        tensor = whole(tensors[key].detach())
        flat = tensor.reshape(-1)
        step = max(1, flat.numel() // SAMPLES)
        values = flat[::step][:SAMPLES].to(device="cpu", dtype=torch.float32)
        digest.update(f"{canonical(key)}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_base(
    model: torch.nn.Module, module_path: str, source: dict[str, Any]
) -> dict[str, Any]:
    """The record of one base for a trimmed checkpoint (``source``: its ``model`` and
    ``revision``)."""
    keys = frozen_keys(model, module_path)
    state = model.state_dict()
    return {
        **source,
        "module": module_path,
        "keys": keys,
        "fingerprint": fingerprint({k: state[k] for k in keys}),
    }


def check_bases(model: torch.nn.Module, bases: dict[str, Any], key: str, path: str) -> set[str]:
    """Check that ``model`` was built on the same bases as a trimmed checkpoint.

    Args:
        model: the rebuilt model, its bases loaded from their folders.
        bases: ``checkpoint["mmtrain"]["base"]``.
        key: the config key that named the checkpoint, for messages.
        path: the checkpoint's path, for messages.

    Returns:
        The model's state_dict keys that the bases provide (the checkpoint lacks them).

    Raises:
        MMTrainError: naming the part and both models, when a base's fingerprint differs or
            its weights are not in the model.
    """
    state = model.state_dict()
    by_canonical = {canonical(k): k for k in state}
    provided: set[str] = set()
    for part, record in bases.items():
        keys = [by_canonical.get(canonical(k)) for k in record["keys"]]
        if None in keys:
            missing = next(k for k, m in zip(record["keys"], keys) if m is None)
            raise MMTrainError(
                f"{key}: {path} was trained on {record.get('model')} as {part}, and the "
                f"configured {part} lacks its weight {missing}"
            )
        found = fingerprint({k: state[k] for k in keys})
        if found != record["fingerprint"]:
            raise MMTrainError(
                f"{key}: {path} was trained on another base for {part}: its weights "
                f"({record.get('model')}) have fingerprint {record['fingerprint']}, the "
                f"configured model's have {found}; use the model it was trained on"
            )
        provided |= set(keys)
    return provided
