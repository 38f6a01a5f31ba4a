"""ResumeState: exact resume and preemption.

Exact resume: every checkpoint also holds, as plain tensors and numbers (it loads with
``weights_only=True``), the random states of Python, NumPy and torch (CPU and CUDA, of every
process) and the data position: the epoch and, per data set, how many of its batches were
trained on. A run resumed from it restores the random states right before its first training
step and its loaders start after those batches (:mod:`mmtrain.data.sampling`: the order and
every sample's augmentation depend on the seed, the epoch and the index only), so it continues
as the uninterrupted run would have: same batches, same dropout, same losses and weights.

Preemption: on one of ``signals`` (SIGTERM, SIGINT and SIGUSR1 by default) the run finishes
its current optimizer step, writes ``checkpoints/last.ckpt`` and stops with
:class:`~mmtrain.errors.Preempted` (the CLI exits with ``128 + signum``). A second Ctrl-C
(SIGINT) stops at once, without a checkpoint. The data-loader workers ignore these signals,
so a signal to the whole process group (Ctrl-C, ``timeout``) stops the run the same way
(:mod:`mmtrain.data.workers`). Under SLURM with
Lightning's auto-requeue (``SLURMEnvironment``, on by default in a SLURM job), the requeue
signal (SIGUSR1, ``#SBATCH --signal=SIGUSR1@90``) writes Lightning's ``hpc_ckpt_<n>.ckpt`` in
the run directory instead and requeues the job (``scontrol requeue``); the requeued job, run
with the same ``hydra.run.dir``, resumes from it (:func:`requeued_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.trainer.states import TrainerFn

from mmtrain.data.sampling import POSITION
from mmtrain.errors import Preempted

log = logging.getLogger(__name__)


# ---- random states as plain tensors (weights_only) -----------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's global random states, as tensors and numbers."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(words), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(trainer: pl.Trainer, value: Any) -> list[Any]:
    """``value`` of every process, by rank (one process: ``[value]``)."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return [value]
    values: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(values, value)
    return values


def _hpc_path(folder: Path, number: int) -> Path:
    return folder / f"hpc_ckpt_{number}.ckpt"  # Lightning's name (hpc_save_path)


def _hpc_number(folder: Path) -> int:
    """The highest ``n`` of the ``hpc_ckpt_<n>.ckpt`` files in ``folder`` (0: none)."""
    numbers = [
        int(m.group(1))
        for p in folder.glob("hpc_ckpt_*.ckpt")
        if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))
    ]
    return max(numbers, default=0)


def requeued_checkpoint(output_dir: str | Path) -> Path | None:
    """Under SLURM: the newest ``hpc_ckpt_<n>.ckpt`` of the run directory, else None."""
    number = _hpc_number(Path(output_dir)) if SLURMEnvironment.detect() else 0
    return _hpc_path(Path(output_dir), number) if number else None


class ResumeState(Checkpoint):
    """Random states and data position in every checkpoint; a checkpoint and a stop on signals.

    A :class:`~pytorch_lightning.callbacks.Checkpoint`, so that Lightning runs it after the
    other callbacks, the ModelCheckpoints included: they all see a step before a stop.

    Args:
        signals: the names of the signals that stop a run with a checkpoint.
        dirpath: where ``last.ckpt`` goes on a signal (the run's ``checkpoints/``).
    """

    def __init__(
        self,
        signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGUSR1"),
        dirpath: str = ".",
    ) -> None:
        super().__init__()
        unknown = [s for s in signals if not isinstance(getattr(signal, s, None), signal.Signals)]
        if unknown:
            raise ValueError(f"unknown signals {unknown}; e.g. SIGTERM, SIGUSR1, SIGUSR2")
        self.signals = [getattr(signal, s) for s in signals]
        self.dirpath = Path(dirpath)
        self.epoch, self.batches = 0, 0  # the epoch and the batches of it trained on
        self.epoch_done = False  # whether that was the epoch's last batch
        self.positions: dict[str, int] = {}  # {data set ("" for one): its POSITION}
        self._trainer: pl.Trainer | None = None
        self._loaded: dict[str, Any] | None = None  # the state of the checkpoint resumed from
        self._received: int | None = None  # the signal, once one came
        self._previous: dict[int, Any] = {}  # the handlers replaced
        self._pid = os.getpid()  # a forked data-loader worker is not the run: it ignores them

    # ---- the state in checkpoints ----------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._received = trainer, None

    def state_dict(self) -> dict[str, Any]:
        rng = rng_state()
        trainer = self._trainer
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "positions": dict(self.positions),
            "epoch_done": self.epoch_done,
            "rng": _gather(trainer, rng) if trainer is not None else [rng],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict
        self.epoch, self.batches = int(state_dict["epoch"]), int(state_dict["batches"])
        self.positions = {k: int(v) for k, v in state_dict["positions"].items()}
        self.epoch_done = bool(state_dict["epoch_done"])
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "resume"):
            return
        # Lightning warns that a mid-epoch resume repeats batches unless the loaders are
        # stateful: here the position is restored through the data module instead.
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable")
        if self.epoch_done:  # Lightning goes on with the next epoch, from its first batch
            datamodule.resume(self.epoch + 1, 0, {})
        else:
            datamodule.resume(self.epoch, self.batches, self.positions)
        fit_loop = trainer.fit_loop
        if getattr(fit_loop, "_combined_loader", None) is not None:
            # Restored after the loaders were made (strategies that restore after setup):
            # make them again, so that they start at the position.
            fit_loop._combined_loader = None

    # ---- counting the batches trained on ---------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch, self.batches, self.positions = trainer.current_epoch, 0, {}
        self.epoch_done = False

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.current_epoch != self.epoch:  # Lightning may skip on_train_epoch_start
            self.epoch, self.batches, self.positions = trainer.current_epoch, 0, {}
        self.batches += 1
        progress = trainer.fit_loop.epoch_loop.batch_progress
        self.epoch_done = bool(
            progress.is_last_batch or progress.current.ready >= trainer.num_training_batches
        )
        parts = batch.values() if POSITION not in batch else [batch]  # {data set: batch}
        for part in parts:
            if isinstance(part, dict) and POSITION in part:
                source = part.get("source")
                self.positions[source[0] if source else ""] = int(part[POSITION])
        # After an epoch's last batch the stop waits for the epoch's end (validation included):
        # Lightning does not resume a checkpoint of that moment into the next epoch reliably.
        if not self.epoch_done and self._stop_now(trainer, batch_idx):
            self._preempt(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if fitting and self._stop_now(trainer):
            self._preempt(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stop_now(trainer):
            self._preempt(trainer)

    # ---- signals ---------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loaded is not None:  # right before the first step: as the run had them
            states = self._loaded["rng"]
            set_rng_state(states[min(trainer.global_rank, len(states) - 1)])
            self._loaded = None
        self._install(trainer)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def _install(self, trainer: pl.Trainer) -> None:
        """Take over the signals from Lightning's handlers (registered just before the sanity
        check), which would end a validation with exit status 0 and no checkpoint."""
        connector = getattr(trainer, "_signal_connector", None)
        if getattr(connector, "received_sigterm", False):  # came before these were installed
            self._received, connector.received_sigterm = signal.SIGTERM, False
        if self._previous:
            return
        self._pid = os.getpid()
        try:
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        except ValueError:  # not the main thread: signals cannot be handled here
            self._restore_handlers()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a data-loader worker, before its worker_init
            return
        if signum == signal.SIGINT and self._received == signal.SIGINT:
            self._restore_handlers()  # Ctrl-C twice: stop now (Lightning exits with 1)
            raise KeyboardInterrupt
        if self._received is None:
            log.warning(
                "%s received: stopping after this step with a checkpoint%s",
                signal.Signals(signum).name,
                " (Ctrl-C again: stop now, without one)" if signum == signal.SIGINT else "",
            )
            launcher = getattr(self._trainer.strategy, "launcher", None) if self._trainer else None
            kill = getattr(launcher, "kill", None)
            if callable(kill):  # the processes Lightning started (DDP) stop with this one
                kill(signum)
        self._received = signum

    def _stop_now(self, trainer: pl.Trainer, batch_idx: int | None = None) -> bool:
        """Whether a signal came and the step is complete (no gradients accumulating after
        batch ``batch_idx``); every process decides the same (any one that got the signal)."""
        if batch_idx is not None and (batch_idx + 1) % trainer.accumulate_grad_batches:
            return False
        received = self._received is not None
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        return received

    def _preempt(self, trainer: pl.Trainer) -> None:
        signum = self._received or signal.SIGTERM
        environment = trainer._accelerator_connector.cluster_environment
        requeue = (
            isinstance(environment, SLURMEnvironment)
            and environment.auto_requeue
            and signum == environment.requeue_signal
        )
        root = Path(trainer.default_root_dir)
        path = _hpc_path(root, _hpc_number(root) + 1) if requeue else self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        if requeue and trainer.is_global_zero:
            _requeue()
        raise Preempted(
            int(signum), str(path), trainer.global_step, trainer.current_epoch, requeued=requeue
        )

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()


def _requeue() -> None:
    """``scontrol requeue`` this SLURM job (as Lightning's own SIGUSR1 handler does)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array_job
        else os.environ["SLURM_JOB_ID"]
    )
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False).returncode
    except FileNotFoundError:
        result = -1
    if result == 0:
        log.warning("requeued SLURM job %s", job)
    else:
        log.warning("requeueing SLURM job %s failed (scontrol: %s)", job, result)
