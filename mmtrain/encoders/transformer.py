"""The pre-norm Transformer stack shared by the Transformer encoders (text, audio).

Not an encoder itself (it has no input embedding): :class:`MaskedTransformer` maps already
embedded tokens and their mask to contextual tokens, with the padding handling that the
encoders' contract needs, in one place.
"""

from __future__ import annotations

from torch import Tensor, nn


class MaskedTransformer(nn.Module):
    """``nn.TransformerEncoder`` (batch first, pre-norm, GELU) + a final LayerNorm, padding-safe.

    Padded tokens are left out as attention keys (``src_key_padding_mask``), so they never change
    a real token's output, and their own outputs are set to zero. A sample without any real token
    attends to all of its tokens instead of to none (which would give NaN); its outputs are zeroed
    too, so it stays finite and masked out.

    Args:
        dim: token width.
        num_layers: encoder layers.
        num_heads: attention heads; must divide ``dim``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout inside the layers.

    Raises:
        ValueError: for a non-positive size, or ``dim`` not divisible by ``num_heads``.
    """

    def __init__(
        self, dim: int, num_layers: int, num_heads: int, ff_mult: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if min(dim, num_layers, num_heads, ff_mult) <= 0:
            raise ValueError(
                f"sizes must be positive, got dim={dim}, num_layers={num_layers}, "
                f"num_heads={num_heads}, ff_mult={ff_mult}"
            )
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        layer = nn.TransformerEncoderLayer(
            dim,
            num_heads,
            ff_mult * dim,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors are unavailable with norm_first (PyTorch would warn); padding is handled
        # by the key padding mask alone.
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)  # pre-norm layers leave the last residual un-normalised

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Contextual tokens ``(B, N, D)`` of ``x`` (B, N, D); ``mask`` (B, N) True on real ones."""
        if mask is None:
            return self.norm(self.layers(x))
        # True = ignore this key; a sample with no real token ignores none (see the class doc).
        padding = ~mask & mask.any(dim=1, keepdim=True)  # (B, N)
        h = self.norm(self.layers(x, src_key_padding_mask=padding))  # (B, N, D)
        return h * mask.unsqueeze(-1).to(h.dtype)
