"""Several data sets feeding one model (``data=multi``): each brings the tasks it has targets for.

A batch comes from one data set (its modalities and targets), so the model trains each task on
the batches that carry its target. Which data set gives the next training batch is the
``sampling``:

- ``round_robin``: one batch from each in turn; the epoch ends when the largest has been seen
  once (smaller ones start over): every data set weighs the same.
- ``proportional``: every batch of every data set once per epoch, in a random interleaving:
  data sets weigh as their size.
- ``temperature``: each batch drawn at random with ``p_i ~ n_i^(1/T)`` (``n_i`` samples), as
  many batches as ``proportional``: T=1 is proportional, large T uniform.
- ``sequential``: all of the first data set, then all of the second...
- ``joint``: every step takes one batch from each data set (Lightning's ``CombinedLoader`` in
  ``max_size_cycle`` mode; smaller ones start over), so every task is in every step: what
  gradient-based weightings (GradNorm, PCGrad) need when the data sets have disjoint tasks.

Validation, test and predict go through every data set in turn; metrics are per task over all
the data sets that carry it. Vocabularies and class names are built from the union of the
training splits. The order of data sets is drawn from ``seed`` and the epoch, so it is the same
on every process of a distributed run (each data set is then split over the processes).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from mmtrain.contracts import SPLITS, Batch, Column
from mmtrain.data.datamodule import (
    SPLIT_OF_STAGE,
    MultimodalDataModule,
    columns_of,
    optional_kwargs,
    signature_with,
    split_kwargs,
)
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

SAMPLING = ("round_robin", "proportional", "temperature", "sequential", "joint")
NOT_WITH_SOURCES = ("cache_features", "cache_dir", "cache_dtype")  # a cache keys one data set


class DataSource:
    """One data set of ``data=multi``.

    Args:
        dataset: called as ``dataset(split=..., columns=..., root=...)`` (plus the split files
            that are set), like ``data.dataset`` of a single data set.
        root: the data set's folder.
        train: the training split's file (manifests).
        val: the validation split's file.
        test: the test split's file.
        tasks: the tasks it feeds; None: every task whose column it has.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        root: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        tasks: Sequence[str] | None = None,
    ) -> None:
        self.dataset = dataset
        self.root, self.train, self.val, self.test = root, train, val, test
        self.tasks = None if tasks is None else list(tasks)


def source_schedule(
    batches: Sequence[int],
    sizes: Sequence[int],
    sampling: str,
    temperature: float,
    generator: torch.Generator,
) -> list[int]:
    """The data set (an index) of every training batch of one epoch.

    Args:
        batches: batches per data set in one pass.
        sizes: samples per data set (``temperature`` weighs by them).
        sampling: one of ``round_robin``, ``proportional``, ``temperature``, ``sequential``.
        temperature: ``T`` of ``temperature`` sampling.
        generator: the random source of this epoch.
    """
    k = len(batches)
    if sampling == "sequential":
        return [i for i in range(k) for _ in range(batches[i])]
    if sampling == "round_robin":
        return [i for _ in range(max(batches)) for i in range(k)]
    if sampling == "proportional":
        order = torch.tensor([i for i in range(k) for _ in range(batches[i])])
        return order[torch.randperm(len(order), generator=generator)].tolist()
    if sampling == "temperature":
        p = torch.tensor(sizes, dtype=torch.float64).pow(1.0 / temperature)
        return torch.multinomial(p / p.sum(), sum(batches), True, generator=generator).tolist()
    raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")


class SourceSampler:
    """The per-epoch order of data sets; Lightning calls :meth:`set_epoch` (as on samplers)."""

    def __init__(
        self,
        loaders: Mapping[str, DataLoader],
        sizes: Sequence[int],
        sampling: str,
        temperature: float,
        seed: int,
    ) -> None:
        self.loaders, self.sizes = loaders, list(sizes)
        self.sampling, self.temperature, self.seed = sampling, temperature, seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next pass the rest of ``epoch``, after its first ``batches`` batches."""
        self._resume = (epoch, batches)

    def start(self) -> int:
        """Where the next pass starts in the schedule; takes a pending :meth:`resume`."""
        if self._resume is None:
            return 0
        (self.epoch, batches), self._resume = self._resume, None
        return batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for loader in self.loaders.values():  # distributed samplers of the data sets
            set_epoch = getattr(loader.sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)

    def schedule(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches = [len(loader) for loader in self.loaders.values()]
        return source_schedule(batches, self.sizes, self.sampling, self.temperature, generator)


class MultiSourceLoader:
    """Yields batches of several loaders in the order of a :class:`SourceSampler`.

    A loader that runs out before the schedule is done starts over.
    """

    def __init__(self, loaders: Mapping[str, DataLoader], sampler: SourceSampler) -> None:
        self.loaders, self.sampler = dict(loaders), sampler
        self.batch_sampler = None  # Lightning reads `sampler` (set_epoch) through this pair
        self.names = list(self.loaders)

    def __len__(self) -> int:
        return len(self.sampler.schedule())

    def __iter__(self) -> Iterator[Batch]:
        iterators: dict[str, Iterator[Batch]] = {}
        start = self.sampler.start()  # a resumed pass: the loaders resume their own positions
        for i in self.sampler.schedule()[start:]:
            name = self.names[i]
            batch = next(iterators[name], None) if name in iterators else None
            if batch is None:  # not started yet, or run out: start (over)
                iterators[name] = iter(self.loaders[name])
                batch = next(iterators[name], None)
                if batch is None:
                    raise MMTrainError(f"data.sources.{name}: the data set yields no batch")
            yield batch


class MultiDataModule(MultimodalDataModule):
    """Several data sets (``sources``) sharing the inputs, targets and model.

    Each data set loads the model's modalities that it has (a batch without a modality is
    fused without it) and feeds its tasks: those listed in its ``tasks``, else every task of
    the model whose column it has. A data set that feeds no task of the model is left out (a
    warning), and every task must be fed by one data set at least. Inputs and targets are
    fitted on the union of the training splits. Items, bad samples (counted per data set:
    ``skipped["train/<name>"]``) and the checkpointed state are those of
    :class:`MultimodalDataModule`; see this module's docstring for ``sampling``. Length
    bucketing (``bucket_by``): each data set that loads that column buckets its own samples;
    the others keep their plain order (a warning).

    Args:
        sources: ``{name: DataSource}`` (or its keyword arguments as a mapping).
        sampling: how training batches are drawn from the data sets.
        temperature: ``T`` of ``temperature`` sampling.
        **kwargs: :class:`MultimodalDataModule`'s, except ``dataset``, ``root`` and the split
            files, which each source has (``seed`` also draws the order of data sets;
            ``num_workers`` are per data set).

    Raises:
        ValueError: for no data sets, an unknown sampling, a non-positive temperature, a data
            set that is not a DataSource, or what :class:`MultimodalDataModule` rejects.
    """

    def __init__(
        self,
        sources: Mapping[str, DataSource | Mapping[str, Any]],
        sampling: Literal["round_robin", "proportional", "temperature", "sequential", "joint"] = (
            "proportional"
        ),
        temperature: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("cache_features"):
            raise ValueError(
                "cache_features is not supported with several data sets (data=multi): the "
                "feature cache keys one data set; train from each data set's own preset"
            )
        super().__init__(dataset=None, **kwargs)
        if not sources:
            raise ValueError("data.sources is empty: list the data sets, {name: {dataset: ...}}")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.sampling, self.temperature = sampling, float(temperature)
        self.sources: dict[str, DataSource] = {}
        self.source_kwargs: dict[str, dict[str, str]] = {}
        for name, source in sources.items():
            if isinstance(source, Mapping):
                try:
                    source = DataSource(**source)
                except TypeError as err:
                    raise ValueError(f"data.sources.{name}: {err}") from None
            if not isinstance(source, DataSource):
                raise ValueError(f"data.sources.{name} must be a DataSource, got {source!r}")
            self.sources[name] = source
            self.source_kwargs[name] = split_kwargs(
                source.dataset, source.root, source.train, source.val, source.test,
                key=f"data.sources.{name}",
            ) | optional_kwargs(source.dataset, self.inputs)  # fmt: skip
        self.columns: dict[str, list[str]] = {}  # {source: the columns it loads}
        self.datasets: dict[str, dict[str, Dataset]] = {}  # {split: {source: data set}}

    # ---- opening the data sets --------------------------------------------------------------
    def prepare_data(self) -> None:
        for source in self.sources.values():
            factory = source.dataset
            prepare = getattr(getattr(factory, "func", factory), "prepare_data", None)
            if prepare is not None:
                root = {} if source.root is None else {"root": str(source.root)}
                prepare(**{**getattr(factory, "keywords", {}), **root})

    def _open(self, name: str, split: str) -> Dataset | None:
        """One split of data set ``name``, or None if it feeds no task of the model.

        The first split opened settles the columns the data set loads: the model's modalities
        and tasks (those of its ``tasks``) that it has. Other splits must have them too.
        """
        source, kwargs = self.sources[name], self.source_kwargs[name]
        if self.columns.get(name) == []:  # left out when its first split was opened
            return None
        if name in self.columns:
            dataset = source.dataset(split=split, columns=self.columns[name], **kwargs)
            has = getattr(dataset, "columns", None)
            missing = [c for c in self.columns[name] if has is not None and c not in has]
            if missing:
                raise MMTrainError(
                    f"data.sources.{name}: the {split} split has no {missing} column(s), which "
                    f"its other splits have ({has})"
                )
            return dataset
        tasks = [t for t in self.tasks if source.tasks is None or t in source.tasks]
        wanted = list(dict.fromkeys(self.input_columns() + self.target_columns(tasks)))
        dataset = source.dataset(split=split, columns=wanted, **kwargs)
        has = getattr(dataset, "columns", None)
        if has is not None and not set(wanted) <= set(has):
            # a task is fed where all its target's columns are (a prompt column too)
            fed = [t for t in tasks if set(columns_of(t, self.targets[t])) <= set(has)]
            listed = [t for t in tasks if t not in fed and source.tasks is not None]
            if listed:
                task = listed[0]
                lacking = [c for c in columns_of(task, self.targets[task]) if c not in has]
                raise MMTrainError(
                    f"data.sources.{name}.tasks lists {listed}, but its {split} split has no "
                    f"{lacking} column ({has})"
                )
            inputs = [c for c in self.input_columns() if c in has]
            wanted = list(dict.fromkeys(inputs + self.target_columns(fed)))
            dataset = source.dataset(split=split, columns=wanted, **kwargs)
        if not any(t in wanted for t in self.tasks) and self.tasks:
            log.warning("data.sources.%s feeds none of the tasks %s: left out", name, self.tasks)
            self.columns[name] = []
            return None
        self.columns[name] = wanted
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Open the splits of ``stage`` of every data set and fit what is not fitted yet."""
        if stage == "predict":  # inputs only, from every data set
            split, inputs = self.predict_split, self.input_columns()
            if split not in self.datasets:
                self.datasets[split] = {
                    name: self.sources[name].dataset(
                        split=split,
                        columns=[c for c in self.columns.get(name, inputs) if c in inputs],
                        **self.source_kwargs[name],
                    )
                    for name in self.sources
                    if self.columns.get(name) != []
                }
            return
        splits = set(SPLIT_OF_STAGE.get(stage or "", SPLITS))
        if not all(part.fitted for part in self.parts.values()):
            splits.add("train")
        for split in sorted(splits - set(self.datasets)):
            opened = {name: self._open(name, split) for name in self.sources}
            self.datasets[split] = {n: d for n, d in opened.items() if d is not None}
        self._check_tasks_fed()
        if "train" in splits:
            self.fit(self.datasets["train"])

    def _check_tasks_fed(self) -> None:
        fed = {c for columns in self.columns.values() for c in columns}
        for task in self.tasks:
            if task not in fed:
                raise MMTrainError(
                    f"head/{task}: none of the data sets {list(self.sources)} has a {task!r} "
                    f"target; add one to data.sources or remove the task with ~head/{task}"
                )

    def column(self, dataset: Any, name: str, part: Any) -> Column:
        """What ``part`` is fitted on: its column(s) in every training split that loads them
        (``dataset``: ``{source: training split}``)."""
        columns = columns_of(name, part)
        parts = [
            super(MultiDataModule, self).column(split, name, part)
            for source, split in dataset.items()
            if all(c in self.columns[source] for c in columns)
        ]
        classes = next((p.classes for p in parts if p.classes is not None), None)
        return Column(
            lambda: [v for p in parts for v in p.values()],
            lambda n: [v for p in parts for v in p.decoded(n)],
            classes,
        )

    # ---- loaders ------------------------------------------------------------------------------
    def _train_loaders(self) -> dict[str, DataLoader]:
        """One loader per data set, each with its own resumable order (split over the
        processes of a distributed run, here: Lightning leaves DistributedSamplers alone)."""
        if "train" not in self.datasets:
            self.setup(None)
        return {
            name: self._make_loader(raw, f"train/{name}", True, source=name)
            for name, raw in self.datasets["train"].items()
        }

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        """One loader per data set: Lightning runs each in turn (``limit_*_batches`` and the
        sanity check apply to each, so every data set is evaluated) and splits it over the
        processes of a distributed run."""
        if split not in self.datasets:
            self.setup("predict" if split == self.predict_split else None)
        return [
            self._make_loader(raw, f"{split}/{name}", False, source=name)
            for name, raw in self.datasets[split].items()
        ]

    def _lengths(self, raw: Dataset, source: str | None = None) -> list[float] | None:
        """The ``bucket_by`` lengths of data set ``source``; None (not bucketed, a warning)
        for a data set that does not load that column while others do."""
        column = self.bucket_by
        loaded = self.columns.get(source or "", [])
        if column in self.modalities + self.tasks and column not in loaded:
            log.warning(
                "data.bucket_by=%s: data.sources.%s has no %r column; its batches are not bucketed",
                column,
                source,
                column,
            )
            return None
        return super()._lengths(raw, source)

    def train_dataloader(self) -> Any:
        try:
            return self._train_dataloader()
        finally:
            self._resume = None  # applied once: the following epochs start at their beginning

    def _train_dataloader(self) -> Any:
        loaders = self._train_loaders()
        if self.sampling == "joint":
            return CombinedLoader(loaders, mode="max_size_cycle")
        sizes = [len(d) for d in self.datasets["train"].values()]
        sampler = SourceSampler(loaders, sizes, self.sampling, self.temperature, self.seed)
        if self._resume is not None:
            sampler.resume(int(self._resume["epoch"]), int(self._resume["batches"]))
        return MultiSourceLoader(loaders, sampler)

    def val_dataloader(self) -> Any:
        return self._eval_loaders("val")

    def test_dataloader(self) -> Any:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> Any:
        return self._eval_loaders(self.predict_split)


MultiDataModule.__signature__ = signature_with(
    MultimodalDataModule,
    ("dataset", "root", "train", "val", "test", *NOT_WITH_SOURCES),
    [
        inspect.Parameter("sources", inspect.Parameter.KEYWORD_ONLY, annotation=Mapping),
        inspect.Parameter(
            "sampling", inspect.Parameter.KEYWORD_ONLY, default="proportional", annotation=str
        ),
        inspect.Parameter(
            "temperature", inspect.Parameter.KEYWORD_ONLY, default=2.0, annotation=float
        ),
    ],
)
