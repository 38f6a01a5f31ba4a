"""Captioning from the command line on a tiny COCO in the official layout: fit -> test -> predict.

Three subprocesses (~8 s each): the user's path for `experiment=coco_caption`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUIET
from helpers.cli import explain_run, run_dirs, run_mmtrain
from helpers.coco import write_coco

TINY = [
    "data.batch_size=2",
    "data.num_workers=0",
    "data.image.size=64",
    "data.targets.caption.tokenizer.min_freq=1",
    "encoder/image=cnn",
    "head.caption.dim=32",
    "head.caption.num_heads=2",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
]


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("coco_cli")
    root = tmp / "coco"
    expected = write_coco(root)
    dirs = {"root": root, "cwd": tmp / "cwd", "out": tmp / "outputs", "data": tmp / "data"}
    dirs["cwd"].mkdir()
    proc = run_mmtrain(
        ["fit", "experiment=coco_caption", f"data.root={root}", *TINY, *QUIET],
        dirs["cwd"],
        dirs["data"],
        dirs["out"],
    )
    assert proc.returncode == 0, explain_run(proc)
    (run_dir,) = run_dirs(dirs["out"], "checkpoints/last.ckpt")
    dirs["run"] = run_dir
    dirs["val_ids"] = sorted(expected["val"])
    return dirs


def test_fit_logs_caption_metrics(coco_run):
    metrics = json.loads((coco_run["run"] / "metrics.json").read_text())
    for name in ("bleu1", "bleu4", "rougeL", "cider"):
        assert f"val/caption/{name}" in metrics, metrics
    state = json.loads((coco_run["run"] / "data_state.json").read_text())
    assert state["targets"]["caption"]["tokenizer"]["vocab"][:4] == [
        "<pad>",
        "<unk>",
        "<bos>",
        "<eos>",
    ]


def test_test_writes_coco_results_and_metrics(coco_run):
    ckpt = coco_run["run"] / "checkpoints" / "last.ckpt"
    proc = run_mmtrain(
        ["test", f"ckpt_path={ckpt}", "experiment=coco_caption", *QUIET],
        coco_run["cwd"],
        coco_run["data"],
        coco_run["out"],
    )
    assert proc.returncode == 0, explain_run(proc)
    (test_dir,) = run_dirs(coco_run["out"], "predictions/captions_test.json")
    results = json.loads((test_dir / "predictions" / "captions_test.json").read_text())
    # The official results format: one entry per image, integer ids, strings.
    assert sorted(r["image_id"] for r in results) == coco_run["val_ids"]
    assert all(isinstance(r["caption"], str) for r in results)
    metrics = json.loads((test_dir / "metrics.json").read_text())
    assert {"test/caption/bleu4", "test/caption/cider", "test/caption/rougeL"} <= set(metrics)


def test_predict_captions_a_folder_of_images(coco_run):
    ckpt = coco_run["run"] / "checkpoints" / "best.ckpt"
    images = coco_run["root"] / "val2017"
    proc = run_mmtrain(
        ["predict", f"ckpt_path={ckpt}", f"input={images}", *QUIET],
        coco_run["cwd"],
        coco_run["data"],
        coco_run["out"],
    )
    assert proc.returncode == 0, explain_run(proc)
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    files = sorted(str(p) for p in images.glob("*.jpg"))
    assert [row["file"] for row in printed] == files
    assert all(isinstance(row["caption"], str) for row in printed)
    (pred_dir,) = run_dirs(coco_run["out"], "predictions/predict.jsonl")
    written = (pred_dir / "predictions" / "predict.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in written] == printed


def test_predict_input_that_does_not_exist_fails_cleanly(coco_run, tmp_path):
    ckpt = coco_run["run"] / "checkpoints" / "last.ckpt"
    proc = run_mmtrain(
        ["predict", f"ckpt_path={ckpt}", f"input={tmp_path / 'nope'}", *QUIET],
        coco_run["cwd"],
        coco_run["data"],
        coco_run["out"],
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, explain_run(proc)
    assert f"input: no such file or folder: {tmp_path / 'nope'}" in proc.stderr
