"""data=multi: several data sets, each feeding its tasks, sampled by config; and the sweep."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import QUIET
from helpers.cli import explain_run, mmtrain, run_dirs
from helpers.multi import multi_datamodule

from mmtrain.data.inputs import TextInput
from mmtrain.data.multi import source_schedule
from mmtrain.data.targets import TextTarget
from mmtrain.data.transforms import WordTokenizer
from mmtrain.errors import MMTrainError
from mmtrain.run import run

WEIGHTINGS = ["fixed", "uncertainty", "dwa", "gradnorm", "rlw", "pcgrad"]
# experiment=shapes_multitask on tiny data: the captions source is the session's tiny shapes
TINY_MULTI = [
    f"data.sources.{source}.dataset.{key}={n}"
    for source in ("captions", "labels")
    for key, n in (("num_train", 24), ("num_val", 8), ("num_test", 8))
] + ["data.batch_size=4"]


# ---- the order of data sets -----------------------------------------------------------------
def _schedule(sampling: str, batches=(5, 2), sizes=(50, 20), temperature=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return source_schedule(list(batches), list(sizes), sampling, temperature, g)


def test_sequential_and_round_robin_orders() -> None:
    assert _schedule("sequential") == [0, 0, 0, 0, 0, 1, 1]
    # one of each in turn until the largest is done; the smaller one starts over
    assert _schedule("round_robin") == [0, 1] * 5


def test_proportional_sees_every_batch_once_in_a_random_interleaving() -> None:
    orders = [_schedule("proportional", seed=s) for s in range(5)]
    for order in orders:
        assert sorted(order) == [0, 0, 0, 0, 0, 1, 1]
    assert len({tuple(o) for o in orders}) > 1
    assert _schedule("proportional", seed=3) == _schedule("proportional", seed=3)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 100.0])
def test_temperature_sampling_follows_n_to_the_one_over_t(temperature) -> None:
    sizes = (900, 100)
    order = _schedule("temperature", (9000, 1000), sizes, temperature)
    assert len(order) == 10000  # as many batches as proportional
    p = [n ** (1 / temperature) for n in sizes]
    expected = p[1] / sum(p)  # 0.1 at T=1, 0.25 at T=2, ~0.5 at T=100
    assert sum(order) / len(order) == pytest.approx(expected, abs=0.015)


def test_unknown_sampling_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"sampling must be one of .* got 'random'"):
        _schedule("random")


# ---- a data module over two data sets with different columns --------------------------------
def test_each_data_set_loads_what_it_has_and_vocabularies_are_shared(two_sources) -> None:
    dm = multi_datamodule(two_sources)
    dm.setup("fit")
    assert dm.columns == {
        "captions": ["image", "text", "caption"],
        "labels": ["image", "text", "audio", "label"],
    }
    assert dm.class_names == {"label": ["0", "2", "10"]}
    # the text vocabulary is built from the training texts of both data sets
    assert dm.inputs["text"].tokenizer.fitted and dm.targets["caption"].tokenizer.fitted
    facts = dm.facts()
    assert facts["inputs"]["text"]["vocab_size"] == dm.inputs["text"].tokenizer.vocab_size
    state = dm.state_dict()
    restored = multi_datamodule(
        two_sources,
        text=TextInput(max_length=8),
        targets={"caption": TextTarget(WordTokenizer(max_length=8))},
    )
    restored.load_state_dict(state)
    restored.setup("validate")
    assert "train" not in restored.datasets and restored.state_dict() == state


@pytest.mark.parametrize(
    ("sampling", "batches"),
    [("sequential", 8), ("proportional", 8), ("temperature", 8), ("round_robin", 10)],
)
def test_training_batches_come_from_one_data_set_each(two_sources, sampling, batches) -> None:
    dm = multi_datamodule(two_sources, sampling=sampling)  # captions: 3 batches, labels: 5
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = list(loader)
    assert len(seen) == len(loader) == batches
    for batch in seen:
        (source,) = set(batch["source"])
        if source == "captions":
            assert "caption" in batch and "label" not in batch and "audio" not in batch
        else:
            assert "label" in batch and "caption" not in batch and batch["audio"].ndim == 3
    if sampling in ("sequential", "proportional"):  # every training sample once per epoch
        ids = sorted(i for batch in seen for i in batch["id"])
        assert len(ids) == 15 and len(set(ids)) == 15


def test_joint_sampling_gives_every_data_set_in_every_step(two_sources) -> None:
    dm = multi_datamodule(two_sources, sampling="joint")
    dm.setup("fit")
    loader = dm.train_dataloader()
    iter(loader)
    steps = [batch for batch, _, _ in loader]
    assert len(steps) == 5  # the larger data set once; the smaller one starts over
    assert all(set(step) == {"captions", "labels"} for step in steps)


def test_validation_has_a_loader_per_data_set(two_sources) -> None:
    dm = multi_datamodule(two_sources, sampling="temperature")
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert [{s for b in loader for s in b["source"]} for loader in loaders] == [
        {"captions"},
        {"labels"},
    ]
    assert sum(len(b["id"]) for loader in loaders for b in loader) == 6


def test_a_task_no_data_set_has_is_a_clear_error(two_sources) -> None:
    dm = multi_datamodule(two_sources, tasks=["caption", "label", "answer"])
    with pytest.raises(MMTrainError, match=r"head/answer: none of the data sets .* 'answer'"):
        dm.setup("fit")


def test_a_listed_task_the_data_set_lacks_is_a_clear_error(two_sources) -> None:
    dm = multi_datamodule(two_sources)
    dm.sources["captions"].tasks = ["caption", "label"]
    with pytest.raises(MMTrainError, match=r"data.sources.captions.tasks lists \['label'\]"):
        dm.setup("fit")


def test_a_data_set_that_feeds_no_task_is_left_out(two_sources) -> None:
    dm = multi_datamodule(two_sources, tasks=["label"])
    dm.setup("fit")
    assert set(dm.datasets["train"]) == {"labels"}
    assert [b["source"][0] for b in dm.val_dataloader()[0]] == ["labels", "labels"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sources": {}}, r"data.sources is empty"),
        ({"sampling": "random"}, r"sampling must be one of"),
        ({"temperature": 0.0}, r"temperature must be > 0, got 0.0"),
        ({"sources": {"a": {"datset": None}}}, r"data.sources.a: .*'datset'"),
    ],
)
def test_bad_multi_config_is_a_clear_error(two_sources, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        multi_datamodule(two_sources, **kwargs)


# ---- end to end -----------------------------------------------------------------------------
def test_multitask_fit_logs_every_weight_each_step(compose_config, tiny_data, tmp_path) -> None:
    cfg = compose_config(
        "experiment=shapes_multitask",
        "loss_weighting=gradnorm",
        "loss_weighting.lr=0.2",
        *TINY_MULTI,
        "trainer.limit_train_batches=4",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=1",
        *QUIET,
        output_dir=tmp_path,
    )
    metrics = run("fit", cfg)
    assert {"val/caption/bleu4", "val/label/accuracy"} <= set(metrics)
    with (tmp_path / "csv/metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/weight/label")]
    assert len(rows) == 4  # one row a step
    label = [float(r["train/weight/label"]) for r in rows]
    caption = [float(r["train/weight/caption"]) for r in rows]
    assert label[0] == caption[0] == 1.0  # GradNorm starts from equal weights...
    assert label[-1] != 1.0  # ...and moves them
    assert all(a + b == pytest.approx(2.0, rel=1e-5) for a, b in zip(label, caption))


def test_test_predictions_of_several_data_sets_name_their_source(
    compose_config, tiny_data, tmp_path
) -> None:
    experiment = ["experiment=shapes_multitask", *TINY_MULTI, *QUIET]
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    run("fit", compose_config(*experiment, *short, output_dir=tmp_path / "fit"))
    ckpt = tmp_path / "fit/checkpoints/last.ckpt"
    test = compose_config(
        *experiment, f"ckpt_path={ckpt}", stage="test", output_dir=tmp_path / "test"
    )
    metrics = run("test", test)
    assert {"test/caption/cider", "test/label/accuracy", "test/loss"} <= set(metrics)
    predictions = tmp_path / "test/predictions"
    labels = [
        json.loads(line) for line in (predictions / "label_test.jsonl").read_text().splitlines()
    ]
    assert len(labels) == 8 and {r["source"] for r in labels} == {"labels"}
    assert len(json.loads((predictions / "captions_test.json").read_text())) == 8

    predict = compose_config(
        *experiment, f"ckpt_path={ckpt}", stage="predict", output_dir=tmp_path / "predict"
    )
    run("predict", predict)
    labels = (tmp_path / "predict/predictions/label_test.jsonl").read_text().splitlines()
    assert len(labels) == 16  # both data sets: every sample gets every task's prediction

    photos = tmp_path / "photos"  # input=: a folder replaces the data sets
    photos.mkdir()
    for image in sorted((tiny_data / "images").glob("test_*"))[:2]:
        photos.joinpath(image.name).write_bytes(image.read_bytes())
    out = tmp_path / "input"
    run(
        "predict",
        compose_config(
            *experiment, f"ckpt_path={ckpt}", f"input={photos}", stage="predict", output_dir=out
        ),
    )
    lines = [json.loads(x) for x in (out / "predictions/predict.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all({"file", "caption", "label"} <= set(x) for x in lines)


def test_every_weighting_sweeps_from_the_command_line(scratch, tiny_data) -> None:
    proc = mmtrain(
        scratch,
        "fit",
        "-m",
        "experiment=shapes_multitask",
        f"loss_weighting={','.join(WEIGHTINGS)}",
        *TINY_MULTI,
        "debug=fdr",
        *QUIET,
        timeout=600,
    )
    assert proc.returncode == 0, explain_run(proc)
    runs = run_dirs(scratch["out"], "metrics.json")
    assert len(runs) == len(WEIGHTINGS)
    for run_dir in runs:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert {"train/weight/caption", "train/weight/label", "val/label/accuracy"} <= set(metrics)


def test_the_feature_cache_is_refused_with_several_data_sets(two_sources) -> None:
    with pytest.raises(ValueError, match="cache_features is not supported with several data"):
        multi_datamodule(two_sources, cache_features=True)
