"""Pretrained towers in real runs: self-contained checkpoints, the feature cache, init_from,
robustness, bucketing, CLIP's own similarities at step 0, and exact resume.

The towers are tiny random models of the model store (tests/helpers/model_store.py), found
through ``MMTRAIN_MODEL_DIR`` under the ids the presets name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, QUIET, TINY_DATA, compose_cfg, fresh_synth_facts
from helpers.model_store import TINY_MODELS, config_model_ids

from mmtrain.contracts import CHECKPOINT_KEY
from mmtrain.run import run

BASE = [*TINY_DATA, *QUIET, "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
HF_IMAGE_TEXT = ["encoder/image=hf", "encoder/text=hf", "~encoder/audio"]


def test_every_model_id_of_the_configs_has_a_tiny_model() -> None:
    """A preset or experiment naming a model id is built by the generated tests on a tiny
    model under that id: add one to TINY_MODELS in tests/helpers/model_store.py."""
    missing = sorted(config_model_ids(CONFIG_DIR) - set(TINY_MODELS))
    assert not missing, f"no tiny model for {missing}: add them to tests/helpers/model_store.py"


def test_a_checkpoint_rebuilds_without_the_model_and_init_from_loads_it(
    model_store: Path,
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """fit stores the towers' config, tokenizer and processor files in the checkpoint; test
    (with robustness=missing) rebuilds from them alone, with the model store gone, and
    init_from starts a new run from the towers."""
    fit_dir = tmp_path / "fit"
    run("fit", compose_cfg(*BASE, *HF_IMAGE_TEXT, "data.bucket_by=text", output_dir=fit_dir))
    ckpt = fit_dir / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)[CHECKPOINT_KEY]["models"]
    assert set(stored) == {"encoder.image", "encoder.text"}
    assert {"config.json", "preprocessor_config.json"} <= set(stored["encoder.image"])
    assert "vocab.txt" in stored["encoder.text"]  # the tiny BERT's WordPiece vocabulary
    assert not any(name.endswith(".safetensors") for f in stored.values() for name in f)

    monkeypatch.delenv("MMTRAIN_MODEL_DIR")  # the model ids no longer resolve
    test_dir = tmp_path / "test"
    cfg = compose_cfg(
        f"ckpt_path={ckpt}", "robustness=missing", *QUIET, stage="test", output_dir=test_dir
    )
    metrics = run("test", cfg)
    assert "test/label/accuracy" in metrics and "test/label/accuracy/without_text" in metrics
    for part, files in stored.items():
        for name, content in files.items():
            assert (test_dir / "models" / part / name).read_bytes() == content

    monkeypatch.setenv("MMTRAIN_MODEL_DIR", str(model_store))
    cfg = compose_cfg(*BASE, *HF_IMAGE_TEXT, f"init_from={ckpt}", output_dir=tmp_path / "init")
    with caplog.at_level(logging.INFO, logger="mmtrain.run"):
        run("fit", cfg)
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from:")]
    towers = sum(
        1 for k in torch.load(ckpt, weights_only=True)["state_dict"] if k.startswith("encoders.")
    )
    assert loaded == [f"init_from: {towers} tensors of encoders from {ckpt}"]


def test_a_frozen_hf_tower_trains_from_the_cache_with_the_losses_of_training_without_it(
    model_store: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """The feature cache is keyed by the tower's weights and preprocessing; a frozen HF tower
    gives the same losses from the cache as computed every step."""
    frozen = [
        *BASE,
        "encoder/image=hf",
        "encoder.image.freeze=true",
        "data.image.augment=false",
        "~encoder/text",
        "~encoder/audio",
    ]
    plain = run("fit", compose_cfg(*frozen, output_dir=tmp_path / "plain"))
    cached = run("fit", compose_cfg(*frozen, "data.cache_features=true", output_dir=tmp_path / "c"))
    losses = {k: v for k, v in plain.items() if "/loss" in k}
    assert {"val/loss", "train/loss"} <= losses.keys()
    for key, value in losses.items():
        assert cached[key] == pytest.approx(value, rel=1e-5), key
    metas = list((tmp_path / "c" / "feature_cache").glob("*/train/image/meta.json"))
    assert len(metas) == 1 and json.loads(metas[0].read_text())["masked"] is False


def test_clip_retrieval_starts_from_clips_own_similarities(
    model_store: Path, tmp_path: Path
) -> None:
    """experiment=coco_retrieval_clip uses the towers' own projected embeddings and CLIP's
    logit scale: before any step, its similarity matrix is the one transformers' CLIPModel
    computes on the same batch."""
    from helpers.coco import write_coco
    from transformers import CLIPModel

    from mmtrain.build import build_datamodule, build_module

    write_coco(tmp_path / "coco")
    cfg = compose_cfg(
        "experiment=coco_retrieval_clip",
        f"data.root={tmp_path / 'coco'}",
        "data.batch_size=4",
        "data.num_workers=0",
        output_dir=tmp_path / "run",
    )
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.facts()).eval()
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        head = module.heads["retrieval"]
        embeddings = head(module.encode(batch))  # (B, 2, D), normalised
        ours = head.logit_scale.scale() * embeddings[:, 0] @ embeddings[:, 1].T

        clip = CLIPModel.from_pretrained(model_store / "openai/clip-vit-base-patch32").eval()
        theirs = clip(
            input_ids=batch["text"],
            attention_mask=batch["text_mask"].long(),
            pixel_values=batch["image"],
        ).logits_per_image
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert ours.shape == (len(batch["id"]), len(batch["id"]))


def test_a_run_with_a_pretrained_tower_resumes_bit_for_bit(
    model_store: Path, session_dirs: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """Stopped by SIGTERM mid-epoch and resumed in a new process, a run with an HF text tower
    (its own tokenizer, per-part learning rates, layer decay) trains the same batches to the
    same losses, weights and optimizer state as the uninterrupted run."""
    from helpers.resume import assert_same_run, explain_exit, fit

    extra = ["encoder/text=hf", "model.lr_mult.encoders.text=0.1", "model.layer_decay=0.8"]
    data, reference, stopped = session_dirs["data"], tmp_path / "reference", tmp_path / "stopped"
    code, out, err = fit(reference, data, *extra)
    assert code == 0, explain_exit(code, out, err)
    signal_at = ["+callbacks.probe.signal_at=[5]", "+callbacks.probe.signal_name=SIGTERM"]
    code, out, err = fit(stopped, data, *extra, *signal_at)
    assert code == 128 + 15, explain_exit(code, out, err)
    code, out, err = fit(stopped, data, *extra, f"ckpt_path={stopped / 'checkpoints/last.ckpt'}")
    assert code == 0, explain_exit(code, out, err)
    assert_same_run(reference, stopped)


@pytest.mark.slow
def test_pretrained_towers_train_in_two_ddp_processes(
    model_store: Path, scratch: dict[str, Path], tiny_data: Path
) -> None:
    """trainer=ddp_cpu (gloo, 2 processes) with HF image and text towers: every rank resolves
    the towers from the model store and trains; one run directory, one checkpoint."""
    from helpers.cli import explain_run, mmtrain

    run_dir = scratch["out"] / "ddp"
    proc = mmtrain(
        scratch,
        "fit",
        "trainer=ddp_cpu",
        *HF_IMAGE_TEXT,
        *TINY_DATA,
        *QUIET,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert proc.returncode == 0, explain_run(proc)
    assert "MEMBER: 2/2" in proc.stderr + proc.stdout, explain_run(proc)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_compiled_pretrained_tower_trains_to_the_eager_losses(
    model_store: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """model.compile=true compiles an HF tower in place: the eager losses, the same keys.
    (CLIP's vision tower has no dropout: compiled code draws random numbers differently.)"""
    towers = ["encoder/image=hf", "~encoder/text", "~encoder/audio"]
    short = [*BASE, *towers, "~head/caption", "head.label.dropout=0.0", "debug=limit"]
    eager = run("fit", compose_cfg(*short, output_dir=tmp_path / "eager"))
    compiled = run("fit", compose_cfg(*short, "model.compile=true", output_dir=tmp_path / "c"))
    assert compiled["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-4, abs=1e-4)
    keys = torch.load(tmp_path / "c/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in keys)


@pytest.mark.parametrize(
    "towers",
    [
        ["encoder/image=hf", "encoder/text=hf", "encoder/audio=hf"],
        ["encoder/image=timm", "encoder/text=open_clip", "~encoder/audio"],
        ["encoder/image=open_clip", "~encoder/text", "~encoder/audio"],
    ],
    ids=["hf", "timm+open_clip_text", "open_clip_image"],
)
def test_manifest_label_takes_pretrained_towers_by_override(
    towers: list[str], model_store: Path, tmp_path: Path
) -> None:
    """experiment=manifest_label on your own files, with pretrained towers swapped in on the
    command line: their preprocessing replaces the manifest preset's (size: auto...)."""
    from helpers.manifest import write_manifests

    files = write_manifests(tmp_path / "manifest")
    cfg = compose_cfg(
        "experiment=manifest_label",
        f"data.train={files['train']}",
        f"data.val={files['val']}",
        "data.batch_size=2",
        "data.num_workers=0",
        "debug=fdr",
        *towers,
        *QUIET,
        output_dir=tmp_path / "run",
    )
    metrics = run("fit", cfg)
    assert "val/label/accuracy" in metrics and torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_the_model_sets_the_inputs_preprocessing_and_a_shorter_max_length_is_kept(
    model_store: Path,
) -> None:
    """follow_models writes the tower's preprocessing into data.<modality>; a command-line
    max_length below the model's limit is a choice, one above it a contradiction."""
    from mmtrain.build import follow_models
    from mmtrain.errors import MMTrainError

    data = follow_models(compose_cfg("encoder/image=hf", "encoder/text=hf"))
    processor = model_store / "openai/clip-vit-base-patch16/preprocessor_config.json"
    clip = json.loads(processor.read_text())
    assert data.image.size == clip["crop_size"]["height"]
    assert list(data.image.mean) == pytest.approx(clip["image_mean"])
    assert data.image.resize == "shortest" and data.image.interpolation == "bicubic"
    assert data.text.tokenizer == str(model_store / "google-bert/bert-base-uncased")
    limit = data.text.max_length

    shorter = follow_models(compose_cfg("encoder/text=hf", f"data.text.max_length={limit - 1}"))
    assert shorter.text.max_length == limit - 1
    with pytest.raises(MMTrainError, match=rf"data.text.max_length={limit + 1} contradicts"):
        follow_models(compose_cfg("encoder/text=hf", f"data.text.max_length={limit + 1}"))


def test_paths_model_dir_is_searched_for_model_ids(model_store_folder: Path) -> None:
    """``paths.model_dir`` alone (no MMTRAIN_MODEL_DIR) finds the presets' ids: for the
    preprocessing of the data and for the tower itself."""
    from mmtrain.build import build_module, follow_models

    cfg = compose_cfg("encoder/image=hf", "~encoder/audio", f"paths.model_dir={model_store_folder}")
    assert follow_models(cfg).image.resize == "shortest"
    module = build_module(cfg, fresh_synth_facts())
    assert (
        module.encoders["image"].model_files["config.json"]
        == (model_store_folder / "openai/clip-vit-base-patch16/config.json").read_bytes()
    )
