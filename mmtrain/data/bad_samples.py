"""Bad samples under ``data.on_error``: carried from the workers, then raised or skipped.

A sample whose loading or preprocessing raises :class:`MMTrainError` (bad data) travels to the
main process as a :class:`BadSample`; :class:`CheckedDataLoader` stops the run at the first one
(``data.on_error=raise``) or leaves it out and counts it against ``data.max_skipped``
(``skip``). Any other exception is a bug and propagates as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset

from mmtrain.contracts import Batch
from mmtrain.data.collate import collate
from mmtrain.data.sampling import POSITION, ResumableSampler, SampleKey, seeded
from mmtrain.data.workers import start_workers, worker_init
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
BAD_KEY = "_bad_samples"  # collate -> loader: the errors of a batch's bad samples


@dataclass(frozen=True)
class BadSample:
    """A sample whose loading raised an MMTrainError, carried to the main process."""

    index: int
    error: str


class TransformedDataset(Dataset):
    """Applies the data module's preprocessing to the raw items of one split.

    A sample failing with an :class:`MMTrainError` (bad data) becomes a :class:`BadSample`
    whose error names the sample (the data set's ``where(index)``, e.g. ``train.jsonl:7``, is
    put in front of preprocessing errors): the loader decides, in the main process, whether it
    stops the run or is skipped. Any other exception (a bug) propagates as it is.
    """

    def __init__(
        self, raw: Dataset, encode: Callable[[dict[str, Any], bool], dict], train: bool
    ) -> None:
        self.raw, self.encode, self.train = raw, encode, train

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any] | BadSample:
        """The sample at ``key``: an index, or (training) an index and the seed of its random
        state (:class:`~mmtrain.data.sampling.ResumableSampler`)."""
        if isinstance(key, tuple):
            with seeded(key.seed):  # its augmentation, whatever process or position loads it
                return self._load(key.index)
        return self._load(key)

    def _load(self, index: int) -> dict[str, Any] | BadSample:
        try:
            item = self.raw[index]  # the data set's own errors name the sample
        except MMTrainError as err:
            return BadSample(index, str(err))
        try:
            return self.encode(item, self.train)
        except MMTrainError as err:
            where = getattr(self.raw, "where", None)
            return BadSample(index, f"{where(index)}: {err}" if where else str(err))


def collate_checked(
    items: list[dict[str, Any] | BadSample],
    source: str | None = None,
    parts: Mapping[str, Any] | None = None,
) -> Batch:
    """:func:`collate` of the good items; the errors of bad ones go under ``BAD_KEY``.

    A batch whose items are all bad is ``{BAD_KEY: [...]}`` alone (no ``id``). With several
    data sets (data=multi), ``source`` names the batch's data set for each sample; ``parts``
    are the data module's inputs and targets, which batch their own keys.
    """
    good = [item for item in items if not isinstance(item, BadSample)]
    batch = collate(good, parts) if good else {}
    if good and source is not None:
        batch["source"] = [source] * len(good)
    errors = [item.error for item in items if isinstance(item, BadSample)]
    if errors:
        batch[BAD_KEY] = errors
    return batch


class BadSamplePolicy:
    """``data.on_error`` for one split: stop at the first bad sample, or skip within a budget.

    Args:
        split: the split's name.
        size: the split's number of samples.
        on_error: ``raise`` or ``skip``.
        max_skipped: below 1 a fraction of ``size`` (rounded down), from 1 on a count.
        totals: ``{split: count}`` of the current or latest pass (``skip`` only).
    """

    def __init__(
        self, split: str, size: int, on_error: str, max_skipped: float, totals: dict[str, int]
    ) -> None:
        self.split, self.size, self.on_error = split, size, on_error
        self.max_skipped, self.totals = max_skipped, totals
        self.budget = int(max_skipped * size) if max_skipped < 1 else int(max_skipped)

    def check(self, count: int, errors: list[str]) -> None:
        """Raise for a bad sample (``raise``) or once ``count`` exceeds the budget (``skip``).

        Raises:
            MMTrainError: the sample's own error, or one naming the count and the budget.
        """
        if self.on_error == "raise":
            raise MMTrainError(errors[0])
        self.totals[self.split] = count  # up to date during the pass, for epoch-end hooks
        if count > self.budget:
            raise MMTrainError(
                f"data.on_error=skip: {count} bad samples in the {self.split} split "
                f"({self.size} samples), over the budget data.max_skipped={self.max_skipped} "
                f"({self.budget} samples); the latest: {errors[-1]}"
            )

    def report(self, count: int, errors: list[str]) -> None:
        """Record and log the count of a pass (the end of an epoch of the split)."""
        if self.on_error != "skip":
            return
        self.totals[self.split] = count
        if count:
            shown = "; ".join(errors[:3]) + ("; ..." if len(errors) > 3 else "")
            log.warning(
                "data.on_error=skip: skipped %d of %d samples of the %s split (budget %d): %s",
                count,
                self.size,
                self.split,
                self.budget,
                shown,
            )


class CheckedDataLoader(DataLoader):
    """A DataLoader (``collate_fn=collate_checked``) that applies ``data.on_error``.

    Bad samples reach this loader as errors in their batch, so the decision is made in the
    main process: the counts of worker processes add up here, and the error that stops a run
    is raised as is (not wrapped in a worker traceback). Skipped samples are left out of their
    batch, and a batch left without samples is not yielded. ``policy`` is an init argument so
    that Lightning can re-create the loader (distributed samplers, ``overfit_batches``).
    """

    def __init__(self, *args: Any, policy: BadSamplePolicy, **kwargs: Any) -> None:
        kwargs.setdefault("worker_init_fn", worker_init)  # stop signals: the main process's
        super().__init__(*args, **kwargs)
        self.policy = policy

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        count, errors = 0, []
        if self.policy.on_error == "skip":
            self.policy.totals[self.policy.split] = 0
        resumable = isinstance(self.sampler, ResumableSampler)
        position = self.sampler.start_batch() if resumable else 0
        batches = start_workers(super().__iter__)  # stop signals: mmtrain.data.workers
        try:
            for batch in batches:
                position += 1
                if resumable:
                    batch[POSITION] = position
                bad = batch.pop(BAD_KEY, [])
                if bad:
                    count += len(bad)
                    errors += bad
                    self.policy.check(count, errors)
                if batch.keys() - {POSITION}:  # not every sample of the batch was bad
                    yield batch
        finally:  # the end of the pass, or Lightning stopping early (limit_*_batches)
            self.policy.report(count, errors)
