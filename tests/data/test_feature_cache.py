"""data.cache_features: frozen encoders run once, training reads their features from disk."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import QUIET, TINY_DATA
from torch import nn
from torch.utils.data import Dataset

from mmtrain.contracts import Features
from mmtrain.data.bad_samples import TransformedDataset
from mmtrain.data.collate import collate
from mmtrain.data.feature_cache import (
    FEATURES,
    CachedFeaturesDataset,
    FeatureStore,
    _compute_part,
)
from mmtrain.errors import MMTrainError
from mmtrain.run import run

# A frozen image encoder and no augmentation: the cache must change nothing but the speed.
FROZEN = [
    "encoder/image=resnet18",
    "encoder.image.freeze=true",
    "data.image.augment=false",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "callbacks=none",
    *TINY_DATA,
    *QUIET,
]


def _losses(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if "/loss" in k}


def test_training_from_the_cache_gives_the_losses_of_training_without_it(
    compose_config, tiny_data, tmp_path
):
    plain = run("fit", compose_config(*FROZEN, output_dir=tmp_path / "plain"))
    cached = run(
        "fit", compose_config(*FROZEN, "data.cache_features=true", output_dir=tmp_path / "c")
    )
    assert _losses(plain).keys() == _losses(cached).keys() and "val/loss" in _losses(plain)
    for key, value in _losses(plain).items():
        assert cached[key] == pytest.approx(value, rel=1e-5), key
    (train,) = (tmp_path / "c/feature_cache").glob("*/train/image/meta.json")
    (val,) = (tmp_path / "c/feature_cache").glob("*/val/image/meta.json")
    assert json.loads(train.read_text()) == {"parts": 1, "size": 24, "masked": False}
    assert FeatureStore(val.parent)[0].shape == (512, 4)  # (D, T): a 2x2 grid at 64 px


def test_a_shared_cache_is_reused_and_a_changed_encoder_gets_its_own(
    compose_config, tiny_data, tmp_path
):
    shared = [*FROZEN, "data.cache_features=true", f"data.cache_dir={tmp_path / 'cache'}"]
    shared[3] = "trainer.max_epochs=1"
    run("fit", compose_config(*shared, output_dir=tmp_path / "a"))
    (meta,) = (tmp_path / "cache").glob("*/train/image/meta.json")
    stamp = meta.stat().st_mtime_ns
    run("fit", compose_config(*shared, "fusion=gated", output_dir=tmp_path / "b"))
    assert meta.stat().st_mtime_ns == stamp  # a sweep over fusions computes it once
    # another seed: other (random) encoder weights, so another fingerprint
    run("fit", compose_config(*shared, "seed=7", output_dir=tmp_path / "c"))
    assert len(list((tmp_path / "cache").glob("*/train/image/meta.json"))) == 2
    # other preprocessing, even a setting kept only inside torchvision's Normalize: another
    run("fit", compose_config(*shared, "data.image.std=[0.5,0.5,0.5]", output_dir=tmp_path / "d"))
    assert len(list((tmp_path / "cache").glob("*/train/image/meta.json"))) == 3


def test_a_frozen_trunk_keeps_its_batchnorm_statistics(compose_config, tiny_data, tmp_path):
    """Lightning never calls train() before fitting: a frozen trunk must start in eval mode,
    or BatchNorm normalises with batch statistics and updates its running ones."""
    with_checkpoints = [o for o in FROZEN if o != "callbacks=none"]
    run("fit", compose_config(*with_checkpoints, output_dir=tmp_path))
    state = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    means = [v for k, v in state.items() if k.startswith("encoders.image.") and "running_mean" in k]
    variances = [v for k, v in state.items() if "encoders.image." in k and "running_var" in k]
    assert len(means) == len(variances) == 20  # resnet18's BatchNorms, as initialised
    assert all(torch.equal(m, torch.zeros_like(m)) for m in means)
    assert all(torch.equal(v, torch.ones_like(v)) for v in variances)


def test_without_a_frozen_encoder_the_cache_is_one_clear_error(compose_config, tiny_data, tmp_path):
    config = compose_config("data.cache_features=true", "debug=fdr", *TINY_DATA, *QUIET)
    with pytest.raises(MMTrainError, match="no encoder is frozen .*encoder.image.freeze=true"):
        run("fit", config)


class _Tokens(Dataset):
    """Token sequences of different lengths; sample 2 is bad data."""

    lengths = (3, 5, 1, 4, 2)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict:
        if index == 2:
            raise MMTrainError("tokens.jsonl:3: unreadable")
        return {"id": str(index), "text": torch.arange(1, self.lengths[index] + 1)}


class _MaskedEncoder(torch.nn.Module):
    """A text-like encoder: a token per input position, masked where the input is padding."""

    out_dim = 2

    def forward(self, x, mask=None) -> Features:
        tokens = torch.stack([x.float(), -x.float()], dim=-1)  # (B, L, 2)
        return Features(tokens, mask)


class _Module(nn.Module):
    """What the cache uses of the LightningModule: its input hook, device and trainer."""

    device = torch.device("cpu")
    trainer = SimpleNamespace(
        precision_plugin=SimpleNamespace(forward_context=nullcontext), strategy=None
    )

    def _input(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return x


def _module() -> _Module:
    return _Module()


def _build(folder: Path, on_error: str, world: int = 1) -> FeatureStore:
    dataset = TransformedDataset(_Tokens(), lambda item, train: item, train=False)
    for rank in range(world):
        _compute_part(
            _MaskedEncoder(), "text", dataset, list(range(rank, 5, world)),
            folder / f"part-{rank}", batch_size=2, num_workers=0, dtype="float16",
            on_error=on_error, module=_module(),
        )  # fmt: skip
    (folder / "meta.json").write_text(json.dumps({"parts": world, "size": 5, "masked": True}))
    return FeatureStore(folder)


@pytest.mark.parametrize("world", [1, 2])
def test_ragged_masked_features_come_back_per_sample(tmp_path, world):
    store = _build(tmp_path, on_error="skip", world=world)
    for index, length in enumerate(_Tokens.lengths):
        if index == 2:
            with pytest.raises(MMTrainError, match="tokens.jsonl:3: unreadable .*feature cache"):
                store[index]
            continue
        expected = torch.arange(1, length + 1, dtype=torch.float16)
        assert torch.equal(store[index], torch.stack([expected, -expected]))  # (D, T)
    # batched like a data set's items: padded, with the mask the encoder gave
    batch = collate([{"id": str(i), "text" + FEATURES: store[i]} for i in (0, 1)])
    assert batch["text" + FEATURES].shape == (2, 2, 5)
    assert batch["text" + FEATURES + "_mask"].sum(1).tolist() == [3, 5]


def test_a_bad_sample_stops_the_cache_unless_skipped(tmp_path):
    with pytest.raises(MMTrainError, match="tokens.jsonl:3: unreadable"):
        _build(tmp_path / "raise", on_error="raise")


def test_a_cache_of_another_size_is_refused(tmp_path):
    store = _build(tmp_path, on_error="skip")

    class _Three(_Tokens):
        lengths = (1, 2, 3)

    with pytest.raises(MMTrainError, match="5 samples, the data set has 3"):
        CachedFeaturesDataset(_Three(), {"text": store})
