"""Parameter groups and learning-rate schedules for fine-tuning pretrained towers.

:func:`param_groups` splits the trainable parameters of a model into optimizer groups by what
sets their learning rate and weight decay (``model.lr_mult``, ``model.layer_decay``,
``model.no_decay`` of :class:`~mmtrain.module.MultimodalModule`); :func:`scale_groups` gives
each group its learning rate and weight decay once the optimizer exists; :func:`cosine_warmup`
is ``scheduler=cosine_warmup``. Nothing here knows of Hydra or Lightning.

A group is named after the part its parameters belong to (``encoders.image``, ``fusion``,
``heads.caption``, or a longer ``lr_mult`` path), whether they decay, and their layer under
``layer_decay``: ``"encoders.image no_decay layer 3"``. Groups come in the order of their first
parameter in ``named_parameters()``, parameters within a group in that order too, so the same
model always gets the same groups (exact resume reloads optimizer states by group order).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Parameter (or module) names of embeddings that have no nn.Embedding of their own: timm
# (pos_embed, cls_token, dist_token, reg_token), open_clip and CLIP (positional_embedding,
# class_embedding, token_embedding, logit_scale), Hugging Face (position_embedding(s) and
# everything under an ``embeddings`` module).
EMBEDDING_NAMES = frozenset(
    {
        "pos_embed",
        "pos_embedding",
        "position_embedding",
        "position_embeddings",
        "positional_embedding",
        "cls_token",
        "dist_token",
        "reg_token",
        "class_embedding",
        "token_embedding",
        "embeddings",
        "logit_scale",
    }
)
# Normalisation layers by class name, for those outside torch: LlamaRMSNorm, T5LayerNorm,
# timm's LayerNorm2d... (torch's own are matched by class, see _is_norm).
_NORM_CLASS = re.compile(r"Norm(\d?d)?$")
# Segments that wrappers add to parameter names (FSDP, torch.compile(module), activation
# checkpointing): dropped so that a part keeps its path whatever wraps it.
_WRAPPERS = frozenset({"_fsdp_wrapped_module", "_orig_mod", "_checkpoint_wrapped_module"})


def clean_name(name: str) -> str:
    """``name`` without the segments that wrappers add (``_fsdp_wrapped_module``...)."""
    return ".".join(s for s in name.split(".") if s not in _WRAPPERS)


def _matches(name: str, path: str) -> bool:
    """Whether ``path`` is ``name`` or a module above it (dotted prefix, not a string one)."""
    return name == path or name.startswith(path + ".")


def flatten_lr_mult(lr_mult: Mapping[str, Any] | None) -> dict[str, float]:
    """``model.lr_mult`` as ``{dotted part path: multiplier}``.

    The command line makes nested mappings (``model.lr_mult.encoders.image=0.1`` gives
    ``{encoders: {image: 0.1}}``); dotted keys (``{"encoders.image": 0.1}``) work as well, and
    the two can be mixed.

    Args:
        lr_mult: ``{path: multiplier}``, nested or dotted; None or empty for none.

    Returns:
        ``{dotted path: multiplier}``.

    Raises:
        ValueError: for a multiplier that is not a number >= 0, or a path given twice.
    """
    flat: dict[str, float] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                visit(value, path)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"lr_mult.{path} must be a number, got {value!r}")
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"lr_mult.{path} must be >= 0, got {value!r}")
            if path in flat:
                raise ValueError(f"lr_mult.{path} is given twice")
            flat[path] = float(value)

    visit(lr_mult or {}, "")
    return flat


def part_paths(module: nn.Module) -> list[str]:
    """The parts of ``module`` that hold parameters: its children, and the entries of a child
    that is an ``nn.ModuleDict`` (``encoders.image``, ``heads.caption``)."""
    paths = []
    for name, child in module.named_children():
        if next(child.parameters(), None) is None:  # metrics, loss means: nothing to train
            continue
        paths.append(clean_name(name))
        if isinstance(child, nn.ModuleDict):
            paths.extend(
                f"{clean_name(name)}.{key}"
                for key, entry in child.items()
                if next(entry.parameters(), None) is not None
            )
    return paths


def check_lr_mult(module: nn.Module, lr_mult: Mapping[str, Any] | None) -> dict[str, float]:
    """``model.lr_mult`` flattened (:func:`flatten_lr_mult`), each path checked to name a
    module or a parameter of ``module``.

    Args:
        module: the model whose parts the paths name.
        lr_mult: ``{path: multiplier}``, nested or dotted.

    Returns:
        ``{dotted path: multiplier}``.

    Raises:
        ValueError: naming an unknown path and the parts there are; or as
            :func:`flatten_lr_mult`.
    """
    flat = flatten_lr_mult(lr_mult)
    known = {clean_name(n) for n, _ in module.named_modules()} | {
        clean_name(n) for n, _ in module.named_parameters()
    }
    for path in flat:
        if path not in known:
            raise ValueError(
                f"lr_mult.{path}: no such part; the parts are "
                f"{', '.join(part_paths(module))} (or a module or parameter inside one)"
            )
    return flat


def check_layer_decay(layer_decay: float | None) -> float | None:
    """``model.layer_decay``: None (off) or a number in (0, 1].

    Raises:
        ValueError: for anything else.
    """
    if layer_decay is None:
        return None
    if isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float)):
        raise ValueError(f"layer_decay must be null or a number in (0, 1], got {layer_decay!r}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
    return float(layer_decay)


def _is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (its weights and biases never decay)."""
    torch_norms = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
    rms = getattr(nn, "RMSNorm", None)  # torch >= 2.4
    if isinstance(module, torch_norms) or (rms is not None and isinstance(module, rms)):
        return True
    return bool(_NORM_CLASS.search(type(module).__name__))


def _has_blocks(module: nn.Module) -> bool:
    """Whether ``module`` exposes its blocks through a ``blocks()`` method (not a submodule
    called ``blocks``, as in timm models)."""
    return inspect.ismethod(getattr(module, "blocks", None))


def _layer_ids(module: nn.Module) -> dict[int, tuple[str, int, int]]:
    """``{id(parameter): (part path, layer id, number of blocks)}`` for the parameters of the
    parts with ``blocks()`` (the outermost such module, when they nest).

    With ``n`` blocks, a parameter of block ``i`` has layer ``i + 1``; one before the first
    block's parameters in ``named_parameters()`` order (embeddings) has 0; one after the last
    block's (final norm, pooler, projection), or in ``after_blocks()`` when the part has that
    method, has ``n + 1``; one between two blocks goes with the block before it.
    """
    ids: dict[int, tuple[str, int, int]] = {}
    layered: list[str] = []
    for path, part in module.named_modules():
        path = clean_name(path)
        if not path or any(_matches(path, outer) for outer in layered) or not _has_blocks(part):
            continue
        blocks = list(part.blocks())
        if not blocks:  # e.g. a pretrained tower that does not list its blocks
            continue
        n = len(blocks)
        block_of: dict[int, int] = {}
        for i, block in enumerate(blocks):
            for p in block.parameters():
                block_of.setdefault(id(p), i + 1)
        after: set[int] = set()
        after_blocks = getattr(part, "after_blocks", None)
        if inspect.ismethod(after_blocks):
            for item in after_blocks():
                params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
                after.update(id(p) for p in params)
        params = [p for _, p in part.named_parameters()]
        in_block = [k for k, p in enumerate(params) if id(p) in block_of]
        if not in_block:  # its blocks hold none of its parameters: nothing to decay by
            continue
        layered.append(path)
        first, last, current = in_block[0], in_block[-1], 0
        for k, p in enumerate(params):
            if id(p) in after:
                layer = n + 1
            elif id(p) in block_of:
                layer = current = block_of[id(p)]
            elif k < first:
                layer = 0
            elif k > last:
                layer = n + 1
            else:
                layer = current
            ids.setdefault(id(p), (path, layer, n))
    return ids


def _owners(module: nn.Module) -> dict[int, nn.Module]:
    """``{id(parameter): the module that holds it}`` (the first, for a shared parameter)."""
    owners: dict[int, nn.Module] = {}
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            owners.setdefault(id(p), sub)
    return owners


def _default_part(module: nn.Module, name: str) -> str:
    """The part a parameter belongs to: the child of ``module`` it is in, or the entry of that
    child when the child is an ``nn.ModuleDict`` (``encoders.image``)."""
    segments = name.split(".")
    child = getattr(module, segments[0], None)
    if isinstance(child, nn.ModuleDict) and len(segments) > 2:
        return ".".join(segments[:2])
    return segments[0]


def is_no_decay(name: str, owner: nn.Module | None, ndim: int) -> bool:
    """Whether a parameter is left out of weight decay: biases and other vectors (``ndim``
    <= 1), the weights of normalisation layers and of embeddings (``nn.Embedding`` and the
    names in :data:`EMBEDDING_NAMES`).

    Args:
        name: its name in the model (wrapper segments dropped).
        owner: the module that holds it, if known.
        ndim: its number of dimensions as built (a sharded parameter is a 1-D view).

    Returns:
        True if it takes no weight decay.
    """
    if ndim <= 1 or any(segment in EMBEDDING_NAMES for segment in name.split(".")):
        return True
    return owner is not None and (
        isinstance(owner, (nn.Embedding, nn.EmbeddingBag)) or _is_norm(owner)
    )


def param_groups(
    module: nn.Module,
    lr_mult: Mapping[str, Any] | None = None,
    layer_decay: float | None = None,
    no_decay: bool = True,
    ndims: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The trainable parameters of ``module`` in optimizer groups.

    A parameter's learning rate is the optimizer's times its ``lr_scale``: the multiplier of
    the longest ``lr_mult`` path that is it or a module above it (1 if none), times
    ``layer_decay ** (n + 1 - layer)`` inside a part with ``n`` blocks (see
    :func:`_layer_ids` for the layers). Frozen parameters (``requires_grad=False``) are left
    out.

    Args:
        module: the model (its part paths are module paths in it).
        lr_mult: ``{part path: multiplier}``, nested or dotted (:func:`flatten_lr_mult`).
        layer_decay: None (off) or the layer-wise decay in (0, 1].
        no_decay: whether biases, normalisation weights and embeddings skip weight decay.
        ndims: ``{name: number of dimensions}`` as the model was built, for parameters that a
            sharding strategy has flattened since (FSDP, DeepSpeed ZeRO-3); by default their
            own.

    Returns:
        Groups as ``{"params", "name", "lr_scale", "decay"}``: ``decay`` False means weight
        decay 0 (:func:`scale_groups` applies both once the optimizer exists).

    Raises:
        ValueError: for an unknown ``lr_mult`` path or a bad multiplier or ``layer_decay``.
    """
    mult = check_lr_mult(module, lr_mult)
    decay_rate = check_layer_decay(layer_decay)
    layers = _layer_ids(module) if decay_rate is not None else {}
    owners = _owners(module)
    groups: dict[tuple[str, int | None, bool], dict[str, Any]] = {}
    for raw_name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        name = clean_name(raw_name)
        paths = [p for p in mult if _matches(name, p)]
        matched = max(paths, key=len) if paths else None
        scale = mult[matched] if matched is not None else 1.0
        labels = [_default_part(module, name), *([matched] if matched else [])]
        layer = None
        if id(param) in layers:
            part, layer, n = layers[id(param)]
            scale *= decay_rate ** (n + 1 - layer)  # type: ignore[operator]
            labels.append(part)
        # The most specific of the part, the lr_mult path and the layered part: every
        # parameter under it has the same multiplier, so one name means one scale.
        label = max(labels, key=len)
        ndim = (ndims or {}).get(name, param.ndim)
        decay = not (no_decay and is_no_decay(name, owners.get(id(param)), ndim))
        key = (label, layer, decay)
        if key not in groups:
            title = f"{label} {'decay' if decay else 'no_decay'}"
            if layer is not None:
                title += f" layer {layer}"
            groups[key] = {"params": [], "name": title, "lr_scale": scale, "decay": decay}
        groups[key]["params"].append(param)
    return list(groups.values())


def scale_groups(optimizer: torch.optim.Optimizer) -> None:
    """Give each group of ``optimizer`` its learning rate (the optimizer's ``lr`` times the
    group's ``lr_scale``) and weight decay (0 when its ``decay`` is False).

    Call it after building the optimizer from :func:`param_groups` and before building the
    scheduler: a scheduler takes each group's ``lr`` as its ``initial_lr``.
    """
    lr = optimizer.defaults.get("lr")
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        if lr is not None and scale != 1.0:
            group["lr"] = lr * scale
        if not group.get("decay", True) and "weight_decay" in group:
            group["weight_decay"] = 0.0


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    """A table of the optimizer's groups: name, tensors, parameters, lr, weight decay."""
    rows = [("group", "tensors", "parameters", "lr", "weight_decay")]
    for i, group in enumerate(optimizer.param_groups):
        rows.append(
            (
                str(group.get("name", f"group {i}")),
                str(len(group["params"])),
                f"{sum(p.numel() for p in group['params']):,}",
                f"{float(group['lr']):.3g}",
                f"{float(group.get('weight_decay', 0.0)):.3g}",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths))
        )
        for row in rows
    ]
    return "\n".join(lines)


class WarmupCosine:
    """The factor of :func:`cosine_warmup` at a step: linear from 0 to 1 over the warmup
    steps, then a half cosine from 1 down to ``min_lr_ratio`` at ``total_steps``, flat after.

    A callable object, not a function, so that LambdaLR saves its settings in checkpoints
    (exact resume keeps the schedule of the run it resumes).

    Args:
        warmup_steps: steps of linear warmup.
        total_steps: the step at which the cosine reaches its floor.
        min_lr_ratio: the floor, as a fraction of the peak.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = min(
            1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        )
        floor = self.min_lr_ratio
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_warmup(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay, per parameter group (``scheduler=cosine_warmup``).

    At optimizer step ``s`` (0 for the first), a group whose learning rate is ``lr`` trains
    with ``lr * s / w`` during the ``w`` warmup steps (0 at the very first step: Adam's
    moments start filling before any weight moves) and with
    ``lr * (m + (1 - m) * (1 + cos(pi * (s - w) / (total_steps - w))) / 2)`` after, ``m`` being
    ``min_lr_ratio``: ``lr`` at step ``w``, ``m * lr`` from ``total_steps`` on.

    Args:
        optimizer: the optimizer, its groups' learning rates set (the peaks).
        total_steps: the run's optimizer steps (MultimodalModule fills it in).
        warmup_steps: warmup length in steps.
        warmup_ratio: warmup length as a fraction of ``total_steps`` (rounded up); use it or
            ``warmup_steps``, not both.
        min_lr_ratio: the cosine's floor as a fraction of each group's learning rate.

    Returns:
        A LambdaLR, stepped every optimizer step.

    Raises:
        ValueError: for both warmups set, a negative warmup, ``warmup_ratio`` not below 1,
            ``min_lr_ratio`` outside [0, 1] or ``total_steps`` below 1.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if warmup_steps > 0 and warmup_ratio > 0:
        raise ValueError(
            f"set warmup_steps ({warmup_steps}) or warmup_ratio ({warmup_ratio}), not both: "
            "set the other to 0"
        )
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    # (less a hair: 0.07 * 100 is 7.000000000000001 in floating point, 7 steps all the same)
    warmup = warmup_steps or math.ceil(warmup_ratio * total_steps - 1e-9)
    if warmup >= total_steps:
        log.warning(
            "cosine_warmup: %d warmup steps of a %d-step run: the learning rate never peaks",
            warmup,
            total_steps,
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup, total_steps, min_lr_ratio)
    )
