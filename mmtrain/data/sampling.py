"""A training order that a checkpoint resumes exactly.

Exact resume asks three things of the data pipeline, and this module provides them:

1. The order of an epoch depends on ``(seed, epoch)`` only: :class:`ResumableSampler` draws
   it as :class:`~torch.utils.data.DistributedSampler` does (same permutation, same padding
   and split over ranks), from its own generator, never from the global random state.
2. The random state of each sample's loading and preprocessing (augmentation) depends on
   ``(seed, epoch, index)`` only: the sampler yields a :class:`SampleKey` with a seed per sample,
   and the dataset runs the sample's preprocessing inside :func:`seeded`. So neither the
   number of workers nor where a run stopped changes a sample, and the worker processes'
   random states need not be saved.
3. The position: :meth:`ResumableSampler.resume` makes the next pass start after the batches
   that the interrupted run trained on, in the epoch it stopped in.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from torch.random import default_generator
from torch.utils.data import DistributedSampler, get_worker_info

POSITION = "_position"  # batch[POSITION]: batches of the pass so far, this one included


class SampleKey(NamedTuple):
    """What a :class:`ResumableSampler` yields: the sample's index and its random seed."""

    index: int
    seed: int


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global random state; in the training process
    restore them after.

    Restoring matters when samples are loaded in the training process (``num_workers=0``):
    the model's own random draws (dropout) must not depend on how many samples were loaded. A
    worker process draws for samples only, so it skips the restore (NumPy's costs ~0.1 ms).
    """
    restore = get_worker_info() is None
    if restore:
        state = (random.getstate(), np.random.get_state(), default_generator.get_state())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if restore:
            random.setstate(state[0])
            np.random.set_state(state[1])
            default_generator.set_state(state[2])


class ResumableSampler(DistributedSampler):
    """DistributedSampler's order, yielding :class:`SampleKey` and able to start mid-epoch.

    Args:
        dataset: the data set (its length).
        batch_size: the loader's batch size (a position in batches is a position in samples).
        num_replicas: the number of processes of a distributed run.
        rank: this process's rank.
        shuffle: a new permutation each epoch, else the data set's order.
        seed: the run's seed.
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
        )
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next pass the rest of ``epoch``, after its first ``batches`` batches.

        The epoch is set here too: Lightning creates the first iterator of a run before it
        calls :meth:`set_epoch`.
        """
        if batches < 0:
            raise ValueError(f"batches must be >= 0, got {batches}")
        self._resume = (epoch, batches)

    def start_batch(self) -> int:
        """The batch the next pass starts at (0 unless :meth:`resume` was called)."""
        return self._resume[1] if self._resume is not None else 0

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        start = 0
        if self._resume is not None:
            self.epoch, batches = self._resume
            self._resume = None
            start = batches * self.batch_size
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        size = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
        seeds = torch.randint(0, 2**62, (size,), generator=generator)  # one per sample
        indices = order.tolist()
        padding = self.total_size - len(indices)  # as DistributedSampler: every rank as long
        if padding > 0:
            indices += (indices * (padding // len(indices) + 1))[:padding]
        mine = indices[self.rank : self.total_size : self.num_replicas]
        seed_list = seeds.tolist()
        for index in mine[start:]:
            yield SampleKey(index, seed_list[index])
