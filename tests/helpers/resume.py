"""The exact-resume runs: ``mmtrain fit`` in a subprocess with ``tests/resume_probe.py``, which
records every training step (sample ids and loss) and sends signals, and the comparison of a
stopped-and-resumed run with the uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
from conftest import QUIET, TESTS, TINY_DATA

from helpers.cli import MMTRAIN

STEPS_PER_EPOCH = 6  # 24 training samples, batches of 4
RUN = [
    *TINY_DATA,
    *QUIET,
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "data.num_workers=2",
    "data.audio.freq_mask=4",
    "encoder.image.dropout=0.2",
    "model.modality_dropout=0.3",
    "scheduler=cosine",
    "+callbacks.probe._target_=resume_probe.ResumeProbe",
    "allowed_targets=[resume_probe.]",
]


def popen_fit(args: list[str], data: Path, env: dict[str, str] | None = None, **kw):
    """``mmtrain fit <args>`` in a subprocess that can import the probe."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
        "MMTRAIN_DATA_DIR": str(data),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    return subprocess.Popen(
        [*MMTRAIN, "fit", *args],  # the console script: DDP re-runs the command
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def fit(run_dir: Path, data: Path, *extra: str, env: dict[str, str] | None = None):
    proc = popen_fit(
        [*RUN, f"+callbacks.probe.record={run_dir}.jsonl", f"hydra.run.dir={run_dir}", *extra],
        data,
        env,
    )
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def steps(record: Path) -> dict[int, dict]:
    """The probe's rows by step; a step recorded twice would be a resume that repeated it."""
    rows: dict[int, dict] = {}
    for line in record.read_text().splitlines():
        row = json.loads(line)
        assert row["step"] not in rows, f"step {row['step']} trained twice"
        rows[row["step"]] = row
    return rows


def assert_same_run(reference: Path, resumed: Path) -> None:
    """Same batches and losses at every step; same weights, optimizer and scheduler state."""
    want, got = steps(Path(f"{reference}.jsonl")), steps(Path(f"{resumed}.jsonl"))
    assert sorted(got) == sorted(want) == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    for step, row in want.items():
        assert got[step] == row, f"step {step} differs:\n{row}\n{got[step]}"
    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, state in a["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer_states"][0]["state"][key][name]), (key, name)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def explain_exit(code: int, out: str, err: str) -> str:
    return f"exit {code}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-3000:]}"
