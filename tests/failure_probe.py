"""A callback for ``test_failures.py``: makes a run fail as its environment would, at a step.

Each kind strikes where that failure happens in a real run:

- ``oom``: ``torch.OutOfMemoryError`` in the backward pass;
- ``worker``: the data-loader workers killed with SIGKILL, as the out-of-memory killer does;
- ``nospace``: the disk full when the next checkpoint is written;
- ``timeout``: a distributed timeout in the next collective (NCCL's watchdog message);
- ``bug``: a ``ZeroDivisionError`` in the training step (a bug: its traceback stays).

Before it strikes, it copies ``checkpoints/last.ckpt`` to ``<record>`` (if there is one), so
that the test can check the failure left it as it was.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class FailureProbe(pl.Callback):
    """Args: kind (above), at_step (the global step after which it strikes), record (where
    the copy of ``last.ckpt`` goes), last (the run's ``checkpoints/last.ckpt``)."""

    def __init__(self, kind: str, at_step: int, record: str, last: str) -> None:
        self.kind, self.at_step, self.record, self.last = kind, at_step, Path(record), Path(last)
        self.armed = False
        self.restore: tuple[Any, Any] | None = None  # (torch, its save) patched for nospace

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.global_step != self.at_step or self.armed:
            return
        self.armed = True
        if self.last.is_file():
            shutil.copyfile(self.last, self.record)
        if self.kind == "worker":  # the next batch finds its workers gone
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
        elif self.kind == "nospace":  # the next checkpoint does not fit
            import mmtrain.utils.checkpoint_io as checkpoint_io

            def full(*args: Any, **kwargs: Any) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            self.restore = (checkpoint_io.torch, checkpoint_io.torch.save)
            checkpoint_io.torch.save = full
        elif self.kind == "timeout":  # the next collective (the checkpoint's barrier)
            message = (
                "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=57, "
                "OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600082 "
                "milliseconds before timing out."
            )

            def stuck(*args: Any, **kwargs: Any) -> None:
                raise torch.distributed.DistBackendError(message)

            trainer.strategy.barrier = stuck

    def on_before_backward(
        self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if self.armed and self.kind == "oom":
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                "23.54 GiB of which 1.02 GiB is free."
            )
        if self.armed and self.kind == "bug":
            _ = 1 / 0

    def on_exception(
        self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.restore is not None:  # torch.save is everyone's: the next run writes again
            self.restore[0].save = self.restore[1]
            self.restore = None
