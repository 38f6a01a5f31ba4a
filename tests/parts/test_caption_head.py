"""Caption heads and beam search: decoding pinned on hand-made distributions, causality, loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import synth_caption_tokenizer

from mmtrain.contracts import Features
from mmtrain.heads.caption import LSTMCaptionHead, TransformerCaptionHead
from mmtrain.heads.decoding import beam_search

BOS, EOS = 2, 3


def _table_step(table: dict[tuple[int, ...], dict[int, float]], vocab: int = 6):
    """A step function from a table: prefix (without <bos>) -> {token: probability}."""

    def step(tokens: torch.Tensor) -> torch.Tensor:
        out = torch.full((tokens.shape[0], vocab), 1e-9)
        for row, seq in enumerate(tokens.tolist()):
            for tok, p in table.get(tuple(seq[1:]), {EOS: 1.0}).items():
                out[row, tok] = p
        return out.log()

    return step


# After <bos>: 4 (p=.6) or 5 (p=.4). After 4: 4 (p=.55) or 5; after 5: 4 (p=.95); then <eos>.
# Greedy takes 4 4 (total .33); the best sequence is 5 4 (total .38).
TABLE = {(): {4: 0.6, 5: 0.4}, (4,): {4: 0.55, 5: 0.45}, (5,): {4: 0.95, 5: 0.05}}


def test_greedy_takes_the_locally_best_token():
    out = beam_search(_table_step(TABLE), 1, BOS, EOS, max_length=5, beam_size=1)
    assert out.tolist()[0][:3] == [4, 4, EOS]


def test_beam_search_finds_the_better_sequence():
    out = beam_search(_table_step(TABLE), 1, BOS, EOS, max_length=5, beam_size=2)
    assert out.tolist()[0][:3] == [5, 4, EOS]


def test_beam_search_is_batched_and_pads_with_eos():
    table = dict(TABLE)
    step = _table_step(table)
    batch = beam_search(step, 3, BOS, EOS, max_length=6, beam_size=3)
    single = beam_search(step, 1, BOS, EOS, max_length=6, beam_size=3)
    assert batch.shape[0] == 3 and all(row == single.tolist()[0] for row in batch.tolist())
    assert batch.tolist()[0] == [5, 4, EOS]  # stops once every beam has ended


def test_length_penalty_prefers_longer_sequences():
    # <eos> right away (p=.5) against 4 4 <eos> (p=.45 * 1 * 1)
    table = {(): {EOS: 0.5, 4: 0.45}, (4,): {4: 1.0}, (4, 4): {EOS: 1.0}}
    plain = beam_search(_table_step(table), 1, BOS, EOS, max_length=6, beam_size=2)
    longer = beam_search(
        _table_step(table), 1, BOS, EOS, max_length=6, beam_size=2, length_penalty=2.0
    )
    assert plain.tolist()[0][0] == EOS
    assert longer.tolist()[0][:3] == [4, 4, EOS]


def test_beam_search_rejects_bad_arguments():
    with pytest.raises(ValueError, match="beam_size >= 1"):
        beam_search(_table_step(TABLE), 1, BOS, EOS, max_length=5, beam_size=0)


HEADS = {
    "transformer": lambda tok: TransformerCaptionHead(
        in_dim=8, vocab_size=tok.vocab_size, tokenizer=tok, dim=16, num_heads=2, dropout=0.0
    ),
    "lstm": lambda tok: LSTMCaptionHead(
        in_dim=8,
        vocab_size=tok.vocab_size,
        tokenizer=tok,
        embed_dim=8,
        hidden_dim=16,
        attention_dim=8,
        dropout=0.0,
    ),
}


@pytest.fixture(params=sorted(HEADS))
def head(request):
    torch.manual_seed(0)
    return HEADS[request.param](synth_caption_tokenizer()).eval()


def _features(batch: int = 2, tokens: int = 5) -> Features:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[1, 3:] = False
    return Features(torch.randn(batch, tokens, 8, generator=g), mask)


def test_teacher_forcing_is_causal(head):
    feats = _features()
    tokens = torch.tensor([[BOS, 5, 6, 7, 8], [BOS, 5, 6, 7, 8]])
    changed = tokens.clone()
    changed[:, 3:] = 9
    a, b = head.logits(feats, tokens), head.logits(feats, changed)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)  # positions before the change
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_masked_tokens_do_not_matter(head):
    feats = _features()
    noisy = Features(feats.tokens.clone(), feats.mask)
    noisy.tokens[1, 3:] += 100.0  # masked positions of sample 1
    tokens = torch.tensor([[BOS, 5, 6], [BOS, 5, 6]])
    assert torch.allclose(head.logits(feats, tokens), head.logits(noisy, tokens), atol=1e-5)


def test_loss_is_cross_entropy_over_real_positions(head):
    head.label_smoothing = 0.0
    target = torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, 0]])
    mask = target != 0
    logits = head(_features(), target, mask)  # (B, 3, V)
    expected = (
        sum(
            F.cross_entropy(logits[b, t][None], target[b, t + 1][None])
            for b in range(2)
            for t in range(3)
            if mask[b, t + 1]
        )
        / 5
    )
    assert head.loss(logits, target, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_generation_matches_stepwise_greedy(head):
    feats = _features()
    ids = head.generate(feats)
    # Rebuild the greedy choice one token at a time with teacher forcing.
    prefix = torch.full((2, 1), BOS)
    for t in range(ids.shape[1]):
        nxt = head.logits(feats, prefix)[:, -1].argmax(-1)
        done = (
            (prefix[:, 1:] == EOS).any(dim=1)
            if prefix.shape[1] > 1
            else torch.zeros(2, dtype=torch.bool)
        )
        nxt = torch.where(done, torch.full_like(nxt, EOS), nxt)
        assert nxt.tolist() == ids[:, t].tolist()
        prefix = torch.cat([prefix, nxt[:, None]], dim=1)
    captions = head.predict(feats)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_caption_metrics_get_all_references(head):
    metrics = head.make_metrics()
    head.update_metrics(
        metrics,
        torch.zeros(1),
        torch.zeros(1, 2, dtype=torch.long),
        predictions=["a red circle", "a blue square"],
        references=[["a red circle", "one red circle"], ["a green square"]],
    )
    scores = metrics.compute()
    assert {"bleu4", "cider", "rougeL"} <= set(scores)
    assert all(math.isfinite(float(v)) for v in scores.values())
