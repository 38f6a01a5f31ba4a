"""Fine-tuning options of the optimizer (mmtrain.optim): parameter groups by part
(``model.lr_mult``), layer-wise decay (``model.layer_decay``), no weight decay for biases, norms
and embeddings (``model.no_decay``), and ``scheduler=cosine_warmup``.

Expected learning rates and weight decays are written out by hand per parameter, not computed
by the code under test.
"""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import QUIET, TINY_DATA
from torch import nn

from mmtrain.build import build_module
from mmtrain.errors import MMTrainError
from mmtrain.optim import cosine_warmup, param_groups, scale_groups
from mmtrain.run import run

LR, WD = 1e-3, 0.05


class FakeTower(nn.Module):
    """A pretrained tower as the encoders expose one: embeddings, ``blocks()`` in order, a
    final norm and a projection."""

    def __init__(self, width: int = 4, depth: int = 3) -> None:
        super().__init__()
        self.patch = nn.Linear(width, width)  # before the first block: layer 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.layers = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width)) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)  # after the last block: layer depth + 1
        self.proj = nn.Linear(width, width, bias=False)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)


class TinyModel(nn.Module):
    """The layout of MultimodalModule: encoders and heads as ModuleDicts, one fusion."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"image": FakeTower(), "text": nn.Linear(4, 4)})
        self.fusion = nn.Linear(4, 4)
        self.heads = nn.ModuleDict({"label": nn.Linear(4, 3), "caption": nn.Linear(4, 5)})


def _optimizer(model: nn.Module, **options) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(param_groups(model, **options), lr=LR, weight_decay=WD)
    scale_groups(optimizer)
    return optimizer


def _per_param(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, tuple]:
    """``{parameter name: (lr, weight_decay, group name)}``."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: (group["lr"], group["weight_decay"], group["name"])
        for group in optimizer.param_groups
        for p in group["params"]
    }


def test_lr_mult_and_layer_decay_give_each_parameter_its_lr() -> None:
    torch.manual_seed(0)
    model = TinyModel()
    lr_mult = {"encoders": 0.5, "encoders.image": 0.1, "heads": {"caption": 2.0}}
    got = _per_param(model, _optimizer(model, lr_mult=lr_mult, layer_decay=0.5))
    # 3 blocks: embeddings 0.5**4, block i 0.5**(3 - i), final norm and projection 0.5**0;
    # times the image tower's 0.1 (the longest path wins over encoders' 0.5)
    image = {
        "patch.weight": (0.1 * 0.0625, WD),
        "patch.bias": (0.1 * 0.0625, 0.0),
        "cls_token": (0.1 * 0.0625, 0.0),
        "layers.0.0.weight": (0.1 * 0.125, 0.0),  # LayerNorm
        "layers.0.0.bias": (0.1 * 0.125, 0.0),
        "layers.0.1.weight": (0.1 * 0.125, WD),
        "layers.0.1.bias": (0.1 * 0.125, 0.0),
        "layers.1.0.weight": (0.1 * 0.25, 0.0),
        "layers.1.0.bias": (0.1 * 0.25, 0.0),
        "layers.1.1.weight": (0.1 * 0.25, WD),
        "layers.1.1.bias": (0.1 * 0.25, 0.0),
        "layers.2.0.weight": (0.1 * 0.5, 0.0),
        "layers.2.0.bias": (0.1 * 0.5, 0.0),
        "layers.2.1.weight": (0.1 * 0.5, WD),
        "layers.2.1.bias": (0.1 * 0.5, 0.0),
        "norm.weight": (0.1, 0.0),
        "norm.bias": (0.1, 0.0),
        "proj.weight": (0.1, WD),
    }
    expected = {f"encoders.image.{k}": (LR * s, wd) for k, (s, wd) in image.items()}
    expected |= {
        "encoders.text.weight": (LR * 0.5, WD),
        "encoders.text.bias": (LR * 0.5, 0.0),
        "fusion.weight": (LR, WD),
        "fusion.bias": (LR, 0.0),
        "heads.label.weight": (LR, WD),
        "heads.label.bias": (LR, 0.0),
        "heads.caption.weight": (LR * 2.0, WD),
        "heads.caption.bias": (LR * 2.0, 0.0),
    }
    assert sorted(got) == sorted(expected)
    for name, (lr, wd) in expected.items():
        assert got[name][0] == pytest.approx(lr, rel=1e-12), name
        assert got[name][1] == wd, name
    assert got["encoders.image.layers.1.1.weight"][2] == "encoders.image decay layer 2"
    assert got["encoders.image.cls_token"][2] == "encoders.image no_decay layer 0"
    assert got["heads.caption.bias"][2] == "heads.caption no_decay"


def test_groups_are_deterministic_and_named_once() -> None:
    """The same model gets the same groups in the same order (resume reloads by order)."""
    options = {"lr_mult": {"encoders.image": 0.1}, "layer_decay": 0.8}
    first, second = TinyModel(), TinyModel()
    groups_a, groups_b = param_groups(first, **options), param_groups(second, **options)
    names = [g["name"] for g in groups_a]
    assert names == [g["name"] for g in groups_b] and len(set(names)) == len(names)
    # a module's own parameters come before its children's: cls_token, then patch.weight
    assert names[:4] == [
        "encoders.image no_decay layer 0",
        "encoders.image decay layer 0",
        "encoders.image no_decay layer 1",
        "encoders.image decay layer 1",
    ]
    index_a = {id(p): n for n, p in first.named_parameters()}
    index_b = {id(p): n for n, p in second.named_parameters()}
    for a, b in zip(groups_a, groups_b):
        assert [index_a[id(p)] for p in a["params"]] == [index_b[id(p)] for p in b["params"]]


def test_nested_and_dotted_lr_mult_are_the_same() -> None:
    model = TinyModel()
    nested = _per_param(model, _optimizer(model, lr_mult={"encoders": {"image": 0.1}}))
    dotted = _per_param(model, _optimizer(model, lr_mult={"encoders.image": 0.1}))
    assert nested == dotted
    assert nested["encoders.image.proj.weight"][0] == pytest.approx(LR * 0.1)
    assert nested["encoders.text.weight"][0] == LR


class ChannelRMSNorm(nn.Module):
    """A normalisation layer from outside torch (found by its class name), 2-D weight."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width, 1))


class Embeddings(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.patch = nn.Linear(width, width)


class NormsAndEmbeddings(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.vocab = nn.Embedding(10, width)
        self.lin = nn.Linear(width, width)
        self.conv = nn.Conv2d(width, width, 3)
        self.ln = nn.LayerNorm(width)
        self.bn = nn.BatchNorm1d(width)
        self.gn = nn.GroupNorm(2, width)
        self.rms = ChannelRMSNorm(width)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, width))
        self.position_embeddings = nn.Parameter(torch.zeros(3, width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.token_embedding = nn.Linear(width, width, bias=False)
        self.embeddings = Embeddings(width)


def test_no_decay_spares_biases_norms_and_embeddings() -> None:
    model = NormsAndEmbeddings()
    got = _per_param(model, _optimizer(model))
    decayed = sorted(n for n, (_, wd, _) in got.items() if wd == WD)
    assert decayed == ["conv.weight", "lin.weight"]
    assert sorted(n for n, (_, wd, _) in got.items() if wd == 0.0) == sorted(
        [
            "vocab.weight",
            "lin.bias",
            "conv.bias",
            "ln.weight",
            "ln.bias",
            "bn.weight",
            "bn.bias",
            "gn.weight",
            "gn.bias",
            "rms.weight",
            "pos_embed",
            "position_embeddings",
            "cls_token",
            "logit_scale",
            "token_embedding.weight",
            "embeddings.patch.weight",
            "embeddings.patch.bias",
        ]
    )
    everything = _per_param(model, _optimizer(model, no_decay=False))
    assert {wd for _, wd, _ in everything.values()} == {WD}
    assert len(everything) == len(got)


def test_flattened_parameters_keep_their_built_shape() -> None:
    """FSDP and ZeRO-3 turn parameters into 1-D shards: the shapes as built decide."""
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].weight.data = model[0].weight.data.flatten()  # as a sharded view
    (vector,) = [g for g in param_groups(model) if g["decay"]] or [None]
    assert vector is None  # by its own shape: a vector
    (kept,) = [g for g in param_groups(model, ndims={"0.weight": 2}) if g["decay"]]
    assert kept["params"] == [model[0].weight]


class GappedTower(FakeTower):
    """A norm between blocks 0 and 1, and a projection held as the tower's own parameter
    (open_clip's ``proj``): a module's own parameters come first in ``named_parameters()``,
    so it says where the projection goes with ``after_blocks()``."""

    def __init__(self, width: int = 4) -> None:
        super().__init__(width)
        self.layers.insert(1, nn.LayerNorm(width))
        self.head_proj = nn.Parameter(torch.zeros(width, width))

    def blocks(self) -> list[nn.Module]:
        return [m for i, m in enumerate(self.layers) if i != 1]

    def after_blocks(self) -> list[nn.Module | nn.Parameter]:
        return [self.norm, self.head_proj]


def test_layers_between_and_after_blocks_and_frozen_parameters() -> None:
    model = TinyModel()
    model.encoders["image"] = GappedTower()
    model.encoders["text"].requires_grad_(False)
    got = _per_param(model, _optimizer(model, layer_decay=0.5))
    # between blocks 0 and 1: with block 0 (layer 1)
    assert got["encoders.image.layers.1.weight"] == (
        pytest.approx(LR * 0.125),
        0.0,
        "encoders.image no_decay layer 1",
    )
    assert got["encoders.image.head_proj"] == (LR, WD, "encoders.image decay layer 4")
    assert got["encoders.image.cls_token"][2] == "encoders.image no_decay layer 0"
    # frozen: in no group
    assert not any(n.startswith("encoders.text") for n in got)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == trainable
    # blocks as an attribute, not a method (timm's nn.Sequential): no layers
    model.encoders["image"] = nn.Module()
    model.encoders["image"].blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    got = _per_param(model, _optimizer(model, layer_decay=0.5))
    assert got["encoders.image.blocks.1.weight"] == (LR, WD, "encoders.image decay")


def test_layer_decay_reads_blocks_methods_only() -> None:
    model = TinyModel()
    names = _per_param(model, _optimizer(model, layer_decay=0.5))
    assert names["encoders.image.layers.0.1.weight"][0] == pytest.approx(LR * 0.125)
    assert names["encoders.text.weight"][0] == LR  # no blocks(): no layer decay
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\], got 1.5"):
        param_groups(model, layer_decay=1.5)


def test_unknown_or_negative_lr_mult_is_an_error(compose_config, synth_facts) -> None:
    model = TinyModel()
    with pytest.raises(ValueError, match=r"lr_mult.encoders.imag: no such part; the parts are "):
        param_groups(model, lr_mult={"encoders": {"imag": 0.1}})
    with pytest.raises(ValueError, match=r"lr_mult.fusion must be >= 0, got -1"):
        param_groups(model, lr_mult={"fusion": -1})
    # Through the config: one line naming the key and the parts there are.
    with pytest.raises(MMTrainError) as err:
        build_module(compose_config("model.lr_mult.encoders.imag=0.1"), synth_facts)
    assert str(err.value).startswith("model: lr_mult.encoders.imag: no such part")
    assert "encoders.image, encoders.text, encoders.audio, fusion, heads, heads.label" in str(
        err.value
    )


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """The groups' learning rates at optimizer steps 0..steps (scheduler stepped in between)."""
    out = []
    for _ in range(steps + 1):
        out.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _two_groups() -> torch.optim.Optimizer:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=1.0)


def test_cosine_warmup_by_hand() -> None:
    scheduler = cosine_warmup(_two_groups(), total_steps=12, warmup_steps=4, min_lr_ratio=0.1)
    lrs = _lrs(scheduler, 15)
    # warmup: s / 4 from 0; then 0.1 + 0.9 * (1 + cos(pi * (s - 4) / 8)) / 2; 0.1 from step 12
    expected = {
        0: 0.0,
        2: 0.5,
        4: 1.0,
        6: 0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2,  # cos(pi / 4)
        8: 0.55,  # the cosine's middle
        12: 0.1,
        15: 0.1,
    }
    for step, factor in expected.items():
        assert lrs[step] == pytest.approx([factor, 0.1 * factor], abs=1e-12), step
    # the settings travel in the scheduler's state (checkpoints: exact resume)
    assert scheduler.state_dict()["lr_lambdas"][0] == {
        "warmup_steps": 4,
        "total_steps": 12,
        "min_lr_ratio": 0.1,
    }


def test_cosine_warmup_ratio_and_no_warmup() -> None:
    lrs = _lrs(cosine_warmup(_two_groups(), total_steps=100, warmup_ratio=0.07), 7)
    assert lrs[6][0] == pytest.approx(6 / 7) and lrs[7][0] == pytest.approx(1.0)  # 7 steps
    lrs = _lrs(cosine_warmup(_two_groups(), total_steps=10), 5)
    assert lrs[0] == pytest.approx([1.0, 0.1])  # no warmup: the peak at once
    assert lrs[5][0] == pytest.approx(0.5)  # half way down to 0


def test_cosine_warmup_refuses_both_warmups() -> None:
    with pytest.raises(ValueError, match=r"set warmup_steps \(5\) or warmup_ratio \(0.1\)"):
        cosine_warmup(_two_groups(), total_steps=100, warmup_steps=5, warmup_ratio=0.1)
    with pytest.raises(ValueError, match=r"min_lr_ratio must be in \[0, 1\], got 2"):
        cosine_warmup(_two_groups(), total_steps=100, min_lr_ratio=2)


def test_configure_optimizers_wires_groups_and_schedule(compose_config, synth_facts, caplog):
    cfg = compose_config(
        "scheduler=cosine_warmup",
        "scheduler.warmup_ratio=0",
        "scheduler.warmup_steps=2",
        "model.lr_mult.encoders.image=0.1",
    )
    module = build_module(cfg, synth_facts)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, is_global_zero=True)
    with caplog.at_level("INFO", logger="mmtrain.module"):
        configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    peak, decay = cfg.optimizer.lr, cfg.optimizer.weight_decay
    for group in optimizer.param_groups:
        scale = 0.1 if group["name"].startswith("encoders.image ") else 1.0
        assert group["initial_lr"] == pytest.approx(peak * scale), group["name"]
        assert group["lr"] == 0.0  # step 0 of the warmup
        assert group["weight_decay"] == (decay if group["decay"] else 0.0)
    assert scheduler.lr_lambdas[0].total_steps == 10  # the run's steps, filled in
    assert "encoders.image decay" in caplog.text and "parameters" in caplog.text
    # A scheduler that refuses its arguments: one line naming the node.
    cfg = compose_config("scheduler=cosine_warmup", "scheduler.warmup_steps=3")
    module = build_module(cfg, synth_facts)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, is_global_zero=True)
    with pytest.raises(MMTrainError, match=r"^scheduler: set warmup_steps \(3\) or warmup_ratio"):
        module.configure_optimizers()


def test_fit_with_cosine_warmup_and_lr_mult(compose_config, tiny_data, tmp_path):
    """A real run: 4 steps, 2 of warmup; the learning rates that LearningRateMonitor logged."""
    cfg = compose_config(
        "scheduler=cosine_warmup",
        "scheduler.warmup_ratio=0",
        "scheduler.warmup_steps=2",
        "scheduler.min_lr_ratio=0.2",
        "model.lr_mult.encoders.image=0.1",
        "debug=limit",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        *TINY_DATA,
        *QUIET,
        output_dir=tmp_path,
    )
    metrics = run("fit", cfg)
    assert math.isfinite(metrics["train/loss"])
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c.startswith("lr-AdamW/")]
    assert "lr-AdamW/encoders.image decay" in columns and "lr-AdamW/fusion decay" in columns
    # steps 0..3 of 4: s / 2, then 0.2 + 0.8 * (1 + cos(pi * (s - 2) / 2)) / 2
    factors = [0.0, 0.5, 1.0, 0.6]
    for column in columns:
        logged = [float(r[column]) for r in rows if r[column] != ""]
        scale = 0.1 if column.startswith("lr-AdamW/encoders.image ") else 1.0
        expected = [cfg.optimizer.lr * scale * f for f in factors]
        assert logged == pytest.approx(expected, abs=1e-12), column
