"""Known ways a run fails without a bug in the program, each told in one line.

Out of memory, a data-loader worker killed from outside (the out-of-memory killer, for one), a
full disk and a distributed timeout end a run in the middle, through torch or Lightning. For
these :func:`explain` gives a :class:`~mmtrain.errors.RunFailed`: what happened, where (the
stage, the step, the rank) and what to do. The CLI prints it as one line and exits with 1;
nothing is written at the failure, so the last checkpoint stays as it was. Any other exception
keeps its traceback: that is a bug to report.
"""

from __future__ import annotations

import errno
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import RunningStage

from mmtrain.data.workers import exit_signal
from mmtrain.errors import RunFailed

# torch names a killed worker's signal by its description ("Killed", "Terminated").
_SIGNAL_NAMES = {signal.strsignal(s): s.name for s in signal.Signals if signal.strsignal(s)}
_WORKER = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) "
    r"(?:is killed by signal: ([^.]+)|exited unexpectedly)"
)
_COLLECTIVE = (
    re.compile(r"OpType=(\w+)"),  # NCCL's watchdog: WorkNCCL(SeqNum=5, OpType=ALLREDUCE, ...)
    re.compile(r"for (\w+) operation"),  # gloo: Timed out waiting 1800000ms for recv operation
)


class FailurePoint(pl.Callback):
    """Where a stage was when an exception ended it: Lightning resets ``trainer.state.stage``
    before the exception reaches :func:`mmtrain.run.run`."""

    def __init__(self) -> None:
        self.stage: RunningStage | None = None
        self.step = self.epoch = self.rank = 0
        self.world = 1

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.stage, self.step = trainer.state.stage, trainer.global_step
        self.epoch, self.rank, self.world = (
            trainer.current_epoch,
            trainer.global_rank,
            trainer.world_size,
        )

    def where(self, rank: bool = False) -> str:
        """``in training after step 12 (epoch 1)`` (the optimizer steps done),
        ``in validation after step 12 (epoch 1)``, ``in test``...; the rank too in a
        distributed run (or when ``rank``)."""
        rank = f" on rank {self.rank} of {self.world}" if self.world > 1 or rank else ""
        if self.stage == RunningStage.TRAINING:
            return f"in training after step {self.step} (epoch {self.epoch}){rank}"
        if self.stage == RunningStage.VALIDATING and self.step:
            return f"in validation after step {self.step} (epoch {self.epoch}){rank}"
        if self.stage == RunningStage.SANITY_CHECKING:
            return f"in the sanity check before training{rank}"
        names = {
            RunningStage.VALIDATING: "validation",
            RunningStage.TESTING: "test",
            RunningStage.PREDICTING: "predict",
        }
        return f"in {names[self.stage]}{rank}" if self.stage in names else f"at start-up{rank}"


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def size(count: float) -> str:
    """``1.2 GB``, ``512 MB``: bytes for people."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def no_space(path: Path) -> RunFailed:
    """A checkpoint ``path`` that did not fit on its disk (the file it replaces is kept)."""
    try:
        free = f"{size(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is intact" if path.is_file() else "no earlier one is there"
    return RunFailed(
        f"no space left on the device writing the checkpoint {path} ({free}); {kept}. Free "
        "some space, or put paths.log_dir on a larger disk"
    )


def explain(
    err: BaseException, where: FailurePoint | None, cfg: Any, last: Path | None
) -> RunFailed | None:
    """The one line for a known failure class, or None (a bug: keep the traceback).

    Args:
        err: what ended the stage.
        where: the run's :class:`FailurePoint`.
        cfg: the run's config (the settings the advice names).
        last: the run's ``checkpoints/last.ckpt`` (fit), else None.
    """
    where = where if where is not None else FailurePoint()
    at = where.where()
    if last is None:  # not fitting: no checkpoint is written
        kept = "nothing was written"
    elif last.is_file():
        kept = f"the last checkpoint {last} is intact"
    else:
        kept = "no checkpoint was written before it"
    message = _first_line(err)
    if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in message:
        trainer = cfg.get("trainer") or {}
        return RunFailed(
            f"out of memory {at} ({message.rstrip('.')}). Use a smaller data.batch_size (now "
            f"{cfg.data.get('batch_size')}), with trainer.accumulate_grad_batches (now "
            f"{trainer.get('accumulate_grad_batches', 1)}) to keep the effective batch, or a "
            f"lower trainer.precision (now {trainer.get('precision')}; e.g. bf16-mixed); {kept}"
        )
    worker = _WORKER.search(message) if isinstance(err, RuntimeError) else None
    if worker is not None:
        pids, described = worker.group(1).strip(), worker.group(2)
        if described:  # torch names the signal by its description
            killed_by = _SIGNAL_NAMES.get(described.strip(), described.strip())
        else:  # torch found it gone: its exit code may still tell
            killed_by = exit_signal(int(pid) for pid in pids.split(","))
        how = f"was killed by signal {killed_by}" if killed_by else "exited unexpectedly"
        return RunFailed(
            f"a data-loader worker (pid {pids}) {how} {at}; the out-of-memory killer does this "
            f"when the workers take too much memory: use fewer data.num_workers (now "
            f"{cfg.data.get('num_workers')}; 0 loads in the training process); {kept}"
        )
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        name = f" writing {err.filename}" if err.filename else ""
        return RunFailed(f"no space left on the device{name} {at}; {kept}")
    # torch.distributed's errors (DistBackendError: NCCL's watchdog...) are RuntimeErrors
    if isinstance(err, RuntimeError) and re.search(r"timed out|timeout", message, re.I):
        found = (m.group(1) for pattern in _COLLECTIVE if (m := pattern.search(str(err))))
        collective = next(found, None)
        what = f"the collective {collective.lower()}" if collective else "a collective"
        return RunFailed(
            f"distributed timeout {where.where(rank=True)}: {what} waited too long for the "
            f"other processes ({message}). One of them is stuck, much slower or gone: read "
            f"the logs of every rank; {kept}"
        )
    return None
