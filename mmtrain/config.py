"""The config layer, torch-free: where the config tree is, and which overrides it takes.

Any argument of a node's ``_target_`` can be set with a plain ``key=value``, whether or not the
YAML lists it: ``trainer.fast_dev_run=true``, ``trainer.max_steps=100``,
``optimizer.betas=[0.9,0.95]``. Hydra's struct mode accepts only keys that are in the config
(new ones need ``+``), so :func:`target_arguments` adds the ``+`` to each plain override whose
key is missing from the config and is a real argument of its parent node's ``_target_`` (the
signature the config check binds the node to). A key that is neither stays as it is: Hydra
refuses it, and the CLI adds a did-you-mean. The user's spelling is what ``.hydra/`` records
(:func:`as_typed`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    """The config tree: inside the installed wheel, or ``configs/`` at the repo root."""
    package = Path(__file__).resolve().parent
    shipped = package / "configs"
    return shipped if shipped.is_dir() else package.parent / "configs"


def _plain_keys(overrides: Sequence[str]) -> dict[str, str]:
    """``{override as typed: key}`` of the plain ``a.b=value`` overrides (no ``+``, ``~`` or
    ``@package``, not a config group, not ``hydra.*``): those Hydra refuses for a missing key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = {}
    parser = OverridesParser.create()
    for item in overrides:
        try:
            (override,) = parser.parse_overrides([item])
        except Exception:  # Hydra reports a malformed override itself
            continue
        key = override.key_or_group
        if (
            "." in key
            and "/" not in key
            and not key.startswith("hydra.")
            and override.package is None
            and not (override.is_add() or override.is_force_add() or override.is_delete())
        ):
            out[item] = key
    return out


def target_parameters(node: Any, extra_allowed: Sequence[str] = ()) -> list[str] | None:
    """The named arguments of a config node's ``_target_`` (None: not a target node, or its
    target is not allowed or does not import; the config check reports those)."""
    from omegaconf import DictConfig

    from mmtrain.errors import MMTrainError
    from mmtrain.utils.instantiate import check_allowed, target_name

    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    try:
        check_allowed(node, "", extra_allowed)
    except MMTrainError:
        return None
    from hydra.utils import get_object

    try:
        target = get_object(target_name(node))
        params = inspect.signature(target).parameters.values()
    except Exception:
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in named and p.name != "self"]


def target_arguments(overrides: Sequence[str], base: Any) -> dict[str, str]:
    """Which plain overrides need a ``+``: their key is not in ``base`` (the config composed
    without them) and is an argument of its parent node's ``_target_``.

    Returns:
        ``{override as typed: the same with a leading "+"}``.
    """
    from omegaconf import DictConfig, OmegaConf

    plain = _plain_keys(overrides)
    if not plain or base is None:
        return {}
    extra = [str(p) for p in (base.get("allowed_targets") or [])]
    out = {}
    for item, key in plain.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent, default=None)
        if not isinstance(node, DictConfig) or leaf in node:
            continue
        if leaf in (target_parameters(node, extra) or []):
            out[item] = f"+{item}"
    return out


def without_plain_keys(overrides: Sequence[str]) -> list[str]:
    """``overrides`` less the plain ``a.b=value`` ones, but for ``a._target_=...``: what
    decides the config's nodes and their targets."""
    plain = {o for o, key in _plain_keys(overrides).items() if not key.endswith("._target_")}
    return [o for o in overrides if o not in plain]


def as_typed(overrides: Sequence[str], added: dict[str, str]) -> list[str]:
    """``overrides`` with each ``+`` that :func:`target_arguments` added taken off again (a
    sweep's jobs get one value each: ``+trainer.max_steps=1`` from ``trainer.max_steps=1,2``)."""
    keys = {plussed.partition("=")[0] for plussed in added.values()}
    return [o[1:] if o.partition("=")[0] in keys else o for o in overrides]


def compose(stage: str, overrides: Sequence[str] = (), return_hydra_config: bool = False) -> Any:
    """Compose a stage's config from :func:`config_dir` as the CLI does, plain target arguments
    included (``trainer.fast_dev_run=true``).

    Raises:
        hydra.errors.ConfigCompositionException: what Hydra raises for a bad override.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    def run(items: Sequence[str]) -> Any:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(str(config_dir()), version_base="1.3"):
                return hydra_compose(
                    stage, overrides=list(items), return_hydra_config=return_hydra_config
                )
        finally:
            GlobalHydra.instance().clear()

    try:
        return run(overrides)
    except ConfigCompositionException:
        try:
            added = target_arguments(overrides, run(without_plain_keys(overrides)))
        except ConfigCompositionException:
            added = {}
        if not added:
            raise
    return run([added.get(o, o) for o in overrides])


def task_config(stage: str, overrides: Sequence[str] = (), output_dir: str | None = None) -> Any:
    """The config that ``mmtrain <stage> overrides`` hands to :func:`mmtrain.run.run`, composed
    in-process (tests, benchmarks): ``HydraConfig`` is set, so that ``paths.output_dir``
    resolves to ``output_dir`` (None: ``hydra.run.dir``), and the ``hydra`` node is dropped."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = compose(stage, overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir) if output_dir else "${hydra:run.dir}"
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
