"""The Lightning data module: a data set per split -> inputs and targets -> loaders.

The data module knows no modality and no kind of target: it loops over its inputs
(``data.image``, ``data.text``, ``data.audio``, ``data.tabular``: :mod:`mmtrain.data.inputs`)
and its targets (``data.targets.<task>``: :mod:`mmtrain.data.targets`), which read, fit,
encode and collate their own columns.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmtrain.contracts import FEATURES, SPLITS, Column
from mmtrain.data.bad_samples import (
    ON_ERROR,
    BadSamplePolicy,
    CheckedDataLoader,
    TransformedDataset,
    collate_checked,
)
from mmtrain.data.feature_cache import CachedFeaturesDataset, FeatureStore
from mmtrain.data.inputs import Input
from mmtrain.data.sampling import ResumableSampler, lengths_of
from mmtrain.data.targets import LabelTarget, Target
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

SPLIT_OF_STAGE = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


def split_kwargs(
    dataset: Callable[..., Dataset],
    root: str | None,
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    key: str = "data",
) -> dict[str, str]:
    """The keyword arguments that reach every call ``dataset(split=..., ...)``: ``root`` and the
    split files that are set.

    Raises:
        ValueError: if split files are set and ``dataset`` takes none (``key`` names the node).
    """
    kwargs = {} if root is None else {"root": str(root)}
    files = {"train": train, "val": val, "test": test}
    kwargs.update({k: str(v) for k, v in files.items() if v is not None})
    given = [k for k in SPLITS if k in kwargs]
    target = getattr(dataset, "func", dataset)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    unknown = [k for k in given if k not in params]
    if unknown:
        name = f"{target.__module__}.{target.__qualname__}"
        raise ValueError(
            f"{key}.{unknown[0]} is set, but the data set {name} takes no split files "
            f"({', '.join(k for k in params if k != 'self')}); for manifests use data=manifest"
        )
    return kwargs


def optional_kwargs(dataset: Callable[..., Dataset] | None, inputs: dict[str, Any]) -> dict:
    """``{"optional": columns}`` for a data set that takes ``optional``: the columns that the
    inputs accept absent in a sample (a missing tabular value); ``{}`` otherwise."""
    optional = [c for part in inputs.values() for c in getattr(part, "optional", [])]
    if not optional or dataset is None:
        return {}
    try:
        params = inspect.signature(getattr(dataset, "func", dataset)).parameters
    except (TypeError, ValueError):
        return {}
    return {"optional": optional} if "optional" in params else {}


def columns_of(name: str, part: Any) -> list[str]:
    """The data set columns that ``part`` (an input or target named ``name``) reads: its
    ``columns`` (a target's: its task's, then any other its prompt needs), else ``[name]``
    (a target that does not say)."""
    return list(getattr(part, "columns", None) or [name])


def training_column(dataset: Any, name: str, part: Any) -> Column:
    """The training values that ``part`` (an input or target named ``name``) is fitted on:
    its column(s) in ``dataset``, raw (``values``) or decoded (``decoded(n)``: ``n`` samples
    spread over the split; bad samples are left out, their loading reports them), and the
    class names the data set declares for it."""
    columns = columns_of(name, part)
    read = getattr(part, "read", None) or (lambda item: item.get(name))

    def values() -> list[Any]:
        rows = zip(*(dataset.values(c) for c in columns), strict=True)
        return [read(dict(zip(columns, row))) for row in rows]

    def decoded(n: int) -> list[Any]:
        size = len(dataset)
        picks = sorted({i * size // n for i in range(n)}) if size > n else range(size)
        out = []
        for i in picks:
            try:
                out.append(read(dataset[i]))
            except MMTrainError:
                continue
        return out

    declared = getattr(dataset, "class_names", None) or {}
    return Column(values, decoded, declared.get(name))


def signature_with(base: type, drop: tuple[str, ...], own: list[inspect.Parameter]) -> Any:
    """``base``'s constructor signature without ``drop``, followed by ``own`` (keyword-only):
    what the config check binds ``data.*`` keys against for a subclass that forwards
    ``**kwargs`` to ``base`` (typos get a did-you-mean, values their type check)."""
    try:
        signature = inspect.signature(base, eval_str=True)
    except Exception:  # an annotation that does not evaluate here: keys are still checked
        signature = inspect.signature(base)
    kept = [p for name, p in signature.parameters.items() if name not in drop]
    return signature.replace(parameters=[*kept, *own])


class MultimodalDataModule(pl.LightningDataModule):
    """Loads the modalities that have an encoder and the targets that have a head.

    Each loaded modality has an input (``image``, ``text``, ``audio``, ``tabular``: a
    :class:`~mmtrain.contracts.Input`), each task a target (``targets[task]``, else a
    :class:`~mmtrain.data.targets.LabelTarget`). Inputs and targets that still need it are
    fitted on the training split in :meth:`setup` (vocabularies, class names, statistics) and
    saved in :meth:`state_dict`, so a checkpoint carries them; a restored state is used as is.

    Bad samples: a sample whose loading raises :class:`MMTrainError` (a missing or unreadable
    file, a wrong type, an unknown class...) stops the run with that error, which names the
    sample (``train.jsonl:7: ...``), unless ``on_error="skip"``: then the sample is dropped
    from its batch (a batch left empty is not yielded), counted, and the count of each pass
    over a split is logged at its end (a warning with the first errors) and kept in
    :attr:`skipped`. More than ``max_skipped`` in one pass is an error. Any other exception
    (a bug, not bad data) always propagates.

    Args:
        dataset: called as ``dataset(split=..., columns=..., root=...)`` for each split, plus
            ``train=``, ``val=``, ``test=`` where those are set; a class may offer a static
            ``prepare_data(**kwargs)`` that writes or downloads files once.
        root: the data set's folder (``data.root=...``), handed to ``dataset``; None leaves
            the dataset's own ``root`` (if any) as configured.
        train: the training split's file or name, handed to ``dataset``; None leaves the
            dataset's own.
        val: the validation split's, as ``train``.
        test: the test split's, as ``train`` (for manifests, None tests on ``val``).
        image: the image input.
        text: the text input.
        audio: the audio input.
        tabular: the tabular input (numeric columns).
        targets: ``{task: target}``; a task without one is a class label.
        modalities: the inputs to load (wired by build.py from the encoders).
        tasks: the targets to load (wired by build.py from the heads).
        batch_size: samples per batch (per device).
        num_workers: data-loader worker processes.
        pin_memory: pin host memory; None pins when CUDA is available.
        predict_split: the split that ``mmtrain predict`` runs on.
        on_error: ``raise`` (stop at the first bad sample) or ``skip`` (drop and count).
        max_skipped: with ``skip``, the most samples skipped in one pass over a split: below 1
            a fraction of the split (0.01: 1%, rounded down), from 1 on a number of samples.
        seed: the seed of the training order and of each sample's augmentation (wired by
            build.py from the run's ``seed``); see :mod:`mmtrain.data.sampling`.
        bucket_by: length bucketing of training batches: the input or target whose length
            groups samples (``text``, ``caption``, ``transcript``, ``audio``); None: none.
        bucket_pool: with ``bucket_by``, the batches drawn together and sorted by length.
        cache_features: compute the outputs of the frozen encoders once, before training, and
            train from them (see :mod:`mmtrain.data.feature_cache`).
        cache_dir: where the feature cache is kept (reused while the encoders, preprocessing
            and data stay the same); None: ``feature_cache/`` in the run directory.
        cache_dtype: the cache's storage type (``float16`` halves its size).

    Raises:
        ValueError: for a non-positive batch size, negative worker count, unknown
            ``on_error``, negative ``max_skipped``, split files that ``dataset`` does not
            take, a modality without its input, or a target without the input it needs.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        root: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        image: Input | None = None,
        text: Input | None = None,
        audio: Input | None = None,
        tabular: Input | None = None,
        targets: dict[str, Target] | None = None,
        modalities: list[str] = (),
        tasks: list[str] = (),
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        predict_split: str = "test",
        on_error: Literal["raise", "skip"] = "raise",
        max_skipped: float = 0.01,
        seed: int = 0,
        bucket_by: str | None = None,
        bucket_pool: int = 50,
        cache_features: bool = False,
        cache_dir: str | None = None,
        cache_dtype: Literal["float32", "float16"] = "float32",
    ) -> None:
        super().__init__()
        if batch_size <= 0 or num_workers < 0:
            raise ValueError(
                f"need batch_size > 0 and num_workers >= 0, got {batch_size}, {num_workers}"
            )
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {max_skipped}")
        if isinstance(bucket_pool, bool) or not isinstance(bucket_pool, int) or bucket_pool < 1:
            raise ValueError(f"bucket_pool must be an integer >= 1, got {bucket_pool!r}")
        if cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype must be float32 or float16, got {cache_dtype!r}")
        self.dataset_factory = dataset
        self.dataset_kwargs = (
            {} if dataset is None else split_kwargs(dataset, root, train, val, test)
        )
        self.modalities, self.tasks = list(modalities), list(tasks)
        given = {"image": image, "text": text, "audio": audio, "tabular": tabular}
        missing = [m for m in self.modalities if given.get(m) is None]
        if missing:
            raise ValueError(
                f"modalities {missing} have an encoder but no data.{missing[0]} input config"
            )
        # in a fixed order (image first): the order of each sample's random draws
        self.inputs: dict[str, Input] = {m: given[m] for m in given if m in self.modalities}
        self.dataset_kwargs.update(optional_kwargs(dataset, self.inputs))
        self.targets: dict[str, Target] = {
            task: (targets or {}).get(task) or LabelTarget() for task in self.tasks
        }
        for name, part in [*self.inputs.items(), *self.targets.items()]:
            part.name = name
        for modality, part in self.inputs.items():
            if not part.columns:
                raise ValueError(
                    f"data.{modality}.columns is empty: name the data set's columns that "
                    f"encoder/{modality} reads, e.g. data.{modality}.columns=[age,bmi]"
                )
        for task, target in self.targets.items():
            lacking = [m for m in target.inputs if m not in self.inputs]
            if lacking:
                raise ValueError(
                    f"head/{task} needs the {lacking[0]} modality: its target is transformed "
                    f"with it; add an encoder (encoder/{lacking[0]}=...)"
                )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.predict_split = predict_split
        self.on_error, self.max_skipped = on_error, max_skipped
        self.skipped: dict[str, int] = {}  # {split: samples skipped in its current/latest pass}
        self.bucket_by, self.bucket_pool = bucket_by, bucket_pool
        self.cache_features, self.cache_dir = cache_features, cache_dir
        self.cache_dtype = cache_dtype
        self.feature_stores: dict[str, dict[str, FeatureStore]] = {}  # use_feature_cache()
        # Where a resumed run continues: {"epoch", "batches", "positions"} (see resume()).
        self._resume: dict[str, Any] | None = None
        self.datasets: dict[str, Any] = {}

    @property
    def parts(self) -> dict[str, Input | Target]:
        """The inputs and targets, by the batch key each owns."""
        return {**self.inputs, **self.targets}

    @property
    def class_names(self) -> dict[str, list[str]]:
        """``{task: class names}`` of the targets that have classes (labels, masks)."""
        facts = {task: target.facts() for task, target in self.targets.items()}
        return {task: f["class_names"] for task, f in facts.items() if "class_names" in f}

    def input_columns(self) -> list[str]:
        """The data set columns that the inputs read."""
        return list(dict.fromkeys(c for i in self.inputs.values() for c in i.columns))

    def target_columns(self, tasks: list[str] | None = None) -> list[str]:
        """The data set columns that the targets of ``tasks`` (all when None) read: each
        task's own, then any other its target reads (a causal-LM target's prompt column)."""
        tasks = self.tasks if tasks is None else tasks
        return list(dict.fromkeys(c for t in tasks for c in columns_of(t, self.targets[t])))

    # ---- Lightning hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Run the data set's own ``prepare_data`` (generation, download) once."""
        factory = self.dataset_factory
        prepare = getattr(getattr(factory, "func", factory), "prepare_data", None)
        if prepare is not None:
            root = {k: v for k, v in self.dataset_kwargs.items() if k == "root"}
            prepare(**{**getattr(factory, "keywords", {}), **root})

    def open(self, split: str, columns: list[str]) -> Dataset:
        """One split of the data set, loading ``columns``."""
        return self.dataset_factory(split=split, columns=columns, **self.dataset_kwargs)

    def setup(self, stage: str | None = None) -> None:
        """Open the splits of ``stage`` (all when None) and fit what is not fitted yet."""
        if stage == "predict":  # inputs only; what was fitted comes from the checkpoint
            if self.predict_split not in self.datasets:
                self.datasets[self.predict_split] = self.open(
                    self.predict_split, self.input_columns()
                )
            return
        splits = set(SPLIT_OF_STAGE.get(stage or "", SPLITS))
        if not all(part.fitted for part in self.parts.values()):  # a restored state needs none
            splits.add("train")
        for split in sorted(splits - set(self.datasets)):
            columns = list(dict.fromkeys(self.input_columns() + self.target_columns()))
            self.datasets[split] = self.open(split, columns)
            self._check_columns(self.datasets[split], split)
        if "train" in splits:
            self.fit(self.datasets["train"])

    def fit(self, dataset: Any) -> None:
        """Fit every input and target not fitted yet on the training split ``dataset``."""
        for name, part in self.parts.items():
            if not part.fitted:
                part.fit(self.column(dataset, name, part))

    def column(self, dataset: Any, name: str, part: Input | Target) -> Column:
        """What ``part`` is fitted on: its column(s) in the training split ``dataset``."""
        return training_column(dataset, name, part)

    def _check_columns(self, dataset: Any, split: str = "train") -> None:
        columns = getattr(dataset, "columns", None)
        if columns is None:
            return
        path = getattr(dataset, "path", None)
        where = f"in the {split} split" + (f" ({path})" if path is not None else "")
        for task in self.tasks:
            for column in columns_of(task, self.targets[task]):
                if column not in columns:
                    key = "" if column == task else f" (data.targets.{task} reads it)"
                    raise MMTrainError(
                        f"head/{task} needs a {column!r} column{key}, but the data has "
                        f"{columns} {where}; remove the task with ~head/{task}"
                    )
        for modality, part in self.inputs.items():
            for column in part.columns:
                if column not in columns:
                    key = f"data.{modality}.columns" if column != modality else "its"
                    raise MMTrainError(
                        f"encoder/{modality} needs a {column!r} column ({key}), but the data "
                        f"has {columns} {where}; remove the modality with ~encoder/{modality}"
                    )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry to rebuild the model, as plain types: what each input
        and target fitted."""
        return {
            "inputs": {m: part.state_dict() for m, part in self.inputs.items()},
            "targets": {t: part.state_dict() for t, part in self.targets.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use what a checkpoint's inputs and targets fitted instead of fitting them."""
        for kind, parts in (("inputs", self.inputs), ("targets", self.targets)):
            for name, part_state in (state.get(kind) or {}).items():
                if name in parts and part_state:
                    parts[name].load_state_dict(part_state)

    # ---- what build.py wires into the model -----------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What the model needs from the data (call after :meth:`setup`): ``{"inputs":
        {modality: facts for its encoder}, "targets": {task: facts for its head}}``."""
        return {
            "inputs": {m: part.facts() for m, part in self.inputs.items()},
            "targets": {t: part.facts() for t, part in self.targets.items()},
        }

    # ---- items and loaders ------------------------------------------------------------------
    def encode(self, item: dict[str, Any], train: bool) -> dict[str, Any]:
        """Preprocess one raw item into tensors keyed like the batch. A modality or target the
        item lacks is left out (predict inputs have no targets)."""
        out: dict[str, Any] = {"id": item["id"]}
        for modality in self.modalities:  # features from the cache (data.cache_features)
            if modality + FEATURES in item:
                out[modality + FEATURES] = item[modality + FEATURES]
        # Targets first: one encoded with its input (a mask with its image) encodes that input
        # too; the others draw no random numbers, so each input's draws keep their order.
        for task, target in self.targets.items():
            if task in item:
                out.update(target.encode(item, train, self.inputs))
        for modality, part in self.inputs.items():
            value = None if modality in out else part.read(item)
            if value is not None:
                out[modality] = part.encode(value, train)
        return out

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if split not in self.datasets:
            self.setup(None)
        raw = self.datasets[split]
        stores = self.feature_stores.get(split)
        if stores:  # the cached modalities are not loaded: their features come from the cache
            columns = [
                c for m, part in self.inputs.items() if m not in stores for c in part.columns
            ]
            columns = list(dict.fromkeys(columns + self.target_columns()))
            raw = CachedFeaturesDataset(self.open(split, columns), stores)
        return self._make_loader(raw, split, train)

    def use_feature_cache(self, stores: dict[str, dict[str, FeatureStore]]) -> None:
        """Load ``{split: {modality: FeatureStore}}`` from the cache instead of the data set
        (``data.cache_features``; see :mod:`mmtrain.data.feature_cache`)."""
        self.feature_stores = dict(stores)

    def _make_loader(
        self, raw: Dataset, name: str, train: bool, source: str | None = None
    ) -> CheckedDataLoader:
        """The loader of one raw data set; ``name`` keys its count of skipped samples, and
        ``source`` (data=multi) goes into every batch as its data set's name. Training loaders
        take their order from a :class:`ResumableSampler`; no loader draws from the global
        random state (each has its own generator), so loading never shifts the model's
        random draws."""
        policy = BadSamplePolicy(name, len(raw), self.on_error, self.max_skipped, self.skipped)
        return CheckedDataLoader(
            TransformedDataset(raw, self.encode, train),
            policy=policy,
            batch_size=self.batch_size,
            sampler=self._train_sampler(raw, source) if train else None,
            num_workers=self.num_workers,
            collate_fn=partial(collate_checked, source=source, parts=self.parts),
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _train_sampler(self, raw: Dataset, source: str | None = None) -> ResumableSampler:
        """The training order of one data set: shuffled by seed and epoch, split over the
        processes of a distributed run, bucketed by length with ``bucket_by`` (each process
        buckets its own share: see :class:`ResumableSampler`), starting where a resumed run
        stopped.

        Raises:
            MMTrainError: what :meth:`_lengths` raises.
        """
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        lengths = None if self.bucket_by is None else self._lengths(raw, source)
        sampler = ResumableSampler(
            raw, self.batch_size, world, rank, seed=self.seed, lengths=lengths,
            bucket_pool=self.bucket_pool,
        )  # fmt: skip
        if self._resume is not None:
            position = self._resume["positions"].get(source or "", 0)
            sampler.resume(int(self._resume["epoch"]), int(position))
        return sampler

    def _lengths(self, raw: Dataset, source: str | None = None) -> list[float] | None:
        """The ``bucket_by`` length of each sample of ``raw``; None: not bucketed (a data
        set of data=multi without the column). See :func:`~mmtrain.data.sampling.lengths_of`.
        """
        name = f"data.sources.{source}" if source else None
        return lengths_of(self.parts, self.bucket_by, raw, name, self.bucket_pool)

    def resume(self, epoch: int, batches: int, positions: dict[str, int]) -> None:
        """Make the next training loader continue an interrupted epoch (exact resume).

        Args:
            epoch: the epoch the run stopped in.
            batches: the batches the run trained on in that epoch.
            positions: ``{data set: batches of its loader consumed}`` (``""`` for a single
                data set), the ``POSITION`` of the last batch of each.
        """
        self._resume = {"epoch": epoch, "batches": batches, "positions": dict(positions)}

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", train=True)
        self._resume = None  # applied once: the following epochs start at their beginning
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split)
