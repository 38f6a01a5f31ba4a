"""Two-stream co-attention (ViLBERT, LXMERT): each modality's tokens attend to the others'."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class CoAttentionBlock(nn.Module):
    """One stream's update: cross-attention to the other streams, then a feed-forward net.

    Pre-norm residual sub-layers. A sample with no real key (the other streams are all masked
    or absent) gets no attention update: its tokens pass the sub-layer unchanged.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        """``x (B, N, D)`` attends to ``context (B, K, D)`` (``context_mask (B, K)``, True=real)."""
        if context is not None and context_mask is not None:
            has_keys = context_mask.any(dim=1)  # (B,)
            # An all-masked key row can give NaN attention: unmask it, then drop its update.
            padding = ~context_mask & has_keys[:, None]  # (B, K)
            kv = self.norm_kv(context)
            update, _ = self.attn(
                self.norm_q(x), kv, kv, key_padding_mask=padding, need_weights=False
            )
            x = x + self.drop(update) * has_keys[:, None, None].to(x.dtype)
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class CrossAttentionFusion(nn.Module):
    """Co-attention: every modality's token stream attends to the other streams, layer by layer.

    Each modality's tokens go through ``Linear(in_dim, dim)``; then, ``num_layers`` times, every
    stream is updated by its own :class:`CoAttentionBlock` whose queries are the stream and whose
    keys and values are the concatenation of the other streams (with their key padding mask);
    all streams are updated from the previous layer's streams. With two modalities this is the
    ViLBERT/LXMERT co-attention layer. The output is the concatenation of the final streams
    (each after a LayerNorm) with their masks, ``sum(N_m)`` tokens.

    Missing modalities: a modality absent from the input dict has no stream and is no key for
    the others; a modality fully masked for a sample is padding for that sample's keys, and its
    own output tokens are masked. A stream with nothing to attend to (every other modality
    absent or fully masked for that sample) skips the attention sub-layer (no NaN from an
    all-masked attention row) and keeps its own tokens through the feed-forward sub-layers: the
    real output tokens of a sample are those of removing the masked modality.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py), two or more.
        dim: model width, ``out_dim``.
        num_layers: number of co-attention layers.
        num_heads: attention heads; must divide ``dim``.
        ffn_dim: hidden width of the feed-forward sub-layers.
        dropout: dropout in attention and feed-forward sub-layers.

    Raises:
        ValueError: for fewer than two modalities, bad sizes, or (in ``forward``) no known
            modality in the input.
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        dim: int = 128,
        num_layers: int = 1,
        num_heads: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(in_dims) < 2:
            raise ValueError(f"CrossAttentionFusion needs two modalities or more, got {in_dims}")
        if num_layers < 1 or dim % num_heads:
            raise ValueError(
                f"need num_layers >= 1 and num_heads dividing dim, got num_layers={num_layers}, "
                f"dim={dim}, num_heads={num_heads}"
            )
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: CoAttentionBlock(dim, num_heads, ffn_dim, dropout) for m in in_dims})
            for _ in range(num_layers)
        )
        self.norm = nn.ModuleDict({m: nn.LayerNorm(dim) for m in in_dims})
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; the output has ``sum(N_m)`` tokens over the modalities present."""
        streams: dict[str, tuple[Tensor, Tensor]] = {}  # modality -> (tokens, mask)
        for m, proj in self.proj.items():
            if m in features:
                f = features[m]
                mask = f.mask
                if mask is None:
                    mask = torch.ones(f.tokens.shape[:2], dtype=torch.bool, device=f.tokens.device)
                streams[m] = (proj(f.tokens), mask)  # (B, N_m, dim), (B, N_m)
        if not streams:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        for layer in self.layers:
            updated = {}
            for m, (x, mask) in streams.items():
                others = [streams[o] for o in streams if o != m]
                context = torch.cat([t for t, _ in others], dim=1) if others else None
                context_mask = torch.cat([k for _, k in others], dim=1) if others else None
                updated[m] = (layer[m](x, context, context_mask), mask)
            streams = updated
        tokens = torch.cat([self.norm[m](x) for m, (x, _) in streams.items()], dim=1)
        if all(features[m].mask is None for m in streams):  # no mask in, none out (no sync)
            return Features(tokens, None)
        return Features(tokens, torch.cat([k for _, k in streams.values()], dim=1))
