"""Caption heads: generate a text target (``caption``) from the fused tokens.

Both heads are trained with teacher forcing (``target[:, :-1]`` in, ``target[:, 1:]`` out,
label smoothing from config) and decode with the batched beam search of
:mod:`mmtrain.heads.decoding` (``beam_size: 1`` is greedy). Metrics: BLEU-1..4, ROUGE-L and
CIDEr-D over all references of each image (:class:`mmtrain.metrics.caption.CaptionMetrics`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtrain.contracts import Features, Tokenizer
from mmtrain.heads.decoding import beam_search
from mmtrain.metrics.caption import CaptionMetrics


class _CaptionHead(nn.Module, ABC):
    """What both caption heads share: loss, decoding, metrics. Subclasses define ``logits``.

    Args:
        tokenizer: the target's tokenizer (wired by build.py); turns ids back into text.
        max_length: most tokens generated, ``<bos>``/``<eos>`` included; None = the tokenizer's.
        beam_size: beams for generation; 1 is greedy.
        length_penalty: GNMT length-penalty exponent for ranking finished beams.
        label_smoothing: cross-entropy label smoothing of the teacher-forced loss.

    Raises:
        ValueError: for a non-positive beam size or a max length below 2.
    """

    unfused = False  # reads the fused features (contracts.Head)
    modalities: tuple[str, ...] = ()  # runs on every batch that has its target

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int | None = None,
        beam_size: int = 1,
        length_penalty: float = 0.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = max_length or tokenizer.max_length
        if beam_size < 1 or self.max_length < 2:
            raise ValueError(
                f"need beam_size >= 1 and max_length >= 2, got {beam_size}, {self.max_length}"
            )
        self.beam_size = beam_size
        self.length_penalty = length_penalty
        self.label_smoothing = label_smoothing

    @abstractmethod
    def logits(self, features: Features, tokens: Tensor) -> Tensor:
        """Next-token logits ``(B, T, V)`` after each prefix of ``tokens`` ``(B, T)``."""

    def forward(
        self, features: Features, target: Tensor | None = None, target_mask: Tensor | None = None
    ) -> Tensor:
        """Teacher-forced logits ``(B, L-1, V)`` with a target; generated ids without one."""
        if target is None:
            return self.generate(features)
        return self.logits(features, target[:, :-1])

    def loss(self, outputs: Tensor, target: Tensor, target_mask: Tensor | None = None) -> Tensor:
        """Cross-entropy of the next tokens over the real (unpadded) positions."""
        gold = target[:, 1:]  # (B, L-1)
        real = target_mask[:, 1:] if target_mask is not None else torch.ones_like(gold, dtype=bool)
        return F.cross_entropy(outputs[real], gold[real], label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def generate(self, features: Features) -> Tensor:
        """Token ids ``(B, T)`` (no ``<bos>``) by beam search over the fused features."""
        k = self.beam_size
        beams = Features(
            features.tokens.repeat_interleave(k, dim=0),
            None if features.mask is None else features.mask.repeat_interleave(k, dim=0),
        )
        return beam_search(
            lambda tokens: self.logits(beams, tokens)[:, -1].log_softmax(dim=-1),
            batch_size=features.tokens.shape[0],
            bos_id=self.tokenizer.bos_id,
            eos_id=self.tokenizer.eos_id,
            max_length=self.max_length,
            beam_size=k,
            length_penalty=self.length_penalty,
            device=features.tokens.device,
        )

    def decode(self, outputs: Tensor) -> list[str]:
        """Caption strings of generated ids ``(B, T)``."""
        return [self.tokenizer.decode(row) for row in outputs.tolist()]

    def predict(self, features: Features, outputs: Tensor | None = None) -> list[str]:
        """Generated captions (teacher-forced ``outputs`` are not reused)."""
        return self.decode(self.generate(features))

    def make_metrics(self) -> CaptionMetrics:
        """BLEU-1..4, ROUGE-L and CIDEr-D over a split."""
        return CaptionMetrics()

    def update_metrics(
        self,
        metrics: CaptionMetrics,
        outputs: Tensor,
        target: Tensor,
        target_mask: Tensor | None = None,
        predictions: list[Any] | None = None,
        references: list[Any] | None = None,
    ) -> None:
        """Accumulate generated captions against all references of each sample."""
        if predictions is None:
            raise ValueError("caption metrics need the generated captions (predictions=...)")
        if references is None:  # only the target: decode it
            references = [[self.tokenizer.decode(row[1:])] for row in target.tolist()]
        metrics.update(list(predictions), [list(r) for r in references])


class TransformerCaptionHead(_CaptionHead):
    """A Transformer decoder with cross-attention over the fused tokens.

    Args:
        in_dim: width of the fused features (wired by build.py).
        vocab_size: target vocabulary size (wired by build.py).
        tokenizer: the target's tokenizer (wired by build.py).
        pad_id: padding id (wired by build.py).
        dim: model width.
        num_layers: decoder layers.
        num_heads: attention heads.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout in the decoder.
        tie_embeddings: share the input embedding and the output projection.
        max_length: see :class:`_CaptionHead`.
        beam_size: see :class:`_CaptionHead`.
        length_penalty: see :class:`_CaptionHead`.
        label_smoothing: see :class:`_CaptionHead`.
    """

    def __init__(
        self,
        in_dim: int,
        vocab_size: int,
        tokenizer: Tokenizer,
        pad_id: int = 0,
        dim: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.1,
        tie_embeddings: bool = True,
        max_length: int | None = None,
        beam_size: int = 1,
        length_penalty: float = 0.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__(tokenizer, max_length, beam_size, length_penalty, label_smoothing)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.memory_proj = nn.Linear(in_dim, dim)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos = nn.Embedding(self.max_length, dim)
        layer = nn.TransformerDecoderLayer(
            dim, num_heads, ff_mult * dim, dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size)
        # Small embeddings (GPT-2 style): with tied weights, N(0, 1) ones give logits of size
        # ~sqrt(dim) and a first loss far above log(vocab_size).
        for table in (self.embed, self.pos):
            nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        if tie_embeddings:
            self.out.weight = self.embed.weight

    def logits(self, features: Features, tokens: Tensor) -> Tensor:
        """Next-token logits ``(B, T, V)``; position ``t`` sees tokens ``<= t`` only."""
        T = tokens.shape[1]
        positions = torch.arange(T, device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)  # (B, T, dim)
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=tokens.device)
        memory = self.memory_proj(features.tokens)  # (B, N, dim)
        padding = None if features.mask is None else ~features.mask
        h = self.decoder(
            x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=padding
        )
        return self.out(self.norm(h))


class LSTMCaptionHead(_CaptionHead):
    """An LSTM with soft attention over the fused tokens (the Show, Attend and Tell shape).

    At each step the hidden state attends over the tokens (additive attention), the context is
    gated by a sigmoid of the hidden state, and the LSTM reads ``[word embedding; context]``.
    The state starts from the masked mean of the tokens.

    Args:
        in_dim: width of the fused features (wired by build.py).
        vocab_size: target vocabulary size (wired by build.py).
        tokenizer: the target's tokenizer (wired by build.py).
        pad_id: padding id (wired by build.py).
        embed_dim: word embedding width.
        hidden_dim: LSTM width.
        attention_dim: width of the additive attention.
        dropout: dropout before the output projection.
        max_length: see :class:`_CaptionHead`.
        beam_size: see :class:`_CaptionHead`.
        length_penalty: see :class:`_CaptionHead`.
        label_smoothing: see :class:`_CaptionHead`.
    """

    def __init__(
        self,
        in_dim: int,
        vocab_size: int,
        tokenizer: Tokenizer,
        pad_id: int = 0,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.3,
        max_length: int | None = None,
        beam_size: int = 1,
        length_penalty: float = 0.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__(tokenizer, max_length, beam_size, length_penalty, label_smoothing)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.init_h = nn.Linear(in_dim, hidden_dim)
        self.init_c = nn.Linear(in_dim, hidden_dim)
        self.att_tokens = nn.Linear(in_dim, attention_dim)
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)
        self.att_score = nn.Linear(attention_dim, 1)
        self.gate = nn.Linear(hidden_dim, in_dim)
        self.cell = nn.LSTMCell(embed_dim + in_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def logits(self, features: Features, tokens: Tensor) -> Tensor:
        """Next-token logits ``(B, T, V)``, one LSTM step per position."""
        memory = features.tokens  # (B, N, D)
        pooled = features.pooled()
        h, c = torch.tanh(self.init_h(pooled)), torch.tanh(self.init_c(pooled))
        keys = self.att_tokens(memory)  # (B, N, A): computed once for all steps
        embedded = self.embed(tokens)  # (B, T, E)
        steps = []
        for t in range(tokens.shape[1]):
            scores = self.att_score(torch.tanh(keys + self.att_hidden(h)[:, None])).squeeze(-1)
            if features.mask is not None:
                scores = scores.masked_fill(~features.mask, float("-inf"))
            alpha = torch.softmax(scores, dim=1)  # (B, N)
            context = torch.sigmoid(self.gate(h)) * (alpha[..., None] * memory).sum(dim=1)
            h, c = self.cell(torch.cat([embedded[:, t], context], dim=-1), (h, c))
            steps.append(self.out(self.dropout(h)))
        return torch.stack(steps, dim=1)
