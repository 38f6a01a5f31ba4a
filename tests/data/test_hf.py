"""``data=hf``: Hugging Face ``datasets`` data read by :class:`~mmtrain.data.hf.HFDataset`.

Tiny data sets are written in each real layout (a ``save_to_disk`` folder, parquet files, a
hub id's entry in the ``datasets`` cache) from the image and WAV files of the manifest tests,
so that a sample read through ``data=hf`` can be compared with the same files read through a
manifest. conftest's network guard holds: ``datasets`` must read its caches offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import QUIET
from helpers.cli import explain_run, run_dirs, run_mmtrain
from helpers.hf import NAMES, hf_split, write_hf
from helpers.manifest import write_rows

from mmtrain.data.hf import HFDataset
from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.shard import main as shard_main
from mmtrain.errors import MMTrainError

datasets = pytest.importorskip("datasets")

MEDIA = ["image", "audio", "text"]


def assert_same_samples(hf: HFDataset, manifest: ManifestDataset) -> None:
    """Items of both data sets: the same ids, pixels, samples, rates and text."""
    assert len(hf) == len(manifest)
    for i in range(len(hf)):
        a, b = hf[i], manifest[i]
        assert a["id"] == b["id"]
        assert a["image"].mode == "RGB" and a["image"].size == b["image"].size
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        (samples, rate), (expected, expected_rate) = a["audio"], b["audio"]
        assert samples.dtype == np.float32 and samples.shape == expected.shape
        assert rate == expected_rate and np.array_equal(samples, expected)
        assert a["text"] == b["text"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A save_to_disk DatasetDict (``train``, ``dev``) whose image column is ``picture``, media
    embedded, and a manifest of the same files for each split."""
    folder = tmp_path_factory.mktemp("saved")
    train, train_rows = hf_split(folder, "train", 6, image="picture")
    dev, dev_rows = hf_split(folder, "dev", 3, image="picture")
    datasets.DatasetDict({"train": train, "dev": dev}).save_to_disk(str(folder / "hf"))
    return {
        "root": str(folder / "hf"),
        "train": write_rows(folder / "train.jsonl", train_rows),
        "dev": write_rows(folder / "dev.jsonl", dev_rows),
    }


def open_saved(saved: dict[str, Any], split: str, **kwargs: Any) -> HFDataset:
    kwargs = {"columns": MEDIA, "val": "dev", "rename": {"picture": "image"}} | kwargs
    return HFDataset(split=split, root=saved["root"], **kwargs)


def test_a_save_to_disk_folder_gives_the_manifests_samples(saved):
    """Renamed columns, split names mapped (data.val=dev), media decoded by mmtrain as the
    manifest's files are, class names from the ClassLabel in label-id order."""
    for split, name in (("train", "train"), ("val", "dev")):
        hf = open_saved(saved, split, columns=[*MEDIA, "label"])
        assert hf.columns == ["image", "audio", "text", "caption", "label"]
        assert_same_samples(hf, ManifestDataset(path=saved[name], columns=MEDIA))
    assert hf.class_names == {"label": NAMES}
    assert [hf[i]["label"] for i in range(3)] == ["zero", "two", "ten"]  # names, not ids
    assert hf.values("label") == ["zero", "two", "ten"]
    assert hf.values("text")[0] == "a picture of zero"
    assert hf.values("image") == ["dev_0.jpg", "dev_1.png", "dev_2.jpg"]  # the stored names


def test_split_names_a_missing_split_and_test_on_val(saved, caplog):
    with pytest.raises(MMTrainError) as err:
        open_saved(saved, "val", val="validation")
    assert str(err.value) == (
        f"data.val=validation: data.root={saved['root']} has no split 'validation'; its "
        "splits: ['dev', 'train']"
    )
    hf = open_saved(saved, "test", test=None)  # data.test=null: tests on data.val
    assert hf.split_name == "dev" and len(hf) == 3
    assert "data.test is not set: the test split is data.val (dev)" in caplog.text


def test_a_missing_column_or_rename_lists_the_columns(saved):
    with pytest.raises(MMTrainError) as err:
        open_saved(saved, "train", rename={})
    assert f"{saved['root']}[train] has no column 'image'" in str(err.value)
    assert "its columns: ['picture', 'audio', 'text', 'caption', 'label']" in str(err.value)
    assert "data.dataset.rename.<column>=image" in str(err.value)
    with pytest.raises(MMTrainError, match=r"data.dataset.rename.photo: .* no column 'photo'"):
        open_saved(saved, "train", rename={"photo": "image"})
    with pytest.raises(MMTrainError, match=r"no column 'duration'; its columns: \['image'"):
        open_saved(saved, "train").values("duration")


def test_parquet_files_split_by_name_with_media_by_path(tmp_path, monkeypatch):
    """A folder of parquet files (train, valid -> validation, test), image and audio stored as
    paths relative to the folder (read from another working directory); one file alone is the
    train split."""
    folder = tmp_path / "pq"
    rows = {}
    for split, file, n in (("train", "train", 6), ("val", "valid", 3), ("test", "test", 2)):
        data, rows[split] = hf_split(folder, split, n, embed=False)
        with monkeypatch.context() as m:
            m.chdir(folder)  # datasets sizes the files it refers to
            data.to_parquet(f"{file}.parquet")
    cache = str(tmp_path / "cache")
    for split in ("train", "val", "test"):
        hf = HFDataset(split=split, root=str(folder), columns=MEDIA, cache_dir=cache)
        manifest = write_rows(folder / f"{split}.jsonl", rows[split])
        assert_same_samples(hf, ManifestDataset(path=manifest, columns=MEDIA))
    assert hf.class_names == {"label": NAMES}
    assert hf.values("audio") == ["audio/test_0.wav", "audio/test_1.wav"]
    one = HFDataset(split="train", root=str(folder / "valid.parquet"), cache_dir=cache)
    assert len(one) == 3 and one.split_name == "train"
    with pytest.raises(MMTrainError, match=r"has no split 'validation'; its splits: \['train'\]"):
        HFDataset(split="val", root=str(folder / "valid.parquet"), cache_dir=cache)


def write_hub_cache(cache: Path, repo_id: str, parquet: dict[str, Path]) -> None:
    """The entry that ``datasets.load_dataset(repo_id)`` leaves in its cache, made offline: the
    parquet builder prepares the files into ``<namespace>___<name>/default/0.0.0/<hash>/``
    (``<name>-<split>.arrow`` and ``dataset_info.json``), as a load from the hub prepares them."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    from mmtrain.data.hf import offline

    namespace, name = repo_id.split("/")
    builder = Parquet(
        cache_dir=str(cache / "build"),
        dataset_name=name,
        config_name="default",
        config_id="default",
        hash="0123456789abcdef",
        data_files={split: [str(path)] for split, path in parquet.items()},
    )
    with offline():
        builder.download_and_prepare()
    os.replace(cache / "build" / name, cache / f"{namespace}___{name}")


def test_a_hub_id_is_read_from_the_local_cache_offline(tmp_path):
    folder, cache = tmp_path / "files", tmp_path / "cache"
    files = {}
    for split, n in (("train", 3), ("validation", 2)):
        data, _ = hf_split(folder, split, n, image="img")
        files[split] = folder / f"{split}.parquet"
        data.to_parquet(str(files[split]))
    write_hub_cache(cache, "mmtrain-tests/tiny", files)
    hf = HFDataset(
        split="val", root="mmtrain-tests/tiny", cache_dir=str(cache), rename={"img": "image"}
    )
    assert len(hf) == 2 and hf.class_names == {"label": NAMES}
    assert hf[1]["label"] == "two" and hf[1]["image"].size == (20, 16)
    assert hf[1]["audio"][1] == 22050
    with pytest.raises(MMTrainError) as err:  # not cached: an error, never a download
        HFDataset(split="train", root="mmtrain-tests/other", cache_dir=str(cache))
    assert "the hub id 'mmtrain-tests/other' is not in the local datasets cache" in str(err.value)


def test_what_is_not_a_data_set_is_one_error(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"")
    with pytest.raises(MMTrainError) as err:
        HFDataset(split="train", root=str(tmp_path / "photos"))
    assert str(err.value).startswith(f"data.root={tmp_path / 'photos'}: not a Hugging Face data")
    assert "a save_to_disk folder, a .parquet/.arrow file or a folder of them, or a hub id" in (
        str(err.value)
    )
    with pytest.raises(MMTrainError, match="data.root is not set"):
        HFDataset(split="train", root=None)


def test_bad_samples_name_the_data_set_split_and_index(tmp_path):
    data, _ = hf_split(tmp_path, "train", 3)
    broken = data.cast_column("image", datasets.Image(decode=False)).map(
        lambda row, i: (
            {"image": row["image"] | ({"bytes": b"<html>"} if i == 1 else {})}
            | ({"label": -1} if i == 2 else {})
        ),
        with_indices=True,
    )
    broken.save_to_disk(str(tmp_path / "hf"))
    hf = HFDataset(split="train", root=str(tmp_path / "hf"), columns=["image", "label"])
    assert hf[0]["label"] == "zero"
    with pytest.raises(MMTrainError) as err:
        hf[1]
    assert str(err.value) == (
        f"{tmp_path / 'hf'}[train]:1: cannot decode image train_1.png (column 'image'): "
        "the file is "
        "markup (an HTML page? a download that failed), not an image"
    )
    with pytest.raises(MMTrainError, match=r"\[train\]:2: label has no label \(-1; classes 0"):
        hf[2]
    assert hf.values("label") == ["zero", "two", None]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, session_dirs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_project")
    return {"cwd": root, "data": session_dirs["data"], "out": root / "outputs", "hf": root / "hf"}


def test_fit_hf_label_from_a_save_to_disk_folder(project):
    """``mmtrain fit experiment=hf_label data.root=<dir>``: the shortest command."""
    root = write_hf(project["hf"])
    proc = run_mmtrain(
        [
            "fit",
            "experiment=hf_label",
            f"data.root={root}",
            "trainer.fast_dev_run=true",
            "data.image.size=32",
            "data.batch_size=2",
            "data.num_workers=0",
            *QUIET,
        ],
        project["cwd"],
        project["data"],
        project["out"],
    )
    assert proc.returncode == 0, explain_run(proc)
    (run,) = run_dirs(project["out"] / "hf_label", "metrics.json")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "train/loss/label" in metrics and 0.0 <= metrics["val/label/accuracy"] <= 1.0
    # the ClassLabel's names in label-id order (sorted, they would be ten, two, zero)
    state = (run / "data_state.json").read_text()
    assert json.dumps(NAMES) in json.dumps(json.loads(state)), state


def test_shard_hf_writes_every_split(tmp_path):
    """``mmtrain shard hf out=<dir> data.root=<dir>``: each split, ClassLabel values as names."""
    root, out = write_hf(tmp_path / "hf"), tmp_path / "shards"
    assert shard_main(["hf", f"data.root={root}", f"out={out}"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "mmtrain.data.hf.HFDataset"
    assert {s: i["count"] for s, i in meta["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    values = json.loads((out / "train" / "values.json").read_text())
    assert values["label"] == ["zero", "two", "ten", "zero", "two", "ten"]
    index = json.loads((out / "val" / "index.json").read_text())
    assert index["kinds"] == {"image": "image", "audio": "audio"}, index
