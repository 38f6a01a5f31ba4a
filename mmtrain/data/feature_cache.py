"""The frozen-encoder feature cache (``data.cache_features=true``).

An encoder whose weights are all frozen (``encoder.image.freeze=true``) gives the same features
for a sample every epoch, as long as its input is the same. With the cache on, the fit runs
each frozen encoder once over the training and validation splits, before the first step, and
trains from the stored features: the loaders no longer read, decode or preprocess that
modality, and the encoder no longer runs.

What changes, and what does not:

* Cached samples are preprocessed as in evaluation (``train=False``): no random crop, flip,
  colour jitter or SpecAugment for a cached modality (its features are fixed). Modality
  dropout, the other modalities and the targets are as without the cache. With augmentation
  off, the losses are those of a run without the cache (tested).
* The cache is a folder per ``(encoders, preprocessing, data set, split, storage type)``
  fingerprint under ``data.cache_dir`` (default: ``feature_cache/`` in the run directory), so
  a sweep over fusions or heads with a shared ``data.cache_dir`` computes it once; a changed
  encoder, transform or data set gets a new folder, never a stale cache.
* On disk: per split and modality, ``tokens.bin`` (all samples' valid tokens, ``(sum T, D)``)
  and ``offsets.npy``, read through a memory map, so the cache need not fit in memory.
* Distributed runs: rank ``r`` computes the samples ``r, r + world, ...`` (one part each);
  every rank reads all parts (``data.cache_dir`` must be shared storage on several nodes).
* Testing, validation outside fit and prediction run the encoders as usual.
* Bad samples follow ``data.on_error``: with ``skip`` a sample that fails while the cache is
  built is stored empty, and loading it from the cache fails again, so it is skipped and
  counted in every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mmtrain.contracts import FEATURES
from mmtrain.data.bad_samples import BadSample, TransformedDataset
from mmtrain.data.collate import collate
from mmtrain.errors import MMTrainError
from mmtrain.utils.base_weights import whole

log = logging.getLogger(__name__)

CACHED_SPLITS = ("train", "val")
_DTYPES = {"float32": np.float32, "float16": np.float16}


def frozen(encoder: nn.Module) -> bool:
    """Whether every parameter of ``encoder`` is frozen (and it has some)."""
    params = list(encoder.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


class FeatureStore(Dataset):
    """One split's cached features of one modality: ``store[i]`` is ``(D, T_i)``.

    Args:
        folder: the modality's folder, with one ``part-<rank>`` folder per process that
            computed it (sample ``i`` is in part ``i % parts``, at ``i // parts``).

    Raises:
        MMTrainError: for an incomplete cache (a part without its ``meta.json``).
    """

    def __init__(self, folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        self.parts, self.size, self.masked = meta["parts"], meta["size"], meta["masked"]
        self.errors: dict[int, str] = {}
        self._tokens, self._offsets = [], []
        for rank in range(self.parts):
            part = folder / f"part-{rank}"
            try:
                part_meta = json.loads((part / "meta.json").read_text())
            except FileNotFoundError:
                raise MMTrainError(f"feature cache {part}: incomplete (no meta.json)") from None
            offsets = np.load(part / "offsets.npy")
            shape = (int(offsets[-1]), part_meta["dim"])
            dtype = _DTYPES[part_meta["dtype"]]
            tokens = (
                np.memmap(part / "tokens.bin", dtype=dtype, mode="r", shape=shape)
                if shape[0]
                else np.zeros(shape, dtype)
            )
            self._tokens.append(tokens)
            self._offsets.append(offsets)
            self.errors.update({int(k): v for k, v in part_meta["errors"].items()})

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Tensor:
        if index in self.errors:
            raise MMTrainError(self.errors[index])
        part, local = index % self.parts, index // self.parts
        start, end = self._offsets[part][local : local + 2]
        # (T, D) -> (D, T): collate pads the last axis of 2-D features and adds their mask
        return torch.from_numpy(np.array(self._tokens[part][start:end]).T)


class CachedFeaturesDataset(Dataset):
    """A raw data set without its cached modalities, plus their features from the cache.

    Args:
        raw: the split's data set, loading every column but the cached modalities.
        stores: ``{modality: FeatureStore}`` of the split.
    """

    def __init__(self, raw: Dataset, stores: Mapping[str, FeatureStore]) -> None:
        for modality, store in stores.items():
            if len(store) != len(raw):  # type: ignore[arg-type]
                raise MMTrainError(
                    f"feature cache of {modality}: {len(store)} samples, the data set has "
                    f"{len(raw)}"  # type: ignore[arg-type]
                )
        self.raw, self.stores = raw, dict(stores)
        self.where = getattr(raw, "where", None)

    def __len__(self) -> int:
        return len(self.raw)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.raw[index])
        for modality, store in self.stores.items():
            item[modality + FEATURES] = store[index]
        return item

    def values(self, column: str) -> list[Any]:
        return self.raw.values(column)  # type: ignore[attr-defined]


def fingerprint(
    encoder: nn.Module,
    preprocessing: str,
    probe: Tensor | None,
    dataset: str,
    split: str,
    dtype: str,
) -> str:
    """A short hash of what the cached features depend on: the encoder's weights, the
    preprocessing (its input's ``fingerprint()``, and ``probe``: the first sample as it
    preprocesses it, which catches a setting kept only inside a torchvision or torchaudio
    module), the data set, the split and the storage type."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        tensor = whole(tensor.detach()).cpu().contiguous()  # fsdp2: gathered
        digest.update(tensor.view(-1).view(torch.uint8).numpy())
    digest.update(repr(type(encoder)).encode())
    digest.update(preprocessing.encode())
    if probe is not None:
        digest.update(probe.contiguous().view(-1).view(torch.uint8).numpy())
    digest.update(f"{dataset}|{split}|{dtype}".encode())
    return digest.hexdigest()[:16]


def _items(items: list[Any]) -> list[Any]:
    return items  # the loader's collate: items as they are, bad ones included


def _encode_batch(
    encoder: nn.Module,
    modality: str,
    items: list[dict[str, Any]],
    module: Any,
    collate_parts: Any = None,
) -> list[tuple[np.ndarray, bool]]:
    """``[(valid tokens (T, D), whether the encoder gave a mask)]`` of preprocessed items.

    Raises:
        MMTrainError: for a mask that is not a prefix (the cache keeps valid tokens only).
    """
    from mmtrain.strategies import through_call

    batch = collate(items, collate_parts)
    x = module._input(modality, batch[modality].to(module.device))
    mask = batch.get(f"{modality}_mask")
    with module.trainer.precision_plugin.forward_context():
        mask = None if mask is None else mask.to(module.device)
        features = through_call(module, encoder, x, mask)  # fsdp2: the weights gathered
    tokens = features.tokens.float()  # (B, N, D)
    if features.mask is None:
        return [(row, False) for row in tokens.cpu().numpy()]
    valid = features.mask.sum(dim=1)  # (B,)
    prefix = torch.arange(tokens.shape[1], device=tokens.device)[None] < valid[:, None]
    if not torch.equal(prefix, features.mask.bool()):
        raise MMTrainError(
            f"data.cache_features: encoder/{modality} gives a mask that is not a prefix of "
            "its tokens; the cache keeps the valid tokens only"
        )
    return [(row[:n], True) for n, row in zip(valid.tolist(), tokens.cpu().numpy())]


def _collective(module: Any) -> bool:
    """Whether a call of the model is collective (``trainer=fsdp2``: each gathers the others'
    shards), so that every rank must make as many as the others."""
    from mmtrain.strategies import gathers_in_calls

    return gathers_in_calls(module.trainer.strategy)


def _compute_part(
    encoder: nn.Module,
    modality: str,
    dataset: TransformedDataset,
    indices: list[int],
    folder: Path,
    *,
    batch_size: int,
    num_workers: int,
    dtype: str,
    on_error: str,
    module: Any,
    collate_parts: Any = None,
    busiest: int = 0,
) -> bool:
    """Encode ``indices`` of ``dataset`` into ``folder`` (``tokens.bin``, ``offsets.npy``,
    ``meta.json`` last); returns whether the encoder gave a mask. ``busiest``: the batches
    of the rank with the most samples (``trainer=fsdp2`` makes every rank call as often)."""
    collective = _collective(module)
    folder.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_items,
        generator=torch.Generator(),  # not the global random state: dropout stays the same
    )
    offsets, errors, masked, dim = [0], {}, False, int(getattr(encoder, "out_dim", 0))
    position, calls = 0, 0
    spare = [dataset[indices[0] if indices else 0]] if collective else []  # for extra calls
    with (folder / "tokens.bin").open("wb") as out, torch.no_grad():
        for items in loader:
            batch_indices = indices[position : position + len(items)]
            position += len(items)
            good = [item for item in items if not isinstance(item, BadSample)]
            encoded = iter(
                _encode_batch(encoder, modality, good, module, collate_parts) if good else []
            )
            calls += 1
            if not good and collective:  # the others call the model now: so does this rank
                _encode_batch(encoder, modality, spare, module, collate_parts)
            for index, item in zip(batch_indices, items):
                if isinstance(item, BadSample):
                    if on_error == "raise":
                        raise MMTrainError(item.error)
                    errors[index] = f"{item.error} (when the feature cache was built)"
                    offsets.append(offsets[-1])  # stored empty
                    continue
                tokens, has_mask = next(encoded)  # (T, D) valid tokens
                masked, dim = masked or has_mask, tokens.shape[1]
                out.write(np.ascontiguousarray(tokens, dtype=_DTYPES[dtype]).tobytes())
                offsets.append(offsets[-1] + tokens.shape[0])
        for _ in range(busiest - calls if collective else 0):  # as many calls as the others
            _encode_batch(encoder, modality, spare, module, collate_parts)
    np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    meta = {"dim": dim, "dtype": dtype, "masked": masked, "errors": errors}
    (folder / "meta.json").write_text(json.dumps(meta))
    return masked


def build_feature_cache(module: Any, datamodule: Any) -> dict[str, bool]:
    """Compute (or find) the cache of every frozen encoder for the training and validation
    splits, and hand it to ``datamodule``.

    Args:
        module: the :class:`~mmtrain.module.MultimodalModule`, attached to its trainer.
        datamodule: the :class:`~mmtrain.data.datamodule.MultimodalDataModule`.

    Returns:
        ``{modality: whether its encoder gives a mask}`` of the cached modalities.

    Raises:
        MMTrainError: when no encoder is frozen, or a sample fails (``data.on_error=raise``).
    """
    trainer = module.trainer
    cached = [
        m
        for m, enc in module.encoders.items()
        if frozen(enc) and m not in module.without and m in datamodule.modalities
    ]
    if not cached:
        names = ", ".join(f"encoder/{m}" for m in module.encoders) or "none"
        raise MMTrainError(
            f"data.cache_features=true caches frozen encoders, but no encoder is frozen "
            f"({names}); freeze one (e.g. encoder.image.freeze=true) or set "
            "data.cache_features=false"
        )
    root = Path(datamodule.cache_dir or Path(trainer.default_root_dir) / "feature_cache")
    world, rank = trainer.world_size, trainer.global_rank
    stores: dict[str, dict[str, FeatureStore]] = {}
    masked: dict[str, bool] = {}
    datamodule.setup("fit")
    for split in CACHED_SPLITS:
        if split not in datamodule.datasets:
            continue
        raw = datamodule.datasets[split]
        description = f"{getattr(datamodule.dataset_factory, 'func', datamodule.dataset_factory)!r}"
        description += repr(sorted(getattr(datamodule.dataset_factory, "keywords", {}).items()))
        description += repr(sorted(datamodule.dataset_kwargs.items())) + str(len(raw))
        description += f"|precision={trainer.precision}"  # bf16 features differ from fp32
        stores[split] = {}
        for modality in cached:
            encoder = module.encoders[modality]
            # the modality alone: the other columns are not read
            only = datamodule.open(split, datamodule.inputs[modality].columns)
            dataset = TransformedDataset(only, datamodule.encode, train=False)
            first = dataset[0] if len(dataset) else None
            probe = first[modality] if isinstance(first, dict) else None  # None: a bad sample
            key = fingerprint(
                encoder,
                datamodule.inputs[modality].fingerprint(),
                probe,
                description,
                split,
                datamodule.cache_dtype,
            )
            folder = root / key / split / modality
            if not (folder / "meta.json").is_file():
                _build(module, encoder, modality, dataset, folder, world, rank, datamodule)
            stores[split][modality] = FeatureStore(folder)
            masked[modality] = stores[split][modality].masked
    datamodule.use_feature_cache(stores)
    return masked


def _build(
    module: Any,
    encoder: nn.Module,
    modality: str,
    dataset: TransformedDataset,
    folder: Path,
    world: int,
    rank: int,
    datamodule: Any,
) -> None:
    """Every rank computes its part; rank 0 then writes the folder's ``meta.json``."""
    trainer = module.trainer
    size = len(dataset)
    part = folder / f"part-{rank}"
    if part.exists():  # an interrupted build: start this part again
        shutil.rmtree(part)
    was_training = encoder.training
    encoder.eval()
    try:
        masked = _compute_part(
            encoder,
            modality,
            dataset,
            list(range(rank, size, world)),  # every world-th sample
            part,
            batch_size=datamodule.batch_size,
            num_workers=datamodule.num_workers,
            dtype=datamodule.cache_dtype,
            on_error=datamodule.on_error,
            module=module,
            collate_parts=datamodule.parts,
            busiest=math.ceil(math.ceil(size / world) / datamodule.batch_size),
        )
    finally:
        encoder.train(was_training)
    masked = bool(trainer.strategy.reduce_boolean_decision(masked, all=False))
    trainer.strategy.barrier("feature_cache")
    if rank == 0:
        meta = {"parts": world, "size": size, "masked": masked}
        (folder / "meta.json").write_text(json.dumps(meta))
    trainer.strategy.barrier("feature_cache_done")
    log.info("feature cache: encoder/%s on %d samples -> %s", modality, size, folder)
