"""``mmtrain <stage> [overrides]``: pick the stage's primary config and hand argv to Hydra.

Nothing here imports torch or Lightning: help, ``--cfg job`` and config errors stay fast. The
heavy imports happen in :mod:`mmtrain.run`, once a config has been composed.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

STAGES = ("fit", "validate", "test", "predict")

USAGE = """\
usage: mmtrain <stage> [overrides] [hydra options]

Train and evaluate multimodal models from composable Hydra configs.

stages:
  fit        train (and validate) a model
  validate   evaluate a checkpoint on the validation split   (needs ckpt_path=...)
  test       evaluate a checkpoint on the test split         (needs ckpt_path=...)
  predict    write predictions of a checkpoint               (needs ckpt_path=...)

examples:
  mmtrain fit                                   # the default experiment (shapes)
  mmtrain fit trainer.max_epochs=3 optimizer.lr=3e-4 fusion=concat
  mmtrain fit ~encoder/audio                    # drop a modality
  mmtrain fit -m optimizer.lr=1e-3,1e-4         # a sweep: one run directory per job
  mmtrain test ckpt_path=outputs/shapes/<date>/<time>/checkpoints/last.ckpt
  mmtrain fit --cfg job                         # print the composed config and exit

`mmtrain <stage> --help` lists the config groups and their options.
"""


def config_dir() -> Path:
    """The config tree: inside the installed wheel, or ``configs/`` at the repo root."""
    package = Path(__file__).resolve().parent
    shipped = package / "configs"
    return shipped if shipped.is_dir() else package.parent / "configs"


def _flatten(node: Any, prefix: str = "") -> list[str]:
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
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return []
    groups = [o.input_line for o in parsed if "/" in o.key_or_group or o.value_type is None]
    lines = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            base = None
            for candidate in (overrides, groups, []):  # the richest config that composes
                try:
                    base = compose(
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
        if "/" not in key and OmegaConf.select(base, key, default="\0missing") == "\0missing":
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            if close:
                lines.append(f"mmtrain: unknown key '{key}'; did you mean '{close[0]}'?")
    return lines


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``mmtrain`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        close = difflib.get_close_matches(stage, STAGES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(
            f"mmtrain: unknown stage {stage!r}{hint} (choose from {', '.join(STAGES)})",
            file=sys.stderr,
        )
        sys.exit(2)

    import hydra

    started = False

    def task(cfg: Any) -> Any:
        nonlocal started
        started = True
        from mmtrain.errors import MMTrainError
        from mmtrain.run import run

        try:
            metrics = run(stage, cfg)
        except MMTrainError as err:
            print(f"mmtrain {stage}: error: {err}", file=sys.stderr)
            sys.exit(1)
        objective = cfg.get("optimized_metric")
        return metrics.get(objective) if objective else None

    hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=stage)
    sys.argv = [f"mmtrain {stage}", *rest]
    try:
        return hydra_main(task)()
    except SystemExit as exit_:
        if not started and exit_.code not in (0, None):
            for line in suggest_keys(stage, [a for a in rest if not a.startswith("-")]):
                print(line, file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
