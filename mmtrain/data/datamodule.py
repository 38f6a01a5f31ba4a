"""The Lightning data module: data set per split -> transforms -> collate -> loaders."""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmtrain.contracts import FEATURES
from mmtrain.data.bad_samples import (
    ON_ERROR,
    BadSamplePolicy,
    CheckedDataLoader,
    TransformedDataset,
    collate_checked,
)
from mmtrain.data.feature_cache import CachedFeaturesDataset, FeatureStore
from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.sampling import ResumableSampler, audio_seconds
from mmtrain.data.transforms import AudioTransform, ImageTransform, WordTokenizer
from mmtrain.data.transforms.image import IGNORE_INDEX
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

SPLIT_OF_STAGE = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
SPLIT_FILES = ("train", "val", "test")
_INT = re.compile(r"[+-]?\d+")
MASK = "mask"  # the segmentation target: (H, W) class ids, transformed with its image


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
    given = [k for k in SPLIT_FILES if k in kwargs]
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


def class_order(name: str) -> tuple[int, int, str]:
    """Sort key of class names: integers by value ("2" before "10"), then the rest by string."""
    return (0, int(name), name) if _INT.fullmatch(name) else (1, 0, name)


class MultimodalDataModule(pl.LightningDataModule):
    """Loads the modalities that have an encoder and the targets that have a head.

    The vocabularies (of the text input and of each text target) and the class names of each
    classification target are built from the training split in :meth:`setup` and saved in
    :meth:`state_dict` (so a checkpoint carries them); a restored state is used as is.

    A task with a tokenizer in ``tokenizers`` is a text target (``caption``): it is encoded as
    ``<bos> ids <eos>`` and batched as ``caption (B, L)`` + ``caption_mask``; its raw strings go
    along as ``<task>_references`` (all references of an image when the data set gives them,
    under ``<task>_references``, else the one target string). A tokenizer with
    ``soft_targets`` (VQA's :class:`~mmtrain.data.transforms.answers.AnswerVocabulary`)
    encodes all the references instead (``answer (B, A)``: the ids of every human answer).
    The ``mask`` task is a segmentation target: ``(H, W)`` class ids (``255``: unlabelled)
    that go through the image's transform together with their image (the same crop and flip,
    nearest resizing) and are batched as ``mask (B, S, S)`` long. Its class names are
    ``mask_classes`` (index = class id), never values of the training split (file names).
    Other tasks are class labels.

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
        train: the training split's file (``data=manifest``: a JSONL or CSV manifest), handed
            to ``dataset``; None leaves the dataset's own.
        val: the validation split's file, as ``train``.
        test: the test split's file, as ``train`` (for manifests, None tests on ``val``).
        image: image preprocessing.
        text: the tokenizer for the ``text`` modality.
        tokenizers: ``{task: tokenizer}`` for text targets such as ``caption``.
        audio: audio preprocessing.
        modalities: the inputs to load (wired by build.py from the encoders).
        tasks: the targets to load (wired by build.py from the heads).
        batch_size: samples per batch (per device).
        num_workers: data-loader worker processes.
        pin_memory: pin host memory; None pins when CUDA is available.
        predict_split: the split that ``mmtrain predict`` runs on.
        on_error: ``raise`` (stop at the first bad sample) or ``skip`` (drop and count).
        max_skipped: with ``skip``, the most samples skipped in one pass over a split: below 1
            a fraction of the split (0.01: 1%, rounded down), from 1 on a number of samples.
        mask_classes: the class names of the ``mask`` target, index = class id (background
            included); the model gets them as ``class_names["mask"]`` (the segmentation head's
            ``num_classes`` and ``class_names``). None: the head needs
            ``head.mask.num_classes`` in its YAML, and mask ids are not checked.
        seed: the seed of the training order and of each sample's augmentation (wired by
            build.py from the run's ``seed``); see :mod:`mmtrain.data.sampling`.
        bucket_by: length bucketing of training batches: the column whose length groups
            samples (``text``, ``caption``, ``transcript``, ``audio``); None: no bucketing.
        bucket_pool: with ``bucket_by``, the batches drawn together and sorted by length.
        cache_features: compute the outputs of the frozen encoders once, before training, and
            train from them (see :mod:`mmtrain.data.feature_cache`).
        cache_dir: where the feature cache is kept (reused while the encoders, preprocessing
            and data stay the same); None: ``feature_cache/`` in the run directory.
        cache_dtype: the cache's storage type (``float16`` halves its size).

    Raises:
        ValueError: for a non-positive batch size, negative worker count, unknown
            ``on_error``, negative ``max_skipped``, split files that ``dataset`` does not
            take, ``mask_classes`` that are not 2 to 255 distinct names, or a ``mask`` task
            without the ``image`` modality.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        root: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        image: ImageTransform | None = None,
        text: WordTokenizer | None = None,
        audio: AudioTransform | None = None,
        tokenizers: dict[str, WordTokenizer] | None = None,
        modalities: list[str] = (),
        tasks: list[str] = (),
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        predict_split: str = "test",
        on_error: Literal["raise", "skip"] = "raise",
        max_skipped: float = 0.01,
        mask_classes: list[str] | None = None,
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
        self.dataset_factory = dataset
        self.dataset_kwargs = split_kwargs(dataset, root, train, val, test)
        self.on_error = on_error
        self.max_skipped = max_skipped
        self.skipped: dict[str, int] = {}  # {split: samples skipped in its current/latest pass}
        self.transforms = {"image": image, "text": text, "audio": audio}
        self.tokenizers = dict(tokenizers or {})
        self.modalities = list(modalities)
        self.tasks = list(tasks)
        missing = [m for m in self.modalities if self.transforms.get(m) is None]
        if missing:
            raise ValueError(
                f"modalities {missing} have an encoder but no data.{missing[0]} "
                "preprocessing config"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.bucket_by, self.bucket_pool = bucket_by, bucket_pool
        self.cache_features, self.cache_dir, self.cache_dtype = (
            cache_features,
            cache_dir,
            cache_dtype,
        )
        self.feature_stores: dict[str, dict[str, FeatureStore]] = {}  # use_feature_cache()
        if cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype must be float32 or float16, got {cache_dtype!r}")
        # Where a resumed run continues: {"epoch", "batches", "positions"} (see resume()).
        self._resume: dict[str, Any] | None = None
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.predict_split = predict_split
        self.class_names: dict[str, list[str]] = {}
        if MASK in self.tasks and "image" not in self.modalities:
            raise ValueError(
                "head/mask (segmentation) needs the image modality: its masks are transformed "
                "with their images; add an image encoder (encoder/image=...)"
            )
        if mask_classes is not None:
            names = [str(n) for n in mask_classes]
            # ids are uint8 and 255 is the unlabelled id: at most 255 classes
            if not 2 <= len(names) <= IGNORE_INDEX or len(set(names)) != len(names):
                raise ValueError(
                    f"mask_classes must be 2 to {IGNORE_INDEX} distinct class names (index = "
                    f"class id), got {names}"
                )
            self.class_names[MASK] = names
        self.datasets: dict[str, Dataset] = {}

    # ---- Lightning hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Run the data set's own ``prepare_data`` (generation, download) once."""
        factory = self.dataset_factory
        prepare = getattr(getattr(factory, "func", factory), "prepare_data", None)
        if prepare is not None:
            root = {k: v for k, v in self.dataset_kwargs.items() if k == "root"}
            prepare(**{**getattr(factory, "keywords", {}), **root})

    def setup(self, stage: str | None = None) -> None:
        """Open the splits of ``stage`` (all when None) and build vocabulary and classes."""
        if stage == "predict":  # inputs only; vocabularies and classes come from the checkpoint
            if self.predict_split not in self.datasets:
                self.datasets[self.predict_split] = self.dataset_factory(
                    split=self.predict_split, columns=self.modalities, **self.dataset_kwargs
                )
            return
        splits = set(SPLIT_OF_STAGE.get(stage or "", ("train", "val", "test")))
        if self._needs_training_split():  # a restored state needs no training split
            splits.add("train")
        for split in sorted(splits - set(self.datasets)):
            self.datasets[split] = self.dataset_factory(
                split=split, columns=self.modalities + self.tasks, **self.dataset_kwargs
            )
            self._check_columns(self.datasets[split], split)
        if "train" in splits:
            self._build_vocabularies(self.datasets["train"].values)

    def _build_vocabularies(self, values: Callable[[str], list[Any]]) -> None:
        """Fit the tokenizers and collect the class names not restored from a checkpoint.

        Args:
            values: the training values of a column (``values("text")``).
        """
        # Values of a wrong type are left out here; loading their sample is the error.
        tokenizer = self.transforms["text"]
        if "text" in self.modalities and not tokenizer.fitted:
            tokenizer.fit([v for v in values("text") if isinstance(v, str)])
        for task in self.tasks:
            if task == MASK:  # class names from data.mask_classes only: values are file names
                if task not in self.class_names:
                    log.warning(
                        "data.mask_classes is not set: head/mask gets no class names, so "
                        "head.mask.num_classes must be set (or set data.mask_classes=[...], "
                        "the names of the mask's class ids)"
                    )
            elif task in self.tokenizers:
                if not self.tokenizers[task].fitted:
                    self.tokenizers[task].fit(
                        [str(v) for v in values(task) if isinstance(v, (str, int, float))]
                    )
            elif task not in self.class_names:
                names = {str(v) for v in values(task) if self._is_class(v)}
                if names:
                    self.class_names[task] = sorted(names, key=class_order)

    def _needs_training_split(self) -> bool:
        """Whether a vocabulary or the class names are still to be built from ``train``."""
        text = self.transforms["text"]
        return (
            ("text" in self.modalities and not text.fitted)
            or any(not t.fitted for task, t in self.tokenizers.items() if task in self.tasks)
            or any(
                t not in self.tokenizers and t not in self.class_names and t != MASK
                for t in self.tasks
            )
        )

    def _check_columns(self, dataset: Dataset, split: str = "train") -> None:
        columns = getattr(dataset, "columns", None)
        if columns is None:
            return
        path = getattr(dataset, "path", None)
        where = f"in the {split} split" + (f" ({path})" if path is not None else "")
        for task in self.tasks:
            if task not in columns:
                raise MMTrainError(
                    f"head/{task} needs a {task!r} column, but the data has {columns} {where}; "
                    f"remove the task with ~head/{task}"
                )
        for modality in self.modalities:
            if modality not in columns:
                raise MMTrainError(
                    f"encoder/{modality} needs a {modality!r} column, but the data has "
                    f"{columns} {where}; remove the modality with ~encoder/{modality}"
                )

    @staticmethod
    def _is_class(value: Any) -> bool:
        """A class name (a string) or number (an integer); not a bool, float or container."""
        return isinstance(value, (str, int)) and not isinstance(value, bool)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry to rebuild the model, as plain types: the text input's
        tokenizer state, the class names and the text targets' tokenizer states."""
        tokenizer = self.transforms["text"]
        return {
            "text": tokenizer.state_dict() if tokenizer is not None and tokenizer.fitted else None,
            "class_names": {k: list(v) for k, v in self.class_names.items()},
            "targets": {k: t.state_dict() for k, t in self.tokenizers.items() if t.fitted},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use a saved vocabulary and class names instead of building them."""
        if state.get("text") and self.transforms["text"] is not None:
            self.transforms["text"].load_state_dict(state["text"])
        self.class_names.update({k: list(v) for k, v in state.get("class_names", {}).items()})
        for task, tokenizer_state in (state.get("targets") or {}).items():
            if task in self.tokenizers:
                self.tokenizers[task].load_state_dict(tokenizer_state)

    # ---- what build.py wires into the model -----------------------------------------------
    def facts(self) -> dict[str, Any]:
        """Sizes the model needs from the data (call after :meth:`setup`)."""
        facts: dict[str, Any] = {
            "class_names": dict(self.class_names),
            "tokenizers": dict(self.tokenizers),
        }
        if self.transforms["text"] is not None:
            facts["vocab_size"] = self.transforms["text"].vocab_size
            facts["pad_id"] = WordTokenizer.pad_id
        if self.transforms["audio"] is not None:
            facts["n_mels"] = self.transforms["audio"].n_mels
        return facts

    # ---- items and loaders ------------------------------------------------------------------
    def encode(self, item: dict[str, Any], train: bool) -> dict[str, Any]:
        """Preprocess one raw item into tensors keyed like the batch."""
        out: dict[str, Any] = {"id": item["id"]}
        for modality in self.modalities:  # features from the cache (data.cache_features)
            if modality + FEATURES in item:
                out[modality + FEATURES] = item[modality + FEATURES]
        # A modality or target the item lacks is left out (predict inputs have no targets).
        with_mask = MASK in self.tasks and MASK in item
        if with_mask and "image" not in item:
            raise MMTrainError(
                f"sample {item['id']}: the mask target needs its image (it is cropped and "
                "resized with it), but the sample has none"
            )
        if with_mask:  # the same crop, flip and resize for the image and its mask
            out["image"], out[MASK] = self._encode_with_mask(item, train)
        elif "image" in self.modalities and "image" in item:
            out["image"] = self.transforms["image"](item["image"], train=train)
        if "text" in self.modalities and "text" in item:
            out["text"] = self.transforms["text"].encode(item["text"])
        if "audio" in self.modalities and "audio" in item:
            samples, rate = item["audio"]
            out["audio"] = self.transforms["audio"](samples, rate, train=train)
        for task in self.tasks:
            if task not in item or task in out:
                continue
            if task in self.tokenizers:
                tokenizer, refs = self.tokenizers[task], item.get(f"{task}_references")
                refs = list(refs) if refs else [str(item[task])]
                if getattr(tokenizer, "soft_targets", False):  # VQA: every human answer
                    out[task] = tokenizer.encode_answers(refs)
                else:
                    out[task] = tokenizer.encode(str(item[task]), add_special=True)
                out[f"{task}_references"] = refs
            else:
                out[task] = self._encode_target(task, item[task], item["id"])
        return out

    def _encode_with_mask(self, item: dict[str, Any], train: bool) -> tuple[Tensor, Tensor]:
        """The image and its mask through the same transform: ``(3, S, S)``, ``(S, S)`` long.

        Raises:
            MMTrainError: naming the sample, for a mask that is not ``(H, W)`` ids of its
                image's size, or whose ids are neither classes of ``mask_classes`` nor 255.
        """
        sample_id, mask = item["id"], item[MASK]
        names = self.class_names.get(MASK)
        if names is not None:
            ids = np.unique(np.asarray(mask))
            bad = [int(i) for i in ids if not (0 <= i < len(names) or i == IGNORE_INDEX)]
            if bad:
                raise MMTrainError(
                    f"sample {sample_id}: mask class ids {bad[:5]} are not classes of "
                    f"data.mask_classes ({len(names)} classes: ids 0-{len(names) - 1}, "
                    f"{IGNORE_INDEX} unlabelled)"
                )
        try:
            return self.transforms["image"](item["image"], train=train, mask=mask)
        except ValueError as err:  # a mask of the wrong shape or size
            raise MMTrainError(f"sample {sample_id}: {err}") from None

    def _encode_target(self, task: str, value: Any, sample_id: str) -> torch.Tensor:
        names = self.class_names.get(task)
        if names is None:
            raise MMTrainError(f"no encoding for target {task!r} of sample {sample_id}")
        try:
            return torch.tensor(names.index(str(value)))
        except ValueError:
            raise MMTrainError(
                f"sample {sample_id}: {task}={value!r} is not a class of the training split "
                f"({len(names)} classes)"
            ) from None

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if split not in self.datasets:
            self.setup(None)
        raw = self.datasets[split]
        stores = self.feature_stores.get(split)
        if stores:  # the cached modalities are not loaded: their features come from the cache
            columns = [c for c in self.modalities + self.tasks if c not in stores]
            uncached = self.dataset_factory(split=split, columns=columns, **self.dataset_kwargs)
            raw = CachedFeaturesDataset(uncached, stores)
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
            collate_fn=collate_checked
            if source is None
            else partial(collate_checked, source=source),
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
        """The length of each sample in the ``bucket_by`` column, read without loading any
        sample: tokens for text (as the column's tokenizer splits it: exact for word and
        character tokenizers, words for BPE; with ``<bos> <eos>`` for targets, capped at its
        ``max_length``), seconds for audio (a ``duration``
        column if the data set has one, else each file's header; capped at the audio
        transform's ``max_seconds``). None: this data set is not bucketed (data=multi).

        Raises:
            MMTrainError: naming ``data.bucket_by``, for a column that this model does not
                load as text or audio (listing those it does), or a data set whose
                ``values()`` give no per-sample text, audio paths or durations.
        """
        column = self.bucket_by
        bucketable = [m for m in ("text", "audio") if m in self.modalities] + [
            t
            for t in self.tasks
            if t in self.tokenizers and not getattr(self.tokenizers[t], "soft_targets", False)
        ]
        if column not in bucketable:
            why = (
                "has no length (a class, image or answer column)"
                if column in self.modalities + self.tasks
                else "is not a column that the training data loads"
            )
            choice = (
                f"bucket by one of {sorted(bucketable)} or set data.bucket_by=null"
                if bucketable
                else "the model loads no text or audio to bucket by: set data.bucket_by=null"
            )
            raise MMTrainError(f"data.bucket_by={column!r} {why}; {choice}")
        inner = getattr(raw, "raw", raw)  # under a feature cache: the data set it wraps
        name = f"data.sources.{source}" if source else f"the data set {type(inner).__name__}"
        if not callable(getattr(raw, "values", None)):
            raise MMTrainError(
                f"data.bucket_by={column!r}: {name} has no values(column), so its samples' "
                "lengths are not known without loading them; set data.bucket_by=null"
            )
        values = list(raw.values(column))
        if column == "audio":
            try:
                durations = list(raw.values("duration"))
            except (KeyError, ValueError):  # no such column
                durations = []
            if durations and all(
                isinstance(d, (int, float)) and not isinstance(d, bool) for d in durations
            ):
                values = [float(d) for d in durations]
            elif values and all(isinstance(v, (str, os.PathLike)) for v in values):
                # A manifest's media paths are relative to the manifest's folder.
                base = inner.path.parent if isinstance(inner, ManifestDataset) else None
                values = audio_seconds(values, base)
            else:
                raise MMTrainError(
                    f"data.bucket_by='audio': {name} gives no audio file paths (values('audio')) "
                    "nor a numeric 'duration' column, and the audio lengths are not known "
                    "without decoding every sample; add a duration column, bucket by a text "
                    "column, or set data.bucket_by=null"
                )
        size = len(raw)  # type: ignore[arg-type]
        if len(values) != size:
            raise MMTrainError(
                f"data.bucket_by={column!r}: {name} gives {len(values)} {column!r} values for "
                f"{size} samples, not one per sample, so they are not the samples' lengths; "
                "set data.bucket_by=null"
            )
        if column == "audio":
            audio = self.transforms["audio"]
            cap = getattr(audio, "max_samples", None)
            cap = math.inf if cap is None else cap / audio.sample_rate
            lengths = [min(float(v), cap) for v in values]
        else:
            tokenizer = self.transforms["text"] if column == "text" else self.tokenizers[column]
            split = getattr(tokenizer, "split", str.split)
            specials = 0 if column == "text" else 2  # targets are <bos> ... <eos>
            cap = getattr(tokenizer, "max_length", None) or math.inf
            lengths = [
                0.0 if v is None else float(min(len(split(str(v))) + specials, cap)) for v in values
            ]
        log.info(
            "length bucketing of %s by %s: %d samples, lengths %.4g to %.4g, pools of %d batches",
            name,
            column,
            len(lengths),
            min(lengths, default=0),
            max(lengths, default=0),
            self.bucket_pool,
        )
        return lengths

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
