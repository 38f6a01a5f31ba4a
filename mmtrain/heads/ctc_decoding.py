"""CTC decoding: greedy (best path) and prefix beam search, plus torchaudio's flashlight one.

All decoders read per-frame log-probabilities ``(N, V)`` of one sample (frames past its length
already cut off) and return token ids with blanks removed and repeats collapsed. The prefix
beam search is pure Python on purpose: it is the reference (exact once the beam holds every
prefix, which the tests check against a brute-force sum over alignments) and the default.
:class:`FlashlightCTCDecoder` wraps ``torchaudio.models.decoder.ctc_decoder`` (C++, needs the
``flashlight-text`` package) for large vocabularies and long inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

NEG_INF = float("-inf")
# flashlight wants finite emissions; exp(-1e30) is 0 all the same.
_FLASHLIGHT_NEG = -1e30


def _logaddexp(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` for Python floats, exact for ``-inf`` arguments."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


def _check(log_probs: Tensor, blank: int, length: int | None = None) -> int:
    """Validate one sample's log-probs; return the number of frames to decode."""
    if log_probs.ndim != 2:
        raise ValueError(f"expected log-probs (N, V) of one sample, got {tuple(log_probs.shape)}")
    frames, vocab = log_probs.shape
    if not 0 <= blank < vocab:
        raise ValueError(f"blank={blank} is not a token id of a {vocab}-token vocabulary")
    if length is None:
        return frames
    if not 0 <= length <= frames:
        raise ValueError(f"length={length} is outside 0..{frames} (the frames given)")
    return int(length)


def collapse(ids: Iterable[int], blank: int = 0) -> list[int]:
    """The CTC collapse of a frame-level path: merge repeats, then drop blanks.

    Args:
        ids: one token id per frame.
        blank: the blank id.

    Returns:
        The labelling: ``a a <b> a`` gives ``a a`` (the blank separates the two ``a``).
    """
    out: list[int] = []
    prev = None
    for i in ids:
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def ctc_greedy(
    log_probs: Tensor, length: int | None = None, blank: int = 0, blank_penalty: float = 0.0
) -> list[int]:
    """Best-path decoding: the most probable token of each frame, collapsed.

    Args:
        log_probs: ``(N, V)`` per-frame log-probabilities (or logits: only the argmax counts).
        length: frames of the sample (the first ``length``); None = all ``N``.
        blank: the blank id.
        blank_penalty: subtracted from the blank's score of every frame before the argmax.

    Returns:
        The token ids, blanks removed and repeats collapsed.

    Raises:
        ValueError: for a tensor that is not 2-D, a blank outside the vocabulary, or a length
            outside ``0..N``.
    """
    frames = _check(log_probs, blank, length)
    scores = log_probs[:frames].detach().float()
    if blank_penalty:
        scores = scores.clone()
        scores[:, blank] -= blank_penalty
    return collapse(scores.argmax(dim=-1).tolist(), blank)


def _ranked(
    beams: dict[tuple[int, ...], list[float]], size: int, length_bonus: float
) -> list[tuple[tuple[int, ...], float]]:
    """The ``size`` best prefixes by ``log p(prefix) + length_bonus * len(prefix)``; ties go to
    the smaller prefix so that the result does not depend on dict order. Impossible prefixes
    (a repeat with no blank before it) take no beam, unless nothing is possible."""
    scored = [
        (prefix, _logaddexp(pb, pnb) + length_bonus * len(prefix))
        for prefix, (pb, pnb) in beams.items()
    ]
    scored.sort(key=lambda item: (-item[1], item[0]))
    possible = [item for item in scored if item[1] > NEG_INF]
    return (possible or scored)[:size]


def ctc_prefix_beam_search_nbest(
    log_probs: Tensor,
    beam_size: int,
    blank: int = 0,
    blank_penalty: float = 0.0,
    length_bonus: float = 0.0,
    beam_size_token: int | None = None,
) -> list[tuple[list[int], float]]:
    """CTC prefix beam search in log space; the ``beam_size`` best labellings with scores.

    Each prefix keeps two log-probabilities over the frames so far: of the alignments that
    collapse to it and end in a blank (``pb``) and in its last token (``pnb``). At a frame a
    blank keeps the prefix (into ``pb``); its last token again keeps it too, from ``pnb`` (a
    repeat collapses), but extends it from ``pb`` (a blank separated the two); any other token
    extends it from both. Alignments reaching the same prefix are summed, and the ``beam_size``
    best prefixes survive the frame. With a beam holding every prefix this is the exact
    probability of every labelling.

    Args:
        log_probs: ``(N, V)`` per-frame log-probabilities of one sample.
        beam_size: prefixes kept after each frame.
        blank: the blank id.
        blank_penalty: subtracted from the blank's log-probability at every frame (> 0 favours
            emitting tokens: fewer deletions).
        length_bonus: added per token of a prefix when ranking (> 0 favours longer outputs).
        beam_size_token: only the ``beam_size_token`` most probable non-blank tokens of each
            frame extend a prefix (None: all); a speed-up for large vocabularies.

    Returns:
        Up to ``beam_size`` ``(token ids, score)`` pairs, best first; the score is the log of the
        summed probability of the prefix's alignments in the beam (under the blank penalty)
        plus ``length_bonus`` per token.

    Raises:
        ValueError: for a non-positive ``beam_size`` or ``beam_size_token``, or bad log-probs
            (see :func:`ctc_greedy`).
    """
    frames = _check(log_probs, blank)
    if beam_size < 1 or (beam_size_token is not None and beam_size_token < 1):
        raise ValueError(
            f"beam_size and beam_size_token must be >= 1, got {beam_size}, {beam_size_token}"
        )
    table = log_probs.detach().float().cpu()
    vocab = table.shape[1]
    if beam_size_token is not None and beam_size_token < vocab - 1:
        others = table.clone()
        others[:, blank] = NEG_INF
        candidates = others.topk(beam_size_token, dim=1).indices.tolist()
    else:
        candidates = [[c for c in range(vocab) if c != blank]] * frames
    # prefix -> [log p(ends in blank), log p(ends in its last token)]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG_INF]}
    for row, tokens in zip(table.tolist(), candidates):
        blank_lp = row[blank] - blank_penalty
        grown: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            same = grown.setdefault(prefix, [NEG_INF, NEG_INF])
            same[0] = _logaddexp(same[0], total + blank_lp)
            last = prefix[-1] if prefix else None
            for c in tokens:
                lp = row[c]
                if lp == NEG_INF:  # padding frames: only the blank is possible
                    continue
                longer = grown.setdefault((*prefix, c), [NEG_INF, NEG_INF])
                if c == last:
                    same[1] = _logaddexp(same[1], pnb + lp)
                    longer[1] = _logaddexp(longer[1], pb + lp)
                else:
                    longer[1] = _logaddexp(longer[1], total + lp)
        beams = {prefix: grown[prefix] for prefix, _ in _ranked(grown, beam_size, length_bonus)}
    return [(list(prefix), score) for prefix, score in _ranked(beams, beam_size, length_bonus)]


def ctc_prefix_beam_search(
    log_probs: Tensor,
    beam_size: int,
    blank: int = 0,
    blank_penalty: float = 0.0,
    length_bonus: float = 0.0,
    beam_size_token: int | None = None,
) -> list[int]:
    """The best labelling of :func:`ctc_prefix_beam_search_nbest` (same arguments).

    Returns:
        The token ids of the best prefix, blanks removed and repeats collapsed.
    """
    nbest = ctc_prefix_beam_search_nbest(
        log_probs, beam_size, blank, blank_penalty, length_bonus, beam_size_token
    )
    return nbest[0][0]


def flashlight_available() -> bool:
    """Whether torchaudio's CTC decoder can be used (the ``flashlight-text`` package)."""
    try:
        from torchaudio.models.decoder import ctc_decoder  # noqa: F401
    except (ImportError, RuntimeError, OSError):  # torchaudio raises RuntimeError for it
        return False
    return True


def _length_bonus_lm(bonus: float) -> Any:
    """A "language model" scoring every token ``bonus``: flashlight's lexicon-free decoder has
    no word score, and its LM score is the one hook per emitted token. Each prefix gets its own
    state so that only equal prefixes merge."""
    from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState

    class LengthBonusLM(CTCDecoderLM):
        def start(self, start_with_nothing: bool) -> CTCDecoderLMState:
            return CTCDecoderLMState()

        def score(self, state: CTCDecoderLMState, token: int) -> tuple[CTCDecoderLMState, float]:
            return state.child(token), bonus

        def finish(self, state: CTCDecoderLMState) -> tuple[CTCDecoderLMState, float]:
            return state, 0.0

    return LengthBonusLM()


class FlashlightCTCDecoder:
    """torchaudio's lexicon-free flashlight beam search, with this module's penalties.

    Alignments of a prefix are summed (``log_add``), as in the prefix beam search. Flashlight
    needs a silence token: an extra, never emitted column is appended for it, so every real
    token decodes as plain CTC. ``blank_penalty`` is subtracted from the blank column;
    ``length_bonus`` is given through a constant per-token LM score (a Python callback per
    hypothesis, so slower than without one).

    Args:
        vocab_size: ``V``, the columns of the log-probs.
        beam_size: hypotheses kept per frame.
        blank: the blank id.
        blank_penalty: see :func:`ctc_prefix_beam_search_nbest`.
        length_bonus: see :func:`ctc_prefix_beam_search_nbest`.
        beam_size_token: tokens considered per frame (None: all).
        beam_threshold: hypotheses scoring this far below the best are pruned.

    Raises:
        ValueError: without the ``flashlight-text`` package, or for bad sizes.
    """

    def __init__(
        self,
        vocab_size: int,
        beam_size: int,
        blank: int = 0,
        blank_penalty: float = 0.0,
        length_bonus: float = 0.0,
        beam_size_token: int | None = None,
        beam_threshold: float = 50.0,
    ) -> None:
        if not flashlight_available():
            raise ValueError(
                "decoder='flashlight' needs torchaudio's CTC decoder and the flashlight-text "
                "package: pip install flashlight-text (or use decoder='prefix')"
            )
        if beam_size < 1 or not 0 <= blank < vocab_size:
            raise ValueError(
                f"need beam_size >= 1 and 0 <= blank < vocab_size, got {beam_size}, {blank}, "
                f"{vocab_size}"
            )
        from torchaudio.models.decoder import ctc_decoder

        # Only ids matter without a lexicon: the token names are placeholders.
        names = [f"<{i}>" for i in range(vocab_size + 1)]
        self.vocab_size, self.blank, self.blank_penalty = vocab_size, blank, blank_penalty
        self._decoder = ctc_decoder(
            lexicon=None,
            tokens=names,
            lm=_length_bonus_lm(length_bonus) if length_bonus else None,
            beam_size=beam_size,
            beam_size_token=beam_size_token,
            beam_threshold=beam_threshold,
            lm_weight=1.0 if length_bonus else 0.0,
            log_add=True,
            blank_token=names[blank],
            sil_token=names[vocab_size],
        )

    def __call__(self, log_probs: Tensor, lengths: Tensor | None = None) -> list[list[int]]:
        """Decode a batch.

        Args:
            log_probs: ``(B, N, V)`` per-frame log-probabilities.
            lengths: ``(B,)`` frames of each sample; None = all ``N``.

        Returns:
            The token ids of each sample's best hypothesis.

        Raises:
            ValueError: for log-probs of another shape than ``(B, N, vocab_size)``.
        """
        if log_probs.ndim != 3 or log_probs.shape[-1] != self.vocab_size:
            raise ValueError(
                f"expected log-probs (B, N, {self.vocab_size}), got {tuple(log_probs.shape)}"
            )
        emissions = log_probs.detach().float().cpu().clamp_min(_FLASHLIGHT_NEG)
        emissions[..., self.blank] -= self.blank_penalty
        silence = emissions.new_full((*emissions.shape[:2], 1), _FLASHLIGHT_NEG)
        emissions = torch.cat([emissions, silence], dim=-1).contiguous()
        if lengths is not None:
            lengths = lengths.detach().to("cpu", torch.int32)
        results = self._decoder(emissions, lengths)
        # Hypotheses start and end on the silence token; it is never a real id. A sample of
        # zero frames gets no hypothesis at all.
        return [
            [i for i in hyps[0].tokens.tolist() if i < self.vocab_size] if hyps else []
            for hyps in results
        ]
