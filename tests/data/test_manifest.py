"""Your own data from config alone: manifests (JSONL, CSV), bad lines, ``data.on_error=skip``.

The fixtures are written as a user would lay them out: real JPEG/PNG images (PIL) and WAV
files (soundfile) next to the manifests, paths in the manifests relative to the manifest file.
``write_manifests`` is also the tiny manifest data set of the CLI and experiment tests.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.manifest import sample_rows, write_manifests, write_rows

from mmtrain.build import build_datamodule
from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.inputs import AudioInput, ImageInput, TextInput
from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.sampling import POSITION
from mmtrain.data.shapes import ShapesDataset
from mmtrain.data.targets.label import class_order
from mmtrain.data.transforms import AudioTransform
from mmtrain.errors import MMTrainError
from mmtrain.utils.config_check import check_config


# Integer labels 0, 2, 10: sorted as strings they would be "0", "10", "2".
@pytest.fixture
def manifests(tmp_path: Path) -> dict[str, Path]:
    return write_manifests(tmp_path / "mydata")


def _dm(files: dict[str, Path], **kwargs: Any) -> MultimodalDataModule:
    """A data module over manifests: image + text + audio -> label, tiny preprocessing."""
    defaults: dict[str, Any] = {
        "dataset": functools.partial(ManifestDataset),
        "train": str(files["train"]),
        "val": str(files["val"]),
        "image": ImageInput(size=16),
        "text": TextInput(max_length=8),
        "audio": AudioInput(n_mels=16),
        "modalities": ["image", "text", "audio"],
        "tasks": ["label"],
        "batch_size": 2,
    }
    return MultimodalDataModule(**{**defaults, **kwargs})


def _ids(loader: Any) -> list[str]:
    return [i for batch in loader for i in batch["id"]]


# ---- reading manifests -------------------------------------------------------------------------
def test_jsonl_and_csv_give_the_same_items(tmp_path):
    rows = sample_rows(tmp_path, "s", 3)
    jsonl = ManifestDataset(write_rows(tmp_path / "m.jsonl", rows))
    table = ManifestDataset(write_rows(tmp_path / "m.csv", rows))
    assert jsonl.columns == table.columns == ["audio", "caption", "image", "label", "text"]
    for a, b in zip(jsonl, table):
        assert a["id"] == b["id"] and a["text"] == b["text"] and a["caption"] == b["caption"]
        assert str(a["label"]) == b["label"]  # CSV has no types: "10" where JSON has 10
        assert a["image"].mode == "RGB" and a["image"].size == (20, 16)
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        (wave, rate), (wave_b, _) = a["audio"], b["audio"]
        assert rate == 22050 and wave.shape == (1, 4410) and np.array_equal(wave, wave_b)


def test_paths_are_relative_to_the_manifest_and_manifests_to_root_or_cwd(
    manifests, tmp_path, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # media paths do not depend on the working directory
    root = manifests["train"].parent
    by_root = ManifestDataset(split="train", root=str(root), train="train.jsonl")
    assert by_root.path == root / "train.jsonl" and by_root[0]["image"].size == (20, 16)
    monkeypatch.chdir(root.parent)
    by_cwd = ManifestDataset(split="val", train="x.jsonl", val="mydata/val.csv")
    assert by_cwd[1]["audio"][1] == 22050
    with pytest.raises(MMTrainError, match=r"^data\.train: manifest not found: .*nope\.jsonl"):
        ManifestDataset(split="train", train="nope.jsonl", val="mydata/val.csv")
    (root / "empty.csv").write_text("id,image,label\n")
    with pytest.raises(MMTrainError, match=r"^data\.train: .*empty\.csv: the manifest has no"):
        ManifestDataset(split="train", root=str(root), train="empty.csv")


def test_split_files(manifests, caplog):
    files = {k: str(v) for k, v in manifests.items()}
    with caplog.at_level(logging.WARNING):
        test = ManifestDataset(split="test", **files)  # data.test=null: the val manifest
    assert test.path == manifests["val"] and "data.test is not set" in caplog.text
    assert ManifestDataset(split="test", test=files["train"], val=files["val"]).path.name == (
        "train.jsonl"
    )
    with pytest.raises(MMTrainError, match=r"data\.train is not set.*data\.train=<file"):
        ManifestDataset(split="train", val=files["val"])
    with pytest.raises(ValueError, match="split must be one of"):
        ManifestDataset(split="dev", **files)
    with pytest.raises(ValueError, match="not both"):
        ManifestDataset(files["train"], train=files["train"])


def test_split_files_for_a_data_set_without_them_are_refused(tiny_data):
    with pytest.raises(ValueError, match=r"data\.train is set, but .*ShapesDataset takes no"):
        MultimodalDataModule(
            dataset=functools.partial(ShapesDataset, root=str(tiny_data)), train="t.jsonl"
        )


# ---- classes and vocabulary from the training split ---------------------------------------
def test_integer_labels_are_ordered_by_value_and_saved(manifests):
    dm = _dm(manifests)
    dm.setup("fit")
    assert dm.class_names == {"label": ["0", "2", "10"]}  # by value, not as strings
    assert sorted(["10", "9", "x", "-2", "b"], key=class_order) == ["-2", "9", "10", "b", "x"]
    state = dm.state_dict()
    assert (
        json.loads(json.dumps(state)) == state and state["targets"]["label"]["classes"][2] == "10"
    )
    assert "ten" in state["inputs"]["text"]["vocab"]
    batch = next(iter(dm.val_dataloader()))  # val is CSV: "10" is the same class as 10
    assert batch["label"].tolist() == [0, 1] and batch["id"] == ["val_0", "val_1"]
    assert batch["image"].shape == (2, 3, 16, 16) and batch["audio"].shape[:2] == (2, 16)
    assert batch["text"].dtype == torch.long and batch["text_mask"].dtype == torch.bool

    restored = _dm(manifests)  # a restored state: the training split is not even opened
    restored.load_state_dict(state)
    restored.setup("test")
    assert set(restored.datasets) == {"test"} and restored.state_dict() == state


def test_string_labels_and_a_modality_without_encoder(tmp_path):
    rows = sample_rows(tmp_path, "s", 4)
    for row, name in zip(rows, ["cat", "dog", "bird", "cat"]):
        row["label"] = name
    files = {"train": write_rows(tmp_path / "t.csv", rows), "val": tmp_path / "t.csv"}
    dm = _dm(files, audio=None, modalities=["image"])  # ~encoder/audio, ~encoder/text
    dm.setup("fit")
    assert dm.class_names["label"] == ["bird", "cat", "dog"]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"id", "image", "label", POSITION}  # POSITION: training batches


def test_missing_target_column_names_the_head_and_the_columns(manifests, tmp_path):
    dm = _dm(manifests, tasks=["label", "transcript"])
    with pytest.raises(MMTrainError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "head/transcript needs a 'transcript' column" in message
    assert str(manifests["train"]) in message and "~head/transcript" in message
    assert "['audio', 'caption', 'image', 'label', 'text']" in message
    # CSV, and a validation split that lacks what the training split has
    rows = sample_rows(tmp_path, "v", 2)
    val = write_rows(
        tmp_path / "v.csv", [{k: v for k, v in r.items() if k != "label"} for r in rows]
    )
    with pytest.raises(
        MMTrainError, match=r"head/label needs .* has \[.*\] in the val split \(.*v\.csv\)"
    ):
        _dm({**manifests, "val": val}).setup("fit")
    silent = write_rows(
        tmp_path / "s.jsonl", [{k: v for k, v in r.items() if k != "audio"} for r in rows]
    )
    with pytest.raises(MMTrainError, match=r"encoder/audio needs .*~encoder/audio"):
        _dm({"train": silent, "val": silent}).setup("fit")


def test_manifest_preset_checks_its_keys(compose_config, manifests):
    cfg = compose_config("experiment=manifest_label")
    with pytest.raises(MMTrainError, match=r"missing values .*data\.train, data\.val"):
        check_config(cfg)
    cfg = compose_config("data=manifest", "+data.trian=x.jsonl", "data.val=v.csv")
    with pytest.raises(MMTrainError, match=r"data\.trian: unknown key .*did you mean 'train'"):
        check_config(cfg)
    cfg = compose_config(
        "experiment=manifest_label",
        f"data.train={manifests['train']}",
        f"data.val={manifests['val']}",
        "data.on_error=maybe",
    )
    with pytest.raises(MMTrainError, match=r"data\.on_error='maybe': expected"):
        check_config(cfg)
    cfg = compose_config(
        "data=manifest",
        f"data.train={manifests['train']}",
        f"data.val={manifests['val']}",
        "data.num_workers=0",
    )
    check_config(cfg)
    assert sorted(cfg.head) == ["caption", "label"]  # experiment=shapes adds head/caption
    dm = build_datamodule(cfg)
    dm.setup("fit")  # the manifest has captions: head/caption works on it too
    assert dm.targets["caption"].tokenizer.fitted and dm.class_names["label"] == ["0", "2", "10"]
    batch = next(iter(dm.val_dataloader()))
    # size: auto follows the 20x16 images: their shorter side, at least 32 px
    assert batch["caption"][:, 0].eq(2).all() and batch["image"].shape[-1] == 32


def test_removing_an_encoder_removes_the_modality(compose_config, manifests):
    cfg = compose_config(
        "experiment=manifest_label",
        f"data.train={manifests['train']}",
        f"data.val={manifests['val']}",
        "~encoder/audio",
        "data.num_workers=0",
        "data.image.size=32",
    )
    check_config(cfg)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert dm.modalities == ["image", "text"] and dm.tasks == ["label"]
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch) == [POSITION, "id", "image", "label", "text", "text_mask"]


# ---- bad lines: file:line errors -----------------------------------------------------------
BAD_LINES = {
    "missing image": ({"image": "images/gone.jpg"}, r"image file not found: .*gone\.jpg"),
    "corrupt image": ({"image": "broken.jpg"}, r"cannot decode image .*broken\.jpg"),
    "missing audio": ({"audio": "audio/gone.wav"}, r"audio file not found: .*gone\.wav"),
    "corrupt audio": ({"audio": "broken.wav"}, r"cannot decode audio .*broken\.wav"),
    "label is a list": ({"label": [1, 2]}, r"label must be a string or a number, got list"),
    "label is an object": ({"label": {"a": 1}}, r"label must be a string or a number, got dict"),
    "label is a bool": ({"label": True}, r"label must be a string or a number, got bool"),
    "text is a number": ({"text": 42}, r"text must be a string, got int 42"),
    "image is a number": ({"image": 7}, r"image must be a file path .* got int 7"),
    "no text": ({"text": None}, r"missing column 'text'"),
    "unknown class": ({"label": 99}, r"sample \w+: label=99 is not a class"),
}


@pytest.mark.parametrize("case", list(BAD_LINES), ids=list(BAD_LINES))
def test_a_bad_line_is_an_error_naming_file_and_line(manifests, case):
    folder = manifests["train"].parent
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE garbage")
    change, says = BAD_LINES[case]
    rows = sample_rows(folder, "val", 3)
    rows[1].update(change)
    val = write_rows(folder / "bad.jsonl", rows)
    dm = _dm({**manifests, "val": val})
    dm.setup("fit")
    with pytest.raises(MMTrainError, match=rf"^{val}:2: {says}"):
        _ids(dm.val_dataloader())


def test_a_bad_csv_row_names_its_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('id,text,label\na,"two\nlines",1\n\nb,hello,1,extra\n')
    with pytest.raises(MMTrainError, match=rf"^{manifest}:5: 1 more field\(s\) than the header"):
        ManifestDataset(manifest)
    manifest.write_text("id,text,label\na,hi,1\n\nb,,2\n")
    with pytest.raises(MMTrainError, match=rf"^{manifest}:4: missing column 'text'"):
        ManifestDataset(manifest, columns=["text"])[1]


# ---- data.on_error=skip --------------------------------------------------------------------
def _with_bad_lines(manifests: dict[str, Path], bad: list[int], n: int = 6) -> Path:
    folder = manifests["train"].parent
    rows = sample_rows(folder, "train", n)
    for i in bad:
        rows[i]["image"] = f"images/missing_{i}.jpg"
    return write_rows(folder / "skip.jsonl", rows)


def test_skip_drops_counts_and_reports_bad_samples(manifests, caplog):
    train = _with_bad_lines(manifests, bad=[1, 4])
    dm = _dm({**manifests, "train": train}, on_error="skip", max_skipped=2)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="mmtrain.data.datamodule"):
        ids = _ids(dm._loader("train"))  # in order: batches [0, -], [2, 3], [-, 5]
    assert ids == ["train_0", "train_2", "train_3", "train_5"] and dm.skipped == {"train": 2}
    assert "skipped 2 of 6 samples of the train split (budget 2)" in caplog.text
    assert f"{train}:2: image file not found" in caplog.text
    assert f"{train}:5: image file not found" in caplog.text
    assert len(_ids(dm.val_dataloader())) == 3 and dm.skipped["val"] == 0
    _ids(dm._loader("train"))
    assert dm.skipped["train"] == 2  # a count a pass (an epoch), not a running total


def test_a_batch_of_bad_samples_only_is_not_yielded(manifests):
    train = _with_bad_lines(manifests, bad=[2, 3])
    dm = _dm({**manifests, "train": train}, on_error="skip", max_skipped=0.5)
    dm.setup("fit")
    batches = list(dm._loader("train"))
    assert [b["id"] for b in batches] == [["train_0", "train_1"], ["train_4", "train_5"]]


@pytest.mark.parametrize(("max_skipped", "budget"), [(0.2, 1), (1, 1), (0.0, 0)])
def test_skipping_beyond_the_budget_is_an_error(manifests, max_skipped, budget):
    train = _with_bad_lines(manifests, bad=[0, 3])
    dm = _dm({**manifests, "train": train}, on_error="skip", max_skipped=max_skipped)
    dm.setup("fit")
    with pytest.raises(MMTrainError) as info:
        _ids(dm._loader("train"))
    message = str(info.value)
    assert f"{budget + 1} bad samples in the train split (6 samples)" in message
    assert f"over the budget data.max_skipped={max_skipped} ({budget} samples)" in message
    assert f"{train}:" in message and "image file not found" in message


def test_skip_counts_add_up_across_worker_processes(manifests):
    train = _with_bad_lines(manifests, bad=[1, 4])
    dm = _dm({**manifests, "train": train}, on_error="skip", max_skipped=2, num_workers=1)
    dm.setup("fit")
    assert sorted(_ids(dm.train_dataloader())) == ["train_0", "train_2", "train_3", "train_5"]
    assert dm.skipped == {"train": 2}
    raising = _dm({**manifests, "train": train}, num_workers=1)
    raising.setup("fit")
    loader = raising._loader("train")
    try:  # no pytest.raises: its traceback would keep the worker alive (5 s to shut down)
        _ids(loader)
    except MMTrainError as err:  # raised in the main process, as it is
        message = str(err)
    else:
        pytest.fail("no error for a bad sample")
    del loader
    assert message.startswith(f"{train}:2: image file not found")
    assert "Traceback" not in message and "worker" not in message


def test_lightning_can_recreate_the_loader(manifests):
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import SequentialSampler

    train = _with_bad_lines(manifests, bad=[1])
    dm = _dm({**manifests, "train": train}, on_error="skip", max_skipped=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    again = _update_dataloader(loader, SequentialSampler(loader.dataset))  # overfit_batches
    assert type(again) is type(loader) and again.policy is loader.policy
    assert _ids(again) == ["train_0", "train_2", "train_3", "train_4", "train_5"]


class _Bug(Exception):
    pass


@pytest.mark.parametrize(
    "error", [TypeError("bug"), KeyError("bug"), _Bug("bug")], ids=lambda e: type(e).__name__
)
@pytest.mark.parametrize("where", ["dataset", "preprocessing"])
def test_skip_never_swallows_programming_errors(manifests, monkeypatch, error, where):
    dm = _dm(manifests, on_error="skip", max_skipped=100)
    dm.setup("fit")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    if where == "dataset":
        monkeypatch.setattr(ManifestDataset, "__getitem__", broken)
    else:
        monkeypatch.setattr(AudioTransform, "__call__", broken)
    with pytest.raises(type(error), match="bug"):
        _ids(dm._loader("val"))
    assert dm.skipped.get("val", 0) == 0


def test_on_error_values_are_checked(manifests):
    with pytest.raises(ValueError, match=r"on_error must be one of \('raise', 'skip'\)"):
        _dm(manifests, on_error="ignore")
    with pytest.raises(ValueError, match="max_skipped must be >= 0"):
        _dm(manifests, max_skipped=-1)
