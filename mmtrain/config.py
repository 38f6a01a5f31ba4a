"""The config layer, torch-free: where the config tree is, the command line parsed once
(:class:`CommandLine`), composition (:func:`compose`, :func:`compose_command`), which overrides
the tree takes, and the did-you-mean for those it does not (:func:`suggest_keys`).

Any argument of a node's ``_target_`` can be set with a plain ``key=value``, whether or not the
YAML lists it: ``trainer.fast_dev_run=true``, ``trainer.max_steps=100``,
``optimizer.betas=[0.9,0.95]``. Hydra's struct mode accepts only keys that are in the config
(new ones need ``+``), so :func:`target_arguments` adds the ``+`` to each plain override whose
key is missing from the config and is a real argument of its parent node's ``_target_`` (the
signature the config check binds the node to), or an entry of a mapping that is such an
argument (``data.dataset.rename.picture=image``). A key that is neither stays as it is: Hydra
refuses it, and the CLI adds a did-you-mean. The user's spelling is what ``.hydra/`` records
(:func:`as_typed`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
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
        # `leaf in node` is False for a ??? value: its key is in node.keys() all the same
        if isinstance(node, DictConfig) and leaf in node.keys():  # noqa: SIM118
            continue
        if isinstance(node, DictConfig) and leaf in (target_parameters(node, extra) or []):
            out[item] = f"+{item}"
            continue
        # An entry of a mapping argument, however deep (data.dataset.rename.picture=image,
        # model.lr_mult.encoders.image=0.1): the nearest node that exists is that mapping.
        while node is None and "." in parent:
            parent = parent.rpartition(".")[0]
            node = OmegaConf.select(base, parent, default=None)
        if isinstance(node, DictConfig) and "_target_" not in node and "." in parent:
            grand, _, name = parent.rpartition(".")
            owner = OmegaConf.select(base, grand, default=None)
            if name in (target_parameters(owner, extra) or []):
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


@dataclass
class CommandLine:
    """The command line after the stage, parsed once: Hydra's options (``args``: ``overrides``,
    ``multirun``, ``cfg``, ``help``, ``config_dir``...) and each override, parsed (``parsed``).

    Hydra's own argument parser is private (``hydra._internal.utils.get_args_parser``); it is
    used here, once, so that the options mean what they mean to ``@hydra.main``.
    """

    args: Any
    parsed: list[Any]

    @classmethod
    def parse(cls, argv: Sequence[str]) -> CommandLine | None:
        """None when the command line does not parse (Hydra then reports the problem)."""
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            args = get_args_parser().parse_args(list(argv))
            return cls(args, OverridesParser.create().parse_overrides(args.overrides))
        except (Exception, SystemExit):
            return None

    @property
    def overrides(self) -> list[str]:
        """The overrides as typed."""
        return list(self.args.overrides)

    def last(self, key: str) -> Any:
        """The last override that sets ``key`` (not a ``~key`` deletion), or None."""
        found = [o for o in self.parsed if o.key_or_group == key and not o.is_delete()]
        return found[-1] if found else None


def compose_command(stage: str, line: CommandLine, multirun: bool) -> Any:
    """The config that Hydra will compose for ``line`` (without torch), ``hydra`` node
    included; None when it does not compose (Hydra then reports the problem itself).

    ``--config-dir DIR`` joins the search path as ``hydra.searchpath``; with ``multirun``, the
    sweep overrides are left out, as Hydra composes a sweep's own config.
    """
    items = [o.input_line for o in line.parsed if not (multirun and o.is_sweep_override())]
    if line.args.config_dir:
        items.append(f"hydra.searchpath=[file://{Path(line.args.config_dir).resolve()}]")
    try:
        return compose(stage, items, return_hydra_config=True)
    except Exception:
        return None


def _flatten(node: Any, prefix: str = "") -> list[str]:
    """Every key path of ``node`` (``data``, ``data.image``, ``data.image.size``...)."""
    from omegaconf import DictConfig

    keys = []
    if isinstance(node, DictConfig):
        for key in node:
            path = f"{prefix}.{key}" if prefix else str(key)
            keys.append(path)
            keys += _flatten(node._get_node(key), path)
    return keys


def suggest_keys(stage: str, overrides: list[str]) -> list[str]:
    """Did-you-mean lines for ``key=value`` overrides whose key is not in the config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return []
    folders = {p.relative_to(config_dir()).as_posix() for p in config_dir().rglob("*/")}
    groups = [
        o.input_line
        for o in parsed
        if "/" in o.key_or_group or o.key_or_group in folders or o.value_type is None
    ]  # experiment=..., data=...: without them, the keys of their presets look unknown
    lines = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            base = None
            for candidate in (overrides, groups, []):  # the richest config that composes
                try:
                    base = hydra_compose(
                        stage,
                        overrides=[
                            o for o in candidate if "=" in o and not o.startswith(("+", "~"))
                        ],
                    )
                    break
                except Exception:
                    continue
    finally:
        GlobalHydra.instance().clear()
    if base is None:
        return []
    known = _flatten(base)
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or key.startswith("hydra"):
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent, default=None) if parent else base
        known_key = isinstance(node, DictConfig) and leaf in list(node)  # a "???" value too
        if "/" not in key and not known_key:
            # the arguments of the node's _target_ can be set too (mmtrain.config)
            arguments = target_parameters(node, list(base.get("allowed_targets") or [])) or []
            close = difflib.get_close_matches(
                key, known + [f"{parent}.{a}" for a in arguments], n=1, cutoff=0.8
            )
            if close:
                lines.append(f"mmtrain: unknown key '{key}'; did you mean '{close[0]}'?")
    return lines
