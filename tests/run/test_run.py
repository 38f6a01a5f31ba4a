"""mmtrain.run in-process: reproducibility, training-group presets, checkpoint configs."""

from __future__ import annotations

import json

import pytest
from conftest import QUIET, TINY_DATA
from omegaconf import OmegaConf

from mmtrain.cli import config_dir
from mmtrain.errors import MMTrainError
from mmtrain.run import config_from_checkpoint, run

# One short epoch: 4 training steps, 2 validation batches, checkpoints written.
SHORT = ["debug=limit", "trainer.max_epochs=1", "trainer.log_every_n_steps=1", *TINY_DATA, *QUIET]


def _presets(group: str) -> list[str]:
    return sorted(f"{group}={p.stem}" for p in (config_dir() / group).glob("*.yaml"))


def test_fit_is_reproducible(compose_config, tiny_data, tmp_path):
    first = run("fit", compose_config(*SHORT, output_dir=tmp_path / "a"))
    second = run("fit", compose_config(*SHORT, output_dir=tmp_path / "b"))
    assert first == second and first["train/loss"] > 0
    third = run("fit", compose_config(*SHORT, "seed=7", output_dir=tmp_path / "c"))
    assert third["train/loss"] != first["train/loss"]


# Generated: the training-loop groups that the model tests do not build (no new test needed for
# a new preset). debug=fdr keeps each to one step.
@pytest.mark.parametrize("override", _presets("scheduler") + _presets("callbacks"))
def test_training_preset_runs(override, compose_config, tiny_data, tmp_path):
    cfg = compose_config(override, "debug=fdr", *TINY_DATA, *QUIET, output_dir=tmp_path)
    metrics = run("fit", cfg)
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)


def test_callbacks_none_writes_no_checkpoint(compose_config, tiny_data, tmp_path):
    run("fit", compose_config("callbacks=none", *SHORT, output_dir=tmp_path))
    assert (tmp_path / "metrics.json").is_file()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ckpt")) == []


def test_callbacks_default_writes_last_and_best(compose_config, tiny_data, tmp_path):
    run("fit", compose_config(*SHORT, output_dir=tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]


def test_run_rejects_unknown_stage_and_missing_checkpoint(compose_config, tmp_path):
    cfg = compose_config(output_dir=tmp_path)
    with pytest.raises(MMTrainError, match="unknown stage 'train'"):
        run("train", cfg)
    for stage in ("validate", "test", "predict"):
        with pytest.raises(MMTrainError, match=f"mmtrain {stage} needs ckpt_path="):
            run(stage, cfg)
    assert not any(tmp_path.iterdir()), "a refused run wrote files"


def test_config_from_checkpoint_keeps_the_model_and_takes_overrides(compose_config, tmp_path):
    stored = compose_config(
        "optimizer.lr=0.5", "data.batch_size=7", "data.dataset.num_train=3", "~encoder/audio"
    )
    stored_yaml = OmegaConf.to_yaml(stored)
    # The current command line: `mmtrain test ckpt_path=... data.batch_size=2 trainer.max_epochs=1`
    current = compose_config(
        "data.batch_size=2", "trainer.max_epochs=1", stage="test", output_dir=tmp_path
    )
    merged = config_from_checkpoint(stored_yaml, current)
    assert merged.optimizer.lr == 0.5 and merged.data.dataset.num_train == 3  # from the checkpoint
    assert sorted(merged.encoder) == ["image", "text"]
    assert merged.data.batch_size == 2  # overridden on this command line
    assert merged.trainer.max_epochs == 1 and merged.paths.output_dir == str(tmp_path)


def test_robustness_reports_each_modality_removed(compose_config, tiny_data, tmp_path):
    run("fit", compose_config(*SHORT, "~head/caption", output_dir=tmp_path / "fit"))
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    cfg = compose_config(
        f"ckpt_path={ckpt}", "robustness=missing", *QUIET, stage="test", output_dir=tmp_path / "t"
    )
    metrics = run("test", cfg)
    full = metrics["test/label/accuracy"]
    for modality in ("image", "text", "audio"):
        assert 0.0 <= metrics[f"test/label/accuracy/without_{modality}"] <= 1.0, metrics
    assert json.loads((tmp_path / "t" / "metrics.json").read_text()) == pytest.approx(metrics)
    # The predictions written are the full model's, one per test sample.
    rows = (tmp_path / "t" / "predictions" / "label_test.jsonl").read_text().splitlines()
    assert len(rows) == 8 and 0.0 <= full <= 1.0
    with pytest.raises(MMTrainError, match="robustness='sometimes'"):
        run("test", compose_config(f"ckpt_path={ckpt}", "robustness=sometimes", stage="test"))


def test_modality_dropout_masks_whole_modalities(compose_config, synth_batch, synth_facts):
    import torch

    from mmtrain.build import build_module

    cfg = compose_config("model.modality_dropout=0.5", "fusion=concat")
    module = build_module(cfg, synth_facts).train()
    batch = synth_batch(["image", "text", "audio"], ["label"], synth_facts, batch_size=64)
    seen = []
    module.fusion.forward = lambda feats: seen.append(feats) or next(iter(feats.values()))
    torch.manual_seed(0)
    module(batch)
    kept = torch.stack([f.mask.any(dim=1) for f in seen[0].values()], dim=1)  # (B, M)
    assert kept.any(dim=1).all(), "a sample lost every modality"
    assert 0.3 < 1 - kept.float().mean() < 0.5  # about half, less the rescued ones
    dropped = seen[0]["image"].tokens[~kept[:, 0]]
    assert dropped.abs().sum() == 0  # dropped features are zeros as well as masked
    module.eval()
    seen.clear()
    module(batch)
    assert all(f.mask is None or f.mask.any(dim=1).all() for f in seen[0].values())
    with pytest.raises(MMTrainError, match=r"modality_dropout must be in \[0, 1\), got 1.0"):
        build_module(compose_config("model.modality_dropout=1.0"), synth_facts)


def test_progress_bar_is_rich_on_a_terminal_and_plain_in_logs(monkeypatch) -> None:
    import sys

    import pytorch_lightning as pl

    from mmtrain.build import _progress_bar

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    plain = _progress_bar()
    assert isinstance(plain, pl.callbacks.TQDMProgressBar) and plain.refresh_rate == 50
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    bar = _progress_bar()
    try:
        import rich  # noqa: F401
    except ModuleNotFoundError:
        assert isinstance(bar, pl.callbacks.TQDMProgressBar)
    else:
        assert isinstance(bar, pl.callbacks.RichProgressBar)
