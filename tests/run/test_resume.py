"""Exact resume: a run stopped by a signal and resumed in a new process continues bit for bit.

The end-to-end tests run ``mmtrain fit`` in subprocesses with ``tests/resume_probe.py``, which
records every training step (sample ids and loss) and sends the signals. Shuffling,
augmentation (random crops, SpecAugment), dropout, modality dropout, a cosine schedule and two
data-loader workers are all on, so any random state or data position that a resume failed to
restore shows up as a difference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_DATA
from helpers.resume import (
    RUN,
    STEPS_PER_EPOCH,
    assert_same_run,
    explain_exit,
    fit,
    popen_fit,
)

from mmtrain.data.sampling import POSITION, ResumableSampler, seeded


@pytest.fixture(scope="module")
def reference(tmp_path_factory, session_dirs, tiny_data) -> Path:
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("resume") / "reference"
    code, out, err = fit(run_dir, session_dirs["data"])
    assert code == 0, explain_exit(code, out, err)
    return run_dir


# ---- end to end ----------------------------------------------------------------------------------
def test_runs_stopped_by_signals_resume_bit_for_bit(reference, session_dirs, tmp_path):
    """Stopped mid-epoch (SIGTERM), on an epoch's last batch (SIGUSR1: the stop waits for the
    epoch's end) and mid-epoch again, each time resumed in a new process."""
    run_dir, data = tmp_path / "stopped", session_dirs["data"]
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = [f"ckpt_path={last}"]
    stops = [([], 5, "SIGTERM"), (resume, STEPS_PER_EPOCH, "SIGUSR1"), (resume, 14, "SIGTERM")]
    for extra, step, name in stops:
        signal_at = [f"+callbacks.probe.signal_at=[{step}]", f"+callbacks.probe.signal_name={name}"]
        code, out, err = fit(run_dir, data, *extra, *signal_at)
        signum = getattr(signal, name)
        assert code == 128 + signum, explain_exit(code, out, err)
        lines = [ln for ln in err.splitlines() if ln.startswith("mmtrain fit: stopped by")]
        assert len(lines) == 1, err
        assert f"stopped by {name} at step {step} " in lines[0] and str(last) in lines[0]
        assert "resume with: mmtrain fit" in lines[0] and "Traceback" not in err
    code, out, err = fit(run_dir, data, *resume)
    assert code == 0, explain_exit(code, out, err)
    assert_same_run(reference, run_dir)
    # A resume with a bad override fails at once and leaves the run directory as it was.
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, out, err = fit(run_dir, data, *resume, "trainer.max_epochs=abc")
    assert code == 1 and "trainer.max_epochs" in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == before[
        run_dir / ".hydra/config.yaml"
    ]


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_stops_within_seconds_and_resumes(
    reference, session_dirs, tmp_path, name
):
    """The signal reaches the data-loader workers too (``timeout``, Ctrl-C in a terminal):
    they ignore it, and the training process finishes its step, writes its checkpoint and
    exits with 128 + signal; the resumed run continues bit for bit."""
    run_dir, data = tmp_path / "killed", session_dirs["data"]
    proc = popen_fit(
        [
            *RUN,  # two data-loader workers
            f"+callbacks.probe.record={run_dir}.jsonl",
            "+callbacks.probe.sleep=0.5",  # slow steps: the signal lands in the middle
            f"hydra.run.dir={run_dir}",
        ],
        data,
        start_new_session=True,  # a process group of its own, as a terminal's job
    )
    record = Path(f"{run_dir}.jsonl")
    deadline = time.monotonic() + 120
    while (not record.is_file() or len(record.read_text().splitlines()) < 3) and (
        proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    sent = time.monotonic()
    os.killpg(proc.pid, getattr(signal, name))
    out, err = proc.communicate(timeout=60)
    seconds = time.monotonic() - sent
    assert proc.returncode == 128 + getattr(signal, name), explain_exit(proc.returncode, out, err)
    assert seconds < 10, f"{seconds:.1f} s from the signal to the exit"
    lines = [ln for ln in err.splitlines() if ln.startswith("mmtrain fit: stopped by")]
    assert len(lines) == 1 and f"stopped by {name} at step " in lines[0], err
    assert "DataLoader worker" not in err and "Traceback" not in err, err
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 3 <= ckpt["global_step"] < 3 * STEPS_PER_EPOCH
    code, out, err = fit(run_dir, data, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert code == 0, explain_exit(code, out, err)
    assert_same_run(reference, run_dir)


def test_a_signal_before_training_still_stops_with_a_checkpoint(session_dirs, tmp_path):
    """SIGTERM during the sanity check (Lightning's own handler would end the run there with
    exit status 0 and no checkpoint): the first step completes, is saved, and the run stops."""
    run_dir = tmp_path / "early"
    code, out, err = fit(run_dir, session_dirs["data"], "+callbacks.probe.signal_at=[0]")
    assert code == 128 + signal.SIGTERM, explain_exit(code, out, err)
    assert "stopped by SIGTERM at step 1 (epoch 0)" in err
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 1


def test_slurm_requeue_writes_the_hpc_checkpoint_and_the_requeued_job_resumes(
    reference, session_dirs, tmp_path
):
    """Lightning's SLURM environment (auto-requeue): SIGUSR1 writes ``hpc_ckpt_1.ckpt`` and
    calls ``scontrol requeue <job>``; the job, run again with the same run directory and no
    ckpt_path, continues from it."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "mmtrain",
        "SLURM_JOB_ID": "4242",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    run_dir, data = tmp_path / "slurm", session_dirs["data"]
    signal_at = ["+callbacks.probe.signal_at=[8]", "+callbacks.probe.signal_name=SIGUSR1"]
    code, out, err = fit(run_dir, data, *signal_at, env=slurm)
    assert code == 128 + signal.SIGUSR1, explain_exit(code, out, err)
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file()
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "the job is requeued" in err
    code, out, err = fit(run_dir, data, env=slurm)  # the requeued job: the same command
    assert code == 0, explain_exit(code, out, err)
    assert f"requeued SLURM job: resuming from {run_dir / 'hpc_ckpt_1.ckpt'}" in out + err
    assert_same_run(reference, run_dir)


# ---- the parts ---------------------------------------------------------------------------------
def test_resumable_sampler_follows_distributed_sampler_and_starts_mid_epoch():
    from torch.utils.data import DistributedSampler

    data = list(range(23))
    for rank in (0, 1):
        ours = ResumableSampler(data, batch_size=4, num_replicas=2, rank=rank, seed=7)
        theirs = DistributedSampler(data, num_replicas=2, rank=rank, seed=7)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            keys = list(ours)
            assert [k.index for k in keys] == list(theirs)
            assert keys == list(ours)  # the same pass again: same order, same seeds
        ours.resume(epoch=1, batches=2)  # the epoch comes with the position
        resumed = list(ours)
        ours.set_epoch(1)
        assert resumed == list(ours)[8:]
        assert list(ours) != resumed  # the resume applies to one pass only
    a, b = list(ResumableSampler(data, 4, seed=1)), list(ResumableSampler(data, 4, seed=2))
    assert [k.seed for k in a] != [k.seed for k in b]


def test_seeded_sets_and_restores_the_global_random_state():
    import random

    import numpy as np

    torch.manual_seed(0)
    before = torch.get_rng_state()
    with seeded(123):
        first = (random.random(), np.random.rand(), torch.rand(1).item())
    assert torch.equal(torch.get_rng_state(), before)
    with seeded(123):
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from mmtrain.callbacks.resume import rng_state, set_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # a cached Gaussian in NumPy's state
    torch.save({"rng": rng_state()}, tmp_path / "state.pt")
    expected = (random.random(), np.random.randn(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_training_batches_do_not_depend_on_the_number_of_workers(compose_config, tiny_data):
    from mmtrain.build import build_datamodule

    def batches(workers: int, resume: tuple[int, int] | None = None) -> list[dict]:
        cfg = compose_config(
            *TINY_DATA, f"data.num_workers={workers}", "data.audio.freq_mask=4", "seed=5"
        )
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        if resume is not None:
            datamodule.resume(resume[0], resume[1], {"": resume[1]})
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(resume[0] if resume else 1)
        return list(loader)

    plain, workers = batches(0), batches(2)
    assert [b[POSITION] for b in plain] == list(range(1, STEPS_PER_EPOCH + 1))
    for a, b in zip(plain, workers, strict=True):
        assert a["id"] == b["id"]
        for key in ("image", "audio", "text"):
            assert torch.equal(a[key], b[key]), key  # augmentation included
    resumed = batches(2, resume=(1, 4))
    assert [b[POSITION] for b in resumed] == [5, 6]
    for a, b in zip(plain[4:], resumed, strict=True):
        assert a["id"] == b["id"] and torch.equal(a["image"], b["image"])


_KILLED_SAVE = textwrap.dedent(
    """
    # Saves v1, then starts saving v2 and blocks right before the rename (fsync never returns),
    # after telling the parent, which kills it with SIGKILL.
    import os, sys, time, torch
    from mmtrain.utils.checkpoint_io import AtomicCheckpointIO

    path, ready = sys.argv[1], sys.argv[2]
    io = AtomicCheckpointIO()
    io.save_checkpoint({"version": 1, "w": torch.ones(1000)}, path)
    real_fsync = os.fsync
    def stuck(fd):
        real_fsync(fd)
        open(ready, "w").close()
        time.sleep(600)
    os.fsync = stuck
    io.save_checkpoint({"version": 2, "w": torch.zeros(1000)}, path)
    """
)


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_checkpoint(tmp_path):
    from mmtrain.utils.checkpoint_io import AtomicCheckpointIO

    path, ready = tmp_path / "last.ckpt", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(path), str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists(), f"the save never started (exit {proc.poll()})"
    proc.kill()  # SIGKILL in the middle of the save
    proc.wait(timeout=30)
    stale = list(tmp_path.glob(".last.ckpt.tmp-*"))
    assert stale, "the interrupted save left no temporary file: was it interrupted?"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["version"] == 1 and torch.equal(ckpt["w"], torch.ones(1000))
    AtomicCheckpointIO().save_checkpoint({"version": 3}, path)  # the next save tidies up
    assert torch.load(path, weights_only=True) == {"version": 3}
    assert not list(tmp_path.glob(".last.ckpt.tmp-*"))


def test_preempted_stop_message_and_exit_code():
    from mmtrain.errors import Preempted

    stop = Preempted(signal.SIGTERM, "/runs/x/checkpoints/last.ckpt", 12, 1)
    assert stop.exit_code == 143
    assert stop.message == (
        "stopped by SIGTERM at step 12 (epoch 1); checkpoint written to "
        "/runs/x/checkpoints/last.ckpt"
    )
    assert "requeued" in Preempted(signal.SIGUSR1, "h.ckpt", 1, 0, requeued=True).message


@pytest.mark.slow
def test_ddp_runs_stop_together_and_resume_bit_for_bit(session_dirs, tiny_data, tmp_path):
    """Two processes (gloo): SIGTERM in both at step 2, every rank's random state restored."""
    ddp = [
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "data.num_workers=0",
        "trainer.max_epochs=3",
    ]
    data = session_dirs["data"]
    code, out, err = fit(tmp_path / "reference", data, *ddp)
    assert code == 0, explain_exit(code, out, err)
    run_dir = tmp_path / "stopped"
    code, out, err = fit(run_dir, data, *ddp, "+callbacks.probe.signal_at=[2]")
    assert code == 128 + signal.SIGTERM, explain_exit(code, out, err)
    code, out, err = fit(run_dir, data, *ddp, f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}")
    assert code == 0, explain_exit(code, out, err)

    def rows(run: Path) -> list[tuple]:  # both ranks append to the record
        lines = Path(f"{run}.jsonl").read_text().splitlines()
        return sorted((r["step"], tuple(r["ids"]), r["loss"]) for r in map(json.loads, lines))

    assert rows(run_dir) == rows(tmp_path / "reference")
    a = torch.load(tmp_path / "reference/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())


def test_ctrl_c_twice_stops_at_once_and_a_forked_worker_leaves_the_signal_alone():
    from mmtrain.callbacks.resume import ResumeState

    state = ResumeState()
    state._on_signal(signal.SIGINT, None)  # the first: stop after the step, with a checkpoint
    assert state._received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # the second: now
        state._on_signal(signal.SIGINT, None)
    forked = ResumeState()
    forked._pid = os.getpid() + 1  # the handler as a forked data-loader worker inherits it
    forked._on_signal(signal.SIGTERM, None)
    assert forked._received is None
