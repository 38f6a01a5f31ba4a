"""VQA v2: the reader on a fixture in the official layout, and the official VQA accuracy.

The accuracy numbers are computed by hand in the comments from the official definition
(GT-Vision-Lab/VQA vqaEval.py): for each of the n human answers, the other n - 1 are compared
with the prediction and score min(#matches / 3, 1); the accuracy is the mean of the n scores.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.vqa import QUESTIONS, write_vqa

from mmtrain.data.vqa import VQADataset
from mmtrain.errors import MMTrainError
from mmtrain.metrics.vqa import VQAAccuracy
from mmtrain.utils.vqa_answers import (
    answer_vocabulary,
    normalize_answer,
    soft_scores,
    vqa_accuracy,
)


# subset -> image id -> JPEG mode (COCO has grayscale images).
@pytest.fixture
def vqa(tmp_path: Path) -> Path:
    return write_vqa(tmp_path / "vqa")


# ---- the reader ----------------------------------------------------------------------------------
def test_train_items(vqa):
    train = VQADataset(str(vqa), "train")
    assert train.columns == ["answer", "image", "text"] and len(train) == 4
    items = [train[k] for k in range(len(train))]
    assert [item["id"] for item in items] == ["9000", "9001", "25000", "25001"]
    for item in items:
        text, answers, _ = QUESTIONS["train2014"][int(item["id"])]
        assert item["text"] == text and item["answer_references"] == answers  # raw, by answer_id
        assert item["image"].mode == "RGB"  # image 25 is a grayscale JPEG
        assert item["image"].size == (20, 12 + (int(item["id"]) // 1000) % 4)
    assert [item["answer"] for item in items] == ["2", "yes", "stop", "frisbee"]  # normalised


def test_val_and_test_read_val2014_by_default(vqa):
    for split in ("val", "test"):
        ds = VQADataset(str(vqa), split)
        assert [ds[k]["id"] for k in range(2)] == ["42000", "42001"]
        assert [ds[k]["answer"] for k in range(2)] == ["red", "1:30"]
        assert ds[0]["answer_references"][4] == "Red."
    assert VQADataset(str(vqa), "val", val="train2014").values("id")[0] == "9000"


def test_test_dev_has_no_answers(vqa):
    ds = VQADataset(str(vqa), "test", test="test-dev2015")  # images in test2015/
    assert ds.columns == ["image", "text"] and len(ds) == 2
    assert ds[1] == {"id": "77001", "image": ds[1]["image"], "text": "Is the sky blue?"}
    assert ds.values("image") == [str(vqa / "test2015" / "COCO_test2015_000000000077.jpg")] * 2
    with_answer = VQADataset(str(vqa), "test", columns=["image", "answer"], test="test-dev2015")
    with pytest.raises(MMTrainError, match=r"question_id=77000: no column 'answer'.*\['image'"):
        with_answer[0]
    with pytest.raises(MMTrainError, match=r"no column 'answer_references'"):
        ds.values("answer_references")


def test_images_folder_under_images(vqa):
    (vqa / "images").mkdir()
    shutil.move(vqa / "train2014", vqa / "images" / "train2014")
    train = VQADataset(str(vqa), "train", columns=["image"])
    assert train.values("image")[0] == str(
        vqa / "images" / "train2014" / "COCO_train2014_000000000009.jpg"
    )
    assert train[3]["image"].size == (20, 13)


def test_columns_values_and_where(vqa):
    assert set(VQADataset(str(vqa), "train", columns=["text"])[0]) == {"id", "text"}
    answer_only = VQADataset(str(vqa), "train", columns=["answer"])[0]
    assert set(answer_only) == {"id", "answer", "answer_references"}
    refs_only = VQADataset(str(vqa), "train", columns=["answer_references"])[0]
    assert set(refs_only) == {"id", "answer_references"}
    train = VQADataset(str(vqa), "train", columns=[])
    assert train[2] == {"id": "25000"}
    assert train.values("text")[1] == "Is it raining?"
    assert train.values("answer") == ["2", "yes", "stop", "frisbee"]
    assert train.values("answer_references")[1] == ["yes"] * 10
    assert (
        train.where(2)
        == f"{vqa / 'v2_OpenEnded_mscoco_train2014_questions.json'}:question_id=25000"
    )
    with pytest.raises(MMTrainError, match=r"no column 'label'; the data has \['answer'"):
        train.values("label")


# ---- reader errors: each names the file or folder expected, and how to set it ------------------
def _message(**kwargs: Any) -> str:
    with pytest.raises(MMTrainError) as info:
        VQADataset(**kwargs)
    return str(info.value)


def test_missing_root_and_files(vqa, tmp_path):
    message = _message(root=str(tmp_path / "nowhere"), split="train")
    assert str(tmp_path / "nowhere") in message and "data.root=" in message
    (vqa / "v2_OpenEnded_mscoco_val2014_questions.json").unlink()
    message = _message(root=str(vqa), split="val")
    assert message.startswith(
        f"VQA v2 questions not found: expected {vqa / 'v2_OpenEnded_mscoco_val2014_questions.json'}"
    )
    assert "data.root=<folder with v2_OpenEnded_mscoco_val2014_questions.json and val2014/>" in (
        message
    )
    (vqa / "v2_mscoco_train2014_annotations.json").unlink()
    message = _message(root=str(vqa), split="train")
    assert str(vqa / "v2_mscoco_train2014_annotations.json") in message
    assert "only the test subsets have none" in message


def test_missing_image_folder(vqa):
    shutil.rmtree(vqa / "test2015")
    message = _message(root=str(vqa), split="test", test="test-dev2015")
    assert str(vqa / "test2015") in message and str(vqa / "images" / "test2015") in message
    assert "v2_OpenEnded_mscoco_test-dev2015_questions.json" in message


def test_missing_image_file_is_reported_when_loaded(vqa):
    gone = vqa / "train2014" / "COCO_train2014_000000000025.jpg"
    gone.unlink()
    train = VQADataset(str(vqa), "train")  # opening does not read the images
    assert train[1]["answer"] == "yes"
    with pytest.raises(MMTrainError) as info:
        train[2]
    message = str(info.value)
    assert message.startswith(f"{train.source}:question_id=25000: image file not found: ")
    assert str(gone) in message


def test_bad_files(vqa):
    questions = vqa / "v2_OpenEnded_mscoco_val2014_questions.json"
    annotations = vqa / "v2_mscoco_val2014_annotations.json"
    annotations.write_text('{"annotations": [')
    assert _message(root=str(vqa), split="val").startswith(f"{annotations}: not valid JSON")
    annotations.write_text('{"annotations": [{"question_id": 42000, "answers": []}]}')
    message = _message(root=str(vqa), split="val")
    assert message.startswith(f"{annotations}: not the official VQA annotations JSON")
    assert "'multiple_choice_answer'" in message
    annotations.write_text(
        '{"annotations": [{"question_id": 42000, "answers": [], "multiple_choice_answer": "x"}]}'
    )
    assert "no annotation for question_id=42001" in _message(root=str(vqa), split="val")
    questions.write_text('{"questions": [{"question_id": 1}]}')
    message = _message(root=str(vqa), split="val")
    assert message.startswith(f"{questions}: not the official VQA questions JSON")


def test_bad_arguments(vqa):
    with pytest.raises(ValueError, match="split must be one of .* got 'dev'"):
        VQADataset(str(vqa), "dev")
    with pytest.raises(ValueError, match="subset of split 'train' must be a name, got ''"):
        VQADataset(str(vqa), "train", train="")


# ---- normalisation: examples from the official tables and rules ------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("two", "2"),  # manualMap: number words up to ten
        ("Ten", "10"),
        ("none", "0"),  # manualMap maps "none" to "0" too
        ("eleven", "eleven"),
        ("the dog", "dog"),  # articles dropped
        ("a man and an apple", "man and apple"),
        ("dont", "don't"),  # contractions
        ("Isnt", "isn't"),
        ("twas", "'twas"),
        ("Im", "im"),  # the table's key "Im" is capitalised, so never matches lowercased words
        ("somebody'd", "somebodyd"),  # the official table's own entry
        ("1,000", "1000"),  # comma between digits: punctuation deleted
        ("10,000 people!", "10000 people"),  # ... everywhere in the answer
        ("1.5", "1.5"),  # a period before a digit stays
        ("yes.", "yes"),  # other periods go
        ("Mr. T", "mr t"),
        ("t-shirt", "t shirt"),  # a mark not next to a space becomes a space
        ("red, white", "red white"),  # a mark next to a space is deleted
        ("red,white", "red white"),
        ("black & white", "black & white"),  # "&" is not in the list
        ("what's", "what's"),  # nor is the apostrophe
        ("10:30", "10:30"),  # nor the colon
        ("(left)", "left"),
        ("  Two\tdogs\n", "2 dogs"),  # tabs and newlines are spaces; whitespace collapsed
        ("the", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_removes_at_most_32_periods():
    # vqaEval.py passes re.UNICODE (32) as periodStrip.sub's count argument.
    assert normalize_answer("x" + "." * 40) == "x" + "." * 8


# ---- vqa_accuracy, pinned against hand-computed values --------------------------------------
YES8_NO2 = ["yes"] * 8 + ["no"] * 2


def test_accuracy_of_an_answer_given_by_k_of_10_humans():
    others = [f"other{k}" for k in range(10)]
    # 0 humans: every leave-one-out subset has 0 matches -> 0.
    assert vqa_accuracy("cat", others) == 0.0
    # 1 human: leaving it out (1 subset) -> 0 matches; the 9 other subsets -> 1 match -> 1/3.
    # (1 * 0 + 9 * 1/3) / 10 = 0.3
    assert vqa_accuracy("cat", ["cat"] + others[:9]) == pytest.approx(0.3)
    # 2 humans ("no" in 8 yes + 2 no): leaving out a "yes" (8 subsets) -> 2 matches -> 2/3;
    # leaving out a "no" (2 subsets) -> 1 match -> 1/3. (8 * 2/3 + 2 * 1/3) / 10 = 0.6
    assert vqa_accuracy("no", YES8_NO2) == pytest.approx(0.6)
    # 3 humans: leaving out a match (3 subsets) -> 2 -> 2/3; a non-match (7) -> 3 -> 1.
    # (3 * 2/3 + 7 * 1) / 10 = 0.9: three humans give 0.9, not 1.
    assert vqa_accuracy("cat", ["cat"] * 3 + others[:7]) == pytest.approx(0.9)
    # 4 humans: leaving out a match (4) -> 3 -> 1; a non-match (6) -> 4 -> 1. -> 1.0
    assert vqa_accuracy("cat", ["cat"] * 4 + others[:6]) == 1.0
    # 8 humans ("yes"): leaving out a "yes" -> 7 matches -> 1; a "no" -> 8 -> 1. -> 1.0
    assert vqa_accuracy("yes", YES8_NO2) == 1.0


def test_accuracy_with_fewer_than_10_answers():
    # 3 answers cat, cat, dog; "cat": leaving out a cat (2 subsets) -> 1 match -> 1/3;
    # leaving out dog -> 2 matches -> 2/3. (2 * 1/3 + 2/3) / 3 = 4/9
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx(4 / 9)
    # "dog": leaving out a cat (2) -> 1 match -> 1/3; leaving out dog -> 0. (2/3) / 3 = 2/9
    assert vqa_accuracy("dog", ["cat", "cat", "dog"]) == pytest.approx(2 / 9)
    # One answer: leaving it out leaves nothing to match -> 0.
    assert vqa_accuracy("cat", ["cat"]) == 0.0


def test_accuracy_normalises_only_when_the_humans_disagree():
    # Humans disagree: all answers and the prediction are normalised. "2" x5 + "two" x2 -> 7
    # humans say "2", 3 say "3".
    answers = ["2"] * 5 + ["two"] * 2 + ["3"] * 3
    assert vqa_accuracy("Two", answers) == 1.0  # 7 humans -> 1
    assert vqa_accuracy("3.", answers) == pytest.approx(0.9)  # 3 humans -> 0.9 (above)
    assert vqa_accuracy("the 3", answers) == pytest.approx(0.9)
    # Humans agree: nothing but whitespace is normalised (the official rule, kept for answers
    # read off the image), so "Yes" matches none of ten "yes".
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("stop", ["STOP"] * 10) == 0.0


def test_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match=r"non-empty list of strings, got \[\]"):
        vqa_accuracy("yes", [])
    with pytest.raises(ValueError, match="non-empty list of strings, got 'yes'"):
        vqa_accuracy("yes", "yes")
    with pytest.raises(ValueError, match="prediction must be a string, got 3"):
        vqa_accuracy(3, ["3"])  # type: ignore[arg-type]


def test_metric_over_batches():
    metric = VQAAccuracy()
    metric.update(["no", "yes"], [YES8_NO2, YES8_NO2])  # 0.6, 1.0 (above)
    metric.update(["cat"], [["cat", "cat", "dog"]])  # 4/9 (above)
    result = metric.compute()
    assert result.shape == () and result.dtype == torch.float32
    assert result.item() == pytest.approx((0.6 + 1.0 + 4 / 9) / 3)
    assert metric.count.item() == 3
    metric.reset()
    metric.update(["Two"], [["2"] * 5 + ["two"] * 2 + ["3"] * 3])
    assert metric.compute().item() == 1.0
    with pytest.raises(ValueError, match="one entry per answer list"):
        metric.update(["yes", "no"], [YES8_NO2])
    with pytest.raises(ValueError, match="one entry per answer list"):
        metric.update("yes", [YES8_NO2])


# ---- answer classes and soft targets --------------------------------------------------------
def test_answer_vocabulary():
    lists = [
        ["Two", "2", "two dogs", "the"],  # "the" normalises to "" and is left out
        ["yes", "Yes", "no"],
        ["2", "no", "b"],
    ]
    # counts after normalisation: "2": 3, "no": 2, "yes": 2, "2 dogs": 1, "b": 1
    assert answer_vocabulary(lists) == ["2", "no", "yes", "2 dogs", "b"]  # ties by string
    assert answer_vocabulary(lists, top_k=2) == ["2", "no"]
    assert answer_vocabulary(iter(lists), top_k=3) == ["2", "no", "yes"]  # any iterable
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        answer_vocabulary(lists, top_k=0)
    with pytest.raises(ValueError, match="list of strings, got 'yes'"):
        answer_vocabulary(["yes"])


def test_soft_scores():
    vocab = answer_vocabulary([["2", "3", "frisbee"]])
    index = {answer: k for k, answer in enumerate(vocab)}
    assert vocab == ["2", "3", "frisbee"]
    # "2" x5 + "two" x2 -> 7 -> min(7/3, 1) = 1; "3" x2 -> 2/3; "4" not in the vocabulary.
    answers = ["2"] * 5 + ["two"] * 2 + ["3", "3."] + ["4"]
    assert soft_scores(answers, index) == pytest.approx({0: 1.0, 1: 2 / 3})
    # One human: 1/3 (the exact leave-one-out average would be 0.3, see above).
    assert soft_scores(["a frisbee"] + ["disc"] * 9, index) == pytest.approx({2: 1 / 3})
    assert soft_scores(["disc"] * 10, index) == {}
    with pytest.raises(ValueError, match="list of strings, got 'yes'"):
        soft_scores("yes", index)  # type: ignore[arg-type]


def test_fixture_answers_build_a_vocabulary(vqa):
    train = VQADataset(str(vqa), "train", columns=["answer"])
    vocab = answer_vocabulary(train.values("answer_references"))
    # after normalisation: "yes" 10 times, "2", "frisbee" and "stop" 9 times each
    assert vocab[:4] == ["yes", "2", "frisbee", "stop"]
    index = {answer: k for k, answer in enumerate(vocab)}
    scores = soft_scores(train[0]["answer_references"], index)
    assert scores == pytest.approx({index["2"]: 1.0, index["3"]: 1 / 3})
