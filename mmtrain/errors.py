"""What the CLI reports in one line, without a traceback: bad user input (configs, files,
checkpoints: :class:`MMTrainError`), a run ended by its environment (memory, disk, a killed
worker, a distributed timeout: :class:`RunFailed`) and a run stopped by a signal
(:class:`Preempted`).

Both exit non-zero; anything else is a programming error and keeps its traceback.
"""

import signal


class MMTrainError(ValueError):
    """A problem with what the user gave us: a config key, a file, a sample or a checkpoint."""


class RunFailed(MMTrainError):
    """A run ended by its environment, not by a bug: out of memory, a data-loader worker killed
    from outside, no space left, a distributed timeout (:mod:`mmtrain.failures`). The message
    says what happened, where, and what to do."""


class Preempted(Exception):  # noqa: N818 - a stop, not an error of the program
    """A run stopped by a signal (SIGTERM, SIGUSR1) after writing a checkpoint to resume from.

    The CLI prints :attr:`message` and exits with ``128 + signum``, the status of a process
    ended by that signal, so schedulers and shells see a termination, not a success.

    Args:
        signum: the signal.
        checkpoint: the checkpoint written.
        step: the optimizer steps done (the checkpoint's ``global_step``).
        epoch: the epoch the run was in.
        requeued: whether the job was requeued (SLURM auto-requeue).
    """

    def __init__(
        self, signum: int, checkpoint: str, step: int, epoch: int, requeued: bool = False
    ) -> None:
        self.signum, self.checkpoint, self.step, self.epoch = signum, checkpoint, step, epoch
        self.requeued = requeued
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        self.message = (
            f"stopped by {name} at step {step} (epoch {epoch}); checkpoint written to "
            f"{checkpoint}" + ("; the job is requeued and resumes from it" if requeued else "")
        )
        super().__init__(self.message)
