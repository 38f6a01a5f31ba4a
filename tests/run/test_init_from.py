"""fit's init_from: start from another run's weights (fine-tuning), with frozen encoders whose
features the cache computes once, for every modality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import QUIET, TINY_DATA, compose_cfg

from mmtrain.contracts import CHECKPOINT_KEY
from mmtrain.errors import MMTrainError
from mmtrain.run import run

BASE = [*TINY_DATA, *QUIET, "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
FROZEN = [f"encoder.{m}.freeze=true" for m in ("image", "text", "audio")]


@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory) -> Path:
    """A pretraining run's last checkpoint; its text vocabulary is capped at 3 words, so a run
    that builds its own (larger) one has a text encoder of another shape."""
    out = tmp_path_factory.mktemp("pretrain")
    run("fit", compose_cfg(*BASE, "data.text.max_vocab=3", output_dir=out))
    return out / "checkpoints/last.ckpt"


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _part(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix + ".")}


def test_frozen_loaded_encoders_train_from_the_cache_with_the_losses_of_training_without_it(
    pretrained, tmp_path
):
    """All three modalities: images (no padding), text (GRU over padded tokens) and audio (mel
    CNN over padded frames) are cached, ragged, and give the losses of the uncached run."""
    fine = [*BASE, f"init_from={pretrained}", *FROZEN, "data.image.augment=false"]
    plain = run("fit", compose_cfg(*fine, output_dir=tmp_path / "plain"))
    cached = run("fit", compose_cfg(*fine, "data.cache_features=true", output_dir=tmp_path / "c"))
    losses = {k: v for k, v in plain.items() if "/loss" in k}
    assert {"val/loss", "train/loss", "train/loss/caption"} <= losses.keys()
    for key, value in losses.items():
        assert cached[key] == pytest.approx(value, rel=1e-5), key

    masked = {}
    for meta in (tmp_path / "c/feature_cache").glob("*/train/*/meta.json"):
        masked[meta.parent.name] = json.loads(meta.read_text())["masked"]
    assert masked == {"image": False, "text": True, "audio": True}

    before = _state(pretrained)
    for run_dir in ("plain", "c"):
        after = _state(tmp_path / run_dir / "checkpoints/last.ckpt")
        for key, value in _part(before["state_dict"], "encoders").items():
            assert torch.equal(after["state_dict"][key], value), f"{run_dir}: {key}"
        # the vocabulary the text encoder was trained with, not one built from this data
        assert (
            after[CHECKPOINT_KEY]["data"]["inputs"]["text"]
            == before[CHECKPOINT_KEY]["data"]["inputs"]["text"]
        )


def test_only_the_listed_parts_are_loaded(pretrained, tmp_path):
    from mmtrain.build import build_datamodule, build_module
    from mmtrain.run import init_from_checkpoint

    cfg = compose_cfg(*BASE, "data.text.max_vocab=3", output_dir=tmp_path)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_module(cfg, datamodule.facts())
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    stored = _state(pretrained)["state_dict"]
    count = init_from_checkpoint(model, stored, ["encoders.image", "fusion"], str(pretrained))
    loaded = {**_part(stored, "encoders.image"), **_part(stored, "fusion")}
    assert count == len(loaded) > 0
    for key, value in model.state_dict().items():
        expected = loaded.get(key, fresh[key])
        assert torch.equal(value, expected), key
    assert not torch.equal(
        fresh["encoders.text.embed.weight"], stored["encoders.text.embed.weight"]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init_from=nosuch.ckpt"], r"init_from: checkpoint not found: nosuch\.ckpt"),
        (
            ["init_parts=[decoder]"],
            r"init_parts=\['decoder'\]: list parts of the model, each under",
        ),
        (["init_parts=[heads.nosuch]"], r"'heads.nosuch' is not a part of the configured model"),
        # another audio encoder: its weights are not in the checkpoint
        (
            ["encoder/audio=ast"],
            r"does not fit init_parts=\['encoders'\].*missing: encoders\.audio",
        ),
        # the vocabulary comes from the checkpoint, so only an unloaded text part can differ
        (
            ["encoder.text.hidden_dim=32"],
            r"does not fit .*shape: encoders\.text\.rnn\.weight_ih_l0 \(192, 64\) vs \(96, 64\)",
        ),
    ],
    ids=["missing-file", "bad-part", "unknown-part", "missing-weights", "shape"],
)
def test_a_start_point_that_does_not_fit_is_one_clear_error(
    pretrained, tmp_path, overrides, message
):
    config = compose_cfg(*BASE, f"init_from={pretrained}", *overrides, output_dir=tmp_path)
    with pytest.raises(MMTrainError, match=message):
        run("fit", config)
    assert not (tmp_path / "checkpoints").exists()


def test_an_unloaded_text_encoder_keeps_the_vocabulary_of_this_data(pretrained, tmp_path):
    """Without the text encoder in init_parts, the run builds its own vocabulary (bigger than
    the checkpoint's 3 words) and trains its own text encoder."""
    config = compose_cfg(
        *BASE,
        f"init_from={pretrained}",
        "init_parts=[encoders.image,encoders.audio]",
        output_dir=tmp_path,
    )
    run("fit", config)
    after = _state(tmp_path / "checkpoints/last.ckpt")
    before = _state(pretrained)
    assert (
        after[CHECKPOINT_KEY]["data"]["inputs"]["text"]
        != before[CHECKPOINT_KEY]["data"]["inputs"]["text"]
    )
    text = after["state_dict"]["encoders.text.embed.weight"]
    assert text.shape[0] > before["state_dict"]["encoders.text.embed.weight"].shape[0]


def test_resuming_does_not_read_init_from(pretrained, tmp_path):
    """A resumed (or requeued) run restores every weight from its own checkpoint."""
    run("fit", compose_cfg(*BASE, f"init_from={pretrained}", *FROZEN, output_dir=tmp_path / "a"))
    last = tmp_path / "a/checkpoints/last.ckpt"
    again = [o for o in BASE if not o.startswith("trainer.max_epochs")]
    resumed = compose_cfg(
        *again,
        "trainer.max_epochs=2",
        "init_from=moved-away.ckpt",
        *FROZEN,
        f"ckpt_path={last}",
        output_dir=tmp_path / "b",
    )
    assert "val/loss" in run("fit", resumed)
