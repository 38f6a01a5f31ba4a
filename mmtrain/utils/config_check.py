"""Check a composed config before anything is built.

Every ``_target_`` node's keys are bound against the constructor signature (an unknown key gets
a did-you-mean), primitive values are checked against the annotations, and every missing
``???`` value is reported, all in one error.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, OmegaConfBaseException

from mmtrain.errors import MMTrainError
from mmtrain.utils.instantiate import check_allowed, target_name, targets

_PRIMITIVES = (int, float, bool, str, type(None))


def _matches(value: Any, annotation: Any) -> bool | None:
    """Whether ``value`` fits ``annotation``: True, False, or None when we cannot tell."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, arg) for arg in typing.get_args(annotation)]
        return True if True in results else (None if None in results else False)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if value is None:
        return False
    if _is_tensor(annotation):  # a config value (a number, a string, a list) is never a tensor
        return False
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    container = origin or annotation
    if inspect.isclass(container) and issubclass(container, Mapping):
        return isinstance(value, dict)
    if inspect.isclass(container) and issubclass(container, Sequence) and container is not str:
        return isinstance(value, list)
    return None


def _is_tensor(annotation: Any) -> bool:
    """Whether ``annotation`` is ``torch.Tensor`` (or a subclass), without importing torch."""
    return inspect.isclass(annotation) and any(
        cls.__name__ == "Tensor" and cls.__module__.split(".")[0] == "torch"
        for cls in annotation.__mro__
    )


def _callable_params(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    func = target.__init__ if inspect.isclass(target) else target
    try:
        params = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}, {}, True
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: check keys, not types
        hints = {}
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return params, hints, open_kwargs


def _value(node: DictConfig, key: str) -> tuple[bool, Any]:
    """(resolved?, value as a plain container) of ``node[key]``."""
    try:
        value = node[key]
    except Exception:  # an interpolation that cannot resolve here (checked when used)
        return False, None
    if OmegaConf.is_config(value):
        if "_target_" in value:
            return False, None
        try:
            return True, OmegaConf.to_container(value, resolve=True)
        except Exception:
            return False, None
    return True, value


def check_node(node: DictConfig, path: str) -> list[str]:
    """Problems with one ``_target_`` node (not its children)."""
    name = target_name(node)
    try:
        target = get_object(name)
    except Exception as err:
        return [f"{path}._target_: cannot import {name!r} ({err})"]
    params, hints, open_kwargs = _callable_params(target)
    if not params and open_kwargs:
        return []
    problems = []
    for key in node:
        key = str(key)
        if key.startswith("_") and key.endswith("_"):
            continue
        if key not in params:
            if not open_kwargs:
                close = difflib.get_close_matches(key, list(params), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                problems.append(
                    f"{path}.{key}: unknown key for {name}{hint} "
                    f"(valid keys: {', '.join(k for k in params if k != 'self')})"
                )
            continue
        if OmegaConf.is_missing(node, key):
            continue
        resolved, value = _value(node, key)
        if resolved and isinstance(value, (*_PRIMITIVES, list, dict)):
            annotation = hints.get(key, params[key].annotation)
            if _matches(value, annotation) is False:
                problems.append(f"{path}.{key}={value!r}: expected {_type_name(annotation)}")
    return problems


def _type_name(annotation: Any) -> str:
    """``int``, ``float | Tensor``, ``int | None``, ``Literal['a', 'b']``..."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _scan(node: Any, path: str = "") -> tuple[list[str], list[str]]:
    """(``???`` keys, unresolvable interpolations) under ``node``; resolves only leaves."""
    missing: list[str] = []
    broken: list[str] = []
    if isinstance(node, DictConfig):
        keys: list[Any] = list(node)
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return missing, broken
    for key in keys:
        child = node._get_node(key)
        sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        if child._is_missing():
            missing.append(sub)
        elif child._is_interpolation():
            try:
                node[key]
            except InterpolationToMissingValueError:
                pass  # the ??? value it points to is reported
            except OmegaConfBaseException as err:
                broken.append(
                    f"{sub}: cannot resolve {child._value()!r} ({str(err).splitlines()[0]})"
                )
        else:
            m, b = _scan(child, sub)
            missing += m
            broken += b
    return missing, broken


def check_config(cfg: DictConfig, extra_allowed: Sequence[str] = ()) -> None:
    """Validate the whole config; raise one error listing every problem.

    Raises:
        MMTrainError: ``invalid config: <problem>`` on one line for one problem, else
            ``invalid config:`` and one line per problem.
    """
    problems: list[str] = []
    missing, broken = _scan(cfg)
    missing.sort()
    problems += broken
    if missing:
        problems.append(f"missing values (set them with key=value): {', '.join(missing)}")
    try:
        check_allowed(cfg, "", extra_allowed)
    except MMTrainError as err:
        problems.append(str(err))
    else:
        for path, _, node in targets(cfg):
            problems += check_node(node, path)
    if len(problems) == 1:  # one problem: one line
        raise MMTrainError(f"invalid config: {problems[0]}")
    if problems:
        raise MMTrainError("invalid config:\n  " + "\n  ".join(problems))
