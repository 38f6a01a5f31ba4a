"""Text encoders: token ids ``(B, L)`` long + mask -> token features ``(B, L, D)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmtrain.contracts import Features
from mmtrain.encoders import FreezableEncoder
from mmtrain.encoders.transformer import MaskedTransformer


def _check_positive(**sizes: int) -> None:
    """Raise a ValueError listing every size if one of them is not positive."""
    if min(sizes.values()) <= 0:
        got = ", ".join(f"{name}={value}" for name, value in sizes.items())
        raise ValueError(f"sizes must be positive, got {got}")


def run_packed(rnn: nn.RNNBase, emb: Tensor, mask: Tensor | None = None) -> Tensor:
    """Run a batch-first recurrent net over the real tokens of ``emb`` only.

    The sequences are packed by length, so padding never reaches ``rnn`` (a padded and an
    unpadded sample give the same outputs, in both directions of a bidirectional net) and the
    outputs at padded positions are zero. Real tokens must come first in each row, as the
    collate function lays them out.

    Args:
        rnn: an ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN`` built with ``batch_first=True``.
        emb: ``(B, L, E)`` embedded tokens.
        mask: ``(B, L)`` bool, True on real tokens; None when every token is real.

    Returns:
        ``(B, L, D)`` outputs, ``D`` = hidden size times the number of directions.
    """
    if mask is None:
        out, _ = rnn(emb)
        return out
    if torch.compiler.is_exporting():  # mmtrain export: packing is data-dependent
        return run_aligned(rnn, emb, mask)
    # Lengths go to the CPU for packing; empty texts get length 1 and stay masked out.
    lengths = mask.sum(dim=1).clamp_min(1).cpu()
    packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=emb.shape[1])  # (B, L, D)
    return out


def run_aligned(rnn: nn.RNNBase, emb: Tensor, mask: Tensor) -> Tensor:
    """What :func:`run_packed` computes, without packing, so that ``torch.export`` and ONNX
    can trace it (``mmtrain export``): the forward direction runs over the rows as they are
    (padding comes after the real tokens, so it never reaches their outputs), the backward
    direction over the rows shifted so that their real tokens end the row (it starts on them).

    Raises:
        ValueError: for a bidirectional net of several layers (each layer would need both
            directions of the one below, aligned apart).
    """
    if rnn.bidirectional and rnn.num_layers > 1:
        raise ValueError(
            f"a bidirectional {type(rnn).__name__} of {rnn.num_layers} layers is not traceable "
            "with packed sequences; export a one-layer or unidirectional one"
        )
    length, positions = emb.shape[1], torch.arange(emb.shape[1], device=emb.device)
    lengths = mask.sum(dim=1).clamp_min(1)  # (B,), empty texts: 1, as when packed
    out = rnn(emb)[0]  # (B, L, D * directions)
    if rnn.bidirectional:
        hidden = out.shape[-1] // 2
        ending = (positions[None, :] + lengths[:, None]) % length  # real tokens last: (B, L)
        shifted = emb.gather(1, ending[..., None].expand(-1, -1, emb.shape[-1]))
        back = rnn(shifted)[0][..., hidden:]
        starting = (positions[None, :] - lengths[:, None]) % length  # and back: (B, L)
        back = back.gather(1, starting[..., None].expand(-1, -1, hidden))
        out = torch.cat([out[..., :hidden], back], dim=-1)
    real = positions[None, :] < lengths[:, None]  # (B, L)
    return out * real[..., None].to(out.dtype)


class _RNNTextEncoder(FreezableEncoder):
    """Token embedding followed by a recurrent net (``_RNN``) over the real tokens only.

    Padding never reaches the RNN (sequences are packed by length, see :func:`run_packed`), so a
    padded and an unpadded sample give the same features.

    Args:
        vocab_size: number of token ids (wired by build.py from the tokenizer).
        embed_dim: embedding size.
        hidden_dim: hidden size per direction.
        num_layers: stacked RNN layers.
        bidirectional: run a backward RNN too; ``out_dim`` doubles.
        dropout: dropout on embeddings and between RNN layers.
        pad_id: id of the padding token (its embedding is kept at zero).
        freeze: fix every weight and keep eval mode (see
            :class:`~mmtrain.encoders.FreezableEncoder`).

    Raises:
        ValueError: for a non-positive size.
    """

    _RNN: type[nn.RNNBase]

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 64,
        hidden_dim: int = 64,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        pad_id: int = 0,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(
            vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=hidden_dim, num_layers=num_layers
        )
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.rnn = self._RNN(
            embed_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_dim = hidden_dim * (2 if bidirectional else 1)
        self._set_frozen(freeze)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode token ids ``x`` (B, L); ``mask`` (B, L) is True on real tokens."""
        emb = self.dropout(self.embed(x))  # (B, L, E)
        return Features(run_packed(self.rnn, emb, mask), mask)  # (B, L, D)


class GRUTextEncoder(_RNNTextEncoder):
    """Token embedding + (bi)GRU over the real tokens; arguments as :class:`_RNNTextEncoder`."""

    _RNN = nn.GRU


class LSTMTextEncoder(_RNNTextEncoder):
    """Token embedding + (bi)LSTM over the real tokens; arguments as :class:`_RNNTextEncoder`."""

    _RNN = nn.LSTM


class TransformerTextEncoder(FreezableEncoder):
    """Token embedding + learned positions + a pre-norm Transformer encoder.

    Padded tokens are excluded as attention keys and their outputs are zero
    (:class:`~mmtrain.encoders.transformer.MaskedTransformer`), so in eval mode a padded and an
    unpadded sample give the same features at the real positions.

    Args:
        vocab_size: number of token ids (wired by build.py from the tokenizer).
        dim: model width (``out_dim``).
        num_layers: encoder layers.
        num_heads: attention heads; must divide ``dim``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout on the embeddings and inside the layers.
        max_length: longest text (in tokens) that has a position embedding; keep it at least the
            tokenizer's ``max_length``.
        pad_id: id of the padding token (its embedding is kept at zero).
        freeze: fix every weight and keep eval mode (see
            :class:`~mmtrain.encoders.FreezableEncoder`).

    Raises:
        ValueError: for a non-positive size, or ``dim`` not divisible by ``num_heads``.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.1,
        max_length: int = 256,
        pad_id: int = 0,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(vocab_size=vocab_size, max_length=max_length)
        self.encoder = MaskedTransformer(dim, num_layers, num_heads, ff_mult, dropout)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos = nn.Embedding(max_length, dim)
        # Small embeddings (GPT-2 style), as in the Transformer caption head.
        for table in (self.embed, self.pos):
            nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.dropout = nn.Dropout(dropout)
        self.max_length = max_length
        self.out_dim = dim
        self._set_frozen(freeze)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode token ids ``x`` (B, L); ``mask`` (B, L) is True on real tokens.

        Raises:
            ValueError: if ``L`` is longer than ``max_length``.
        """
        length = x.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"text of {length} tokens is longer than max_length={self.max_length} of "
                "TransformerTextEncoder; raise encoder.text.max_length or lower the tokenizer's"
            )
        positions = torch.arange(length, device=x.device)
        h = self.dropout(self.embed(x) + self.pos(positions))  # (B, L, D)
        return Features(self.encoder(h, mask), mask)  # (B, L, D)
