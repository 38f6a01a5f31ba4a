"""Logger presets (logger=csv|tensorboard|wandb|mlflow|many|[a,b]): real fits, offline.

Each fit is one short epoch on the tiny shapes data. wandb runs offline with its directories in
``tmp_path``; MLflow writes a file store in the run directory; no test touches the network (a
guard records every connection to a non-loopback address and the test fails on any).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import QUIET, TINY_DATA
from omegaconf import OmegaConf

from mmtrain.run import run
from mmtrain.utils.loggers import (
    MLFLOW_MAX_PARAM_LENGTH,
    WANDB_ID_FILE,
    flat_config,
    git_info,
    log_run_info,
    wandb_logged_in,
)

SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    *TINY_DATA,
    *QUIET,
]


@pytest.fixture
def offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> Iterator[list[str]]:
    """wandb offline and without credentials, MLflow without a server; network attempts listed."""
    for key in (
        "WANDB_API_KEY",
        "WANDB_BASE_URL",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_ALLOW_FILE_STORE",
    ):
        monkeypatch.delenv(key, raising=False)
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "NETRC": str(tmp_path / "no_netrc"),
    }
    for key, sub in (
        ("WANDB_DIR", "wandb_dir"),
        ("WANDB_CACHE_DIR", "wandb_cache"),
        ("WANDB_CONFIG_DIR", "wandb_config"),
        ("WANDB_DATA_DIR", "wandb_data"),
        ("WANDB_ARTIFACT_DIR", "wandb_artifacts"),
    ):
        env[key] = str(tmp_path / sub)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    yield no_network  # conftest fails the test on any attempt


def _fit(compose_config: Any, out: Path, *overrides: str) -> dict[str, float]:
    return run("fit", compose_config(*overrides, *SHORT, output_dir=out))


def _samples(out: Path) -> list[dict[str, Any]]:
    record = json.loads((out / "samples" / "epoch_0.json").read_text())
    assert record["epoch"] == 0 and record["step"] == 2
    return record["samples"]


def _check_csv(out: Path) -> None:
    assert "val/label/accuracy" in (out / "csv" / "metrics.csv").read_text()
    hparams = OmegaConf.load(out / "csv" / "hparams.yaml")
    assert hparams["optimizer.lr"] > 0 and hparams["trainer.max_epochs"] == 1
    rows = _samples(out)
    assert len(rows) == 4 and all(set(r) >= {"id", "label"} for r in rows)


def _check_tensorboard(out: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert "val/label/accuracy" in tags["scalars"]
    assert "val/samples/image" in tags["images"]
    assert "val/samples/text_summary" in tags["tensors"]  # the markdown table
    hparams = accumulator.PluginTagToContent("hparams")  # the config, in the HParams tab
    assert b"optimizer.lr" in hparams["_hparams_/session_start_info"]
    assert (out / "tensorboard" / "hparams.yaml").is_file()


def _wandb_runs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def _check_wandb(out: Path) -> str:
    run_id = (out / WANDB_ID_FILE).read_text().strip()
    runs = _wandb_runs(out)
    assert runs and all(r.name.endswith(f"-{run_id}") for r in runs), (run_id, runs)
    (table,) = (runs[-1] / "files" / "media" / "table" / "val").glob("samples_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:3] == ["id", "image", "label"] and len(content["data"]) == 4
    return run_id


def _mlflow_run(out: Path) -> Path:
    runs = [p.parent for p in (out / "mlruns").glob("*/*/meta.yaml")]
    assert len(runs) == 1, runs
    return runs[0]


def test_csv_logs_config_and_samples(compose_config, tiny_data, tmp_path, offline):
    _fit(compose_config, tmp_path, "logger=csv")
    _check_csv(tmp_path)
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "mlruns").exists()


def test_tensorboard_writes_events_with_samples(compose_config, tiny_data, tmp_path, offline):
    _fit(compose_config, tmp_path, "logger=tensorboard")
    _check_tensorboard(tmp_path)
    assert not (tmp_path / "samples").exists()  # JSON files are for CSV and MLflow


def test_wandb_runs_offline_and_reuses_the_run_id(compose_config, tiny_data, tmp_path, offline):
    _fit(compose_config, tmp_path, "logger=wandb")
    first = _check_wandb(tmp_path)
    assert len(_wandb_runs(tmp_path)) == 1
    # The same run directory again (a resumed run): the same wandb run id.
    _fit(compose_config, tmp_path, "logger=wandb")
    assert _check_wandb(tmp_path) == first
    assert len({r.name for r in _wandb_runs(tmp_path)}) in (1, 2)  # 2 unless in the same second


def test_mlflow_file_store_params_metrics_samples(compose_config, tiny_data, tmp_path, offline):
    note = "x" * 400  # longer than an MLflow parameter value may be
    _fit(compose_config, tmp_path, "logger=mlflow", f"+note={note}")
    mlflow_run = _mlflow_run(tmp_path)
    params = mlflow_run / "params"
    assert (params / "optimizer.lr").read_text() == str(compose_config().optimizer.lr)
    stored = (params / "note").read_text()
    assert len(stored) == MLFLOW_MAX_PARAM_LENGTH and stored.endswith("...")
    if git_info():  # the tests run inside the repository
        assert len((params / "git.commit").read_text()) == 40
        assert (params / "git.dirty").read_text() in ("True", "False")
    # train/loss and train/loss/label both exist: keys are flattened in the file store.
    assert (mlflow_run / "metrics" / "val.loss").is_file()
    assert (mlflow_run / "metrics" / "val.loss.label").is_file()
    artifact = mlflow_run / "artifacts" / "samples" / "epoch_0.json"
    assert json.loads(artifact.read_text())["samples"] == _samples(tmp_path)


def test_many_loggers_at_once(compose_config, tiny_data, tmp_path, offline):
    assert sorted(compose_config("logger=many").logger) == ["csv", "mlflow", "tensorboard", "wandb"]
    _fit(compose_config, tmp_path, "logger=many")
    _check_csv(tmp_path)
    _check_tensorboard(tmp_path)
    _check_wandb(tmp_path)
    assert (_mlflow_run(tmp_path) / "params" / "seed").read_text() == "42"


def test_a_list_of_logger_presets(compose_config, tiny_data, tmp_path, offline):
    cfg = compose_config("logger=[csv,tensorboard]")
    assert sorted(cfg.logger) == ["csv", "tensorboard"]
    _fit(compose_config, tmp_path, "logger=[csv,tensorboard]")
    _check_csv(tmp_path)
    _check_tensorboard(tmp_path)


@pytest.mark.parametrize("override", ["debug=fdr", "callbacks=none"])
def test_every_logger_with_fast_dev_run_or_no_callbacks(
    override, compose_config, tiny_data, tmp_path, offline
):
    run("fit", compose_config("logger=many", override, *SHORT, output_dir=tmp_path))
    assert (tmp_path / "metrics.json").is_file()
    assert not (tmp_path / "samples").exists()  # the callback is absent or a no-op


def test_wandb_offline_unless_logged_in(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not wandb_logged_in()  # no file
    netrc.write_text("machine example.com login user password secret\n")
    netrc.chmod(0o600)
    assert not wandb_logged_in()  # another host
    netrc.write_text("machine api.wandb.ai login user password secret\n")
    assert wandb_logged_in()
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "key")
    assert wandb_logged_in()


def test_run_info_is_flat_and_git_is_optional(compose_config, tmp_path):
    cfg = compose_config(output_dir=tmp_path)
    flat = flat_config(cfg)
    assert flat["optimizer.lr"] == cfg.optimizer.lr and flat["paths.output_dir"] == str(tmp_path)
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert git_info(tmp_path) == {}  # not a repository: silently absent

    class Recorder:
        params: dict[str, Any] = {}

        def log_hyperparams(self, params: dict[str, Any]) -> None:
            Recorder.params = params

    logged = log_run_info([Recorder()], cfg)  # type: ignore[list-item]
    assert Recorder.params == logged and logged.items() >= flat.items()


def test_sample_predictions_do_not_change_training(compose_config, tiny_data, tmp_path) -> None:
    """The callback's data-loader iterator would draw from the global generator: it must not."""
    from conftest import QUIET, TINY_DATA

    from mmtrain.run import run

    short = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", *TINY_DATA, *QUIET]
    with_samples = run("fit", compose_config(*short, output_dir=tmp_path / "a"))
    without = run(
        "fit", compose_config(*short, "~callbacks.sample_predictions", output_dir=tmp_path / "b")
    )
    assert (tmp_path / "a/samples/epoch_1.json").is_file()
    assert with_samples["train/loss"] == without["train/loss"]
    assert with_samples["val/label/accuracy"] == without["val/label/accuracy"]
