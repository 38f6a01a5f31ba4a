"""Text encoders: token ids ``(B, L)`` long + mask -> token features ``(B, L, D)``."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmtrain.contracts import Features


class GRUTextEncoder(nn.Module):
    """Token embedding followed by a (bi)GRU over the real tokens only.

    Padding never reaches the GRU (sequences are packed by length), so a padded and an unpadded
    sample give the same features.

    Args:
        vocab_size: number of token ids (wired by build.py from the tokenizer).
        embed_dim: embedding size.
        hidden_dim: GRU hidden size per direction.
        num_layers: stacked GRU layers.
        bidirectional: run a backward GRU too; ``out_dim`` doubles.
        dropout: dropout on embeddings and between GRU layers.
        pad_id: id of the padding token (its embedding is kept at zero).

    Raises:
        ValueError: for a non-positive size.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 64,
        hidden_dim: int = 64,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if min(vocab_size, embed_dim, hidden_dim, num_layers) <= 0:
            raise ValueError(
                f"sizes must be positive, got vocab_size={vocab_size}, embed_dim={embed_dim}, "
                f"hidden_dim={hidden_dim}, num_layers={num_layers}"
            )
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(
            embed_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_dim = hidden_dim * (2 if bidirectional else 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode token ids ``x`` (B, L); ``mask`` (B, L) is True on real tokens."""
        emb = self.dropout(self.embed(x))  # (B, L, E)
        if mask is None:
            out, _ = self.gru(emb)
            return Features(out, None)
        # Lengths go to the CPU for packing; empty texts get length 1 and stay masked out.
        lengths = mask.sum(dim=1).clamp_min(1).cpu()
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, L, D)
        return Features(out, mask)
