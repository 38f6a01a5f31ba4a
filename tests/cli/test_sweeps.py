"""Sweeps: an Optuna search, a failing job that does not stop a sweep, resuming a sweep.

Run as a user runs them (``mmtrain fit -m ...`` in subprocesses, on the tiny shapes data). Three
sweeps and a resume, each process ~5 s of imports plus a second or two a job; the summary's
sorting is also checked in-process on hand-written job directories (no torch).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import QUIET, TINY_DATA
from helpers.cli import explain_run, mmtrain

from mmtrain.utils.sweep import FAILED, SUMMARY, write_summary

# A basic sweep whose last job fails inside the job (the module refuses modality_dropout >= 1),
# with checkpoints (debug=limit), so that a job can be resumed from checkpoints/last.ckpt.
FAILING_SWEEP = [
    "fit",
    "-m",
    "model.modality_dropout=0.0,0.5,1.5",
    "debug=limit",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",  # a Trainer argument the YAML does not list: no "+"
    *TINY_DATA,
    *QUIET,
]


def _sweep_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("**/multirun.yaml"))


def _summary(sweep: Path) -> list[dict[str, str]]:
    with (sweep / SUMMARY).open(newline="") as f:
        return list(csv.DictReader(f))


# ---- Optuna -------------------------------------------------------------------------------------
def test_optuna_sweep_writes_a_summary(scratch, tiny_data):
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason="pip install hydra-optuna-sweeper"
    )
    proc = mmtrain(
        scratch,
        "fit",
        "-m",
        "hparams_search=shapes_optuna",
        "hydra.sweeper.n_trials=3",
        "debug=fdr",
        *TINY_DATA,
        *QUIET,
        timeout=300,
    )
    assert proc.returncode == 0, explain_run(proc)
    (sweep,) = _sweep_dirs(scratch["out"])
    rows = _summary(sweep)
    assert [r["status"] for r in rows] == ["ok"] * 3, rows
    assert sorted(r["job"] for r in rows) == ["0", "1", "2"]
    for column in ("optimizer.lr", "fusion", "model.modality_dropout", "val/label/accuracy"):
        assert column in rows[0], rows[0].keys()
    scores = [float(r["val/label/accuracy"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # best first
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(scores)
    assert "sweep summary" in proc.stdout and "optimizer.lr" in proc.stdout


# ---- submitit: the launcher of SLURM sweeps, run here with its local executor -----------------
@pytest.mark.slow  # ~40 s: every job is a new process that imports torch
def test_submitit_launcher_runs_one_job_a_directory(scratch, tiny_data):
    """``hydra/launcher=submitit_slurm`` submits each job with sbatch; ``submitit_local`` runs
    the same code path (pickled task function, one process a job) without SLURM."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher"
    )
    proc = mmtrain(
        scratch, "fit", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
        "optimizer.lr=1e-3,1e-4", "debug=fdr", *TINY_DATA, *QUIET, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, explain_run(proc)
    (sweep,) = _sweep_dirs(scratch["out"])
    rows = _summary(sweep)
    assert sorted((r["job"], r["status"]) for r in rows) == [("0", "ok"), ("1", "ok")], rows
    assert all((sweep / job / "metrics.json").is_file() for job in ("0", "1"))
    assert (sweep / ".submitit").is_dir()  # submitit's own logs of each job


# ---- a failing job; resuming --------------------------------------------------------------------
@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory, session_dirs, tiny_data) -> dict:
    """The FAILING_SWEEP, run once: its process, its sweep directory, its scratch dirs."""
    tmp = tmp_path_factory.mktemp("sweep")
    scratch = {"cwd": tmp / "cwd", "data": session_dirs["data"], "out": tmp / "outputs"}
    scratch["cwd"].mkdir()
    proc = mmtrain(scratch, *FAILING_SWEEP, timeout=300)
    (sweep,) = _sweep_dirs(scratch["out"])
    return {"proc": proc, "sweep": sweep, "scratch": scratch}


def test_a_failed_job_does_not_stop_the_sweep(failing_sweep):
    proc, sweep = failing_sweep["proc"], failing_sweep["sweep"]
    # Exit 0: the sweep ran to its end; the failed job is in the summary and in failed.txt.
    assert proc.returncode == 0, explain_run(proc)
    assert (sweep / "0/metrics.json").is_file() and (sweep / "1/metrics.json").is_file()
    failed = (sweep / "2" / FAILED).read_text()
    assert failed.startswith("MMTrainError: model: modality_dropout must be in [0, 1), got 1.5")
    assert "Traceback" in failed
    lines = [ln for ln in proc.stderr.splitlines() if "job 2 failed" in ln]
    assert len(lines) == 1 and str(sweep / "2" / FAILED) in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    rows = _summary(sweep)
    assert [(r["job"], r["status"]) for r in rows][-1] == ("2", "failed")
    assert {r["job"]: r["model.modality_dropout"] for r in rows} == {
        "0": "0.0",
        "1": "0.5",
        "2": "1.5",
    }
    assert "modality_dropout must be in" in rows[-1]["error"]
    # .hydra/overrides.yaml records what the user typed (sweep resume matches on it)
    typed = yaml.safe_load((sweep / "0/.hydra/overrides.yaml").read_text())
    assert "trainer.num_sanity_val_steps=0" in typed, typed
    assert all(r["trainer.num_sanity_val_steps"] == "0" for r in rows)
    assert all(r["val/label/accuracy"] for r in rows[:2])


def test_resume_skips_finished_jobs_and_resumes_the_rest(failing_sweep):
    sweep, scratch = failing_sweep["sweep"], failing_sweep["scratch"]
    # Job 1 "killed" after its last checkpoint, before writing metrics.json.
    (sweep / "1/metrics.json").unlink()
    assert (sweep / "1/checkpoints/last.ckpt").is_file()
    finished = (sweep / "0/metrics.json").stat().st_mtime_ns
    overrides = {n: (sweep / n / ".hydra/overrides.yaml").read_text() for n in "012"}

    proc = mmtrain(scratch, *FAILING_SWEEP, "resume=true", timeout=300)
    assert proc.returncode == 0, explain_run(proc)
    assert _sweep_dirs(scratch["out"]) == [sweep], "resume=true started a new sweep directory"
    assert f"resuming the sweep in {sweep}" in proc.stdout
    # Job 0: finished, skipped (metrics.json untouched).
    assert "job 0: finished earlier, skipped" in proc.stdout
    assert (sweep / "0/metrics.json").stat().st_mtime_ns == finished
    # Job 1: resumed from its checkpoint; its metrics are back.
    assert f"job 1: resuming from {sweep / '1/checkpoints/last.ckpt'}" in proc.stdout
    assert "val/label/accuracy" in json.loads((sweep / "1/metrics.json").read_text())
    # Job 2 ran again (and failed again). Job numbers map to the same trials as before.
    assert "job 2 failed" in proc.stderr and (sweep / "2" / FAILED).is_file()
    for n in "012":
        now = yaml.safe_load((sweep / n / ".hydra/overrides.yaml").read_text())
        assert now == [*yaml.safe_load(overrides[n]), "resume=True"], n
    assert [r["status"] for r in _summary(sweep)] == ["ok", "ok", "failed"]


def test_resume_leaves_config_errors_to_hydra(scratch):
    """No torch: a config that does not compose is reported as without resume=true."""
    proc = mmtrain(scratch, "fit", "-m", "resume=true", "fusion=nope")
    assert proc.returncode != 0 and "fusion/nope" in proc.stderr, explain_run(proc)
    assert "Traceback" not in proc.stderr and "resum" not in proc.stdout + proc.stderr


# ---- the summary, in-process ----------------------------------------------------------------
def _job(
    sweep: Path, num: int, overrides: list[str], metrics: dict | None, error: str = ""
) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra/overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra/hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error:
        (job / FAILED).write_text(f"{error}\n\nTraceback ...\n")


def test_summary_sorts_by_the_objective_failed_jobs_last(tmp_path):
    _job(tmp_path, 0, ["lr=1", "x=a"], {"acc": 0.5, "loss": 1.0})
    _job(tmp_path, 1, ["lr=2", "x=a"], None, error="ValueError: bad")
    _job(tmp_path, 2, ["lr=3", "x=a"], {"acc": 0.9, "loss": 2.0})
    _job(tmp_path, 3, ["lr=4", "x=a", "resume=true"], {"loss": 3.0})  # no objective
    _job(tmp_path, 4, ["lr=5", "x=a"], None)  # killed
    path, table, failed = write_summary(tmp_path, "acc")
    rows = _summary(tmp_path)
    assert path == tmp_path / SUMMARY and failed == 1
    assert [(r["job"], r["status"]) for r in rows] == [
        ("2", "ok"),
        ("0", "ok"),
        ("3", "ok"),
        ("4", "incomplete"),
        ("1", "failed"),
    ]
    assert list(rows[0]) == ["job", "status", "lr", "x", "acc", "loss", "error"]
    assert rows[-1]["error"] == "ValueError: bad" and rows[0]["acc"] == "0.9"
    # The table: what varies (lr, not x), the objective; aligned columns.
    header, *lines = table.splitlines()
    assert header.split() == ["job", "status", "lr", "acc"] and len(lines) == 5
    assert lines[0].split() == ["2", "ok", "3", "0.9"]
    assert len({ln.index("ok") for ln in lines if " ok " in ln}) == 1
    _, _, _ = write_summary(tmp_path, "loss", maximize=False)
    assert [r["job"] for r in _summary(tmp_path)][:3] == ["0", "2", "3"]


def test_the_summary_and_the_report_read_jobs_alike(tmp_path):
    """One reader of job directories: the same error line (the first non-empty one) and the
    same overrides (``resume=``, also as ``+resume=``, left out) for both."""
    from mmtrain.report import write_report

    _job(tmp_path, 0, ["lr=1", "+resume=true"], {"acc": 0.5})
    _job(tmp_path, 1, ["lr=2", "resume=True"], None)
    (tmp_path / "1" / FAILED).write_text("\n  \nMMTrainError: out of disk\n\nTraceback ...\n")
    write_summary(tmp_path, "acc")
    rows = {r["job"]: r for r in _summary(tmp_path)}
    assert set(rows["0"]) == {"job", "status", "lr", "acc", "error"}
    assert rows["1"]["error"] == "MMTrainError: out of disk"
    page = write_report(tmp_path).read_text()
    assert "MMTrainError: out of disk" in page and "resume" not in page
