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


def _local_bytes(tensor: Any) -> int:
    """The bytes of ``tensor`` this process holds (a DTensor's local shard)."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


class MemoryProbe(pl.Callback):
    """Writes ``{"rank", "parameters", "optimizer"}``: the bytes of parameters and of optimizer
    state this process holds at the end of training, to ``<record>.rank<r>.json``."""

    def __init__(self, record: str) -> None:
        self.record = record

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        import torch

        states = [
            value
            for optimizer in trainer.optimizers
            for state in optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0  # not AdamW's step count
        ]
        row = {
            "rank": trainer.global_rank,
            "parameters": sum(_local_bytes(p) for p in module.parameters()),
            "optimizer": sum(_local_bytes(t) for t in states),
        }
        with open(f"{self.record}.rank{trainer.global_rank}.json", "w") as file:
            json.dump(row, file)
