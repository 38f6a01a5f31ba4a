"""`ckpt_path=last` resumes the newest run in its own directory; DDP keeps one directory a job."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import QUIET, TINY_DATA
from helpers.cli import explain_run, mmtrain, run_dirs

SMALL = [*TINY_DATA, "~head/caption", *QUIET]


def _epochs(run_dir) -> set[str]:
    with (run_dir / "csv/metrics.csv").open() as f:
        return {row["epoch"] for row in csv.DictReader(f) if row.get("val/loss")}


def test_ckpt_path_last_resumes_the_newest_run_in_place(scratch, tiny_data) -> None:
    first = mmtrain(scratch, "fit", *SMALL, "trainer.max_epochs=1", timeout=300)
    assert first.returncode == 0, explain_run(first)
    (run,) = run_dirs(scratch["out"], "metrics.json")
    assert _epochs(run) == {"0"}

    resumed = mmtrain(scratch, "fit", *SMALL, "trainer.max_epochs=2", "ckpt_path=last", timeout=300)
    assert resumed.returncode == 0, explain_run(resumed)
    assert f"ckpt_path=last is {run / 'checkpoints/last.ckpt'}" in resumed.stdout
    assert run_dirs(scratch["out"], "metrics.json") == [run]  # the same run directory
    assert _epochs(run) == {"0", "1"}  # the CSV log continues: epoch 0 is still there
    # The run's own record of its config stays; the resumed run's config goes beside it.
    original = (run / ".hydra/config.yaml").read_text()
    assert "max_epochs: 1" in original and "last.ckpt" not in original
    (resumed_dir,) = (run / ".hydra").glob("fit-*")
    config = (resumed_dir / "config.yaml").read_text()
    assert "last.ckpt" in config and "max_epochs: 2" in config


def test_ckpt_path_last_without_a_run_is_one_clear_error(scratch) -> None:
    proc = mmtrain(scratch, "fit", "ckpt_path=last", *QUIET)
    assert proc.returncode == 1, explain_run(proc)
    assert "ckpt_path=last: no run of experiment 'shapes'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ckpt_path_last_looks_in_the_run_directory_given(scratch, tiny_data) -> None:
    """A run directory named on the command line is searched first (it need not be under
    paths.log_dir), and a changed paths.log_dir is searched too."""
    short = [*SMALL, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    run = scratch["out"].parent / "elsewhere" / "run"
    first = mmtrain(scratch, "fit", *short, "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert first.returncode == 0, explain_run(first)
    again = [*short, "trainer.max_epochs=2", "ckpt_path=last", f"hydra.run.dir={run}"]
    resumed = mmtrain(scratch, "fit", *again, timeout=300)
    assert resumed.returncode == 0, explain_run(resumed)
    assert f"ckpt_path=last is {run / 'checkpoints/last.ckpt'}" in resumed.stdout
    assert _epochs(run) == {"0", "1"}

    logs = scratch["out"].parent / "logs"
    first = mmtrain(scratch, "fit", *short, "trainer.max_epochs=1", f"paths.log_dir={logs}")
    assert first.returncode == 0, explain_run(first)
    (run,) = run_dirs(logs, "metrics.json")
    again = [*short, "trainer.max_epochs=2", "ckpt_path=last", f"paths.log_dir={logs}"]
    resumed = mmtrain(scratch, "fit", *again, timeout=300)
    assert resumed.returncode == 0, explain_run(resumed)
    assert f"ckpt_path=last is {run / 'checkpoints/last.ckpt'}" in resumed.stdout
    assert run_dirs(logs, "metrics.json") == [run] and _epochs(run) == {"0", "1"}


def test_ddp_presets_run_two_cpu_processes(scratch, tiny_data) -> None:
    """Real 2-process DDP runs (gloo) in `make test`, so that the presets cannot rot: the GPU
    preset moved to CPU (its sync_batchnorm is switched off, in one line). (ddp_cpu runs in
    tests/run/test_fsdp.py, as fsdp2's reference.)"""
    short = [*SMALL, "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    for preset in (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],):
        run = scratch["out"] / preset[0].partition("=")[2]
        proc = mmtrain(scratch, "fit", *preset, *short, f"hydra.run.dir={run}", timeout=300)
        assert proc.returncode == 0, explain_run(proc)
        assert "MEMBER: 2/2" in proc.stderr + proc.stdout, explain_run(proc)  # two processes
        assert (run / "metrics.json").is_file() and (run / "checkpoints/last.ckpt").is_file()
        switched = "trainer.sync_batchnorm: off on CPU" in (run / "mmtrain.log").read_text()
        assert switched == (preset[0] == "trainer=ddp"), preset


DDP = ["trainer=ddp_cpu"]


@pytest.mark.slow
def test_ddp_on_cpu_writes_one_run_directory(scratch, tiny_data) -> None:
    proc = mmtrain(scratch, "fit", *DDP, *SMALL, "trainer.max_epochs=1", timeout=600)
    assert proc.returncode == 0, explain_run(proc)
    runs = [p.parent for p in scratch["out"].glob("**/.hydra")]
    assert len(runs) == 1, runs
    ddp = json.loads((runs[0] / "metrics.json").read_text())
    # Only rank 0 writes: one CSV row per logged step, not one per process.
    with (runs[0] / "csv/metrics.csv").open() as f:
        epochs = [row["epoch"] for row in csv.DictReader(f) if row.get("val/loss")]
    assert epochs == ["0"], epochs
    # The metrics are synchronised: each rank saw half the validation split, and the logged
    # values are those of the whole split, as one process computes them from the checkpoint.
    single = mmtrain(
        scratch, "validate", *SMALL, f"ckpt_path={runs[0] / 'checkpoints/last.ckpt'}",
        timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, explain_run(single)
    (validated,) = [p for p in run_dirs(scratch["out"], "metrics.json") if p != runs[0]]
    one = json.loads((validated / "metrics.json").read_text())
    for key in ("val/label/accuracy", "val/loss"):
        assert one[key] == pytest.approx(ddp[key], rel=1e-5), key


@pytest.mark.slow
def test_ddp_sweep_writes_one_directory_per_job(scratch, tiny_data) -> None:
    proc = mmtrain(
        scratch, "fit", "-m", "optimizer.lr=1e-3,1e-4", *DDP, *SMALL, "trainer.max_epochs=1",
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, explain_run(proc)
    runs = sorted(p.parent for p in scratch["out"].glob("**/.hydra"))
    assert [p.name for p in runs] == ["0", "1"], runs  # no stray folders of the workers
    assert all((p / "metrics.json").is_file() for p in runs)
