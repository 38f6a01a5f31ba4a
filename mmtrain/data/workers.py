"""Data-loader worker processes leave the stop signals to the training process.

A stop signal often reaches every process of a run, not only the training process: Ctrl-C in
a terminal and ``timeout`` signal the whole process group, and SLURM signals every process of
a job step. torch's data-loader workers die of it (a SIGTERM that does not come from their
parent is re-raised; SIGINT raises KeyboardInterrupt), and the training process then fails
with ``DataLoader worker (pid N) is killed by signal`` instead of finishing its step and
writing a checkpoint (:class:`mmtrain.callbacks.resume.ResumeState`).

So the workers ignore :data:`STOP_SIGNALS` (:func:`worker_init`), and the training process
blocks them while it starts workers (:func:`start_workers`): a signal that comes in between a
worker's start and its :func:`worker_init` waits, and is then dropped in the worker and handled
in the training process. Workers still end with their loader (their parent asks them), on
their own when the training process is gone, and at its exit (:func:`_end_workers`: Python's
own exit handler would ask with SIGTERM, which they ignore, and wait for them forever).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.util  # noqa: F401 - its exit handler is registered before ours
import os
import signal
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# What terminals, ``timeout`` and schedulers send to stop a job (or warn it: SLURM's SIGUSR1).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def worker_init(worker_id: int) -> None:
    """A data-loader worker's start: ignore :data:`STOP_SIGNALS`, then seed as Lightning's
    own worker init does under ``seed_everything(workers=True)`` (which it adds only to
    loaders without a ``worker_init_fn``)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # also drops one that came in while blocked
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def start_workers(start: Callable[[], Iterator[T]]) -> Iterator[T]:
    """``start()`` (a DataLoader's ``__iter__``, which starts its workers) with
    :data:`STOP_SIGNALS` held back in this thread (the workers inherit the mask until
    :func:`worker_init`; one that came meanwhile is handled here after), and the iterator
    remembered for :func:`_end_workers`."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        iterator = start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if hasattr(iterator, "_shutdown_workers"):  # torch's multi-process iterator
        _RUNNING.add(iterator)
    return iterator


_RUNNING: weakref.WeakSet[Any] = weakref.WeakSet()  # iterators whose workers may be alive


def exit_signal(pids: Iterable[int]) -> str | None:
    """The name of the signal that ended one of these data-loader workers (``SIGKILL``), when
    torch's message does not say (``exited unexpectedly``); None when unknown."""
    pids = set(pids)
    for iterator in list(_RUNNING):
        for worker in getattr(iterator, "_workers", []):
            code = worker.exitcode if worker.pid in pids else None
            if code is not None and code < 0:
                return signal.Signals(-code).name
    return None


@atexit.register  # after multiprocessing's (atexit runs last in, first out): before it
def _end_workers() -> None:
    """End the workers still running at exit as their loader does (torch's
    ``_shutdown_workers``: they finish and leave), and kill any that stays."""
    for iterator in list(_RUNNING):
        with contextlib.suppress(Exception):  # exiting anyway: the kill below still applies
            iterator._shutdown_workers()
        for worker in getattr(iterator, "_workers", []):
            if worker.is_alive():
                worker.kill()
