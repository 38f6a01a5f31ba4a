"""Streaming training data from webdataset tar shards (``data=webdataset``).

``mmtrain shard <data preset> out=<dir>`` (:mod:`mmtrain.shard`) writes any data set as::

    <dir>/meta.json                      what was sharded: the preset, the splits
    <dir>/<split>/shard-000000.tar ...   the samples, in the data set's order
    <dir>/<split>/index.json             samples, columns, and each shard's file and sample count
    <dir>/<split>/values.json            the values of the non-file columns (text, labels...)

A sample is a group of tar members ``<number>.<column>.<ext>`` (``number``: the sample's place
in its split, 9 digits): ``id.txt``, the file columns (``image``, ``audio``, ``mask``) as the
data set's own files, byte for byte (re-encoded losslessly, PNG / ``.npy`` / ``.npz``, where a
value did not come from a file), strings as ``.txt`` and other values as ``.json``. Decoded,
a sample is exactly the item the data set gave. Vocabularies and class names are built from
``values.json``, so ``setup`` reads no tar.

One pass over a split (:class:`ShardStream`):

* **Order.** The shards are put in an order drawn from ``(seed, epoch)`` (training only), and
  their samples read as one stream. Training samples then go through an in-memory shuffle
  buffer (``data.shuffle_buffer`` samples, seeded by seed, epoch, rank and worker).
* **Splitting.** Like :class:`~torch.utils.data.DistributedSampler`, every process (rank) gets
  ``ceil(N / world)`` samples (the last ones wrap around to the stream's start: at most
  ``world - 1`` repeats), as one contiguous range of the stream, so each rank reads about
  ``1 / world`` of the shards; within a rank, each loader worker gets a contiguous block of
  whole batches. Every sample is read once a pass, on one rank and one worker, whatever the
  number of shards, and every rank yields ``ceil(ceil(N / world) / batch_size)`` batches (the
  loader's length), so DDP never waits on a rank that ran out. The cost: a worker whose range
  starts inside a shard reads that shard's first samples to skip them. (webdataset's
  ``split_by_node`` / ``split_by_worker`` deal out whole shards, which gives ranks different
  sample counts unless the shards divide evenly.)
* **Validation and test** read the shards in order, without shuffling; across ranks only the
  padding repeats samples (at most ``world - 1``, as DistributedSampler does for the folder
  data sets).
* **Exact resume.** A batch carries its place in the rank's pass (``_position``); a resumed run
  (:meth:`WebDataModule.resume`) re-reads its epoch's ranges, skips (without decoding) the
  samples of the batches already trained on, and continues with the same batches in the same
  order, with each sample's augmentation seeded by ``(seed, epoch, sample)``. It needs the same
  number of processes, loader workers and batch size as the interrupted run.

Bad samples follow ``data.on_error`` as for folder data sets; a missing or corrupt shard stops
the run with one error naming it.
"""

from __future__ import annotations

import bisect
import inspect
import io
import json
import math
import random
import tarfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from mmtrain.contracts import REFERENCES
from mmtrain.data.bad_samples import (
    BadSamplePolicy,
    CheckedDataLoader,
    TransformedDataset,
    collate_checked,
)
from mmtrain.data.datamodule import MultimodalDataModule, signature_with
from mmtrain.data.io import load_mask
from mmtrain.data.sampling import POSITION, SampleKey
from mmtrain.errors import MMTrainError

FORMAT, VERSION = "mmtrain-webdataset", 1
META, INDEX, VALUES = "meta.json", "index.json", "values.json"
FILE_KINDS = ("image", "array", "audio")  # PIL image, numpy array, (samples, rate)
STREAM_ERROR = "_stream_error"  # a batch that carries a shard's error to the main process


# ---- one tar member <-> one value ----------------------------------------------------------------
class _Member(io.BytesIO):
    """A tar member's bytes, named in the errors of the decoders that print their file."""

    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(data)
        self.where = where

    def __repr__(self) -> str:
        return self.where

    __str__ = __repr__


def decode_field(kind: str, ext: str, data: bytes, where: str) -> Any:
    """Decode one stored value as the data sets' loaders do (:mod:`mmtrain.data.io`).

    Args:
        kind: the column's kind in the index (:data:`FILE_KINDS`), or ``value`` for the rest.
        ext: the member's extension: ``txt`` (a string), ``json``, ``npy`` (an array), ``npz``
            (audio samples and rate), else a file of the kind (an image, a mask, audio).
        data: the member's bytes.
        where: the member, for errors.

    Returns:
        A string or JSON value, an RGB PIL image, a numpy array, or ``(samples (C, T), rate)``.

    Raises:
        MMTrainError: naming ``where``, for bytes that do not decode.
    """
    try:
        if ext == "txt":
            return data.decode("utf-8")
        if ext == "json":
            return json.loads(data)
        if ext == "npy":
            return np.load(io.BytesIO(data), allow_pickle=False)
        if kind == "audio":
            if ext == "npz":
                with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                    return stored["samples"], int(stored["rate"])
            samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (T, C)
            if samples.shape[0] == 0:
                raise MMTrainError(f"audio {where} has no samples")
            return samples.T, int(rate)
        if kind == "array":  # a mask: class ids, as load_mask reads its file
            return load_mask(_Member(data, where))
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")  # convert() decodes fully, as load_image does
    except MMTrainError:
        raise
    except UnidentifiedImageError:
        raise MMTrainError(f"cannot decode image {where}: not an image PIL can read") from None
    except (OSError, EOFError, SyntaxError, ValueError, KeyError, RuntimeError) as err:
        raise MMTrainError(f"cannot decode {where}: {err}") from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MMTrainError(f"cannot read the {what} {path}: {err}") from None


class _StreamError(MMTrainError):
    """A shard that cannot be read (missing, corrupt, shorter than its index says)."""


# ---- one split -----------------------------------------------------------------------------------
class ShardedDataset:
    """One split of a sharded data set: its index (for ``setup``) and its samples as a stream.

    Not a map-style data set: :class:`WebDataModule` streams it with :class:`ShardStream`;
    :meth:`__iter__` gives its decoded items in order.

    Args:
        root: the folder that ``mmtrain shard`` wrote (``data.root``).
        split: ``train``, ``val`` or ``test``.
        columns: the columns to decode (set by the data module; their ``<column>_references``
            come along, as the folder data sets give them); None decodes all.

    Raises:
        MMTrainError: for a root without shards, a split that was not sharded, an index that
            is not mmtrain's, or a shard file listed in the index that is not there.
    """

    def __init__(
        self, root: str, split: str, columns: list[str] | None = None, optional: list[str] = ()
    ) -> None:
        self.optional = set(optional)
        self.root, self.split = Path(root), split
        self.path = self.root / split / INDEX
        hint = f"write them with: mmtrain shard <data preset> out={self.root}"
        if not self.root.is_dir():
            raise MMTrainError(
                f"data.root={self.root}: no such folder of webdataset shards ({hint})"
            )
        if not self.path.is_file():
            found = sorted(p.parent.name for p in self.root.glob(f"*/{INDEX}"))
            if found:
                raise MMTrainError(
                    f"data.root={self.root}: no {split} split in these shards (expected "
                    f"{self.path}); they hold: {', '.join(found)}"
                )
            raise MMTrainError(
                f"data.root={self.root}: no webdataset shards there (expected {self.path}; {hint})"
            )
        index = _read_json(self.path, "shard index")
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise MMTrainError(f"{self.path}: not an index written by mmtrain shard ({hint})")
        if index.get("version") != VERSION:
            raise MMTrainError(
                f"{self.path}: index version {index.get('version')!r}, this mmtrain reads "
                f"version {VERSION}; write the shards again"
            )
        folder = self.path.parent
        # A shard listed by a relative name lives in the split's folder; an absolute path or a
        # URL (pipe:, http:) as it is: move shards to other disks by editing the index.
        self.urls = [
            s["url"] if ":" in s["url"] or Path(s["url"]).is_absolute() else str(folder / s["url"])
            for s in index["shards"]
        ]
        self.counts = [int(s["count"]) for s in index["shards"]]
        self.bases = [0, *np.cumsum(self.counts).tolist()]  # first sample number of each shard
        self.count = self.bases[-1]
        if self.count != int(index["count"]) or self.count == 0:
            raise MMTrainError(
                f"{self.path}: its shards hold {self.count} samples, its count is "
                f"{index['count']}; write the shards again"
            )
        for url in self.urls:
            if ":" not in url and not Path(url).is_file():
                raise MMTrainError(f"{self.path}: shard {url} is missing")
        self.columns: list[str] = list(index["columns"])
        self.kinds: dict[str, str] = dict(index.get("kinds", {}))
        self.load: set[str] | None = None
        if columns is not None:
            self.load = {"id", *columns, *(c + REFERENCES for c in columns)}
        self._values: dict[str, list[Any]] | None = None

    def __len__(self) -> int:
        return self.count

    def values(self, column: str) -> list[Any]:
        """All values of a non-file column over the split, as the data set's ``values`` gave
        them (``values.json``), for vocabularies and class names.

        Raises:
            MMTrainError: for a column whose values were not stored (a file column).
        """
        if self._values is None:
            self._values = _read_json(self.path.with_name(VALUES), "shard values")
        if column not in self._values:
            raise MMTrainError(
                f"{self.path.with_name(VALUES)}: no values of column {column!r} (stored: "
                f"{sorted(self._values)})"
            )
        return list(self._values[column])

    def where(self, number: int) -> str:
        """``<shard>:<key>`` of sample ``number``, for error messages."""
        shard = bisect.bisect_right(self.bases, number) - 1
        return f"{self.urls[min(shard, len(self.urls) - 1)]}:{number:09d}"

    def read(self, shard: int, first: int, stop: int) -> Iterator[tuple[int, dict[str, bytes]]]:
        """The raw samples ``first`` to ``stop - 1`` (counted within the shard) of one shard:
        ``(sample number, {"<column>.<ext>": bytes})``, only the columns to decode.

        The members before ``first`` are skipped without being kept; reading stops after
        ``stop``.

        Raises:
            MMTrainError: naming the shard, when it cannot be opened or read, or holds fewer
                samples than its index says.
        """
        from webdataset.gopen import gopen
        from webdataset.tariterators import base_plus_ext

        url, base = self.urls[shard], self.bases[shard]
        index, key, sample = -1, None, None
        try:
            with gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    prefix, field = base_plus_ext(member.name)
                    if not member.isreg() or prefix is None:
                        continue
                    if prefix != key:
                        if sample is not None:
                            yield base + index, sample
                        key, index = prefix, index + 1
                        if index >= stop:
                            return
                        sample = {} if index >= first else None
                    if sample is not None and self._wanted(field):
                        sample[field] = tar.extractfile(member).read()
        except (OSError, EOFError, tarfile.TarError, ValueError) as err:
            raise _StreamError(f"cannot read shard {url}: {err}") from None
        if sample is not None:
            yield base + index, sample
        if index + 1 < min(stop, self.counts[shard]):
            raise _StreamError(
                f"shard {url} holds {index + 1} samples, its index {self.path} says "
                f"{self.counts[shard]}: the shard is truncated or was replaced"
            )

    def _wanted(self, field: str) -> bool:
        column = field.split(".", 1)[0]
        return self.load is None or column in self.load

    def decode(self, number: int, sample: dict[str, bytes]) -> dict[str, Any]:
        """The item of raw sample ``number``, as the data set gave it.

        Raises:
            MMTrainError: naming the sample, for a member that does not decode or a column to
                load that the sample lacks.
        """
        where = self.where(number)
        item: dict[str, Any] = {}
        for field, data in sample.items():
            column, _, ext = field.partition(".")
            item[column] = decode_field(
                self.kinds.get(column, "value"), ext, data, f"{where}.{field}"
            )
        missing = sorted((self.load or set()) & set(self.columns) - set(item) - self.optional)
        if "id" not in item or missing:
            raise MMTrainError(f"{where}: the sample has no {(missing or ['id'])[0]!r}")
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The decoded items of the split, in order."""
        for shard, count in enumerate(self.counts):
            for number, sample in self.read(shard, 0, count):
                yield self.decode(number, sample)


# ---- one pass: which samples, in which order, on which rank and worker ---------------------------
def worker_blocks(num_batches: int, workers: int) -> list[int]:
    """The batches of each loader worker: contiguous blocks, the first ones one longer."""
    size, extra = divmod(num_batches, workers)
    return [size + (w < extra) for w in range(workers)]


def loader_order(blocks: list[int]) -> list[tuple[int, int]]:
    """``(worker, batch of that worker)`` in the order a DataLoader yields them: round robin
    over the workers that have batches left (PyTorch's in-order multi-worker loading)."""
    return [
        (w, i) for i in range(max(blocks, default=0)) for w in range(len(blocks)) if i < blocks[w]
    ]


def stream_pieces(
    counts: list[int], order: list[int], start: int, stop: int
) -> list[tuple[int, int, int]]:
    """``(shard, first, stop)`` pieces of the stream positions ``start`` to ``stop - 1``.

    The stream is the shards' samples in shard ``order``; positions past its end wrap around.
    """
    starts = np.cumsum([0] + [counts[shard] for shard in order]).tolist()  # of each in order
    pieces = []
    position = start
    while position < stop:
        wrapped = position % starts[-1]
        index = bisect.bisect_right(starts, wrapped) - 1
        shard = order[index]
        first = wrapped - starts[index]
        take = min(counts[shard] - first, stop - position)
        pieces.append((shard, first, first + take))
        position += take
    return pieces


def sample_seed(seed: int, epoch: int, number: int) -> int:
    """The random seed of one sample's preprocessing in one epoch (its augmentation)."""
    return random.Random(f"{seed}/{epoch}/{number}").getrandbits(62)


class _Current:
    """A one-item "data set" for :class:`TransformedDataset`: the raw sample being loaded."""

    def __init__(self, split: ShardedDataset) -> None:
        self.split, self.sample = split, None
        self.where = split.where

    def __getitem__(self, number: int) -> dict[str, Any]:
        return self.split.decode(number, self.sample)

    def __len__(self) -> int:
        return len(self.split)


class ShardStream(IterableDataset):
    """The batches of one split for one process: read, shuffled, decoded, preprocessed and
    collated in the loader's workers (see the module docstring for the order and splitting).

    Batches are collated here (the loader takes ``batch_size=None``) so that each one carries
    its place in the pass (``_position``); bad samples travel in them as for folder data.

    Args:
        split: the split.
        encode: the data module's preprocessing, ``encode(item, train)``.
        train: the training split: shuffled, augmented.
        batch_size: samples per batch.
        seed: the run's seed.
        rank: this process's rank.
        world: the number of processes.
        shuffle_buffer: with ``shuffle``, the samples of the shuffle buffer (0 or 1: none).
        shuffle: shuffle the shards and samples; None: in training.
        parts: the data module's inputs and targets, which collate their own keys.
    """

    def __init__(
        self,
        split: ShardedDataset,
        encode: Callable[[dict[str, Any], bool], dict[str, Any]],
        train: bool,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle_buffer: int = 0,
        shuffle: bool | None = None,
        parts: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
        self.split, self.train, self.batch_size = split, train, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.shuffle = train if shuffle is None else shuffle
        self.shuffle_buffer = shuffle_buffer if self.shuffle else 0
        self.transformed = TransformedDataset(_Current(split), encode, train)
        self.parts = parts
        self.per_rank = math.ceil(len(split) / world)
        self.num_batches = math.ceil(self.per_rank / batch_size)
        # (epoch, first batch) of the next pass, shared with persistent loader workers
        self._pass = torch.zeros(2, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return self.num_batches

    def set_pass(self, epoch: int, start: int = 0) -> None:
        """Make the next pass ``epoch``'s, from its batch ``start`` (0: its beginning)."""
        self._pass[0], self._pass[1] = epoch, start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = (int(v) for v in self._pass.tolist())
        yield from self.batches(epoch, start, worker, workers)

    def batches(
        self, epoch: int, start: int, worker: int, workers: int
    ) -> Iterator[dict[str, Any]]:
        """The batches that loader worker ``worker`` of ``workers`` yields in a pass of
        ``epoch`` resumed at the rank's batch ``start``.

        When resuming, the workers are rotated so that the loader's round robin continues
        with the batch that comes next (worker 0 yields it).
        """
        blocks = worker_blocks(self.num_batches, workers)
        order = loader_order(blocks)
        if start >= len(order):
            return
        mine = (order[start][0] + worker) % workers  # the block this worker reads
        done = sum(1 for w, _ in order[:start] if w == mine)  # its batches already trained on
        places = {i: t for t, (w, i) in enumerate(order) if w == mine}
        first = sum(blocks[:mine]) * self.batch_size
        stop = min(first + blocks[mine] * self.batch_size, self.per_rank)
        offset = self.rank * self.per_rank
        samples = iter(self._samples(epoch, offset + first, offset + stop, mine))
        batch: list[Any] = []
        i = done
        try:
            for _ in range(done * self.batch_size):  # trained on before the resume: not decoded
                next(samples, None)
            for number, raw in samples:
                batch.append(self._load(epoch, number, raw))
                if len(batch) == self.batch_size:
                    yield {**collate_checked(batch, parts=self.parts), POSITION: places[i] + 1}
                    batch, i = [], i + 1
        except _StreamError as err:
            yield {STREAM_ERROR: str(err)}
            return
        if batch:
            yield {**collate_checked(batch, parts=self.parts), POSITION: places[i] + 1}

    def _samples(
        self, epoch: int, start: int, stop: int, block: int
    ) -> Iterator[tuple[int, dict[str, bytes]]]:
        """The raw samples of stream positions ``start`` to ``stop - 1``, shuffled in training."""
        shards = list(range(len(self.split.counts)))
        if self.shuffle:
            shards = np.random.default_rng([self.seed, epoch]).permutation(shards).tolist()
        pieces = stream_pieces(self.split.counts, shards, start, stop)
        raw = (sample for piece in pieces for sample in self.split.read(*piece))
        if self.shuffle_buffer <= 1:
            return raw
        from webdataset.filters import shuffle

        rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{block}")
        return shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(raw)

    def _load(self, epoch: int, number: int, raw: dict[str, bytes]) -> Any:
        """Decode and preprocess one sample (a BadSample when it is bad data)."""
        self.transformed.raw.sample = raw
        if self.train:  # its augmentation depends on (seed, epoch, sample) only
            return self.transformed[SampleKey(number, sample_seed(self.seed, epoch, number))]
        return self.transformed[number]


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate_fn: :class:`ShardStream` yields collated batches."""
    return batch


class StreamLoader(CheckedDataLoader):
    """The loader of a :class:`ShardStream`: sets each pass's epoch (and, once, the resume
    position) before the workers start, and raises a shard's error in the main process.

    Args:
        *args: DataLoader's (the dataset, a :class:`ShardStream`).
        policy: the split's :class:`BadSamplePolicy`.
        epoch_of: the current epoch (the trainer's); None: 0.
        resume_at: ``(epoch, batch)`` where the first pass starts; None: the current epoch's
            beginning.
        **kwargs: DataLoader's.
    """

    def __init__(
        self,
        *args: Any,
        policy: BadSamplePolicy,
        epoch_of: Callable[[], int] | None = None,
        resume_at: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, policy=policy, **kwargs)
        self.epoch_of, self.resume_at = epoch_of, resume_at

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        if self.resume_at is not None:
            (epoch, start), self.resume_at = self.resume_at, None
        else:
            epoch, start = (self.epoch_of() if self.epoch_of else 0), 0
        self.dataset.set_pass(epoch, start)
        for batch in super().__iter__():
            if STREAM_ERROR in batch:
                raise MMTrainError(batch[STREAM_ERROR])
            yield batch


# ---- the data module ----------------------------------------------------------------------------
class WebDataModule(MultimodalDataModule):
    """:class:`MultimodalDataModule` over webdataset shards: the same preprocessing, collate,
    bad-sample policy, vocabularies and checkpoint state, with the training, validation and
    test data streamed from the shards (see the module docstring).

    Args:
        *args: :class:`MultimodalDataModule`'s (``dataset`` is :class:`ShardedDataset`).
        shuffle_buffer: the samples of the training shuffle buffer (per loader worker); 0: none.
        **kwargs: :class:`MultimodalDataModule`'s.

    Raises:
        ValueError: for a negative ``shuffle_buffer``, or ``bucket_by`` or ``cache_features``
            (both need a map-style data set), and what the base class raises.
    """

    def __init__(self, *args: Any, shuffle_buffer: int = 1000, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, value in (("bucket_by", self.bucket_by), ("cache_features", self.cache_features)):
            if value:
                raise ValueError(
                    f"{key}={value!r} needs a map-style data set (random access to every "
                    "sample); shards are streamed: set data.bucket_by=null and "
                    "data.cache_features=false, or train from the data set's own preset"
                )
        if isinstance(shuffle_buffer, bool) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be an integer >= 0, got {shuffle_buffer!r}")
        self.shuffle_buffer = shuffle_buffer

    def _make_loader(
        self, raw: Any, name: str, train: bool, source: str | None = None
    ) -> CheckedDataLoader:
        if not isinstance(raw, ShardedDataset):  # predict input=<folder>: files, not shards
            return super()._make_loader(raw, name, train, source)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return self._stream_loader(raw, name, train, rank, world)

    def _stream_loader(
        self, raw: ShardedDataset, name: str, train: bool, rank: int, world: int
    ) -> StreamLoader:
        """The loader of one split on process ``rank`` of ``world``."""
        overfit = bool(getattr(self.trainer, "overfit_batches", 0))  # the same batches each epoch
        stream = ShardStream(
            raw,
            self.encode,
            train,
            self.batch_size,
            self.seed,
            rank,
            world,
            self.shuffle_buffer,
            shuffle=train and not overfit,
            parts=self.parts,
        )
        resume_at = None
        if train and self._resume is not None:
            position = self._resume["positions"].get("", self._resume["batches"])
            resume_at = (int(self._resume["epoch"]), int(position))
        # Lightning warns about any IterableDataset with a length: this one's is exact.
        warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined")
        return StreamLoader(
            stream,
            policy=BadSamplePolicy(name, len(raw), self.on_error, self.max_skipped, self.skipped),
            epoch_of=self._epoch,
            resume_at=resume_at,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_as_is,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _epoch(self) -> int:
        trainer = self.trainer
        return int(trainer.current_epoch) if trainer is not None else 0


WebDataModule.__signature__ = signature_with(
    MultimodalDataModule,
    (),
    [
        inspect.Parameter(
            "shuffle_buffer", inspect.Parameter.KEYWORD_ONLY, default=1000, annotation=int
        )
    ],
)
