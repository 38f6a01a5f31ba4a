"""``mmtrain <stage> [overrides]``: pick the stage's primary config and hand argv to Hydra.

Nothing here imports torch or Lightning: help, ``--cfg job`` and config errors stay fast. The
heavy imports happen in :mod:`mmtrain.run`, once a config has been composed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from mmtrain.config import (
    CommandLine,
    as_typed,
    compose_command,
    config_dir,
    suggest_keys,
    target_arguments,
    without_plain_keys,
)
from mmtrain.contracts import STAGES

STAGE_ENV = "MMTRAIN_STAGE"  # the stage, for DDP worker processes that re-run the command
# What Lightning's DDP launcher sets in the launching process (see _end_distributed).
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# The stages composed by Hydra: the trainer's (STAGES, mmtrain.run.run) and export
# (configs/export.yaml, mmtrain.export.export).
HYDRA_STAGES = (*STAGES, "export")

USAGE = """\
usage: mmtrain <stage> [overrides] [hydra options]

Train and evaluate multimodal models from composable Hydra configs.

stages:
  fit        train (and validate) a model
  validate   evaluate a checkpoint on the validation split   (needs ckpt_path=...)
  test       evaluate a checkpoint on the test split         (needs ckpt_path=...)
  predict    write predictions of a checkpoint               (needs ckpt_path=...)
  report     plots and an HTML page of a run or sweep directory: mmtrain report <dir>
  shard      write a data set as webdataset tar shards, for data=webdataset:
             mmtrain shard <data preset> out=<dir> [overrides]
  export     a checkpoint as safetensors, one consolidated checkpoint, ONNX, torch.export
             or Hugging Face files, with a model card:
             mmtrain export ckpt_path=<ckpt> format=<format> out=<dir>

examples:
  mmtrain fit                                   # the default experiment (shapes)
  mmtrain fit trainer.max_epochs=3 optimizer.lr=3e-4 fusion=concat
  mmtrain fit ~encoder/audio                    # drop a modality
  mmtrain fit -m optimizer.lr=1e-3,1e-4         # a sweep: one run directory per job
  mmtrain fit -m hparams_search=shapes_optuna   # an Optuna search (resume=true: finish it)
  mmtrain test ckpt_path=outputs/shapes/<date>/<time>/checkpoints/last.ckpt
  mmtrain fit ckpt_path=last                    # resume the newest run of the experiment
  mmtrain fit init_from=<ckpt> encoder.image.freeze=true  # fine-tune from another run
  mmtrain export ckpt_path=<ckpt> format=onnx out=exports/shapes  # serve it elsewhere
  mmtrain fit --cfg job                         # print the composed config and exit

`mmtrain <stage> --help` lists the config groups and their options.
"""


def plain_target_arguments(stage: str, line: CommandLine) -> dict[str, str]:
    """The plain overrides that set an argument of a node's ``_target_`` missing from the YAML
    (``trainer.fast_dev_run=true``): ``{as typed: with the "+" Hydra needs}``.

    The config is composed (no torch) without the plain ``key=value`` overrides, so that a
    sweep over them (``-m trainer.max_steps=1,2``) is checked too; nothing when it does not
    compose (Hydra then reports the problem itself). See :mod:`mmtrain.config`.
    """
    if not any("." in o.partition("=")[0] for o in line.overrides):
        return {}
    base = CommandLine.parse(without_plain_keys(line.overrides))
    if base is None:
        return {}
    base.args.config_dir = line.args.config_dir
    cfg = compose_command(stage, base, multirun=line.args.multirun)
    return target_arguments(line.overrides, cfg)


def _quote(value: str) -> str:
    """A string as a quoted value of Hydra's override grammar."""
    escaped = value.replace("\\", "\\\\")
    return f"'{escaped}'" if "'" not in value else '"' + escaped.replace('"', '\\"') + '"'


def resume_sweep(stage: str, line: CommandLine) -> tuple[list[str], dict[str, list[str]] | None]:
    """``resume=true`` in a sweep: reuse the latest sweep directory with the same overrides.

    The config is composed as Hydra will compose it (no torch) to find ``paths.log_dir`` and
    ``name``; the sweep directories are ``<paths.log_dir>/<name>/multirun/<date>/<time>/``.

    Args:
        stage: the primary config.
        line: the command line after the stage.

    Returns:
        The arguments to add (``hydra.sweep.dir=<found>``, or none) and, when resuming, the
        overrides of the jobs found there (see :func:`mmtrain.utils.sweep.job_overrides`);
        ``([], None)`` when there is nothing to resume or the config does not compose (Hydra
        then reports the problem itself).
    """
    args = line.args
    wanted = line.last("resume")
    if wanted is None or wanted.is_sweep_override() or args.cfg or args.help:
        return [], None
    if str(wanted.value()).lower() != "true":
        return [], None
    given = line.last("hydra.sweep.dir")
    if given is not None:  # the user names the sweep directory: Hydra reuses it as it is
        return [], _jobs_in(Path(str(given.value())))

    from hydra.types import RunMode

    from mmtrain.utils.sweep import find_sweep_dir

    cfg = compose_command(stage, line, multirun=True)
    if cfg is None:
        return [], None
    multirun = args.multirun or cfg.hydra.mode == RunMode.MULTIRUN
    root = Path(str(cfg.paths.log_dir)) / str(cfg.name) / "multirun"
    if not multirun:
        print(
            f"mmtrain {stage}: resume=true resumes sweeps (-m); this is a new run", file=sys.stderr
        )
        return [], None
    found = find_sweep_dir(root, stage, list(args.overrides))
    if found is None:
        print(
            f"mmtrain {stage}: resume=true: no earlier sweep with these overrides under {root}; "
            "starting a new one",
            file=sys.stderr,
        )
        return [], None
    print(f"mmtrain {stage}: resuming the sweep in {found}", flush=True)
    return [f"hydra.sweep.dir={_quote(str(found))}"], _jobs_in(found)


def resume_last(stage: str, line: CommandLine) -> list[str]:
    """``ckpt_path=last``: the ``last.ckpt`` of the newest run of the same experiment (``name``).

    ``fit`` also reuses that run's directory (``hydra.run.dir``), so the resumed run writes its
    checkpoints, logs and metrics where it started; other stages only read the checkpoint.

    Returns:
        The arguments that replace ``ckpt_path=last`` (added after it, so they win).

    Raises:
        SystemExit: (exit 1, one message) when no earlier run of the experiment has a
            ``last.ckpt``.
    """
    args, wanted = line.args, line.last("ckpt_path")
    if wanted is None or str(wanted.value()) != "last" or args.multirun or args.cfg or args.help:
        return []
    cfg = compose_command(stage, line, multirun=False)
    if cfg is None:
        return []
    given = line.last("hydra.run.dir")
    run_dir = Path(str(given.value())) if given is not None else None
    root = Path(str(cfg.paths.log_dir)) / str(cfg.name)
    # run directories are <log_dir>/<name>/<date>/<time>/ (multirun/ holds sweeps: not these)
    found = sorted(
        (p for p in root.glob("*/*/checkpoints/last.ckpt") if p.parts[-4] != "multirun"),
        key=lambda p: (p.parent.parent.parent.name, p.parent.parent.name),
    )
    if run_dir is not None and (run_dir / "checkpoints" / "last.ckpt").exists():
        found.append(run_dir / "checkpoints" / "last.ckpt")  # the run directory named wins
    if not found:
        named = f", nor in hydra.run.dir={run_dir}" if run_dir is not None else ""
        print(
            f"mmtrain {stage}: error: ckpt_path=last: no run of experiment {cfg.name!r} with "
            f"checkpoints/last.ckpt under {root}{named}",
            file=sys.stderr,
        )
        sys.exit(1)
    last = found[-1]
    if stage == "fit":  # a bad checkpoint fails before Hydra writes into its run directory
        from mmtrain.errors import MMTrainError
        from mmtrain.run import load_checkpoint

        try:
            load_checkpoint(last, mmap=True)
        except MMTrainError as err:
            print(f"mmtrain {stage}: error: {err}", file=sys.stderr)
            sys.exit(1)
    print(f"mmtrain {stage}: ckpt_path=last is {last}", flush=True)
    extra = [f"ckpt_path={_quote(str(last))}"]
    if stage == "fit" and run_dir is None:  # the same run directory: checkpoints, logs...
        extra.append(f"hydra.run.dir={_quote(str(last.parent.parent))}")
    return extra


def keep_run_config(stage: str, line: CommandLine, extra: list[str]) -> list[str]:
    """A run reusing a run directory (resuming it) keeps that directory's ``.hydra/``.

    Hydra writes the composed config into ``<run dir>/.hydra/`` before mmtrain sees it, so a
    resume with a bad override would replace the run's record of its own config. When the
    command names a ``hydra.run.dir`` that already has ``.hydra/config.yaml``, this run's
    config goes to ``.hydra/<stage>-<date>_<time>/`` instead.

    Args:
        stage: the stage.
        line: the command line after the stage.
        extra: the overrides mmtrain adds to it (``hydra.run.dir`` of ``ckpt_path=last``).

    Returns:
        ``[hydra.output_subdir=...]``, or nothing.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = [*line.parsed, *OverridesParser.create().parse_overrides(extra)]
    keys = {o.key_or_group: o for o in parsed if not o.is_delete()}
    run_dir = keys.get("hydra.run.dir")
    if run_dir is None or "hydra.output_subdir" in keys or line.args.multirun or line.args.cfg:
        return []
    if not (Path(str(run_dir.value())) / ".hydra" / "config.yaml").is_file():
        return []
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return [f"hydra.output_subdir=.hydra/{stage}-{stamp}"]


def _jobs_in(sweep_dir: Path) -> dict[str, list[str]]:
    from mmtrain.utils.sweep import job_overrides

    return job_overrides(sweep_dir)


def sweep_job(stage: str, cfg: Any, previous: dict[str, list[str]] | None) -> float | None:
    """One job of a sweep: a failure is recorded and reported, and the sweep goes on.

    With ``resume=true``, a job whose directory holds the same trial (same overrides) and its
    ``metrics.json`` returns the stored objective without training; one with
    ``checkpoints/last.ckpt`` but no ``metrics.json`` resumes training from that checkpoint.

    Args:
        stage: the stage.
        cfg: the job's composed config.
        previous: the overrides of the jobs already in the sweep directory (resume), or None.

    Returns:
        The value of ``optimized_metric``, or None when the job failed or did not report it
        (a failed trial for Optuna; NaN would end an Optuna sweep).
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from mmtrain.utils import sweep

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    num = hydra_cfg.job.num
    objective = cfg.get("optimized_metric")
    (job_dir / sweep.FAILED).unlink(missing_ok=True)
    resumed = False
    if cfg.get("resume") and previous is not None:
        before = previous.get(str(job_dir.resolve()))
        now = sweep.without_resume(list(hydra_cfg.overrides.task))
        same = before is not None and sweep.without_resume(before) == now
        last = job_dir / "checkpoints" / "last.ckpt"
        stored = sweep.read_metrics(job_dir) if same else None
        if stored is not None:
            print(f"mmtrain {stage}: job {num}: finished earlier, skipped ({job_dir})", flush=True)
            return sweep.objective_of(stored, objective)
        if before is not None and not same:
            stale = sweep.set_aside(job_dir)
            print(
                f"mmtrain {stage}: job {num}: {job_dir} held another trial; moved to {stale}",
                file=sys.stderr,
            )
        elif same and stage == "fit" and last.exists() and not cfg.get("ckpt_path"):
            with open_dict(cfg):
                cfg.ckpt_path = str(last)
            resumed = True
            print(f"mmtrain {stage}: job {num}: resuming from {last}", flush=True)

    from mmtrain.errors import Preempted
    from mmtrain.run import run

    try:
        metrics = run(stage, cfg)
        if resumed and sweep.objective_of(metrics, objective) is None:
            # The checkpoint was written after the last epoch: nothing was left to train, so
            # the final validation metrics come from validating it.
            metrics = {**metrics, **run("validate", cfg)}
            (job_dir / sweep.METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    except Preempted:  # the whole sweep was asked to stop; resume=true finishes it
        raise
    except Exception as err:  # any failure of one job; KeyboardInterrupt still ends the sweep
        path = sweep.record_failure(job_dir, err)
        print(
            f"mmtrain {stage}: job {num} failed: {sweep.one_line(err)} (see {path})",
            file=sys.stderr,
            flush=True,
        )
        return None
    return sweep.objective_of(metrics, objective)


def _null_group(line: CommandLine) -> str | None:
    """The first ``<group>=null`` override (Hydra answers it with a traceback), else None."""
    for override in line.parsed:
        key = override.key_or_group
        group = "/" in key or (config_dir() / key).is_dir()
        if group and not override.is_delete() and override.value() is None:
            return key
    return None


def _resume_hint(stop: Any) -> str:
    """The command that resumes a preempted run (fit, not requeued) in its run directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if stop.requeued:
        return ""
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return "; finish the sweep with the same command and resume=true"
    kept = [o for o in hydra_cfg.overrides.task if not o.startswith("ckpt_path=")]
    words = [
        "mmtrain",
        "fit",
        *kept,
        f"ckpt_path={_plain_or_quoted(stop.checkpoint)}",
        f"hydra.run.dir={_plain_or_quoted(hydra_cfg.runtime.output_dir)}",
    ]
    return "; resume with: " + " ".join(shlex.quote(w) for w in words)


def _plain_or_quoted(value: str) -> str:
    """A value for Hydra's override grammar: as it is when it is a plain path."""
    return value if re.fullmatch(r"[\w./-]+", value) else _quote(value)


def _end_distributed(before: dict[str, str | None]) -> None:
    """After a sweep job that ran DDP: leave its process group and restore the environment.

    Lightning's launcher sets ``LOCAL_RANK``, ``MASTER_PORT``... in this process when it starts
    the workers; left there, the next job of the sweep would take them as an external launcher
    and wait forever for workers nobody starts.
    """
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``mmtrain`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script = sys.argv[0]
    if argv and argv[0] not in STAGES and "LOCAL_RANK" in os.environ:
        # A DDP worker that Lightning started by re-running this command: the parent put its
        # stage in the environment and its run directory in hydra.run.dir (see task()).
        argv = [os.environ.get(STAGE_ENV, "fit"), *argv]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage == "report":  # not a Hydra stage: plots and a page from run directories
        from mmtrain.report import main as report_main

        return report_main(rest)
    if stage == "shard":  # not a Hydra stage: a data preset's splits as tar shards
        from mmtrain.data.shard import main as shard_main

        return shard_main(rest)
    if stage not in HYDRA_STAGES:
        close = difflib.get_close_matches(stage, HYDRA_STAGES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(
            f"mmtrain: unknown stage {stage!r}{hint} (choose from {', '.join(HYDRA_STAGES)})",
            file=sys.stderr,
        )
        sys.exit(2)

    modes = [
        flag
        for flag, names in (
            ("--multirun", ("-m", "--multirun")),
            ("--cfg", ("-c", "--cfg")),
            ("--info", ("-i", "--info")),
            ("--run", ("-r", "--run")),
        )
        if any(a in names or a.startswith(f"{names[-1]}=") for a in rest)
    ]
    if len(modes) > 1:  # Hydra raises this with a traceback
        print(f"mmtrain {stage}: {' and '.join(modes)} do not go together", file=sys.stderr)
        sys.exit(2)
    line = CommandLine.parse(rest)  # None: Hydra reports what does not parse, in one message
    null_group = _null_group(line) if line is not None else None
    if null_group:
        print(
            f"mmtrain {stage}: {null_group}=null: a config group is removed with "
            f"~{null_group} (e.g. mmtrain {stage} ~{null_group})",
            file=sys.stderr,
        )
        sys.exit(2)

    import hydra

    # trainer.fast_dev_run=true: Hydra needs a "+" for an argument that the YAML does not list
    added = plain_target_arguments(stage, line) if line is not None else {}
    if added:
        rest = [added.get(a, a) for a in rest]
        line = CommandLine.parse(rest)
    started = False
    extra: list[str] = []
    previous = None
    if line is not None:
        extra, previous = resume_sweep(stage, line)
        extra += resume_last(stage, line)
        extra += keep_run_config(stage, line, extra)

    def task(cfg: Any) -> Any:
        nonlocal started
        started = True
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import OmegaConf, open_dict, read_write

        # Lightning's DDP re-runs this command once per extra process with
        # hydra.run.dir=<this hydra.run.dir>: make that the job's own output directory (with a
        # timestamp re-evaluated, or under multirun, it would be another folder).
        hydra_cfg = HydraConfig.get()
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
            if added:  # .hydra/overrides.yaml: the overrides as the user typed them
                hydra_cfg.overrides.task = as_typed(list(hydra_cfg.overrides.task), added)
        if added and hydra_cfg.output_subdir is not None:
            folder = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir
            OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")
        os.environ[STAGE_ENV] = stage
        if hydra_cfg.mode == RunMode.MULTIRUN:  # the workers run this job, not the sweep
            sys.argv = [script, *config_args, *hydra_cfg.overrides.task]

        from mmtrain.errors import MMTrainError, Preempted

        try:
            if stage == "export":  # not a trainer stage: the checkpoint written in a format
                from mmtrain.export import export

                export(cfg)
                return None
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                launched = {k: os.environ.get(k) for k in DDP_ENV}
                try:
                    return sweep_job(stage, cfg, previous)
                finally:
                    _end_distributed(launched)
            from mmtrain.run import run
            from mmtrain.utils.sweep import objective_of

            metrics = run(stage, cfg)
        except MMTrainError as err:
            print(f"mmtrain {stage}: error: {err}", file=sys.stderr)
            sys.exit(1)
        except Preempted as stop:  # a signal: the checkpoint is written, the run (sweep) ends
            print(f"mmtrain {stage}: {stop.message}{_resume_hint(stop)}", file=sys.stderr)
            sys.exit(stop.exit_code)
        return objective_of(metrics, cfg.get("optimized_metric"))

    hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=stage)
    # argv[0] stays the command itself: Lightning's DDP launcher re-runs sys.argv.
    sys.argv = [script, *rest, *extra]
    config_args = []  # --config-dir DIR / -cd DIR, kept for the DDP workers of a sweep job
    for i, arg in enumerate(rest):
        if arg in ("--config-dir", "-cd") and i + 1 < len(rest):
            config_args += [arg, rest[i + 1]]
        elif arg.startswith("--config-dir="):
            config_args.append(arg)
    try:
        return hydra_main(task)()
    except SystemExit as exit_:
        if not started and exit_.code not in (0, None):
            overrides = line.overrides if line is not None else rest
            for hint in suggest_keys(stage, overrides):
                print(hint, file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
