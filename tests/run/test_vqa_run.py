"""VQA end to end: the answer classes, the head's soft-score loss, fit/test on the fixture."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import QUIET
from helpers.vqa import write_vqa

from mmtrain.contracts import Features
from mmtrain.data.transforms.answers import AnswerVocabulary
from mmtrain.heads.vqa import VQAHead
from mmtrain.run import run
from mmtrain.utils.vqa_answers import vqa_accuracy


def _vocab() -> AnswerVocabulary:
    return AnswerVocabulary(top_k=3).fit(["yes", "Yes", "no", "2", "two", "red", "blue"])


def test_answer_vocabulary_keeps_the_top_k_normalised_answers() -> None:
    vocab = _vocab()
    # normalised: "Yes" -> "yes", "two" -> "2"; counts yes 2, 2 2, then blue/no/red 1 (alphabetical)
    assert vocab.vocab == ["<pad>", "<unk>", "2", "yes", "blue"]
    assert vocab.encode("YES").tolist() == [3]
    assert vocab.encode_answers(["two", "red", "yes"]).tolist() == [2, 1, 3]  # red: <unk>
    assert vocab.decode([1, 4]) == "blue"
    restored = AnswerVocabulary()
    restored.load_state_dict(vocab.state_dict())
    assert restored.vocab == vocab.vocab


def test_soft_scores_and_loss_by_hand() -> None:
    vocab = _vocab()
    head = VQAHead(in_dim=4, vocab_size=vocab.vocab_size, tokenizer=vocab, hidden_dim=0)
    # 10 answers: "2" x4, "yes" x2, "blue" x1, <unk> x3 -> scores 1, 2/3, 1/3; pad and unk 0
    target = torch.tensor([[2, 2, 2, 2, 3, 3, 4, 1, 1, 1]])
    scores = head.soft_scores(target)
    assert scores[0].tolist() == pytest.approx([0.0, 0.0, 1.0, 2 / 3, 1 / 3])
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5]])
    # BCE with logits per class: s * softplus(-x) + (1 - s) * softplus(x), summed over classes
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (
        sp(0.0) + sp(1.0) + sp(-2.0) + (2 / 3) * sp(1.0) + (1 / 3) * sp(-1.0)
        + (1 / 3) * sp(-0.5) + (2 / 3) * sp(0.5)
    )  # fmt: skip
    assert head.loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # padding answers (mask False) count for nothing
    padded = torch.tensor([[2, 2, 0]])
    assert head.soft_scores(padded, torch.tensor([[True, True, False]]))[
        0, 2
    ].item() == pytest.approx(2 / 3)


def test_head_never_predicts_pad_or_unk_and_scores_officially() -> None:
    vocab = _vocab()
    head = VQAHead(in_dim=4, vocab_size=vocab.vocab_size, tokenizer=vocab, hidden_dim=0)
    logits = torch.tensor([[9.0, 8.0, 0.0, 1.0, 0.0], [0.0, 9.0, 3.0, 0.0, 0.0]])
    assert head.decode(logits) == ["yes", "2"]
    metrics = head.make_metrics()
    refs = [["yes"] * 2 + ["no"] * 8, ["2"] * 10]  # yes by 2 of 10 humans: 0.6; 2: 1.0
    head.update_metrics(metrics, logits, torch.zeros(2, 1, dtype=torch.long), references=refs)
    assert metrics.compute()["vqa_accuracy"].item() == pytest.approx(0.8)
    feats = Features(torch.randn(2, 3, 4))
    assert len(head.predict(feats)) == 2


def test_fit_and_test_write_the_official_results(compose_config, tmp_path) -> None:
    root = write_vqa(tmp_path / "vqa")
    tiny = [
        "experiment=vqa2",
        f"data.root={root}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.image.size=32",
        "encoder/image=cnn",
        *QUIET,
    ]
    run("fit", compose_config(*tiny, "trainer.max_epochs=1", output_dir=tmp_path / "fit"))
    ckpt = tmp_path / "fit/checkpoints/last.ckpt"
    metrics = run(
        "test",
        compose_config(*tiny, f"ckpt_path={ckpt}", stage="test", output_dir=tmp_path / "test"),
    )
    assert 0.0 <= metrics["test/answer/vqa_accuracy"] <= 1.0
    results = json.loads((tmp_path / "test/predictions/answers_test.json").read_text())
    assert results and all(set(r) == {"question_id", "answer"} for r in results)
    assert all(isinstance(r["question_id"], int) and isinstance(r["answer"], str) for r in results)
    # The official scoring of the file against the annotation file gives the logged accuracy.
    annotations = json.loads((root / "v2_mscoco_val2014_annotations.json").read_text())
    humans = {
        a["question_id"]: [r["answer"] for r in a["answers"]] for a in annotations["annotations"]
    }
    assert {r["question_id"] for r in results} == set(humans)
    scores = [vqa_accuracy(r["answer"], humans[r["question_id"]]) for r in results]
    expected = sum(scores) / len(scores)
    assert metrics["test/answer/vqa_accuracy"] == pytest.approx(expected, rel=1e-5)
