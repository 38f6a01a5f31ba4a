"""Generated from the config tree: every model preset builds and trains one step.

A new YAML file under ``configs/encoder/<modality>/``, ``configs/fusion/``,
``configs/head/<task>/``, ``configs/loss_weighting/`` or ``configs/optimizer/`` is picked up here
with no new test. Each one is composed into the ``fit`` config, built by ``build_module`` with
synthetic data facts, and runs a forward and backward pass on a tiny synthetic batch (see
``make_batch`` in conftest.py: a new modality or task needs a synthesizer there).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import model_batch
from omegaconf import OmegaConf

from mmtrain.build import build_module
from mmtrain.cli import config_dir
from mmtrain.contracts import Features

CONFIG_DIR = config_dir()
# The pretrained presets build on tiny models under their ids (tests/helpers/model_store.py).
pytestmark = pytest.mark.usefixtures("model_store")
# (family, glob) -> group options; the group of a file is its folder relative to CONFIG_DIR.
MODEL_GROUP_GLOBS = ("encoder/*/*.yaml", "fusion/*.yaml", "head/*/*.yaml", "loss_weighting/*.yaml")


def _options(*patterns: str) -> list[tuple[str, str]]:
    found = []
    for pattern in patterns:
        for path in sorted(CONFIG_DIR.glob(pattern)):
            found.append((path.parent.relative_to(CONFIG_DIR).as_posix(), path.stem))
    return found


MODEL_OPTIONS = _options(*MODEL_GROUP_GLOBS)
FUSION_OPTIONS = [option for group, option in _options("fusion/*.yaml")]
OPTIMIZER_OPTIONS = [option for group, option in _options("optimizer/*.yaml")]


def _ids(options: list[tuple[str, str]]) -> list[str]:
    return [f"{group}={option}" for group, option in options]


def _default_modalities() -> list[str]:
    # The fit config's defaults list names one encoder per modality: encoder/<modality>: <option>
    defaults = OmegaConf.load(CONFIG_DIR / "fit.yaml").defaults
    return sorted(
        next(iter(d)).split("/", 1)[1]
        for d in defaults
        if isinstance(d, dict) or OmegaConf.is_dict(d)
        if next(iter(d)).startswith("encoder/")
    )


def _override(compose_config, group: str, option: str) -> str:
    """``group=option`` for a group in the defaults list, ``+group=option`` for a new one."""
    base = compose_config()
    present = OmegaConf.select(base, group.replace("/", "."), default=None) is not None
    return f"{group}={option}" if present else f"+{group}={option}"


def _train_step(module, batch) -> torch.Tensor:
    """The module's own training step (self.log warns without a Trainer: that is expected)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        return module.training_step(batch, 0)


def _assert_grads(module, *, every_param: bool = True) -> None:
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert trainable, "the model has no trainable parameters"
    with_grad = {n: p.grad for n, p in trainable.items() if p.grad is not None}
    assert with_grad, "backward() gave no parameter a gradient"
    if every_param:
        missing = sorted(set(trainable) - set(with_grad))
        assert not missing, f"trainable parameters without a gradient: {missing}"
    bad = sorted(n for n, g in with_grad.items() if not torch.isfinite(g).all())
    assert not bad, f"non-finite gradients in {bad}"


def test_the_config_tree_has_model_options() -> None:
    """Guards the glob: an empty family would silently generate no tests."""
    groups = {group.split("/")[0] for group, _ in MODEL_OPTIONS}
    assert groups == {"encoder", "fusion", "head", "loss_weighting"}, MODEL_OPTIONS
    assert FUSION_OPTIONS and OPTIMIZER_OPTIONS


@pytest.mark.parametrize(("group", "option"), MODEL_OPTIONS, ids=_ids(MODEL_OPTIONS))
def test_model_option_trains_one_step(group, option, compose_config, synth_facts):
    torch.manual_seed(0)
    cfg = compose_config(_override(compose_config, group, option))
    # Encoders with a fixed input size (torchvision's ViT) say so in their config.
    synth_facts["inputs"]["image"]["image_size"] = cfg.encoder.get("image", {}).get(
        "image_size", 64
    )
    module, batch = model_batch(cfg, synth_facts)

    module.train()
    loss = _train_step(module, batch)
    assert loss.ndim == 0 and torch.isfinite(loss), f"{group}={option}: loss {loss}"
    module.backward(loss)  # as the trainer does: a gradient-based weighting takes over here
    _assert_grads(module)

    # The contracts of ARCHITECTURE.md, checked in eval mode on the same batch.
    module.eval()
    batch_size = len(batch["id"])
    with torch.no_grad():
        for m, encoder in module.encoders.items():
            feats = encoder(batch[m], batch.get(f"{m}_mask"))
            assert isinstance(feats, Features)
            assert feats.tokens.ndim == 3 and feats.tokens.shape[0] == batch_size
            assert feats.tokens.shape[2] == encoder.out_dim, f"encoder/{m}: out_dim mismatch"
            if feats.mask is not None:
                assert feats.mask.dtype == torch.bool
                assert feats.mask.shape == feats.tokens.shape[:2]
        fused = module(batch)
        assert fused.tokens.shape[0] == batch_size
        assert fused.tokens.shape[2] == module.fusion.out_dim
        assert torch.isfinite(fused.tokens).all()
        for task, head in module.heads.items():
            # a two-tower head (retrieval) reads the encoders' features, not the fused ones
            unfused = getattr(head, "unfused", False)
            decoded = head.predict(module.encode(batch) if unfused else fused)
            assert len(decoded) == batch_size, f"head/{task}: {len(decoded)} predictions"


ENCODER_OPTIONS = [(g, o) for g, o in MODEL_OPTIONS if g.startswith("encoder/")]


@pytest.mark.parametrize(("group", "option"), ENCODER_OPTIONS, ids=_ids(ENCODER_OPTIONS))
def test_encoder_option_freezes(group, option, compose_config, synth_facts):
    """Every encoder preset takes ``freeze=true`` (declared in its YAML): no weight trains, and
    it stays in eval mode during training (fixed BatchNorm statistics, no dropout), so its
    features are the same every epoch (what data.cache_features relies on)."""
    torch.manual_seed(0)
    modality = group.split("/", 1)[1]
    cfg = compose_config(
        _override(compose_config, group, option), f"encoder.{modality}.freeze=true"
    )
    synth_facts["inputs"]["image"]["image_size"] = cfg.encoder.get("image", {}).get(
        "image_size", 64
    )
    module, batch = model_batch(cfg, synth_facts)
    encoder = module.encoders[modality]
    state = {k: v.clone() for k, v in encoder.state_dict().items()}

    module.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    first = encoder(batch[modality], batch.get(f"{modality}_mask")).tokens
    optimizer = module.configure_optimizers()  # fit's default: no scheduler
    _train_step(module, batch).backward()
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    optimizer.step()  # AdamW's weight decay included: a weight without a gradient stays
    for key, value in encoder.state_dict().items():  # BatchNorm running statistics too
        assert torch.equal(value, state[key]), f"{group}={option}: {key} changed"
    again = encoder(batch[modality], batch.get(f"{modality}_mask")).tokens
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert not first.requires_grad


@pytest.mark.parametrize("fusion", FUSION_OPTIONS, ids=[f"fusion={f}" for f in FUSION_OPTIONS])
def test_every_fusion_takes_the_tabular_modality(fusion, compose_config, synth_batch, synth_facts):
    """The fourth modality (numeric columns, +encoder/tabular=mlp) fuses like the other three:
    with all of them, and alone with the image."""
    for drop in ([], ["~encoder/text", "~encoder/audio"]):
        torch.manual_seed(0)
        cfg = compose_config(f"fusion={fusion}", "+encoder/tabular=mlp", *drop)
        module = build_module(cfg, synth_facts)
        batch = synth_batch(list(cfg.encoder), list(cfg.head), synth_facts)
        module.train()
        loss = _train_step(module, batch)
        assert torch.isfinite(loss), f"fusion={fusion} with tabular: loss {loss}"
        module.backward(loss)
        grads = [p.grad for p in module.encoders["tabular"].parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"fusion={fusion}"


@pytest.mark.parametrize(
    "option", OPTIMIZER_OPTIONS, ids=[f"optimizer={o}" for o in OPTIMIZER_OPTIONS]
)
def test_optimizer_option_steps(option, compose_config, synth_batch, synth_facts):
    torch.manual_seed(0)
    cfg = compose_config(f"optimizer={option}")
    module = build_module(cfg, synth_facts)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)
    before = [p.detach().clone() for p in module.parameters()]
    _train_step(module, synth_batch(list(cfg.encoder), list(cfg.head), synth_facts)).backward()
    optimizer.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, module.parameters()))
    assert changed > 0, f"optimizer={option}: one step changed no parameter"


@pytest.mark.parametrize(
    "modality", _default_modalities(), ids=[f"~encoder/{m}" for m in _default_modalities()]
)
def test_remove_a_modality(modality, compose_config, synth_batch, synth_facts):
    torch.manual_seed(0)
    cfg = compose_config(f"~encoder/{modality}")
    assert modality not in cfg.encoder
    module = build_module(cfg, synth_facts)
    assert modality not in module.encoders
    batch = synth_batch(list(cfg.encoder), list(cfg.head), synth_facts)
    loss = _train_step(module, batch)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_grads(module)


def _drop(batch: dict, modality: str) -> None:
    batch.pop(modality)
    batch.pop(f"{modality}_mask", None)


def _mask_all(batch: dict, modality: str, samples: slice = slice(None)) -> None:
    batch[f"{modality}_mask"][samples] = False


# How a modality goes missing (ARCHITECTURE.md: a fusion must accept an absent or fully masked
# modality). Only text and audio have masks; images can only be absent.
MISSING = {
    "audio_absent": lambda b: _drop(b, "audio"),
    "image_absent": lambda b: _drop(b, "image"),
    "only_image": lambda b: (_drop(b, "audio"), _drop(b, "text")),
    "audio_fully_masked": lambda b: _mask_all(b, "audio"),
    "text_and_audio_fully_masked": lambda b: (_mask_all(b, "audio"), _mask_all(b, "text")),
    "sample0_image_only": lambda b: (
        _mask_all(b, "audio", slice(0, 1)),
        _mask_all(b, "text", slice(0, 1)),
    ),
}


@pytest.mark.parametrize("case", sorted(MISSING))
@pytest.mark.parametrize("option", FUSION_OPTIONS, ids=[f"fusion={o}" for o in FUSION_OPTIONS])
def test_fusion_accepts_missing_modality(option, case, compose_config, synth_batch, synth_facts):
    torch.manual_seed(0)
    cfg = compose_config(f"fusion={option}")
    module = build_module(cfg, synth_facts)
    batch = synth_batch(list(cfg.encoder), list(cfg.head), synth_facts)
    MISSING[case](batch)

    module.train()
    loss = _train_step(module, batch)
    assert torch.isfinite(loss), f"fusion={option}, {case}: loss {loss}"
    loss.backward()
    _assert_grads(module, every_param=False)  # an absent modality's encoder gets no gradient

    module.eval()
    with torch.no_grad():
        fused = module(batch)
    assert torch.isfinite(fused.tokens).all(), f"fusion={option}, {case}: non-finite output"


def test_unknown_task_needs_a_synthesizer(synth_batch):
    """A head for a new task fails the generated tests with a message saying what to add."""
    with pytest.raises(pytest.fail.Exception, match=r"no synthesizer for task 'speaker'.*conftest"):
        synth_batch(["image"], ["speaker"])
    with pytest.raises(pytest.fail.Exception, match=r"no synthesizer for modality 'video'"):
        synth_batch(["video"], ["label"])


def test_discovery_follows_the_files() -> None:
    """Options are the YAML files themselves: the ids match the config tree one to one."""
    on_disk = sorted(
        f"{p.parent.relative_to(CONFIG_DIR).as_posix()}={p.stem}"
        for pattern in MODEL_GROUP_GLOBS
        for p in CONFIG_DIR.glob(pattern)
    )
    assert sorted(_ids(MODEL_OPTIONS)) == on_disk
    assert "encoder/image=cnn" in on_disk and "fusion=attention" in on_disk


def _label_weight(cfg, synth_facts) -> float:
    return build_module(cfg, synth_facts).loss_weighting.fixed["label"]


def test_loss_weight_override_with_plus(compose_config, synth_facts):
    cfg = compose_config("+loss_weighting.weights.label=2.0")
    assert _label_weight(cfg, synth_facts) == 2.0


def test_caption_head_without_a_tokenizer_is_a_clear_error(compose_config, synth_facts):
    from mmtrain.errors import MMTrainError

    cfg = compose_config()
    del synth_facts["targets"]["caption"]
    with pytest.raises(MMTrainError, match=r"head/caption .* set data.targets.caption"):
        build_module(cfg, synth_facts)
