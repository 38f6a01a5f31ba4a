"""Caption data sets: COCO (official layout and Karpathy splits), Flickr8k and Flickr30k.

Every fixture is written by the test in the on-disk layout of the real release, with the
release's quirks: grayscale and CMYK JPEGs, raw captions with capitals, punctuation and trailing
whitespace, 5 to 7 captions an image, sparse ids, an image without captions, annotations not
grouped by image.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.coco import caption_text, write_coco, write_jpeg
from PIL import Image

from mmtrain.data.coco import CaptionDataset
from mmtrain.data.inputs import ImageInput
from mmtrain.errors import MMTrainError


# image id -> (JPEG mode, number of captions); listed out of id order, as in the release.
@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, dict[str, dict[int, list[str]]]]:
    root = tmp_path / "coco"
    return root, write_coco(root)


# ---- the official COCO layout -------------------------------------------------------------------
@pytest.mark.parametrize("year", [2017, 2014])
def test_official_layout_splits_and_items(tmp_path, year):
    expected = write_coco(tmp_path, year)
    train = CaptionDataset(str(tmp_path), "train", year=year)
    pairs = [(i, c) for i, caps in expected["train"].items() for c in caps]
    assert len(train) == len(pairs) == 5 + 6 + 7  # one item per caption; image 30 has none
    assert [(train[k]["id"], train[k]["caption"]) for k in range(len(train))] == [
        (str(i), c) for i, c in pairs
    ]
    assert train.columns == ["caption", "image"]
    assert set(train[0]) == {"id", "image", "caption"}  # no references in training
    assert train.values("caption") == [c for _, c in pairs]

    for split in ("val", "test"):  # no public test captions: test reads val{year}
        ds = CaptionDataset(str(tmp_path), split, year=year)
        assert len(ds) == 3 and [ds[k]["id"] for k in range(3)] == ["139", "285", "632"]
        for k, (image_id, captions) in enumerate(expected["val"].items()):
            item = ds[k]
            assert item["caption_references"] == captions and item["caption"] == captions[0]
            assert 5 <= len(captions) <= 7
            assert item["image"].mode == "RGB" and item["image"].size == (24, 16 + image_id % 5)
        assert len(ds.values("caption")) == 5 + 6 + 7


def test_raw_captions_keep_case_and_punctuation(coco):
    root, _ = coco
    captions = CaptionDataset(str(root), "train").values("caption")
    assert "A Dog, on a BEACH. (image 9, #1)" in captions
    assert "the  man's red kite! (image 25, #4)" in captions  # inner double space kept
    assert all(c == c.strip() and c for c in captions)


def test_grayscale_and_cmyk_jpegs_load_as_rgb(coco):
    root, _ = coco
    with Image.open(root / "train2017" / "000000000009.jpg") as img:
        assert img.format == "JPEG" and img.mode == "L"
    with Image.open(root / "train2017" / "000000000025.jpg") as img:
        assert img.format == "JPEG" and img.mode == "CMYK"
        cmyk_as_rgb = np.asarray(img.convert("RGB"))
    train = CaptionDataset(str(root), "train", columns=["image"])
    items = {train[k]["id"]: train[k]["image"] for k in range(len(train))}
    assert {img.mode for img in items.values()} == {"RGB"}
    np.testing.assert_array_equal(np.asarray(items["25"]), cmyk_as_rgb)


def test_columns_select_what_is_loaded(coco):
    root, _ = coco
    assert set(CaptionDataset(str(root), "train", columns=["image"])[0]) == {"id", "image"}
    assert set(CaptionDataset(str(root), "train", columns=["caption"])[0]) == {"id", "caption"}
    val = CaptionDataset(str(root), "val", columns=["caption"])
    assert set(val[0]) == {"id", "caption", "caption_references"}
    assert set(CaptionDataset(str(root), "val", columns=[])[0]) == {"id"}
    wrong = CaptionDataset(str(root), "val", columns=["image", "label"])
    with pytest.raises(MMTrainError, match=r"captions_val2017.json: no column 'label'"):
        wrong[0]
    with pytest.raises(MMTrainError, match=r"no column 'label'.*\['caption', 'image'\]"):
        wrong.values("label")


def test_matches_torchvision_coco_captions(coco):
    pytest.importorskip("pycocotools")
    from torchvision.datasets import CocoCaptions

    root, _ = coco
    for split in ("train", "val"):
        reference = CocoCaptions(
            str(root / f"{split}2017"), str(root / "annotations" / f"captions_{split}2017.json")
        )
        ours = CaptionDataset(str(root), split)
        grouped: dict[str, dict[str, Any]] = {}  # train: pairs -> one entry an image
        for k in range(len(ours)):
            item = ours[k]
            entry = grouped.setdefault(item["id"], {"image": item["image"], "captions": []})
            entry["captions"].append(item["caption"])
            if split == "val":
                entry["captions"] = item["caption_references"]
        expected_ids = [
            i for i in reference.ids if reference.coco.getAnnIds(imgIds=i)
        ]  # sorted by id; torchvision keeps images without captions, we skip them
        assert list(grouped) == [str(i) for i in expected_ids]
        for image_id, entry in zip(expected_ids, grouped.values()):
            image, captions = reference[reference.ids.index(image_id)]
            np.testing.assert_array_equal(np.asarray(entry["image"]), np.asarray(image))
            assert sorted(entry["captions"]) == sorted(c.strip() for c in captions)
            by_annotation_id = sorted(
                reference.coco.loadAnns(reference.coco.getAnnIds(imgIds=image_id)),
                key=lambda a: a["id"],
            )
            assert entry["captions"] == [a["caption"].strip() for a in by_annotation_id]


def test_with_the_data_module_and_a_hydra_partial(coco):
    from hydra.utils import instantiate

    from mmtrain.data.datamodule import MultimodalDataModule

    root, _ = coco
    partial = instantiate(
        {"_target_": "mmtrain.data.coco.CaptionDataset", "_partial_": True, "root": str(root)}
    )
    assert partial(split="val", columns=["caption"])[0]["id"] == "139"
    dm = MultimodalDataModule(
        dataset=functools.partial(CaptionDataset, root=str(root)),
        image=ImageInput(size=32),
        modalities=["image"],
        batch_size=2,
        pin_memory=False,
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["id"] == ["139", "285"] and tuple(batch["image"].shape) == (2, 3, 32, 32)
    dm = MultimodalDataModule(
        dataset=functools.partial(CaptionDataset, root=str(root)),
        image=ImageInput(size=32),
        modalities=["image"],
        tasks=["label"],
    )
    with pytest.raises(MMTrainError, match=r"'label' column, but the data has \['caption'"):
        dm.setup("fit")


# ---- Karpathy splits -----------------------------------------------------------------------------
# cocoid -> (Karpathy split, 2014 folder, number of sentences)
KARPATHY = {
    77: ("train", "train2014", 5),
    15: ("train", "train2014", 6),
    301: ("restval", "val2014", 5),
    139: ("val", "val2014", 5),
    999: ("test", "val2014", 6),
    500: ("test", "val2014", 5),
    640: ("test", "val2014", 0),  # no sentences: skipped
}


def write_karpathy_coco(root: Path, images_2017: bool = False) -> Path:
    """Write ``dataset_coco.json`` and its images (2014 names, or the 2017 layout)."""
    entries, sentid = [], 0
    for imgid, (cocoid, (split, folder, n)) in enumerate(KARPATHY.items()):
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        if images_2017:
            folder17 = "val2017" if cocoid == 139 else "train2017"
            write_jpeg(root / folder17 / f"{cocoid:012d}.jpg", "RGB", cocoid)
        else:
            write_jpeg(root / folder / filename, "L" if cocoid == 15 else "RGB", cocoid)
        sentences = [
            {
                "tokens": caption_text(cocoid, k).lower().split(),
                "raw": caption_text(cocoid, k),
                "imgid": imgid,
                "sentid": sentid + k,
            }
            for k in range(n)
        ]
        sentid += n
        if cocoid == 77:
            sentences.reverse()  # sentid order, not list order
        entries.append(
            {
                "filepath": folder,
                "sentids": [s["sentid"] for s in sentences],
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "cocoid": cocoid,
            }
        )
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def _captions(cocoid: int) -> list[str]:
    return [caption_text(cocoid, k).strip() for k in range(KARPATHY[cocoid][2])]


@pytest.mark.parametrize("restval", [True, False])
def test_karpathy_coco_splits(tmp_path, restval):
    split_file = str(write_karpathy_coco(tmp_path))
    train = CaptionDataset(str(tmp_path), "train", split_file=split_file, restval=restval)
    ids = [15, 77, 301] if restval else [15, 77]
    assert len(train) == sum(KARPATHY[i][2] for i in ids)
    assert [(train[k]["id"], train[k]["caption"]) for k in range(len(train))] == [
        (str(i), c) for i in ids for c in _captions(i)
    ]
    assert train[0]["image"].mode == "RGB"  # a grayscale JPEG
    val = CaptionDataset(str(tmp_path), "val", split_file=split_file, restval=restval)
    assert len(val) == 1 and val[0]["caption_references"] == _captions(139)
    test = CaptionDataset(str(tmp_path), "test", split_file=split_file)
    assert [test[k]["id"] for k in range(len(test))] == ["500", "999"]
    assert [test[k]["caption_references"] for k in range(2)] == [_captions(500), _captions(999)]
    assert test.values("image") == [
        str(tmp_path / "val2014" / f"COCO_val2014_{i:012d}.jpg") for i in (500, 999)
    ]


def test_karpathy_coco_on_the_2017_layout(tmp_path):
    split_file = str(write_karpathy_coco(tmp_path, images_2017=True))
    train = CaptionDataset(str(tmp_path), "train", split_file=split_file)
    assert sorted(set(train.values("image"))) == [
        str(tmp_path / "train2017" / f"{i:012d}.jpg") for i in (15, 77, 301)
    ]
    val = CaptionDataset(str(tmp_path), "val", split_file=split_file)
    assert val.values("image") == [str(tmp_path / "val2017" / "000000000139.jpg")]
    assert val[0]["image"].mode == "RGB" and val[0]["caption_references"] == _captions(139)


# Flickr8k names its images <flickr id>_<secret>.jpg, Flickr30k <flickr id>.jpg.
FLICKR8K = {
    "1000268201_693b08cb0e.jpg": "train",
    "2513260012_03d33305cf.jpg": "val",
    "1001773457_577c3a7d70.jpg": "train",
    "3385593926_d3e9c21170.jpg": "test",
}


def write_flickr(root: Path, format: str, names: dict[str, str], with_imgid: bool) -> Path:
    folder = {"flickr8k": "Flicker8k_Dataset", "flickr30k": "flickr30k-images"}[format]
    entries = []
    for imgid, (filename, split) in enumerate(names.items()):
        write_jpeg(root / folder / filename, "RGB", imgid)
        raws = [caption_text(imgid, k) for k in range(5)]
        entry: dict[str, Any] = {
            "sentids": list(range(5 * imgid, 5 * imgid + 5)),
            "filename": filename,
            "split": split,
            "sentences": [{"tokens": r.split(), "raw": r} for r in raws],
        }
        if with_imgid:
            entry["imgid"] = imgid
        entries.append(entry)
    path = root / f"dataset_{format}.json"
    path.write_text(json.dumps({"images": entries, "dataset": format}))
    return path


def test_flickr8k_split_file(tmp_path):
    split_file = str(write_flickr(tmp_path / "f8k", "flickr8k", FLICKR8K, with_imgid=True))
    root = str(tmp_path / "f8k")
    train = CaptionDataset(root, "train", split_file=split_file, format="flickr8k")
    assert len(train) == 10 and [train[k]["id"] for k in (0, 5)] == ["0", "2"]
    assert train[0]["caption"] == caption_text(0, 0).strip() and train[5]["image"].mode == "RGB"
    test = CaptionDataset(root, "test", split_file=split_file, format="flickr8k")
    assert len(test) == 1 and test[0]["id"] == "3"
    assert test[0]["caption_references"] == [caption_text(3, k).strip() for k in range(5)]
    assert test.values("image") == [
        str(tmp_path / "f8k/Flicker8k_Dataset/3385593926_d3e9c21170.jpg")
    ]


def test_flickr30k_defaults_and_ids_from_file_names(tmp_path):
    names = {"36979.jpg": "test", "1000092795.jpg": "test", "10002456.jpg": "train"}
    write_flickr(tmp_path, "flickr30k", names, with_imgid=False)
    test = CaptionDataset(str(tmp_path), "test", format="flickr30k")  # root/dataset_flickr30k.json
    assert [test[k]["id"] for k in range(len(test))] == ["36979", "1000092795"]  # numeric order
    shutil.move(tmp_path / "flickr30k-images", tmp_path / "images")
    moved = CaptionDataset(str(tmp_path), "train", format="flickr30k", image_dir="images")
    assert moved.values("image") == [str(tmp_path / "images" / "10002456.jpg")] * 5


# ---- errors: each names what was expected where, and how to set it -------------------------
def _message(**kwargs: Any) -> str:
    with pytest.raises(MMTrainError) as info:
        CaptionDataset(**kwargs)
    return str(info.value)


def test_missing_root(tmp_path):
    message = _message(root=str(tmp_path / "nowhere"), split="train")
    assert str(tmp_path / "nowhere") in message and "data.root=" in message
    assert "download_coco.sh" in message


def test_missing_annotation_file(coco):
    root, _ = coco
    (root / "annotations" / "captions_val2017.json").unlink()
    message = _message(root=str(root), split="test")
    assert message.startswith(
        f"COCO captions not found: expected {root / 'annotations' / 'captions_val2017.json'} "
    )
    assert "data.root=<folder with annotations/ and train2017/>" in message
    CaptionDataset(str(root), "train")  # the other file is still read


def test_missing_image_folder(coco):
    root, _ = coco
    shutil.rmtree(root / "train2017")
    message = _message(root=str(root), split="train")
    assert str(root / "train2017") in message and "captions_train2017.json" in message


def test_missing_split_file(coco, tmp_path):
    root, _ = coco
    message = _message(root=str(root), split="train", split_file=str(tmp_path / "nope.json"))
    assert str(tmp_path / "nope.json") in message and "data.dataset.split_file=" in message
    message = _message(root=str(root), split="val", format="flickr8k")  # default location
    assert str(root / "dataset_flickr8k.json") in message and "split_file" in message


def test_missing_karpathy_image_folder(tmp_path):
    split_file = str(write_karpathy_coco(tmp_path))
    shutil.rmtree(tmp_path / "val2014")
    message = _message(root=str(tmp_path), split="test", split_file=split_file)
    assert str(tmp_path / "val2014") in message and "dataset_coco.json" in message
    write_flickr(tmp_path, "flickr8k", FLICKR8K, with_imgid=True)
    shutil.rmtree(tmp_path / "Flicker8k_Dataset")
    message = _message(root=str(tmp_path), split="train", format="flickr8k")
    assert str(tmp_path / "Flicker8k_Dataset") in message


def test_missing_image_file_is_reported_when_loaded(coco):
    root, _ = coco
    gone = root / "train2017" / "000000000042.jpg"
    gone.unlink()
    train = CaptionDataset(str(root), "train")  # opening does not read the images
    train[0]
    with pytest.raises(MMTrainError) as info:
        train[len(train) - 1]  # image 42 sorts last
    message = str(info.value)
    assert message.startswith("captions_train2017.json: image 42: image file not found: ")
    assert str(gone) in message
    assert train.values("caption")  # the captions are still there


def test_bad_annotation_files(coco):
    root, _ = coco
    ann_file = root / "annotations" / "captions_train2017.json"
    ann_file.write_text('{"images": [')
    assert _message(root=str(root), split="train").startswith(f"{ann_file}: not valid JSON")
    ann_file.write_text('{"images": []}')
    message = _message(root=str(root), split="train")
    assert message.startswith(f"{ann_file}: not the official COCO captions JSON")
    assert "'annotations'" in message
    ann_file.write_text('{"images": [], "annotations": [{"id": 1, "image_id": 5, "caption": "x"}]}')
    assert "annotation 1 is of image_id 5" in _message(root=str(root), split="train")


def test_bad_arguments(coco):
    root, _ = coco
    with pytest.raises(ValueError, match="year must be one of .* got 2015"):
        CaptionDataset(str(root), "train", year=2015)
    with pytest.raises(ValueError, match="split must be one of .* got 'dev'"):
        CaptionDataset(str(root), "dev")
    with pytest.raises(ValueError, match="format must be one of .* got 'flickr'"):
        CaptionDataset(str(root), "train", format="flickr")
    with pytest.raises(ValueError, match="image_dir='images' needs a split_file"):
        CaptionDataset(str(root), "train", image_dir="images")
