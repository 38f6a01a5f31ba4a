"""Speed and scale options from config: trainer presets, channels_last, compile, fused AdamW."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QUIET, TINY_DATA

from mmtrain.errors import MMTrainError
from mmtrain.run import run

ONE_STEP = ["debug=fdr", *TINY_DATA, *QUIET]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU host")


@pytest.mark.parametrize(
    ("preset", "says"),
    [
        ("trainer=tpu", "trainer.accelerator=tpu needs torch_xla, which is not installed: pip"),
        ("trainer=deepspeed", "trainer.strategy=deepspeed_stage_2 needs deepspeed, which is not"),
    ],
)
def test_a_preset_without_its_package_fails_at_once_saying_what_to_install(
    preset, says, compose_config, tmp_path
):
    from importlib.util import find_spec

    from mmtrain.build import build_trainer

    if find_spec("torch_xla" if "tpu" in preset else "deepspeed"):
        pytest.skip("the package is installed here")
    with pytest.raises(MMTrainError, match=says):
        build_trainer(compose_config(preset, output_dir=tmp_path))


@NO_GPU
@pytest.mark.parametrize("preset", ["trainer=gpu", "trainer=ddp", "trainer=fsdp"])
def test_a_gpu_preset_on_a_cpu_host_is_one_clear_error(preset, compose_config, tmp_path):
    from mmtrain.build import build_trainer

    with pytest.raises(MMTrainError, match=r"^trainer: .*trainer.accelerator=gpu") as caught:
        build_trainer(compose_config(preset, output_dir=tmp_path))
    assert "\n" not in str(caught.value)


def test_scale_presets_name_their_strategy(compose_config, tmp_path):
    strategies = {
        p: compose_config(f"trainer={p}", output_dir=tmp_path).trainer.strategy
        for p in ("ddp", "fsdp", "fsdp2", "deepspeed")
    }
    assert strategies["ddp"] == "ddp" and strategies["deepspeed"] == "deepspeed_stage_2"
    assert strategies["fsdp"]._target_ == "mmtrain.strategies.BlockFSDP"
    assert strategies["fsdp"].auto_wrap_policy == "blocks"
    assert strategies["fsdp2"]._target_ == "mmtrain.strategies.ShardedDataParallel"
    assert (
        compose_config("trainer=ddp", "trainer.num_nodes=4", output_dir=tmp_path).trainer[
            "num_nodes"
        ]
        == 4
    )


def test_channels_last_converts_the_image_encoder_and_the_images(
    compose_config, synth_batch, synth_facts, tiny_data, tmp_path
):
    from mmtrain.build import build_module

    module = build_module(compose_config("model.channels_last=true"), synth_facts)
    module.configure_model()
    conv = next(p for p in module.encoders["image"].parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    batch = synth_batch(["image", "text"], ["label"], synth_facts, batch_size=2)
    assert module._input("image", batch["image"]).is_contiguous(memory_format=torch.channels_last)
    metrics = run("fit", compose_config("model.channels_last=true", *ONE_STEP, output_dir=tmp_path))
    assert metrics["train/loss"] > 0


def test_fused_adamw_trains_as_the_default_one(compose_config, tiny_data, tmp_path):
    plain = run("fit", compose_config(*ONE_STEP, output_dir=tmp_path / "a"))
    fused = run("fit", compose_config("optimizer.fused=true", *ONE_STEP, output_dir=tmp_path / "b"))
    assert fused["train/loss"] == pytest.approx(plain["train/loss"], rel=1e-6)


@pytest.mark.slow
def test_compiled_model_trains_to_the_same_losses(compose_config, tiny_data, tmp_path):
    """torch.compile (inductor, needs a C compiler): the same loss as eager, checkpoint keys
    unchanged (compiled in place). Without dropout: compiled code draws its random numbers
    differently from eager."""
    short = [
        "~head/caption",  # its decoder has dropout
        "head.label.dropout=0.0",
        "debug=limit",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        *TINY_DATA,
    ]
    eager = run("fit", compose_config(*short, *QUIET, output_dir=tmp_path / "eager"))
    compiled = run(
        "fit", compose_config("model.compile=true", *short, *QUIET, output_dir=tmp_path / "c")
    )
    assert compiled["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-4, abs=1e-4)
    keys = torch.load(tmp_path / "c/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in keys)
    assert json.loads((tmp_path / "c/metrics.json").read_text())


def test_bf16_mixed_precision_trains_on_the_cpu(compose_config, tiny_data, tmp_path):
    metrics = run(
        "fit", compose_config("trainer.precision=bf16-mixed", *ONE_STEP, output_dir=tmp_path)
    )
    assert 0 < metrics["train/loss"] < float("inf")


@pytest.mark.parametrize("weighting", ["fixed", "gradnorm"])  # gradnorm: its own backward
def test_gradient_accumulation_steps_once_every_n_batches(
    compose_config, tiny_data, tmp_path, weighting
):
    """4 batches with accumulate_grad_batches=2: 2 optimizer steps, and the step-wise cosine
    schedule is sized to them (estimated_stepping_batches)."""
    overrides = [
        "debug=limit",
        "trainer.max_epochs=1",
        "trainer.accumulate_grad_batches=2",
        f"loss_weighting={weighting}",
        "scheduler=cosine",
        *TINY_DATA,
        *QUIET,
    ]
    metrics = run("fit", compose_config(*overrides, output_dir=tmp_path))
    assert 0 < metrics["train/loss"] < float("inf")
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    (scheduler,) = ckpt["lr_schedulers"]
    assert scheduler["last_epoch"] == 2 and scheduler["T_max"] == 2
