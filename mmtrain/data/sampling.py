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

Length bucketing (``data.bucket_by``) keeps all three: :func:`bucket_order` regroups this
rank's share of the epoch into batches of similar length, drawn from ``(seed, epoch)`` and the
lengths only, as whole batches (so a position in batches is still one in samples), and each
sample keeps its seed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.random import default_generator
from torch.utils.data import DistributedSampler, get_worker_info

from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

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


def bucket_order(
    indices: Sequence[int],
    lengths: np.ndarray,
    batch_size: int,
    pool: int,
    generator: torch.Generator | None = None,
) -> list[int]:
    """``indices`` regrouped into batches of similar length (the "bucket iterator").

    ``indices`` (already shuffled) is cut into pools of ``pool * batch_size`` samples, each pool
    is sorted by length (a stable sort: equal lengths keep their random order) and cut into
    batches, and the full batches are shuffled with ``generator`` (kept in order when None).
    The result is a concatenation of whole batches: the one batch of fewer than
    ``batch_size`` samples, if any, comes last.

    Args:
        indices: sample indices, in the order to bucket.
        lengths: the length of every sample of the data set (indexed by sample index).
        batch_size: samples per batch.
        pool: batches sorted together.
        generator: the random source of the batch order.

    Returns:
        The same indices, bucketed.
    """
    order = np.asarray(indices, dtype=np.int64)
    size = pool * batch_size
    for start in range(0, len(order), size):  # pool boundaries are batch boundaries
        chunk = order[start : start + size]
        chunk[:] = chunk[np.argsort(lengths[chunk], kind="stable")]
    full = len(order) // batch_size
    batches = order[: full * batch_size].reshape(full, batch_size)
    if generator is not None:
        batches = batches[torch.randperm(full, generator=generator).numpy()]
    return batches.ravel().tolist() + order[full * batch_size :].tolist()


class ResumableSampler(DistributedSampler):
    """DistributedSampler's order, yielding :class:`SampleKey` and able to start mid-epoch.

    With ``lengths``, training batches are bucketed by length (see :func:`bucket_order`): each
    rank buckets its own share of the epoch (DistributedSampler's split, padding included, so
    every rank still gets as many samples), in pools of ``bucket_pool`` batches, and all ranks
    shuffle their batches with the same permutation, so the ranks' batches of one step come
    from the same length quantile of their pools: similar lengths on every rank, few waits.
    The bucketed order depends on ``(seed, epoch)`` and the lengths only, it is a
    concatenation of whole batches (so :meth:`resume` skips whole batches), and each sample
    keeps the seed it has without bucketing.

    Args:
        dataset: the data set (its length).
        batch_size: the loader's batch size (a position in batches is a position in samples).
        num_replicas: the number of processes of a distributed run.
        rank: this process's rank.
        shuffle: a new permutation each epoch, else the data set's order.
        seed: the run's seed.
        lengths: the length of each sample (tokens, seconds) to bucket batches by; None: no
            bucketing.
        bucket_pool: with ``lengths``, the batches drawn together and sorted by length.

    Raises:
        ValueError: for ``lengths`` not one per sample, or ``bucket_pool`` below 1.
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        lengths: Sequence[float] | None = None,
        bucket_pool: int = 50,
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
        self.lengths: np.ndarray | None = None
        self.bucket_pool = bucket_pool
        if lengths is not None:
            if isinstance(bucket_pool, bool) or not isinstance(bucket_pool, int) or bucket_pool < 1:
                raise ValueError(f"bucket_pool must be an integer >= 1, got {bucket_pool!r}")
            if len(lengths) != len(dataset):
                raise ValueError(
                    f"lengths must give one length per sample: {len(lengths)} lengths for "
                    f"{len(dataset)} samples"
                )
            self.lengths = np.asarray(lengths, dtype=np.float64)

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
        if self.lengths is not None:  # drawn after the seeds: a sample's seed stays the same
            batch_order = generator if self.shuffle else None  # the same on every rank
            mine = bucket_order(mine, self.lengths, self.batch_size, self.bucket_pool, batch_order)
        seed_list = seeds.tolist()
        for index in mine[start:]:
            yield SampleKey(index, seed_list[index])


def lengths_of(
    parts: dict[str, Any], column: str, raw: Any, name: str | None, pool: int
) -> list[float]:
    """The length of each sample of ``raw`` in ``column`` (``data.bucket_by``), read without
    loading any sample, as the input or target of that column measures it (``lengths``: tokens
    of a text, seconds of a clip).

    Args:
        parts: the data module's inputs and targets, by column.
        column: the ``bucket_by`` column.
        raw: the data set (``values(column)``; ``base``: where its media paths start).
        name: how errors name the data set (None: by its class).
        pool: ``bucket_pool``, for the log line.

    Raises:
        MMTrainError: naming ``data.bucket_by``, for a column that the model does not load
            with a length (listing those it does), a data set without ``values(column)``, or
            one that does not give one value per sample.
    """
    bucketable = sorted(n for n, part in parts.items() if part.bucketable)
    part = parts.get(column)
    if part is None or not part.bucketable:
        why = (
            "has no length (a class, image or answer column)"
            if part is not None
            else "is not a column that the training data loads"
        )
        choice = (
            f"bucket by one of {bucketable} or set data.bucket_by=null"
            if bucketable
            else "the model loads no text or audio to bucket by: set data.bucket_by=null"
        )
        raise MMTrainError(f"data.bucket_by={column!r} {why}; {choice}")
    inner = getattr(raw, "raw", raw)  # under a feature cache: the data set it wraps
    name = name or f"the data set {type(inner).__name__}"
    if not callable(getattr(raw, "values", None)):
        raise MMTrainError(
            f"data.bucket_by={column!r}: {name} has no values(column), so its samples' "
            "lengths are not known without loading them; set data.bucket_by=null"
        )
    base = getattr(inner, "base", None)  # the folder a manifest's media paths start from
    try:
        lengths = part.lengths(raw.values, None if base is None else Path(base))
    except MMTrainError as err:
        raise MMTrainError(f"{err} ({name})") from None
    if len(lengths) != len(raw):
        raise MMTrainError(
            f"data.bucket_by={column!r}: {name} gives {len(lengths)} {column!r} values for "
            f"{len(raw)} samples, not one per sample, so they are not the samples' lengths; "
            "set data.bucket_by=null"
        )
    log.info(
        "length bucketing of %s by %s: %d samples, lengths %.4g to %.4g, pools of %d batches",
        name,
        column,
        len(lengths),
        min(lengths, default=0),
        max(lengths, default=0),
        pool,
    )
    return lengths
