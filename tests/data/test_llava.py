"""LLaVA instruction data (``data=llava``): the reader on a fixture in LLaVA-1.5's layout, its
checks of bad files and entries, ``data.on_error=skip``, and the preset's composition."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.llava import IMAGES, TRAIN, VAL, write_entries, write_llava

from mmtrain.contracts import FEATURE_TOKEN
from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.inputs import ImageInput
from mmtrain.data.llava import BLANK_SIZE, LlavaDataset, check_entry, with_placeholder
from mmtrain.errors import MMTrainError
from mmtrain.utils.config_check import check_config


@pytest.fixture
def llava(tmp_path: Path) -> dict[str, Path]:
    return write_llava(tmp_path / "llava")


def _open(files: dict[str, Path], split: str = "train", **kwargs: Any) -> LlavaDataset:
    kwargs.setdefault("image_folder", str(files["images"]))
    return LlavaDataset(split=split, train=str(files["train"]), val=str(files["val"]), **kwargs)


def _entry(**fields: Any) -> dict[str, Any]:
    """A valid entry with an image, changed by ``fields`` (None removes a key)."""
    entry = {
        "id": "x",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A bus."},
        ],
    }
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


# ---- reading ----------------------------------------------------------------------------------
def test_items_images_and_conversations_as_given(llava):
    train = _open(llava)
    assert len(train) == len(TRAIN) and train.columns == ["chat", "image"]
    items = [train[i] for i in range(len(train))]
    assert [item["id"] for item in items] == [
        "000000033471",
        "i6IyJda_0",
        "2354786",
        "689852649",
        "000000052846",
    ]
    for item, entry in zip(items[:4], TRAIN, strict=False):
        assert item["chat"] == entry["conversations"]  # as given, the placeholders in place
    no_placeholder = TRAIN[4]["conversations"]  # an image but no placeholder: one in front
    assert items[4]["chat"] == [
        {"from": "human", "value": "<image>\nDescribe the image briefly."},
        no_placeholder[1],
    ]
    assert no_placeholder[0]["value"] == "Describe the image briefly."  # the entry unchanged
    for item, entry in zip(items, TRAIN, strict=True):
        assert sorted(item) == ["chat", "id", "image"]
        assert item["image"].mode == "RGB"  # 000000052846 is a grayscale JPEG
        if "image" in entry:
            _, width, height = IMAGES[entry["image"]]
            assert item["image"].size == (width, height)
    blank = items[1]["image"]  # the text-only entry: a small black image
    assert blank.size == BLANK_SIZE and not np.asarray(blank).any()
    items[0]["chat"][0]["value"] = "changed"  # an item's turns are its own
    assert train[0]["chat"][0]["value"].startswith("<image>")


def test_values_read_no_image(llava):
    train = _open(llava)
    images = llava["images"]
    assert train.values("id")[:3] == ["000000033471", "i6IyJda_0", "2354786"]
    assert train.values("image")[:2] == [str(images / TRAIN[0]["image"]), None]
    assert train.values("chat") == [train[i]["chat"] for i in range(len(train))]
    assert train.base == images  # where the media paths start (data.bucket_by)
    with pytest.raises(
        MMTrainError, match=r"no column 'caption'; the data has \['chat', 'image'\]"
    ):
        train.values("caption")


def test_jsonl_gives_the_same_items(tmp_path, llava):
    lines = write_llava(tmp_path / "lines", jsonl=True)
    assert lines["train"].suffix == ".jsonl"
    a, b = _open(llava), _open(lines)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["id"] == y["id"] and x["chat"] == y["chat"]
        assert np.array_equal(np.asarray(x["image"]), np.asarray(y["image"]))
    assert b.where(2) == f"{lines['train']}:id=2354786 (line 3)"
    assert a.where(2) == f"{llava['train']}:id=2354786 (entry [2])"


def test_columns_and_splits(llava, caplog):
    chat_only = _open(llava, columns=["chat"])
    assert sorted(chat_only[0]) == ["chat", "id"]
    with caplog.at_level(logging.WARNING, logger="mmtrain.data.llava"):
        test = _open(llava, split="test")  # data.test unset: the val file
    assert "the test split is data.val" in caplog.text
    assert test.values("id") == ["000000000139", "val_text"]
    assert test[1]["chat"][0] == {"from": "system", "value": "You are a helpful assistant."}
    with pytest.raises(MMTrainError, match=r"no column 'text'"):
        _open(llava, columns=["text"])[0]
    with pytest.raises(MMTrainError, match=r"data\.train is not set: .*data\.train=<file\.json"):
        LlavaDataset(split="train", val=str(llava["val"]))
    with pytest.raises(ValueError, match="split must be one of"):
        LlavaDataset(split="dev", train=str(llava["train"]))
    with pytest.raises(ValueError, match="not both"):
        LlavaDataset(path=llava["train"], train=str(llava["train"]))


def test_image_paths_follow_image_folder_root_or_the_json_folder(llava, tmp_path, monkeypatch):
    # image_folder null: relative to the JSON file's folder
    beside = tmp_path / "beside"
    write_entries(beside / "train.json", TRAIN)
    for name in IMAGES:
        (beside / name).parent.mkdir(parents=True, exist_ok=True)
        (beside / name).write_bytes((llava["images"] / name).read_bytes())
    ds = LlavaDataset(path=beside / "train.json")
    assert ds.base == beside and ds[0]["image"].size == (24, 16)
    # root: relative split files and image folder start there
    ds = LlavaDataset(
        split="train", train="llava_train.json", root=str(llava["root"]), image_folder="images"
    )
    assert ds.path == llava["train"] and ds.base == llava["images"]
    # no root: the working directory
    monkeypatch.chdir(llava["root"])
    ds = LlavaDataset(path="llava_train.json", image_folder="images")
    assert ds[2]["image"].size == (18, 12)
    with pytest.raises(MMTrainError, match=r"data\.dataset\.image_folder=nowhere: not a folder"):
        LlavaDataset(path="llava_train.json", image_folder="nowhere")
    with pytest.raises(MMTrainError, match=r"data\.val: LLaVA JSON file not found: .*lost\.json"):
        LlavaDataset(split="val", val="lost.json")


# ---- bad files ----------------------------------------------------------------------------------
def test_invalid_json_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"id": "a", "conversations": []},\n {"id": "b" "x": 1}\n]')
    with pytest.raises(MMTrainError, match=rf"{bad}:3:13: not valid JSON: Expecting ','"):
        LlavaDataset(path=bad)
    lines = tmp_path / "bad.jsonl"
    lines.write_text(json.dumps(_entry()) + "\n\n{oops\n")
    with pytest.raises(MMTrainError, match=rf"{lines}:3:2: not valid JSON"):
        LlavaDataset(path=lines, image_folder=str(tmp_path))
    jsonl_as_json = tmp_path / "lines.json"
    jsonl_as_json.write_text(json.dumps(_entry()) + "\n" + json.dumps(_entry()) + "\n")
    with pytest.raises(MMTrainError, match=r":2:1: not valid JSON: Extra data \(one object a line"):
        LlavaDataset(path=jsonl_as_json)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"data": []}, r"expected a JSON list of entries .*got a dict at the top level"),
        ([_entry(), ["not", "an", "entry"]], r"entry \[1\] is not an object: .*got list"),
        ([], r"the file has no entries"),
    ],
)
def test_not_a_list_of_objects(tmp_path, content, message):
    file = tmp_path / "data.json"
    file.write_text(json.dumps(content))
    with pytest.raises(MMTrainError, match=message):
        LlavaDataset(path=file)


# ---- bad entries --------------------------------------------------------------------------------
BAD_ENTRIES = [
    (_entry(conversations=None), r"no 'conversations' \(the entry has \['id', 'image'\]\)"),
    (_entry(conversations="hi"), r"'conversations' must be a list of turns, got str"),
    (
        _entry(conversations=[{"from": "human", "value": "<image>\nWhat?"}]),
        r"no assistant \('gpt'\) turn",
    ),
    (
        _entry(conversations=[{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]),
        r"conversations\[1\] is not a turn .*'bot'",
    ),
    (
        _entry(conversations=[{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}]),
        r"conversations\[1\] is not a turn",
    ),
    (
        _entry(
            conversations=[
                {"from": "human", "value": "<image>\nA?"},
                {"from": "gpt", "value": "B"},
                {"from": "human", "value": "<image>\nC?"},
                {"from": "gpt", "value": "D"},
            ]
        ),
        r"2 <image> placeholders \(in conversations\[0, 2\]\) for the entry's one image",
    ),
    (_entry(image=None), r"<image> in conversations\[0\], but the entry has no 'image'"),
    (
        _entry(
            conversations=[
                {"from": "human", "value": "What?"},
                {"from": "gpt", "value": "<image> A bus."},
            ]
        ),
        r"conversations\[1\] \(gpt\) has the <image> placeholder; it belongs in a user",
    ),
    (_entry(image=["a.jpg", "b.jpg"]), r"'image' is a list .*multi-image entries"),
    (_entry(image=""), r"'image' must be a file path"),
]


@pytest.mark.parametrize(("entry", "problem"), BAD_ENTRIES)
def test_bad_entry_fails_when_the_split_opens(tmp_path, entry, problem):
    file = write_entries(tmp_path / "data.json", [_entry(id="ok"), {**entry, "id": "bad1"}])
    with pytest.raises(
        MMTrainError, match=rf"{file}: 1 of 2 entries .*id=bad1 \(entry \[1\]\): .*" + problem
    ):
        LlavaDataset(path=file)


def test_valid_variants():
    placeholder_last = [
        {"from": "human", "value": "What? <image>"},
        {"from": "gpt", "value": "A bus."},
    ]
    assert check_entry(_entry(conversations=placeholder_last)) is None
    no_placeholder = [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A bus."}]
    assert check_entry(_entry(conversations=no_placeholder)) is None  # the target adds it
    assert check_entry(_entry(image=None, conversations=no_placeholder)) is None  # text only
    roles = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>"},
        {"role": "assistant", "content": "A bus."},
    ]
    assert check_entry(_entry(conversations=roles)) is None


def test_with_placeholder_goes_before_the_first_question():
    roles = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is it?"},
        {"role": "assistant", "content": "A bus."},
        {"role": "user", "content": "Colour?"},
    ]
    assert with_placeholder(roles) == [
        roles[0],
        {"role": "user", "content": "<image>\nWhat is it?"},
        *roles[2:],
    ]
    assert roles[1]["content"] == "What is it?"  # a copy
    placed = [{"from": "human", "value": "Colour? <image>"}, {"from": "gpt", "value": "Red"}]
    assert with_placeholder(placed) is placed


def test_bad_entries_are_listed_with_their_count(tmp_path):
    entries = [_entry(id=f"e{i}", conversations=None) for i in range(7)]
    file = write_entries(tmp_path / "many.jsonl", [_entry(id="ok"), *entries])
    with pytest.raises(MMTrainError) as err:
        LlavaDataset(path=file)
    message = str(err.value)
    assert "7 of 8 entries are not valid LLaVA conversations (the first 5 shown)" in message
    assert "id=e0 (line 2)" in message and "id=e4 (line 6)" in message
    assert "id=e5" not in message


def test_missing_images_fail_when_the_split_opens(llava):
    entries = [dict(e) for e in TRAIN]
    for k in (0, 3):
        entries[k]["image"] = f"coco/train2017/lost_{k}.jpg"
    file = write_entries(llava["root"] / "lost.json", entries)
    with pytest.raises(MMTrainError) as err:
        LlavaDataset(path=file, image_folder=str(llava["images"]))
    message = str(err.value)
    assert message.startswith(f"{file}: 2 of 4 image files do not exist under {llava['images']}")
    assert "id=000000033471 (entry [0]): coco/train2017/lost_0.jpg" in message
    assert "id=689852649 (entry [3]): coco/train2017/lost_3.jpg" in message
    assert "data.dataset.image_folder=" in message and "data.on_error=skip" in message
    # the usual mistake: no image folder, so the paths start at the JSON's folder
    with pytest.raises(MMTrainError, match=r"none of the 4 image files exist under .*llava:"):
        LlavaDataset(path=llava["train"])
    # not checked when images are not loaded, nor with validate=false (they fail when loaded)
    assert len(LlavaDataset(path=llava["train"], columns=["chat"])) == 5
    lazy = LlavaDataset(path=file, image_folder=str(llava["images"]), validate=False)
    assert lazy[1]["id"] == "i6IyJda_0"
    with pytest.raises(
        MMTrainError,
        match=rf"{file}:id=000000033471 \(entry \[0\]\): image file "
        "not found: .*lost_0.jpg",
    ):
        lazy[0]


def test_unreadable_image_and_lazy_bad_entry_fail_when_loaded(llava):
    (llava["images"] / "gqa/images/2354786.jpg").write_text("<!DOCTYPE html><html></html>")
    train = _open(llava)  # the file exists: opening does not decode it
    with pytest.raises(
        MMTrainError,
        match=rf"{llava['train']}:id=2354786 \(entry \[2\]\): "
        "cannot decode image .*markup",
    ):
        train[2]
    file = write_entries(llava["root"] / "bad.json", [_entry(), _entry(id="b", image=None)])
    lazy = LlavaDataset(path=file, image_folder=str(llava["images"]), validate=False)
    assert lazy[0]["id"] == "x"
    with pytest.raises(MMTrainError, match=rf"{file}:id=b \(entry \[1\]\): <image> in conv"):
        lazy[1]


def test_skip_drops_and_counts_bad_samples(llava, caplog):
    entries = [dict(e) for e in TRAIN]
    entries[2]["image"] = "gqa/images/lost.jpg"
    file = write_entries(llava["root"] / "skip.json", entries)
    dataset = functools.partial(LlavaDataset, image_folder=str(llava["images"]), validate=False)
    dm = MultimodalDataModule(
        dataset=dataset,
        train=str(file),
        val=str(llava["val"]),
        image=ImageInput(size=16),
        modalities=["image"],
        batch_size=2,
        on_error="skip",
        max_skipped=1,
    )
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="mmtrain.data.datamodule"):
        ids = [i for batch in dm._loader("train") for i in batch["id"]]
    assert ids == ["000000033471", "i6IyJda_0", "689852649", "000000052846"]
    assert dm.skipped == {"train": 1}
    assert f"{file}:id=2354786 (entry [2]): image file not found" in caplog.text


# ---- the preset ----------------------------------------------------------------------------
def test_preset_composes_and_opens_the_splits(compose_config, llava):
    from hydra.utils import instantiate

    cfg = compose_config(
        "data=llava",
        f"data.train={llava['train']}",
        f"data.val={llava['val']}",
        f"data.dataset.image_folder={llava['images']}",
    )
    check_config(cfg)  # every key of the preset is its class's (LlavaDataset, ChatTarget...)
    data = cfg.data
    assert data.dataset._target_ == "mmtrain.data.llava.LlavaDataset" and data.test is None
    assert data.targets.chat._target_ == "mmtrain.data.targets.ChatTarget"
    assert data.targets.chat.tokenizer._target_ == "mmtrain.data.transforms.LMTokenizer"
    assert data.image.size == 224 and not data.image.augment and data.batch_size == 16
    keys = {
        "num_workers",
        "on_error",
        "max_skipped",
        "bucket_by",
        "bucket_pool",
        "cache_features",
        "cache_dir",
        "cache_dtype",
    }
    assert keys <= set(data)
    factory = instantiate(data.dataset)
    for split, n in (("train", 5), ("val", 2), ("test", 2)):
        assert len(factory(split=split, train=data.train, val=data.val)) == n


def test_preset_batches_put_features_where_the_image_is(compose_config, llava):
    """data=llava's data module (ChatTarget, a word-level LMTokenizer trained on the split):
    one feature position per sample with an image, none for the text-only ones."""
    from hydra.utils import instantiate

    cfg = compose_config(
        "data=llava",
        f"data.train={llava['train']}",
        f"data.val={llava['val']}",
        f"data.dataset.image_folder={llava['images']}",
        "data.num_workers=0",
        "data.image.size=16",
        "data.batch_size=5",
        "data.bucket_by=chat",
    )
    dm = instantiate(cfg.data, modalities=["image"], tasks=["chat"])
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        images = {str(e["id"]): "image" in e for e in (*TRAIN, *VAL)}
        features = (batch["chat"] == FEATURE_TOKEN).sum(1).tolist()
        assert features == [int(images[i]) for i in batch["id"]]
        assert batch["image"].shape[1:] == (3, 16, 16)
        assert batch["chat_labels"].shape == batch["chat"].shape
