"""Audio encoders: log-mel features ``(B, n_mels, T)`` + frame mask -> tokens ``(B, T', D)``.

Waveform loading, resampling and the mel transform happen in the data pipeline
(``mmtrain.data.transforms.audio``), so encoders see features and the frame mask.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmtrain.contracts import Features


class MelCNNEncoder(nn.Module):
    """A small 2-D CNN over the log-mel image (PANNs-like), pooled over frequency.

    Each block halves time and frequency; the output has one token per ``2**len(channels)``
    input frames. Padded frames are zeroed before each block, and an output token is real when
    any frame it covers is real.

    Args:
        n_mels: mel bins of the input (wired by build.py from the audio transform).
        channels: output channels of each conv block; the last one is ``out_dim``.
        dropout: dropout on the output tokens.

    Raises:
        ValueError: if ``channels`` is empty or ``n_mels`` is too small for the blocks.
    """

    def __init__(self, n_mels: int, channels: list[int] = (32, 64, 128), dropout: float = 0.0):
        super().__init__()
        channels = list(channels)
        if not channels or min(channels) <= 0:
            raise ValueError(f"channels must be non-empty and positive, got {channels}")
        if n_mels < 2 ** len(channels):
            raise ValueError(f"n_mels={n_mels} is too small for {len(channels)} pooling blocks")
        self.blocks = nn.ModuleList()
        in_ch = 1
        for out_ch in channels:
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                )
            )
            in_ch = out_ch
        self.input_norm = nn.BatchNorm2d(1)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = channels[-1]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode log-mels ``x`` (B, n_mels, T); ``mask`` (B, T) is True on real frames."""
        h = self.input_norm(x.unsqueeze(1))  # (B, 1, F, T)
        m = mask
        for block in self.blocks:
            if m is not None:
                h = h * m[:, None, None, : h.shape[-1]].to(h.dtype)  # padding stays silent
            h = block(h)
            if m is not None:  # after ReLU h >= 0, so zeroed padding never wins the max-pool
                h = h * m[:, None, None, : h.shape[-1]].to(h.dtype)
            h = F.max_pool2d(h, kernel_size=2, ceil_mode=True)
            if m is not None:
                m = F.max_pool1d(m[:, None].float(), kernel_size=2, ceil_mode=True)[:, 0] > 0
        tokens = h.mean(dim=2).transpose(1, 2)  # (B, T', D): frequency pooled away
        return Features(self.dropout(tokens), m)
