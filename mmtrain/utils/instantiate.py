"""Instantiate config nodes through an allow-list of import paths.

A config may come from someone else's checkpoint, so a ``_target_`` outside the allow-list
(``os.system``, ``builtins.eval``...) is refused before anything is imported. Users extend the
list with the top-level config key ``allowed_targets`` (a list of module prefixes).
"""

from __future__ import annotations

from collections.abc import Iterable
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
)


def targets(node: Any, path: str = "") -> Iterable[tuple[str, str, DictConfig]]:
    """Yield ``(key path, _target_, node)`` for every config node that has a ``_target_``."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, str(node._get_node("_target_")._value()), node
        for key in node:
            yield from targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from targets(node._get_node(i), f"{path}[{i}]")


def check_allowed(node: Any, path: str = "", extra: Iterable[str] = ()) -> None:
    """Raise if any ``_target_`` under ``node`` is outside the allow-list.

    Raises:
        MMTrainError: naming the key path and the target.
    """
    allowed = (*ALLOWED_PREFIXES, *extra)
    for key, target, _ in targets(node, path):
        private = any(part.startswith("_") for part in target.split("."))
        if private or target.startswith(DENIED_PREFIXES) or not target.startswith(allowed):
            raise MMTrainError(
                f"{key or '<root>'}._target_={target!r} is not allowed; allowed prefixes are "
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
            raise MMTrainError(f"{path}: {cause}") from None
        raise
