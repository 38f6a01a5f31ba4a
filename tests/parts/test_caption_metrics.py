"""Captioning metrics pinned against pycocoevalcap's scorers and CoreNLP 3.4.1's tokenizer.

The scorers are compared with pycocoevalcap's pure-Python Bleu, Rouge and Cider on the same
pre-tokenised strings (its PTBTokenizer needs Java, so it is not used here). The tokenizer
expectations are the output of ``java -cp stanford-corenlp-3.4.1.jar
edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` (the jar pycocoevalcap
ships) after pycocoevalcap's punctuation removal, pasted here so that no test needs Java.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torchmetrics import MetricCollection

from mmtrain.metrics import caption
from mmtrain.metrics.caption import (
    SCORE_NAMES,
    CaptionMetrics,
    bleu,
    caption_scores,
    cider_d,
    coco_tokenize,
    rouge_l,
)

# ---- data --------------------------------------------------------------------------------------
# Six images, 3-5 references each (tokenised): an exact match with one reference, a hypothesis
# equal to all references, a short one, an empty one, repeated words, one longer than every
# reference.
HAND_REFS = {
    "exact": [
        "a man riding a wave on top of a surfboard",
        "a surfer riding a large wave",
        "a person on a surfboard in the ocean",
    ],
    "all_same": ["two dogs playing in the grass"] * 4,
    "short": [
        "a cat sitting on a laptop keyboard",
        "a cat lying on a computer",
        "an orange cat on a laptop",
        "a cat that is sitting on a keyboard",
    ],
    "empty": [
        "a plate of food with broccoli",
        "broccoli and rice on a plate",
        "a dinner plate with vegetables",
    ],
    "repeated": [
        "a red bus on the street",
        "a double decker bus driving down a street",
        "a bus parked near a sidewalk",
        "a red double decker bus",
        "the bus is red",
    ],
    "long": [
        "a kitchen with a stove",
        "a small kitchen with white cabinets",
        "a kitchen area with a refrigerator and a stove",
    ],
}
HAND_HYPS = {
    "exact": "a man riding a wave on top of a surfboard",
    "all_same": "two dogs playing in the grass",
    "short": "a cat",
    "empty": "",
    "repeated": "a bus bus bus on on the the street street",
    "long": "a kitchen with a stove and a refrigerator and white cabinets and a sink and a window",
}
# pycocoevalcap 1.2 on the set above (checked against it again in test_pinned_values_...).
HAND_SCORES = {
    "bleu1": 0.733333,
    "bleu2": 0.703562,
    "bleu3": 0.609377,
    "bleu4": 0.544025,
    "rougeL": 0.623979,
    "cider": 2.802155,
}

VOCAB = [
    "a",
    "the",
    "an",
    "man",
    "woman",
    "dog",
    "cat",
    "on",
    "in",
    "with",
    "of",
    "red",
    "blue",
    "sitting",
    "riding",
    "table",
    "street",
    "two",
]


def _random_set(n_images: int, seed: int) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Captions drawn from a small vocabulary; some hypotheses copy a reference or are empty."""
    rng = random.Random(seed)
    refs = {
        i: [" ".join(rng.choices(VOCAB, k=rng.randint(3, 12))) for _ in range(rng.randint(3, 5))]
        for i in range(n_images)
    }
    hyps = {}
    for i in range(n_images):
        roll = rng.random()
        if roll < 0.2:
            hyps[i] = rng.choice(refs[i])
        elif roll < 0.25:
            hyps[i] = ""
        else:
            hyps[i] = " ".join(rng.choices(VOCAB, k=rng.randint(1, 12)))
    return hyps, refs


def _pycocoevalcap_scores(hyps: dict, refs: dict) -> dict[str, float]:
    """The reference implementation, fed the same tokenised strings."""
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    res = {key: [hyp] for key, hyp in hyps.items()}
    bleus, _ = Bleu(4).compute_score(refs, res, verbose=0)
    rouge, _ = Rouge().compute_score(refs, res)
    cider, _ = Cider().compute_score(refs, res)
    return dict(zip(SCORE_NAMES, [*bleus, float(rouge), float(cider)]))


def _ours(hyps: dict, refs: dict) -> dict[str, float]:
    scores = dict(zip(SCORE_NAMES[:4], bleu(hyps, refs)))
    return {**scores, "rougeL": rouge_l(hyps, refs), "cider": cider_d(hyps, refs)}


# ---- scores against pycocoevalcap --------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["hand_made", "random_100", "random_3"])
def test_scores_match_pycocoevalcap(dataset):
    if dataset == "hand_made":
        hyps, refs = HAND_HYPS, HAND_REFS
    else:
        hyps, refs = _random_set(int(dataset.split("_")[1]), seed=0)
    expected = _pycocoevalcap_scores(hyps, refs)
    assert _ours(hyps, refs) == pytest.approx(expected, abs=1e-6)
    assert caption_scores(hyps, refs, tokenize=False) == pytest.approx(expected, abs=1e-6)


def test_pinned_values_of_the_hand_made_set():
    # pinned without pycocoevalcap; test_scores_match_pycocoevalcap checks the same set against it
    assert caption_scores(HAND_HYPS, HAND_REFS, tokenize=False) == pytest.approx(
        HAND_SCORES, abs=1e-6
    )


def test_tokenize_true_scores_the_coco_tokens():
    raw_hyps = {1: "A man's hat, on a table.", 2: "Two DOGS playing!\n"}
    raw_refs = {1: ["A man's hat is on the table.", "A hat."], 2: ["Two dogs play.", "Dogs!"]}
    hyps = {1: "a man 's hat on a table", 2: "two dogs playing"}
    refs = {1: ["a man 's hat is on the table", "a hat"], 2: ["two dogs play", "dogs"]}
    assert caption_scores(raw_hyps, raw_refs) == caption_scores(hyps, refs, tokenize=False)


# ---- scores in closed form ---------------------------------------------------------------------
def test_bleu4_of_a_hypothesis_equal_to_all_references_is_one():
    hyps = {0: "a man riding a wave", 1: "two dogs"}
    refs = {0: ["a man riding a wave"] * 3, 1: ["two dogs"] * 5}
    assert bleu(hyps, refs) == pytest.approx([1.0, 1.0, 1.0, 1.0], abs=1e-6)
    # BLEU-3/4 have no trigram in "two dogs", but the corpus-level counts come from image 0


def test_bleu_clips_counts_and_smooths():
    scores = bleu({0: "the the the the"}, {0: ["the cat"]})
    assert scores[0] == pytest.approx(1 / 4, abs=1e-9)  # "the" counted once, no brevity penalty
    assert 0 < scores[1] < 1e-6  # no bigram matches: (0 + 1e-15) / (3 + 1e-9), not exactly 0


def test_bleu_uses_the_closest_reference_length():
    # length 2 against 5 and 3: closest is 3, brevity penalty exp(1 - 3 / 2)
    assert bleu({0: "a cat"}, {0: ["a cat on a mat", "a cat sat"]})[0] == pytest.approx(
        math.exp(-0.5), abs=1e-6
    )
    # a tie (1 and 3 are both 1 away) takes the shorter: no brevity penalty
    assert bleu({0: "a cat"}, {0: ["a", "a cat sat"]})[0] == pytest.approx(1.0, abs=1e-6)


def test_rouge_l_is_the_lcs_f_score():
    # LCS("a dog on a mat", "a dog sat on the mat") = "a dog on mat": P = 4/5, R = 4/6
    p, r, beta = 4 / 5, 4 / 6, 1.2
    expected = (1 + beta**2) * p * r / (r + beta**2 * p)
    assert rouge_l({0: "a dog on a mat"}, {0: ["a dog sat on the mat"]}) == pytest.approx(expected)


def test_rouge_l_takes_max_precision_and_max_recall_separately():
    # recall 1 from the short reference, precision 1 from the long one: F = 1, as pycocoevalcap
    assert rouge_l({0: "a b c d"}, {0: ["a b", "a b c d e f g h"]}) == pytest.approx(1.0)


def test_cider_d_of_perfect_captions_is_ten_and_of_a_single_image_zero():
    hyps = {0: "a b c d", 1: "e f g h"}
    refs = {0: ["a b c d"] * 3, 1: ["e f g h"] * 2}
    assert cider_d(hyps, refs) == pytest.approx(10.0)
    # one image: every n-gram is in every image's references, idf = log(1) - log(1) = 0
    assert cider_d({0: "a b c d"}, {0: ["a b c d"]}) == 0.0


@pytest.mark.parametrize(
    ("hyps", "refs", "match"),
    [
        ({1: "a"}, {2: ["a"]}, r"same keys; only in hypotheses: \[1\], only in references: \[2\]"),
        ({}, {}, "no captions to score"),
        ({1: "a"}, {1: []}, "references for 1 must be a non-empty list, got \\[\\]"),
        ({1: "a"}, {1: "a"}, "references for 1 must be a non-empty list, got 'a'"),
        ({1: ["a"]}, {1: ["a"]}, r"hypothesis for 1 must be a string, got \['a'\]"),
    ],
)
def test_scores_reject_bad_inputs(hyps, refs, match):
    with pytest.raises(ValueError, match=match):
        caption_scores(hyps, refs)


def test_scores_reject_bad_n():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        bleu({1: "a"}, {1: ["a"]}, n=0)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        cider_d({1: "a"}, {1: ["a"]}, n=0)


# ---- tokenisation ------------------------------------------------------------------------------
# (caption, CoreNLP 3.4.1 PTBTokenizer -preserveLines -lowerCase minus pycocoevalcap's PUNCTUATIONS)
PTB_CASES = [
    ("A man riding a wave on top of a surfboard.\n", "a man riding a wave on top of a surfboard"),
    ("  Two DOGS, playing!  ", "two dogs playing"),
    ("a man's hat", "a man 's hat"),
    ("A bathroom with a toilet , sink and mirror .", "a bathroom with a toilet sink and mirror"),
    (
        "The dogs' bowls (red) are on a [wooden] table {yes}.",
        "the dogs bowls -lrb- red -rrb- are on a -lsb- wooden -rsb- table -lcb- yes -rcb-",
    ),
    (
        "I can't believe it won't work; don't they're we've I'd we'll I'm",
        "i ca n't believe it wo n't work do n't they 're we 've i 'd we 'll i 'm",
    ),
    ("He cannot go, gonna gotta wanna", "he can not go gon na got ta wan na"),
    ("\"Hello,\" she said. 'Quoted' `back`", "hello she said quoted back"),
    (
        "A black-and-white photo -- of a -- dog - running...",
        "a black-and-white photo of a dog running",
    ),
    (
        "Mr. Smith and Dr. Jones at St. Louis in the U.S. at 3 p.m.",
        "mr. smith and dr. jones at st. louis in the u.s. at 3 p.m.",
    ),
    (
        "It costs $5.50 or 50% of 1,000 at 10:30 and 3.5 inches",
        "it costs $ 5.50 or 50 % of 1,000 at 10:30 and 3.5 inches",
    ),
    (
        "A man\u2019s \u201cquoted\u201d hat \u2014 yes \u2013 no\u2026",
        "a man 's quoted hat yes no",
    ),
    ('A sign that says "STOP!!" ?', "a sign that says stop !!"),
    (
        "there's a plate of food with a fork,knife and spoon",
        "there 's a plate of food with a fork knife and spoon",
    ),
    ("A laptop on a desk.A mouse is there too", "a laptop on a desk.a mouse is there too"),
    ("the No. 7 bus and a sign that says no.", "the no. 7 bus and a sign that says no"),
    ("A cat... sitting etc.... on a mat., see", "a cat sitting etc. on a mat. see"),
    ("o'clock '90s 'til 'em i'd've", "o'clock '90s 'til 'em i 'd 've"),
    ("", ""),
    (" ... !", ""),
]


@pytest.mark.parametrize(("text", "expected"), PTB_CASES)
def test_coco_tokenize_matches_corenlp(text, expected):
    assert coco_tokenize(text) == expected


# ---- the torchmetrics Metric -------------------------------------------------------------------
BATCHES = [
    (["A man's hat, on a table.", "Two DOGS playing!"], [["A hat.", "A man's hat."], ["Dogs."]]),
    (["a red bus", ""], [["A red bus on the street.", "a bus"], ["a cat", "the cat", "a kitten"]]),
]


def _all_captions() -> tuple[dict[int, str], dict[int, list[str]]]:
    hyps = [h for batch_hyps, _ in BATCHES for h in batch_hyps]
    refs = [r for _, batch_refs in BATCHES for r in batch_refs]
    return dict(enumerate(hyps)), dict(enumerate(refs))


def test_caption_metrics_update_compute_reset():
    metric = CaptionMetrics()
    for hyps, refs in BATCHES:
        metric.update(hyps, refs)
    values = metric.compute()
    assert list(values) == list(SCORE_NAMES)
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in values.values())
    expected = caption_scores(*_all_captions())
    assert {k: v.item() for k, v in values.items()} == pytest.approx(expected, abs=1e-6)
    metric.reset()
    assert metric.hypotheses == [] and metric.references == []
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError):
        metric.compute()  # nothing to score


def test_caption_metrics_forward_scores_the_batch_and_accumulates():
    metric = CaptionMetrics()
    batch_values = metric(*BATCHES[0])
    expected = caption_scores(dict(enumerate(BATCHES[0][0])), dict(enumerate(BATCHES[0][1])))
    assert {k: v.item() for k, v in batch_values.items()} == pytest.approx(expected, abs=1e-6)
    metric(*BATCHES[1])
    all_expected = caption_scores(*_all_captions())
    assert {k: v.item() for k, v in metric.compute().items()} == pytest.approx(
        all_expected, abs=1e-6
    )


def test_caption_metrics_in_a_collection_and_moved():
    collection = MetricCollection({"caption": CaptionMetrics()})
    for hyps, refs in BATCHES:
        collection.update(hyps, refs)
    collection.to(torch.device("cpu"))  # strings are left alone by .to()
    values = collection.compute()
    assert list(values) == list(SCORE_NAMES)
    expected = caption_scores(*_all_captions())
    assert {k: v.item() for k, v in values.items()} == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("hyps", "refs", "match"),
    [
        (["a", "b"], [["a"]], "2 hypotheses for 1 reference lists"),
        (["a"], ["a"], "references must be a non-empty list of strings, got 'a'"),
        (["a"], [[]], r"references must be a non-empty list of strings, got \[\]"),
        ([1], [["a"]], "a hypothesis must be a string, got 1"),
    ],
)
def test_caption_metrics_rejects_bad_batches(hyps, refs, match):
    with pytest.raises(ValueError, match=match):
        CaptionMetrics().update(hyps, refs)


def test_caption_metrics_gathers_strings_across_processes(monkeypatch):
    # Rank 0 of a fake 2-process run: rank 1 holds the second batch.
    other_rank = (BATCHES[1][0], BATCHES[1][1])
    calls = []

    def all_gather_object(out: list, obj: object, group: object = None) -> None:
        calls.append(obj)
        out[:] = [obj, other_rank]

    monkeypatch.setattr(caption.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(caption.dist, "all_gather_object", all_gather_object)
    metric = CaptionMetrics(distributed_available_fn=lambda: True)
    metric.update(*BATCHES[0])
    values = metric.compute()
    assert len(calls) == 1
    expected = caption_scores(*_all_captions())
    assert {k: v.item() for k, v in values.items()} == pytest.approx(expected, abs=1e-6)
    assert metric.hypotheses == BATCHES[0][0]  # the local state is restored after compute


DDP_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmtrain.metrics.caption import CaptionMetrics

BATCHES = {batches!r}


def worker(rank, out):
    dist.init_process_group("gloo", init_method=f"file://{{out}}/store", rank=rank, world_size=2)
    metric = CaptionMetrics()
    metric.update(*BATCHES[rank])
    values = {{k: v.item() for k, v in metric.compute().items()}}
    torch.save((values, metric.hypotheses), f"{{out}}/rank{{rank}}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1],), nprocs=2)
"""


@pytest.mark.slow
def test_caption_metrics_under_real_ddp(tmp_path: Path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(batches=BATCHES)))
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=300)
    expected = caption_scores(*_all_captions())
    for rank in range(2):
        values, local = torch.load(tmp_path / f"rank{rank}.pt")
        assert values == pytest.approx(expected, abs=1e-6)
        assert local == BATCHES[rank][0]
