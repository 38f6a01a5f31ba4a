"""A callback for the exact-resume tests: records every training step, sends signals.

Loaded by the ``mmtrain`` subprocesses of ``test_resume.py`` (``tests/`` on ``PYTHONPATH``,
``allowed_targets=[resume_probe.]``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytorch_lightning as pl


class ResumeProbe(pl.Callback):
    """Appends ``{step, epoch, batch, ids, loss}`` per training step to ``record`` (JSONL) and
    sends this process ``signal`` at the end of each step in ``signal_at`` (global steps, 1 =
    the first step; 0 = at the start of the sanity check, before training); ``sleep`` seconds
    per step make a run slow enough to signal from outside.
    """

    def __init__(
        self,
        record: str,
        signal_at: list[int] = (),
        signal_name: str = "SIGTERM",
        sleep: float = 0.0,
    ) -> None:
        self.record, self.signal_at = record, set(signal_at)
        self.signum, self.sleep = getattr(signal, signal_name), sleep

    def on_sanity_check_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if 0 in self.signal_at:  # step 0: before training, during the sanity check
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        parts = batch.values() if "id" not in batch else [batch]
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch": idx,
            "ids": [i for part in parts for i in part["id"]],
            "loss": float(outputs["loss"]),
        }
        with open(self.record, "a") as file:
            file.write(json.dumps(row) + "\n")
        if self.sleep:
            time.sleep(self.sleep)
        if trainer.global_step in self.signal_at:
            os.kill(os.getpid(), self.signum)
