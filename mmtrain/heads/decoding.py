"""Sequence decoding shared by the generative heads: batched beam search (greedy = 1 beam)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def beam_search(
    step: Callable[[Tensor], Tensor],
    batch_size: int,
    bos_id: int,
    eos_id: int,
    max_length: int,
    beam_size: int = 1,
    length_penalty: float = 0.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Beam search vectorised over the batch and the beams; ``beam_size=1`` is greedy decoding.

    Beams are laid out sample-major: row ``b * beam_size + k`` is beam ``k`` of sample ``b``, so
    the caller expands its per-sample inputs once with ``repeat_interleave(beam_size, 0)``. A
    finished beam keeps its score and only extends with ``<eos>``. Final scores are divided by
    the GNMT length penalty ``((5 + length) / 6) ** length_penalty`` (0 = raw log-probability).

    Args:
        step: ``tokens (B*K, t) -> log-probabilities (B*K, V)`` of the next token.
        batch_size: ``B``.
        bos_id: the start token.
        eos_id: the end token.
        max_length: most tokens in a sequence, ``<bos>`` and ``<eos>`` included.
        beam_size: ``K``.
        length_penalty: the GNMT exponent alpha.
        device: where the tokens live.

    Returns:
        ``(B, T)`` long tensor of the best sequence of each sample, without ``<bos>``; ended by
        ``<eos>`` unless ``max_length`` cut it, and padded with ``<eos>`` after the end.

    Raises:
        ValueError: for ``beam_size < 1`` or ``max_length < 2``.
    """
    if beam_size < 1 or max_length < 2:
        raise ValueError(f"need beam_size >= 1 and max_length >= 2, got {beam_size}, {max_length}")
    B, K = batch_size, beam_size
    tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)
    # Only beam 0 is alive at the start, so the K beams of a sample are K different sequences.
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")
    finished = torch.zeros(B * K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B * K, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)[:, None] * K  # (B, 1): first beam of each sample
    for _ in range(max_length - 1):
        logp = step(tokens).float()  # (B*K, V)
        vocab = logp.shape[-1]
        eos_logp = torch.where(finished, torch.zeros_like(logp[:, eos_id]), logp[:, eos_id])
        logp = logp.masked_fill(finished[:, None], float("-inf"))
        logp[:, eos_id] = eos_logp
        candidates = (scores.reshape(-1, 1) + logp).view(B, K * vocab)
        scores, flat = candidates.topk(K, dim=1)  # (B, K)
        source = (rows + flat // vocab).view(-1)  # (B*K,) the beam each new beam extends
        new_tokens = (flat % vocab).view(-1, 1)
        tokens = torch.cat([tokens[source], new_tokens], dim=1)
        lengths = lengths[source] + (~finished[source]).long()
        finished = finished[source] | (new_tokens[:, 0] == eos_id)
        if bool(finished.all()):
            break
    penalty = ((5.0 + lengths.float()) / 6.0) ** length_penalty
    best = (scores.view(-1) / penalty).view(B, K).argmax(dim=1)  # (B,)
    return tokens.view(B, K, -1)[torch.arange(B, device=device), best, 1:]
