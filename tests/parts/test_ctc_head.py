"""CTC head and decoders, pinned against brute-force sums over every alignment, and WER/CER
against jiwer."""

from __future__ import annotations

import itertools
import math

import jiwer
import pytest
import torch

from mmtrain.contracts import Features
from mmtrain.data.transforms import CharTokenizer, WordTokenizer
from mmtrain.heads.ctc import CTCHead
from mmtrain.heads.ctc_decoding import (
    FlashlightCTCDecoder,
    ctc_greedy,
    ctc_prefix_beam_search,
    ctc_prefix_beam_search_nbest,
    flashlight_available,
)

BLANK = 0


# ---- the independent reference -------------------------------------------------------------
def brute_force(log_probs: torch.Tensor, blank_penalty: float = 0.0) -> dict[tuple, float]:
    """log p(labelling) for every labelling: every frame-level path, collapsed (groupby merges
    repeats, then blanks go) and summed per labelling. Blank frames pay ``blank_penalty``."""
    frames, vocab = log_probs.shape
    table = log_probs.double().tolist()
    sums: dict[tuple, float] = {}
    for path in itertools.product(range(vocab), repeat=frames):
        score = sum(
            table[t][c] - (blank_penalty if c == BLANK else 0.0) for t, c in enumerate(path)
        )
        label = tuple(k for k, _ in itertools.groupby(path) if k != BLANK)
        sums.setdefault(label, []).append(score)
    return {label: float(torch.tensor(s).logsumexp(0)) for label, s in sums.items()}


def best_labelling(scores: dict[tuple, float], length_bonus: float = 0.0) -> list[int]:
    return list(max(scores, key=lambda label: scores[label] + length_bonus * len(label)))


def random_log_probs(seed: int, frames: int = 5, vocab: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A spread of 1.5 gives peaked frames, yet several labellings with real probability.
    return (1.5 * torch.randn(frames, vocab, generator=g)).log_softmax(dim=-1)


def frames_from_probs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log().float()


# ---- the head ------------------------------------------------------------------------------
@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer().fit(["ab"])  # ids: 0 <pad> (blank) .. 3 <eos>, 4 'a', 5 'b'


def make_head(tok, **kwargs) -> CTCHead:
    torch.manual_seed(0)
    return CTCHead(in_dim=8, vocab_size=tok.vocab_size, tokenizer=tok, dropout=0.0, **kwargs).eval()


def test_loss_is_the_brute_force_ctc_loss_without_bos_eos_and_padding(tok):
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(3, 4, tok.vocab_size, generator=g).log_softmax(dim=-1)
    texts = ["ab", "aa", "b"]  # "aa" needs a blank between: 3 of the 4 frames
    encoded = [tok.encode(t, add_special=True) for t in texts]
    target = torch.nn.utils.rnn.pad_sequence(encoded, batch_first=True, padding_value=tok.pad_id)
    mask = target != tok.pad_id
    labels = [tuple(tok.encode(t).tolist()) for t in texts]
    # reduction="mean": each sample's negative log-likelihood over its target length, averaged
    expected = sum(-brute_force(outputs[b])[labels[b]] / len(labels[b]) for b in range(3)) / 3
    head = make_head(tok)
    assert head.loss(outputs, target, mask).item() == pytest.approx(expected, rel=1e-5)
    assert head.loss(outputs, target).item() == pytest.approx(expected, rel=1e-5)  # mask inferred
    targets, lengths = head.ctc_targets(target, mask)
    assert lengths.tolist() == [2, 2, 1]
    assert [row[:n] for row, n in zip(targets.tolist(), lengths.tolist())] == [
        list(x) for x in labels
    ]


def test_an_empty_transcript_is_all_blanks(tok):
    outputs = torch.randn(2, 4, tok.vocab_size).log_softmax(dim=-1)
    target = torch.nn.utils.rnn.pad_sequence(
        [tok.encode("", add_special=True), tok.encode("b", add_special=True)], batch_first=True
    )
    # sample 0: -log p(blank at every frame), over a length clamped to 1 (as torch does)
    expected = (-outputs[0, :, BLANK].sum() - brute_force(outputs[1])[(5,)]) / 2
    head = make_head(tok)
    assert head.loss(outputs, target, target != 0).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    no_positions = torch.zeros(2, 0, dtype=torch.long)
    assert head.loss(outputs, no_positions).item() == pytest.approx(
        -outputs[:, :, BLANK].sum(dim=1).mean().item(), rel=1e-5
    )


def test_forward_gives_float32_log_probs_and_certain_blanks_on_padding(tok):
    head = make_head(tok, hidden_dim=16)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(Features(torch.randn(2, 3, 8), mask))
    assert out.dtype == torch.float32 and out.shape == (2, 3, tok.vocab_size)
    assert torch.allclose(out[mask].exp().sum(-1), torch.ones(5), atol=1e-5)
    assert out[1, 1, BLANK] == 0.0 and torch.isneginf(out[1, 1, 1:]).all()
    logp, lengths = head.frames(out)
    assert lengths.tolist() == [3, 2]
    assert torch.equal(logp[1, :2], out[1, [0, 2]])  # real frames first, in order


@pytest.mark.parametrize("beam_size", [1, 4])
def test_padding_frames_change_neither_loss_nor_decoding(tok, beam_size):
    head = make_head(tok, beam_size=beam_size)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(1, 6, 8, generator=g)
    target = tok.encode("ab", add_special=True)[None]
    trailing = torch.tensor([[True, True, True, True, False, False]])
    middle = torch.tensor([[True, True, False, False, True, True]])  # concatenated modalities
    for mask in (trailing, middle):
        noisy = tokens.clone()
        noisy[~mask] = 100.0  # whatever sits under the padding must not matter
        padded = Features(noisy, mask)
        alone = Features(tokens[mask][None])  # only the real frames, no mask
        loss_padded = head.loss(head(padded), target, target != 0)
        loss_alone = head.loss(head(alone), target, target != 0)
        assert loss_padded.item() == pytest.approx(loss_alone.item(), rel=1e-6)
        assert head.predict(padded) == head.predict(alone)
        assert head.decode(head(padded)) == head.decode(head(alone))


def test_fully_masked_sample_adds_zero_and_gradients_stay_finite(tok):
    head = make_head(tok)
    head.train()
    feats = Features(torch.randn(2, 5, 8), torch.tensor([[True] * 5, [False] * 5]))
    target = torch.stack([tok.encode("ab", add_special=True)] * 2)
    loss = head.loss(head(feats), target, target != 0)
    only_first = head.loss(head(Features(feats.tokens[:1])), target[:1], target[:1] != 0)
    assert loss.item() == pytest.approx(only_first.item() / 2, rel=1e-5)  # sample 1: inf -> 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    assert head.predict(feats)[1] == ""


def test_a_blank_target_token_is_an_error(tok):
    head = make_head(tok)
    target = torch.tensor([[2, 4, 0, 5, 3], [2, 4, 3, 0, 0]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with pytest.raises(ValueError, match=r"blank id 0 appears as a target token in samples \[0\]"):
        head.ctc_targets(target, mask)


def test_constructor_rejects_bad_values(tok):
    with pytest.raises(ValueError, match="got 1, 0"):
        CTCHead(8, 1, tok)
    with pytest.raises(ValueError, match="got 0, None"):
        CTCHead(8, 6, tok, beam_size=0)
    with pytest.raises(ValueError, match="'viterbi'"):
        CTCHead(8, 6, tok, decoder="viterbi")
    with pytest.raises(ValueError, match="got -1, 0.1"):
        CTCHead(8, 6, tok, hidden_dim=-1)


def test_yaml_preset_builds_with_beam_override(compose_config, synth_facts):
    from mmtrain.build import build_module

    cfg = compose_config("+head/transcript=ctc", "head.transcript.beam_size=8")
    head = build_module(cfg, synth_facts).heads["transcript"]
    assert isinstance(head, CTCHead) and head.beam_size == 8
    assert head.vocab_size == synth_facts["targets"]["transcript"]["tokenizer"].vocab_size


# ---- greedy decoding -----------------------------------------------------------------------
def one_hot_frames(path: list[int], vocab: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(path), vocab).float().mul(10).log_softmax(-1)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ([1, 1, 0, 1], [1, 1]),  # a blank separates two a's
        ([1, 1, 1], [1]),  # repeats merge
        ([0, 1, 2, 2, 0], [1, 2]),
        ([0, 0, 0], []),
        ([2, 1, 2, 1], [2, 1, 2, 1]),
    ],
)
def test_greedy_collapse_rules(path, expected):
    assert ctc_greedy(one_hot_frames(path)) == expected


def test_greedy_respects_length_and_strings(tok):
    frames = one_hot_frames([4, 4, 0, 4, 5, 5], vocab=tok.vocab_size)
    assert ctc_greedy(frames, length=4) == [4, 4]
    assert ctc_greedy(frames, length=0) == []
    head = make_head(tok)
    assert head.decode(frames[None]) == ["aab"]
    with pytest.raises(ValueError, match="length=7 is outside 0..6"):
        ctc_greedy(frames, length=7)


# ---- prefix beam search ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_wide_beam_finds_the_most_probable_labelling(seed):
    log_probs = random_log_probs(seed, frames=4 + seed % 2)
    exact = brute_force(log_probs)
    # 64 beams hold every prefix of <= 5 tokens over 2 symbols (63): the search is exact.
    nbest = ctc_prefix_beam_search_nbest(log_probs, beam_size=64)
    assert nbest[0][0] == best_labelling(exact)
    assert ctc_prefix_beam_search(log_probs, beam_size=64) == best_labelling(exact)
    assert len(nbest) == len(exact)
    for ids, score in nbest:
        assert score == pytest.approx(exact[tuple(ids)], abs=1e-5)


def test_beam_beats_greedy_by_summing_alignments():
    # blank is each frame's best (greedy: nothing), yet "a" has p = .35*.35 + 2 * .35*.4 = .4025
    # against p("") = .16.
    frames = frames_from_probs([0.4, 0.35, 0.25], [0.4, 0.35, 0.25])
    assert ctc_greedy(frames) == []
    assert ctc_prefix_beam_search(frames, beam_size=8) == [1]


def test_one_beam_is_greedy_on_peaked_frames():
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        path = torch.randint(0, 3, (6,), generator=g).tolist()
        frames = one_hot_frames(path).mul(0.3).log_softmax(-1)  # best token ~ 0.9
        assert ctc_prefix_beam_search(frames, beam_size=1) == ctc_greedy(frames), path


def test_one_beam_merges_alignments_where_greedy_does_not():
    # Frame 2's best token is b (greedy: "ab", p = .36), but staying at "a" (blank or a again)
    # sums to .9 * .6 = .54: one beam keeps "a" (p("a") = .555 in all).
    frames = frames_from_probs([0.05, 0.9, 0.05], [0.3, 0.3, 0.4])
    assert ctc_greedy(frames) == [1, 2]
    assert ctc_prefix_beam_search(frames, beam_size=1) == [1]
    exact = brute_force(frames)
    assert exact[(1,)] == pytest.approx(math.log(0.555), abs=1e-6)


def test_penalties_move_the_result_the_expected_way():
    frames = frames_from_probs([0.6, 0.4, 0.0001])  # "" (.6) narrowly beats "a" (.4)
    assert ctc_prefix_beam_search(frames, beam_size=4) == []
    assert ctc_prefix_beam_search(frames, beam_size=4, blank_penalty=0.5) == [1]
    assert ctc_prefix_beam_search(frames, beam_size=4, length_bonus=0.5) == [1]
    assert ctc_greedy(frames, blank_penalty=0.5) == [1]
    flipped = frames_from_probs([0.4, 0.6, 0.0001])
    assert ctc_prefix_beam_search(flipped, beam_size=4) == [1]
    assert ctc_prefix_beam_search(flipped, beam_size=4, length_bonus=-0.5) == []


@pytest.mark.parametrize("seed", range(6))
def test_penalised_beam_search_matches_the_penalised_brute_force(seed):
    log_probs = random_log_probs(100 + seed)
    lengths = []
    for bonus in (-2.0, -0.5, 0.0, 0.5, 2.0):
        expected = best_labelling(brute_force(log_probs), bonus)
        got = ctc_prefix_beam_search(log_probs, beam_size=64, length_bonus=bonus)
        assert got == expected
        lengths.append(len(got))
    assert lengths == sorted(lengths)  # a larger bonus never gives a shorter transcript
    for penalty in (-1.0, 0.7, 2.0):
        expected = best_labelling(brute_force(log_probs, blank_penalty=penalty))
        assert ctc_prefix_beam_search(log_probs, 64, blank_penalty=penalty) == expected


def test_token_pruning_keeps_the_best_when_it_is_in_the_top_tokens():
    log_probs = random_log_probs(7, frames=5, vocab=6)
    assert ctc_prefix_beam_search(log_probs, 16, beam_size_token=5) == ctc_prefix_beam_search(
        log_probs, 16
    )
    peaked = one_hot_frames([1, 0, 2, 2], vocab=6)
    assert ctc_prefix_beam_search(peaked, 4, beam_size_token=1) == [1, 2]


def test_beam_search_rejects_bad_arguments():
    with pytest.raises(ValueError, match="got 0, None"):
        ctc_prefix_beam_search(random_log_probs(0), beam_size=0)
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        ctc_prefix_beam_search(torch.zeros(5), beam_size=2)
    with pytest.raises(ValueError, match="blank=3"):
        ctc_prefix_beam_search(random_log_probs(0), beam_size=2, blank=3)
    assert ctc_prefix_beam_search(torch.zeros(0, 3), beam_size=2) == []


@pytest.mark.skipif(not flashlight_available(), reason="needs flashlight-text")
def test_flashlight_decoder_matches_the_prefix_beam_search(tok):
    batch = torch.stack([random_log_probs(200 + s, frames=5) for s in range(4)])
    lengths = torch.tensor([5, 3, 0, 4])
    for blank_penalty, bonus in ((0.0, 0.0), (0.7, 0.0), (0.0, 1.0), (0.0, -1.0)):
        decode = FlashlightCTCDecoder(3, 64, blank_penalty=blank_penalty, length_bonus=bonus)
        got = decode(batch, lengths)
        for b, n in enumerate(lengths.tolist()):
            exact = brute_force(batch[b, :n], blank_penalty) if n else {(): 0.0}
            assert got[b] == best_labelling(exact, bonus)
    head = make_head(tok, beam_size=4, decoder="flashlight")
    feats = Features(torch.randn(2, 6, 8), torch.tensor([[True] * 6, [True] * 3 + [False] * 3]))
    assert head.predict(feats) == make_head(tok, beam_size=4).predict(feats)


# ---- metrics -------------------------------------------------------------------------------
REFS = ["The cat  sat on the mat", "hello world", "a b c d"]
HYPS = ["the cat sit on mat ", "Hello  word", "a c d e f"]


def jiwer_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)


@pytest.mark.parametrize(
    "make_tok",
    [lambda: CharTokenizer(), lambda: CharTokenizer(lowercase=False), lambda: WordTokenizer()],
    ids=["char", "char_cased", "word_without_normalize"],
)
def test_wer_and_cer_match_jiwer_after_normalisation(make_tok):
    tok = make_tok().fit(REFS)
    head = CTCHead(8, tok.vocab_size, tok)
    norm = getattr(tok, "normalize", lambda s: " ".join(s.lower().split()))
    metrics = head.make_metrics()
    dummy = torch.zeros(1, 1, tok.vocab_size)
    target = torch.zeros(1, 1, dtype=torch.long)
    for ref, hyp in zip(REFS, HYPS):  # one sample a batch: the rates are over the corpus
        head.update_metrics(metrics, dummy, target, predictions=[hyp], references=[[ref, "x"]])
    scores = metrics.compute()
    wer, cer = jiwer_rates([norm(r) for r in REFS], [norm(h) for h in HYPS])
    assert float(scores["wer"]) == pytest.approx(wer, abs=1e-6)
    assert float(scores["cer"]) == pytest.approx(cer, abs=1e-6)
    if isinstance(tok, CharTokenizer) and not tok.lowercase:  # "The" vs "the" counts
        assert wer > jiwer_rates([r.lower() for r in REFS], [h.lower() for h in HYPS])[0]


def test_metrics_decode_targets_and_outputs_when_not_given(tok):
    head = make_head(tok)
    target = torch.stack([tok.encode("ab", add_special=True), tok.encode("ba", add_special=True)])
    outputs = torch.stack([one_hot_frames([4, 0, 5], 6), one_hot_frames([5, 5, 5], 6)])
    assert head.decode(outputs) == ["ab", "b"]
    metrics = head.make_metrics()
    head.update_metrics(metrics, outputs, target, target != 0)
    scores = metrics.compute()
    wer, cer = jiwer_rates(["ab", "ba"], ["ab", "b"])
    assert float(scores["wer"]) == pytest.approx(wer) and float(scores["cer"]) == pytest.approx(cer)
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        head.update_metrics(metrics, outputs, target, predictions=["a", "b"], references=[["a"]])
