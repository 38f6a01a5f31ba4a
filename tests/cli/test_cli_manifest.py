"""Training on your own data from the command line: manifests of real image and WAV files.

A user's project folder: ``data/train.jsonl``, ``data/val.csv`` and the media next to them;
``mmtrain`` runs in that folder with manifest paths relative to it. Three processes: the
shortest command, a ``data=manifest`` fit, and a test from its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUIET
from helpers.cli import explain_run, run_dirs, run_mmtrain
from helpers.manifest import sample_rows, write_manifests, write_rows

SMALL = ["data.image.size=32", "data.num_workers=0", "data.batch_size=4"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, session_dirs) -> dict[str, Path]:
    """A project folder (the working directory) with its manifests under ``data/``."""
    root = tmp_path_factory.mktemp("project")
    write_manifests(root / "data", n_train=6, n_val=3)
    rows = sample_rows(root / "data", "test", 3)
    rows[1]["audio"] = "audio/lost.wav"  # line 2: a missing file
    write_rows(root / "data" / "test.jsonl", rows)
    return {"cwd": root, "data": session_dirs["data"], "out": root / "outputs"}


def mmtrain(project: dict[str, Path], *args: str):
    return run_mmtrain(list(args), project["cwd"], project["data"], project["out"])


def test_the_shortest_command_classifies_label(project):
    """`mmtrain fit experiment=manifest_label data.train=... data.val=...` and nothing else
    (one epoch, quiet, to keep the test short)."""
    proc = mmtrain(
        project,
        "fit",
        "experiment=manifest_label",
        "data.train=data/train.jsonl",
        "data.val=data/val.csv",
        "trainer.max_epochs=1",
        *QUIET,
    )
    assert proc.returncode == 0, explain_run(proc)
    (run,) = run_dirs(project["out"] / "manifest_label", "checkpoints/last.ckpt")
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["val/label/accuracy"] <= 1.0 and "train/loss/label" in metrics
    assert not any(k.startswith(("val/caption", "train/loss/caption")) for k in metrics)
    state = json.loads((run / "data_state.json").read_text())
    assert state["targets"] == {"label": {"classes": ["0", "2", "10"]}}


@pytest.fixture(scope="module")
def fitted(project) -> Path:
    """`mmtrain fit data=manifest ... ~head/caption debug=limit`: its run directory."""
    proc = mmtrain(
        project,
        "fit",
        "data=manifest",
        "data.train=data/train.jsonl",
        "data.val=data/val.csv",
        "data.test=data/test.jsonl",
        "data.on_error=skip",
        "data.max_skipped=1",
        "~head/caption",
        "debug=limit",
        *SMALL,
        *QUIET,
    )
    assert proc.returncode == 0, explain_run(proc)
    (run,) = run_dirs(project["out"] / "shapes", "checkpoints/last.ckpt")
    return run


def test_fit_then_test_on_a_manifest(project, fitted):
    metrics = json.loads((fitted / "metrics.json").read_text())
    assert 0.0 <= metrics["val/label/accuracy"] <= 1.0

    proc = mmtrain(project, "test", f"ckpt_path={fitted / 'checkpoints/last.ckpt'}", *QUIET)
    assert proc.returncode == 0, explain_run(proc)
    runs = [r for r in run_dirs(project["out"], "metrics.json") if r != fitted]
    run = max(runs, key=lambda r: (r / "metrics.json").stat().st_mtime)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test/label/accuracy"] <= 1.0, metrics
    # data.on_error=skip: line 2 of the test manifest (a missing WAV) is left out and reported.
    lines = (run / "predictions/label_test.jsonl").read_text().splitlines()
    assert [json.loads(ln)["id"] for ln in lines] == ["test_0", "test_2"]
    assert "skipped 1 of 3 samples of the test split (budget 1)" in proc.stdout + proc.stderr
    assert "data/test.jsonl:2: audio file not found" in proc.stdout + proc.stderr


def test_a_bad_line_stops_the_run_naming_file_and_line(project):
    """The default data.on_error=raise, with the preset's worker processes: one clean line."""
    proc = mmtrain(
        project,
        "fit",
        "experiment=manifest_label",
        "data.train=data/test.jsonl",
        "data.val=data/val.csv",
        *QUIET,
    )
    assert proc.returncode == 1, explain_run(proc)
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert errors == [
        "mmtrain fit: error: data/test.jsonl:2: audio file not found: data/audio/lost.wav"
    ], explain_run(proc)
    assert "Traceback" not in proc.stderr + proc.stdout


def test_predict_on_images_from_a_manifest_checkpoint(project, fitted):
    """`predict input=<folder>` replaces the manifests: data.train/val/test are not read."""
    proc = mmtrain(
        project, "predict", f"ckpt_path={fitted / 'checkpoints/last.ckpt'}", "input=data/images"
    )
    assert proc.returncode == 0, explain_run(proc)
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{"file"')]
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"0", "2", "10"}, proc.stdout


def test_skipped_counts_in_metrics(project, fitted):
    metrics = json.loads((fitted / "metrics.json").read_text())
    assert metrics["train/skipped"] == 0.0 and metrics["val/skipped"] == 0.0
