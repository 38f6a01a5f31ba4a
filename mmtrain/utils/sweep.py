"""Sweeps (``mmtrain <stage> -m ...``): failed jobs, resuming a sweep, the sweep summary.

A sweep directory holds one job directory per job number (``<sweep dir>/<n>/``) with
``.hydra/overrides.yaml`` and, once the job is done, ``metrics.json`` (finished) or
``failed.txt`` (the error and its traceback). :class:`SweepSummary` turns them into
``<sweep dir>/summary.csv``. Nothing here imports torch or Lightning: Hydra instantiates the
callback for every run, and ``mmtrain`` composes configs with it before anything heavy.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RESUME_KEY = "resume"
FAILED = "failed.txt"
METRICS = "metrics.json"
SUMMARY = "summary.csv"
STATUS_ORDER = {"ok": 0, "incomplete": 1, "failed": 2}


def without_resume(overrides: list[str]) -> list[str]:
    """The overrides less ``resume=...`` (so a resumed sweep matches the sweep it resumes)."""
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != RESUME_KEY]


def objective_of(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value of the optimized metric, or None when it is missing or not finite.

    None rather than NaN: the Optuna sweeper marks a trial whose value is not float-castable as
    failed and carries on, whereas a NaN makes its ``study.tell`` raise and ends the sweep.
    """
    value = metrics.get(name) if name else None
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_metrics(job_dir: Path) -> dict[str, Any] | None:
    """A job's ``metrics.json`` (it finished), or None when absent or unreadable."""
    try:
        metrics = json.loads((job_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def record_failure(job_dir: Path, err: BaseException) -> Path:
    """Write ``<job dir>/failed.txt``: a one-line error, then its traceback.

    Args:
        job_dir: the job's output directory.
        err: the exception being handled (call this inside the ``except`` block).

    Returns:
        The path of ``failed.txt``.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / FAILED
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    path.write_text(f"{one_line(err)}\n\n{''.join(lines)}")
    return path


def one_line(err: BaseException) -> str:
    """``Type: first line of the message``."""
    message = str(err).strip().splitlines()
    return f"{type(err).__name__}: {message[0]}" if message else type(err).__name__


# ---- resuming a sweep ---------------------------------------------------------------------------
def find_sweep_dir(root: Path, stage: str, task_overrides: list[str]) -> Path | None:
    """The latest sweep under ``root`` of the same stage with the same task overrides.

    Args:
        root: ``<paths.log_dir>/<name>/multirun``; sweeps are ``<root>/<date>/<time>/``.
        stage: the primary config (``fit``...), as stored in ``multirun.yaml``.
        task_overrides: the overrides of the new sweep; ``resume=...`` is ignored on both sides.

    Returns:
        The sweep directory whose ``multirun.yaml`` was written last, or None.
    """
    wanted = without_resume(task_overrides)
    found = []
    for path in root.glob("*/*/multirun.yaml"):
        try:
            hydra_node = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
        except (OSError, yaml.YAMLError):
            continue
        stored = (hydra_node.get("overrides") or {}).get("task") or []
        if (hydra_node.get("job") or {}).get("config_name") != stage:
            continue
        if without_resume([str(o) for o in stored]) == wanted:
            found.append((path.stat().st_mtime, path.parent))
    return max(found)[1] if found else None


def job_overrides(sweep_dir: Path) -> dict[str, list[str]]:
    """``{resolved job dir: its task overrides}`` of the jobs already in a sweep directory.

    Read before Hydra starts the jobs, which rewrite ``.hydra/overrides.yaml``: a resumed job
    compares them with its own to make sure its directory holds the same trial.
    """
    out = {}
    for path in sweep_dir.glob("**/.hydra/overrides.yaml"):
        try:
            overrides = yaml.safe_load(path.read_text()) or []
        except (OSError, yaml.YAMLError):
            continue
        out[str(path.parent.parent.resolve())] = [str(o) for o in overrides]
    return out


def set_aside(job_dir: Path) -> Path:
    """Move the outputs of an earlier, different trial out of the way of a job.

    Everything in ``job_dir`` but ``.hydra/`` (just written for this job) and the open log files
    goes to ``<job dir>/stale-<time>/``.

    Returns:
        The folder the old outputs are now in.
    """
    stale = job_dir / f"stale-{time.strftime('%Y%m%d-%H%M%S')}"
    for path in list(job_dir.iterdir()):
        if path.name == ".hydra" or path.suffix == ".log" or path.name.startswith("stale-"):
            continue
        stale.mkdir(exist_ok=True)
        shutil.move(str(path), str(stale / path.name))
    return stale


# ---- the summary --------------------------------------------------------------------------------
@dataclass
class Job:
    """What a job directory says about its job: number, directory, status (``ok``,
    ``incomplete``, ``failed``), overrides (``resume=`` left out), final metrics, error line."""

    num: int
    dir: Path
    status: str
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def split_override(override: str) -> tuple[str, str]:
    """``key=value`` as ``(key, value)``; ``(override, "")`` without ``=``."""
    key, sep, value = override.partition("=")
    return (key, value) if sep else (override, "")


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def read_job(job_dir: Path) -> Job:
    """Read one job directory (``.hydra/``, ``metrics.json``, ``failed.txt``): the one reader
    of job directories, for the sweep summary and ``mmtrain report``; unreadable files read as
    missing."""
    hydra_yaml = _read_yaml(job_dir / ".hydra/hydra.yaml")
    try:
        num = int(hydra_yaml["hydra"]["job"]["num"])
    except (KeyError, TypeError, ValueError):
        num = int(job_dir.name) if job_dir.name.isdigit() else -1
    job = Job(num=num, dir=job_dir, status="incomplete")
    overrides = _read_yaml(job_dir / ".hydra/overrides.yaml")
    items = [str(o) for o in overrides] if isinstance(overrides, list) else []
    job.overrides = dict(split_override(o) for o in without_resume(items))
    if (job_dir / FAILED).is_file():
        job.status = "failed"
        try:
            lines = (job_dir / FAILED).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        job.error = next((line for line in lines if line.strip()), "failed")
    elif (metrics := read_metrics(job_dir)) is not None:
        job.status = "ok"
        job.metrics = metrics
    return job


def read_jobs(sweep_dir: Path) -> list[Job]:
    """The jobs of a sweep directory (the folders below it with ``.hydra/overrides.yaml``), by
    number."""
    dirs = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")} - {sweep_dir}
    return sorted((read_job(d) for d in dirs), key=lambda j: (j.num, str(j.dir)))


def sort_jobs(jobs: list[Job], objective: str | None, maximize: bool) -> list[Job]:
    """Best first by the objective; jobs without it next, then incomplete, then failed ones."""

    def key(job: Job) -> tuple[int, int, float, int]:
        value = objective_of(job.metrics, objective)
        score = 0.0 if value is None else (-value if maximize else value)
        return (STATUS_ORDER[job.status], value is None, score, job.num)

    return sorted(jobs, key=key)


def write_summary(
    sweep_dir: Path, objective: str | None, maximize: bool = True
) -> tuple[Path, str, int] | None:
    """Write ``<sweep dir>/summary.csv`` and return it with a printable table.

    Args:
        sweep_dir: the sweep directory; its job directories are found by ``.hydra/``.
        objective: the optimized metric (rows are sorted by it), or None.
        maximize: sort descending (True) or ascending.

    Returns:
        ``(path of summary.csv, aligned table, number of failed jobs)``, or None when the sweep
        has no job directory.
    """
    jobs = read_jobs(sweep_dir)
    if not jobs:
        return None
    jobs = sort_jobs(jobs, objective, maximize)
    override_keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    metric_keys = sorted({k for j in jobs for k in j.metrics})
    if objective in metric_keys:  # the objective first among the metrics
        metric_keys.remove(objective)
        metric_keys.insert(0, objective)
    header = ["job", "status", *override_keys, *metric_keys, "error"]
    rows = [
        [
            str(j.num),
            j.status,
            *(j.overrides.get(k, "") for k in override_keys),
            *(j.metrics.get(k, "") for k in metric_keys),
            j.error,
        ]
        for j in jobs
    ]
    path = sweep_dir / SUMMARY
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    # The table shows what varies: overrides that differ between jobs and the objective.
    varying = [k for k in override_keys if len({j.overrides.get(k) for j in jobs}) > 1]
    shown = ["job", "status", *varying, *([objective] if objective in metric_keys else [])]
    table_rows = [[_fmt(row[header.index(c)]) for c in shown] for row in rows]
    return path, _table(shown, table_rows), sum(j.status == "failed" for j in jobs)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
        for line in [header, *rows]
    ]
    return "\n".join(lines)


class SweepSummary(Callback):
    """Hydra callback: after a multirun, ``<sweep dir>/summary.csv`` and a table on stdout.

    Before the sweep it saves ``<sweep dir>/multirun.yaml`` for sweepers that do not.

    Registered in ``configs/hydra/default.yaml`` under ``hydra.callbacks``; Hydra instantiates
    it itself (``hydra.utils.instantiate``), not through mmtrain's allow-list. One row per job:
    job number, status (ok, failed, incomplete), the job's overrides, its final metrics, the
    error of a failed job; sorted by ``optimized_metric`` (descending unless the sweeper's
    ``direction`` is ``minimize``), failed jobs last.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Save ``<sweep dir>/multirun.yaml`` (Hydra's basic sweeper does, Optuna's does not).

        ``resume=true`` finds an earlier sweep by it.
        """
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write and print the summary of the sweep that just ended."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        objective = OmegaConf.select(config, "optimized_metric", default=None)
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default="maximize")
        written = write_summary(sweep_dir, objective, maximize=str(direction) != "minimize")
        if written is None:
            return
        path, table, failed = written
        note = f" ({failed} failed)" if failed else ""
        print(f"\nsweep summary{note}: {path}\n{table}", flush=True)
