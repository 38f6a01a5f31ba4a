"""Instantiate config nodes through an allow-list of import paths.

A config may come from someone else's checkpoint, so a ``_target_`` outside the allow-list
(``os.system``, ``builtins.eval``...) is refused before anything is imported. Users extend the
list with the top-level config key ``allowed_targets`` (a list of module prefixes).

A name under an allowed prefix can still lead elsewhere: ``mmtrain.data.coco.os.system`` is
``os.system`` reached through the ``os`` module that ``mmtrain.data.coco`` imports, and a
function imported by name into an allowed module is that function. So a target that passes by
name is then located (importing modules under its allowed prefix only) and refused when its
path goes through a module of another name, or when the class or function it finds is defined
outside the allowed prefixes.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from mmtrain.errors import MMTrainError

ALLOWED_PREFIXES = (
    "mmtrain.",
    "torch.optim.",
    "torch.nn.",
    "torchvision.models.",
    "torchvision.transforms.",
    "torchaudio.transforms.",
    "torchmetrics.",
    "pytorch_lightning.Trainer",
    "pytorch_lightning.callbacks.",
    "pytorch_lightning.loggers.",
    "pytorch_lightning.strategies.",
    "pytorch_lightning.plugins.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
)
# Under an allowed prefix, these load code or pickles and are never instantiated from config.
DENIED_PREFIXES = (
    "torch.hub",
    "torch.load",
    "torch.jit",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch.serialization",
)
# Where allowed names are defined when that is not under their own prefix (re-exports).
DEFINED_IN = (
    "pytorch_lightning.trainer.trainer.Trainer",  # pytorch_lightning.Trainer
    "lightning_fabric.plugins.",  # pytorch_lightning.plugins.environments.SLURMEnvironment...
)


def target_name(node: DictConfig) -> str:
    """The ``_target_`` of a node as Hydra will instantiate it.

    An interpolated one (``mmtrain.${x}``) is resolved; it is returned as written when it cannot
    be resolved here.
    """
    child = node._get_node("_target_")
    target = child._value()
    if child._is_interpolation():
        with contextlib.suppress(Exception):  # unresolvable here: checked as written
            target = node["_target_"]
    return str(target)


def targets(node: Any, path: str = "") -> Iterable[tuple[str, str, DictConfig]]:
    """Yield ``(key path, _target_, node)`` for every config node that has a ``_target_``
    (resolved, see :func:`target_name`)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, target_name(node), node
        for key in node:
            yield from targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from targets(node._get_node(i), f"{path}[{i}]")


def _locate(target: str) -> tuple[Any, str | None]:
    """Find ``target`` as Hydra does (attributes, else submodules), watching the modules passed.

    Returns:
        The object (None when it cannot be found: the config check reports that), and why it
        is refused when the path goes through a module under another name (``os`` reached as
        ``mmtrain.data.coco.os``), else None.
    """
    parts = target.split(".")
    try:
        obj: Any = importlib.import_module(parts[0])
    except Exception:  # not importable: reported by the config check
        return None, None
    path = parts[0]
    for part in parts[1:]:
        parent, path = obj, f"{path}.{part}"
        try:
            obj = getattr(parent, part)
        except AttributeError:
            if not isinstance(parent, ModuleType):
                return None, None
            try:
                obj = importlib.import_module(path)
            except Exception:
                return None, None
        if isinstance(obj, ModuleType) and obj.__name__ != path:
            return obj, f"{path} is the module {obj.__name__!r}, imported by {parent.__name__}"
    return obj, None


def _defined_outside(target: str, allowed: tuple[str, ...]) -> str | None:
    """Why the object that ``target`` names is refused (its definition), or None."""
    obj, problem = _locate(target)
    if problem is not None or obj is None:
        return problem
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return f"it is a {type(obj).__name__}, not a class or function"
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    defined = f"{module}.{name}"
    if module is None or name is None:
        return "it has no module to check"
    if defined.startswith(DENIED_PREFIXES) or not defined.startswith((*allowed, *DEFINED_IN)):
        return f"it is {defined}"
    return None


def check_allowed(node: Any, path: str = "", extra: Iterable[str] = ()) -> None:
    """Raise if any ``_target_`` under ``node`` is outside the allow-list.

    The name is checked first (allowed prefix, no denied prefix, no private ``_part``); only
    then is it located, to check what it really is (see the module docstring).

    Raises:
        MMTrainError: naming the key path and the target.
    """
    allowed = (*ALLOWED_PREFIXES, *extra)
    for key, target, _ in targets(node, path):
        private = any(part.startswith("_") for part in target.split("."))
        if private or target.startswith(DENIED_PREFIXES) or not target.startswith(allowed):
            why = ""
        else:
            problem = _defined_outside(target, allowed)
            if problem is None:
                continue
            why = f" ({problem})"
        raise MMTrainError(
            f"{key or '<root>'}._target_={target!r} is not allowed{why}; allowed prefixes are "
            f"{list(allowed)} (add yours with allowed_targets=[...])"
        )


def safe_instantiate(
    node: DictConfig, path: str, extra_allowed: Iterable[str] = (), **kwargs: Any
) -> Any:
    """Check the allow-list, then ``hydra.utils.instantiate`` with plain containers.

    Args:
        node: the config node.
        path: its key path, for error messages.
        extra_allowed: more allowed prefixes.
        **kwargs: constructor arguments wired by build.py.

    Raises:
        MMTrainError: for a disallowed target, or a constructor that rejects its arguments.
    """
    check_allowed(node, path, extra_allowed)
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError)):  # bad values or arguments from config
            # a message that names its key already (encoder.text.layer=9: ...) is kept as is
            said = str(cause)
            raise MMTrainError(said if said.startswith(path) else f"{path}: {said}") from None
        raise
