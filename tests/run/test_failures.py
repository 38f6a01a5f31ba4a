"""Known failure classes end a run with one line that says what happened and what to do, and
leave the last checkpoint as it was; a bug keeps its traceback (:mod:`mmtrain.failures`).

Each failure is injected where it happens in a real run (``tests/failure_probe.py``): out of
memory in the backward pass, the data-loader workers killed with SIGKILL, the disk full at the
next checkpoint, a timeout in the next collective.
"""

from __future__ import annotations

import errno
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import QUIET, TESTS, TINY_DATA
from helpers.cli import MMTRAIN, cli_env, explain_run
from omegaconf import OmegaConf

from mmtrain.errors import RunFailed
from mmtrain.failures import FailurePoint, explain
from mmtrain.run import run

STEPS_PER_EPOCH = 6  # 24 training samples, batches of 4
SMALL = [*TINY_DATA, "~head/caption", *QUIET, "trainer.max_epochs=3"]


def _probe(kind: str, run_dir: Path, at_step: int = STEPS_PER_EPOCH + 2) -> list[str]:
    return [
        "+callbacks.probe._target_=failure_probe.FailureProbe",
        f"+callbacks.probe.kind={kind}",
        f"+callbacks.probe.at_step={at_step}",
        f"+callbacks.probe.record={run_dir}.before",
        f"+callbacks.probe.last={run_dir / 'checkpoints' / 'last.ckpt'}",
        "allowed_targets=[failure_probe.]",
    ]


def _fail(compose_config, tmp_path: Path, kind: str, *extra: str) -> tuple[str, Path]:
    """Fit until the probe strikes (in epoch 1, after epoch 0's checkpoint): the error line
    and the run directory; the last checkpoint is checked against the probe's copy."""
    run_dir = tmp_path / kind
    cfg = compose_config(*SMALL, *_probe(kind, run_dir), *extra, output_dir=run_dir)
    with pytest.raises(RunFailed) as failed:
        run("fit", cfg)
    before = Path(f"{run_dir}.before").read_bytes()
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before, "last.ckpt changed"
    message = str(failed.value)
    assert "\n" not in message
    return message, run_dir


def test_out_of_memory_names_the_step_and_the_settings_to_change(
    compose_config, tmp_path, tiny_data
):
    message, run_dir = _fail(compose_config, tmp_path, "oom")
    assert message.startswith("out of memory in training after step 8 (epoch 1) (CUDA out of")
    for setting in ("data.batch_size (now 4)", "trainer.accumulate_grad_batches (now 1)"):
        assert setting in message
    assert "trainer.precision (now 32-true" in message
    assert f"the last checkpoint {run_dir / 'checkpoints' / 'last.ckpt'} is intact" in message


def test_a_data_worker_killed_from_outside_names_the_signal(compose_config, tmp_path, tiny_data):
    message, _ = _fail(compose_config, tmp_path, "worker", "data.num_workers=2")
    assert "a data-loader worker (pid " in message
    assert "was killed by signal SIGKILL in training after step" in message
    assert "use fewer data.num_workers (now 2;" in message and "is intact" in message


def test_a_full_disk_names_the_checkpoint_and_the_free_space(compose_config, tmp_path, tiny_data):
    message, run_dir = _fail(compose_config, tmp_path, "nospace")
    folder = run_dir / "checkpoints"  # the first save of epoch 1: best.ckpt
    assert message.startswith(f"no space left on the device writing the checkpoint {folder}/")
    assert re.search(r"\(\d+\.\d [KMGT]B free there\); the previous \w+\.ckpt is intact", message)
    assert not list(folder.glob(".*.tmp-*"))  # no partial file left behind


def test_a_distributed_timeout_names_the_rank_and_the_collective(
    compose_config, tmp_path, tiny_data
):
    message, _ = _fail(compose_config, tmp_path, "timeout")
    assert message.startswith("distributed timeout ")
    assert "on rank 0 of 1: the collective allreduce waited too long" in message


def test_a_bug_keeps_its_traceback(compose_config, tmp_path, tiny_data):
    run_dir = tmp_path / "bug"
    cfg = compose_config(*SMALL, *_probe("bug", run_dir), output_dir=run_dir)
    with pytest.raises(ZeroDivisionError):
        run("fit", cfg)


def test_the_cli_prints_one_line_and_exits_1(scratch, tiny_data):
    run_dir = scratch["out"] / "oom"
    proc = subprocess.run(
        [*MMTRAIN, "fit", *SMALL, *_probe("oom", run_dir, at_step=2), f"hydra.run.dir={run_dir}"],
        cwd=scratch["cwd"],
        env={**cli_env(scratch["data"], scratch["out"]), "PYTHONPATH": str(TESTS)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, explain_run(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mmtrain fit: error:")]
    assert len(lines) == 1 and "out of memory in training after step 2 (epoch 0)" in lines[0]
    assert "no checkpoint was written before it" in lines[0]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (RuntimeError("DataLoader worker (pid(s) 12, 13) exited unexpectedly"), "exited unexp"),
        (RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated. "), "SIGTERM"),
        (
            RuntimeError(
                "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out "
                "waiting 1800000ms for recv operation to complete"
            ),
            "the collective recv waited",
        ),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8"),
            "out",
        ),
        (OSError(errno.ENOSPC, "No space left on device", "/runs/x/csv/metrics.csv"), "metrics"),
    ],
)
def test_failure_messages(error, says):
    where = FailurePoint()
    where.stage = None
    cfg = {"data": {"batch_size": 8, "num_workers": 4}, "trainer": {"precision": "32-true"}}
    failure = explain(error, where, OmegaConf.create(cfg), None)
    assert failure is not None and says in str(failure), failure


def test_other_errors_are_not_explained():
    cfg = {"data": {}, "trainer": {}}
    for error in (RuntimeError("shape mismatch"), ValueError("timed out"), KeyError("x")):
        assert explain(error, None, OmegaConf.create(cfg), None) is None
    assert explain(torch.OutOfMemoryError("CUDA out of memory"), None, OmegaConf.create(cfg), None)


def test_a_worker_found_gone_is_named_by_its_exit_signal():
    """torch says only "exited unexpectedly" when it finds a worker gone before its SIGCHLD
    handler runs: the worker's exit code still names the signal."""
    import contextlib
    import os
    import signal
    import time

    from mmtrain.data.bad_samples import BadSamplePolicy, CheckedDataLoader

    policy = BadSamplePolicy("train", 64, "raise", 0, {})
    data = [{"x": i} for i in range(64)]
    loader = CheckedDataLoader(data, policy=policy, batch_size=2, num_workers=1,
                               persistent_workers=True)  # fmt: skip
    batches = iter(loader)
    next(batches)
    (worker,) = loader._iterator._workers
    os.kill(worker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while worker.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError):  # torch's SIGCHLD handler: the other message
            time.sleep(0.05)
    error = RuntimeError(f"DataLoader worker (pid(s) {worker.pid}) exited unexpectedly")
    cfg = OmegaConf.create({"data": {"num_workers": 1}, "trainer": {}})
    assert "was killed by signal SIGKILL" in str(explain(error, None, cfg, None))
    loader._iterator._shutdown_workers()
