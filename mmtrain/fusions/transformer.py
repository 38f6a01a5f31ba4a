"""Single-stream fusion: one Transformer encoder over the tokens of all modalities."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features


class TransformerFusion(nn.Module):
    """Concatenate every modality's tokens (plus an optional [CLS]) and run a Transformer on them.

    Single-stream, as in VisualBERT or UNITER: each modality's tokens go through
    ``Linear(in_dim, dim)`` plus a learned modality embedding, the sequences are concatenated
    after an optional learned [CLS] token, and ``num_layers`` pre-norm ``nn.TransformerEncoder``
    layers run over the whole sequence with the key padding mask. No position embedding is added:
    the encoders' tokens carry their own. The output is every token with its mask
    (``output="tokens"``, the [CLS] first when there is one), or the [CLS] token alone
    ``(B, 1, dim)`` (``output="cls"``).

    Missing modalities: a modality absent from the input dict contributes no tokens; a modality
    fully masked for a sample is padding for that sample, so no token attends to it and its
    output tokens stay masked: the other tokens (and the [CLS]) are those of removing it. A
    sample with no real token at all (possible only without [CLS]) attends to its padding to
    stay finite, and its output tokens are all masked.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: model width, ``out_dim``.
        num_layers: number of Transformer encoder layers.
        num_heads: attention heads; must divide ``dim``.
        ffn_dim: hidden width of the feed-forward sub-layers.
        dropout: dropout in the encoder layers.
        cls_token: prepend a learned [CLS] token.
        output: ``"tokens"`` (all tokens with the mask) or ``"cls"`` (needs ``cls_token``).

    Raises:
        ValueError: for an empty ``in_dims``, bad sizes, an unknown ``output``,
            ``output="cls"`` without ``cls_token``, or (in ``forward``) no known modality.
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.1,
        cls_token: bool = True,
        output: Literal["tokens", "cls"] = "tokens",
    ) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("TransformerFusion needs at least one modality, got in_dims={}")
        if num_layers < 1 or dim % num_heads:
            raise ValueError(
                f"need num_layers >= 1 and num_heads dividing dim, got num_layers={num_layers}, "
                f"dim={dim}, num_heads={num_heads}"
            )
        if output not in ("tokens", "cls") or (output == "cls" and not cls_token):
            raise ValueError(
                f"output must be 'tokens' or 'cls' (with cls_token=true), got output={output!r}, "
                f"cls_token={cls_token}"
            )
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.modality_embed = nn.ParameterDict(
            {m: nn.Parameter(0.02 * torch.randn(dim)) for m in in_dims}
        )
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim)) if cls_token else None
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, ffn_dim, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.output = output
        self.out_dim = dim

    def forward(self, features: dict[str, Features]) -> Features:
        """Fuse; ``output="tokens"`` gives ``[CLS] + sum(N_m)`` tokens, ``"cls"`` one."""
        tokens: list[Tensor] = []
        masks: list[Tensor] = []
        for m, proj in self.proj.items():
            if m not in features:
                continue
            f = features[m]
            tokens.append(proj(f.tokens) + self.modality_embed[m])  # (B, N_m, dim)
            masks.append(
                f.mask
                if f.mask is not None
                else torch.ones(f.tokens.shape[:2], dtype=torch.bool, device=f.tokens.device)
            )
        if not tokens:
            raise ValueError(f"no known modality in the input: got {sorted(features)}")
        if self.cls is not None:
            batch_size = tokens[0].shape[0]
            tokens.insert(0, self.cls.expand(batch_size, -1, -1))
            masks.insert(0, masks[0].new_ones(batch_size, 1))
        x = torch.cat(tokens, dim=1)  # (B, N, dim)
        mask = torch.cat(masks, dim=1)  # (B, N)
        # An all-padding row would make every attention row -inf (NaN): let it attend everywhere.
        padding = ~mask & mask.any(dim=1, keepdim=True)
        x = self.encoder(x, src_key_padding_mask=padding)  # (B, N, dim)
        if self.output == "cls":
            return Features(x[:, :1], None)  # (B, 1, dim)
        return Features(x, None if bool(mask.all()) else mask)
