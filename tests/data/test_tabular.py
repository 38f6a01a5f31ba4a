"""The fourth modality, ``tabular``: numeric manifest columns, standardised on the training split.

Unit tests of :class:`~mmtrain.data.inputs.TabularInput`, then the whole path on manifests of
real image files plus numeric columns: fit, test with ``robustness=missing``, predict, the
feature cache, ``data=multi`` and ``mmtrain shard`` + ``data=webdataset``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import QUIET
from helpers.manifest import sample_rows, write_rows

from mmtrain.contracts import Column
from mmtrain.data.inputs import TabularInput
from mmtrain.errors import MMTrainError
from mmtrain.run import run

COLUMNS = ["age", "bmi"]
AGE = {0: 20.0, 2: 40.0, 10: 60.0}  # label -> age: the numbers alone tell the class


def _fitted(values: list[dict], missing: str = "mean") -> TabularInput:
    tab = TabularInput(COLUMNS, missing=missing)
    tab.name = "tabular"
    tab.fit(Column(lambda: values, lambda n: values[:n]))
    return tab


def test_statistics_come_from_training_and_standardise():
    tab = _fitted([{"age": 10, "bmi": "20"}, {"age": 30, "bmi": 30.0}, {"age": None, "bmi": 25}])
    assert tab.mean == [20.0, 25.0]
    assert tab.std == pytest.approx([10.0, math.sqrt(50 / 3)])
    x = tab.encode({"age": 40, "bmi": 25}, train=True)
    assert x.dtype == torch.float32 and x.tolist() == pytest.approx([2.0, 0.0, 0.0, 0.0])
    assert tab.facts() == {"num_features": 4}  # the values and their missingness flags


def test_missing_values_are_mean_filled_and_flagged_or_refused():
    values = [{"age": 10, "bmi": 20}, {"age": 30, "bmi": 20}]
    tab = _fitted(values)
    assert tab.std[1] == 1.0  # a constant column keeps its scale
    assert tab.encode({"age": None, "bmi": " "}, train=False).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert tab.encode({"age": float("nan"), "bmi": 21}, train=False).tolist() == [
        0.0,
        1.0,
        1.0,
        0.0,
    ]
    strict = _fitted(values, missing="error")
    assert strict.facts() == {"num_features": 2}
    with pytest.raises(MMTrainError, match=r"tabular column 'bmi' is missing"):
        strict.encode({"age": 12, "bmi": None}, train=False)
    assert tab.read({"id": "x", "text": "no columns"}) is None  # the modality is absent


def test_bad_values_and_columns_are_one_clear_error():
    with pytest.raises(MMTrainError, match=r"tabular column 'age' must be a number, got 'old'"):
        _fitted([{"age": "old", "bmi": 1}])
    with pytest.raises(MMTrainError, match=r"column 'bmi' has no value in the training split"):
        _fitted([{"age": 1, "bmi": None}])
    with pytest.raises(ValueError, match="distinct"):
        TabularInput(["age", "age"])
    with pytest.raises(ValueError, match="missing must be one of"):
        TabularInput(COLUMNS, missing="zero")


def test_the_state_round_trips_and_must_match_the_columns():
    tab = _fitted([{"age": 10, "bmi": 20}, {"age": 30, "bmi": 40}])
    state = json.loads(json.dumps(tab.state_dict()))
    restored = TabularInput(COLUMNS)
    restored.load_state_dict(state)
    assert restored.fitted and restored.mean == tab.mean and restored.std == tab.std
    other = TabularInput(["age", "weight"])
    with pytest.raises(MMTrainError, match=r"differs from the checkpoint's \['age', 'bmi'\]"):
        other.load_state_dict(state)


# ---- the whole path ----------------------------------------------------------------------------
def _rows(folder: Path, split: str, n: int) -> list[dict]:
    rows = sample_rows(folder, split, n)
    for i, row in enumerate(rows):
        row["age"] = AGE[row["label"]] + (i % 3)
        row["bmi"] = 20 + i % 4 if i % 5 else None  # some missing values
    return rows


@pytest.fixture(scope="module")
def tabular_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tabular")
    return {
        "train": write_rows(folder / "train.csv", _rows(folder, "train", 12)),
        "val": write_rows(folder / "val.jsonl", _rows(folder, "val", 6)),
        "folder": folder,
    }


def _overrides(data: dict[str, Path] | None, *extra: str) -> list[str]:
    files = [] if data is None else [f"data.train={data['train']}", f"data.val={data['val']}"]
    return [
        "experiment=manifest_label",
        *files,
        "data.tabular.columns=[age,bmi]",
        "+encoder/tabular=mlp",
        "~encoder/text",
        "~encoder/audio",
        "data.image.size=16",
        "data.num_workers=0",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        *QUIET,
        *extra,
    ]


def test_fit_test_without_each_modality_and_predict(compose_config, tabular_data, tmp_path):
    out = tmp_path / "fit"
    metrics = run("fit", compose_config(*_overrides(tabular_data), output_dir=out))
    assert math.isfinite(metrics["val/label/accuracy"])
    state = json.loads((out / "data_state.json").read_text())["inputs"]["tabular"]
    assert state["columns"] == COLUMNS and state["mean"][0] == pytest.approx(41.0)
    ckpt = out / "checkpoints" / "last.ckpt"
    test = run(
        "test",
        compose_config(f"ckpt_path={ckpt}", "robustness=missing", *QUIET, stage="test",
                       output_dir=tmp_path / "test"),
    )  # fmt: skip
    assert {"test/label/accuracy/without_tabular", "test/label/accuracy/without_image"} <= set(test)
    run(
        "predict",
        compose_config(f"ckpt_path={ckpt}", "data.predict_split=val", *QUIET, stage="predict",
                       output_dir=tmp_path / "predict"),
    )  # fmt: skip
    lines = (tmp_path / "predict" / "predictions" / "label_val.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {"id", "prediction"} <= set(json.loads(lines[0]))


def test_the_feature_cache_of_a_frozen_tabular_encoder(compose_config, tabular_data, tmp_path):
    frozen = [
        "encoder.tabular.freeze=true",
        "encoder.image.freeze=true",
        "data.image.augment=false",  # the cache holds evaluation features
        "trainer.max_steps=3",
    ]
    plain = run(
        "fit", compose_config(*_overrides(tabular_data, *frozen), output_dir=tmp_path / "a")
    )
    cached = run(
        "fit",
        compose_config(
            *_overrides(tabular_data, *frozen, "data.cache_features=true"),
            output_dir=tmp_path / "b",
        ),
    )
    (meta,) = (tmp_path / "b" / "feature_cache").glob("*/train/tabular/meta.json")
    assert json.loads(meta.read_text())["size"] == 12
    assert cached["train/loss/label"] == pytest.approx(plain["train/loss/label"], rel=1e-5)


def test_two_sources_share_the_statistics(tabular_data):
    """data=multi: the statistics come from the union of the training splits; a source
    without the columns has no tabular input (a missing modality)."""
    from helpers.multi import multi_datamodule

    folder = tabular_data["folder"]
    without = [{k: v for k, v in r.items() if k not in COLUMNS} for r in _rows(folder, "b", 4)]
    files = {
        "with": {"train": tabular_data["train"], "val": tabular_data["val"]},
        "without": {"train": write_rows(folder / "b.jsonl", without), "val": tabular_data["val"]},
    }
    dm = multi_datamodule(
        files, tabular=TabularInput(COLUMNS), modalities=["image", "tabular"], tasks=["label"]
    )
    dm.setup("fit")
    assert dm.columns["with"] == ["image", "age", "bmi", "label"]
    assert dm.inputs["tabular"].mean[0] == pytest.approx(41.0)  # from the source that has it
    batches = {b["source"][0]: b for b in dm.train_dataloader()}
    assert batches["with"]["tabular"].shape[1] == 4 and "tabular" not in batches["without"]


def test_shards_carry_the_columns(compose_config, tabular_data, tmp_path):
    """mmtrain shard writes the numeric columns; data=webdataset trains on them."""
    from mmtrain.data.shard import main as shard_main

    shards = tmp_path / "shards"
    code = shard_main(
        ["manifest", f"out={shards}", f"data.train={tabular_data['train']}",
         f"data.val={tabular_data['val']}"]
    )  # fmt: skip
    assert code == 0 and (shards / "train").is_dir()
    cfg = compose_config(
        *_overrides(None, "data=webdataset", f"data.root={shards}"),
        output_dir=tmp_path / "web",
    )
    metrics = run("fit", cfg)
    assert math.isfinite(metrics["val/label/accuracy"])
    state = json.loads((tmp_path / "web" / "data_state.json").read_text())["inputs"]["tabular"]
    assert state["mean"][0] == pytest.approx(41.0)
