"""Audio encoders: log-mel features ``(B, n_mels, T)`` + frame mask -> tokens ``(B, N, D)``.

Waveform loading, resampling and the mel transform happen in the data pipeline
(``mmtrain.data.transforms.audio``), so encoders see features and the frame mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtrain.contracts import Features
from mmtrain.encoders import FreezableEncoder
from mmtrain.encoders.transformer import MaskedTransformer


class MelCNNEncoder(FreezableEncoder):
    """A small 2-D CNN over the log-mel image (PANNs-like).

    Each block halves time and frequency; the output has one token per ``2**len(channels)``
    input frames. Padded frames are zeroed before each block, and an output token is real when
    any frame it covers is real.

    ``freq_pool`` says what becomes of the ``F' = ceil(n_mels / 2**len(channels))`` frequency
    rows left after the blocks: ``mean`` averages them (PANNs; a token is ``channels[-1]``
    wide), which makes the features blind to *where* in frequency a pattern is, beyond the
    blocks' receptive field (~22 bins with 3 blocks): fine for tones that differ in shape, but
    formants and pitch, which tell spoken words apart, are lost. ``flatten`` keeps every row:
    a token is ``channels[-1] * F'`` wide (the fusion projects it).

    Args:
        n_mels: mel bins of the input (wired by build.py from the audio transform).
        channels: output channels of each conv block.
        dropout: dropout on the output tokens.
        freq_pool: ``mean`` or ``flatten`` (see above).
        freeze: fix every weight and keep eval mode (see
            :class:`~mmtrain.encoders.FreezableEncoder`).

    Raises:
        ValueError: if ``channels`` is empty, ``n_mels`` is too small for the blocks or
            ``freq_pool`` is unknown.
    """

    def __init__(
        self,
        n_mels: int,
        channels: list[int] = (32, 64, 128),
        dropout: float = 0.0,
        freq_pool: str = "mean",
        freeze: bool = False,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if not channels or min(channels) <= 0:
            raise ValueError(f"channels must be non-empty and positive, got {channels}")
        if n_mels < 2 ** len(channels):
            raise ValueError(f"n_mels={n_mels} is too small for {len(channels)} pooling blocks")
        if freq_pool not in ("mean", "flatten"):
            raise ValueError(f"freq_pool must be 'mean' or 'flatten', got {freq_pool!r}")
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
        self.freq_pool = freq_pool
        rows = math.ceil(n_mels / 2 ** len(channels))  # frequency rows left (ceil-mode pools)
        self.out_dim = channels[-1] * (rows if freq_pool == "flatten" else 1)
        self._set_frozen(freeze)

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
        if self.freq_pool == "mean":
            tokens = h.mean(dim=2).transpose(1, 2)  # (B, T', C): frequency pooled away
        else:
            tokens = h.flatten(1, 2).transpose(1, 2)  # (B, T', C * F'): every row kept
        return Features(self.dropout(tokens), m)


class ASTEncoder(FreezableEncoder):
    """An AST-like Transformer over non-overlapping log-mel patches (Gong et al., 2021).

    The log-mel image goes through a BatchNorm2d input norm (as in :class:`MelCNNEncoder`), is
    cut into ``patch_freq x patch_time`` patches (a strided Conv2d), gets learned frequency and
    time position embeddings and a pre-norm Transformer encoder. Tokens come ordered by time,
    then frequency: token ``t * n_freq + f`` is time patch ``t``, frequency patch ``f``, with
    ``n_freq = n_mels // patch_freq``; a clip of ``T`` frames gives ``ceil(T / patch_time)``
    time patches (the last one zero-filled).

    Padding: padded frames are set to zero after the input norm, so a patch that mixes real and
    padded frames sees the same values as the end of an unpadded clip; a patch is real when any
    of its frames is real, and padded patches are left out as attention keys (their outputs are
    zero). In eval mode a padded and an unpadded clip give the same tokens; in training the
    input norm's batch statistics include the padded frames, as in :class:`MelCNNEncoder`.

    Args:
        n_mels: mel bins of the input (wired by build.py from the audio transform); a multiple
            of ``patch_freq``.
        patch_freq: patch height in mel bins.
        patch_time: patch width in frames.
        dim: model width (``out_dim``).
        num_layers: encoder layers.
        num_heads: attention heads; must divide ``dim``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout on the patch embeddings and inside the layers.
        max_frames: longest input (in frames, padding included) that has time position
            embeddings; at a 10 ms hop, 1024 frames is about 10 s.
        freeze: fix every weight and keep eval mode (see
            :class:`~mmtrain.encoders.FreezableEncoder`).

    Raises:
        ValueError: for a non-positive size, ``n_mels`` not a multiple of ``patch_freq``, or
            ``dim`` not divisible by ``num_heads``.
    """

    def __init__(
        self,
        n_mels: int,
        patch_freq: int = 16,
        patch_time: int = 16,
        dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.0,
        max_frames: int = 1024,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if min(n_mels, patch_freq, patch_time, max_frames) <= 0:
            raise ValueError(
                f"sizes must be positive, got n_mels={n_mels}, patch_freq={patch_freq}, "
                f"patch_time={patch_time}, max_frames={max_frames}"
            )
        if n_mels % patch_freq:
            raise ValueError(
                f"n_mels={n_mels} must be a multiple of patch_freq={patch_freq}; choose a "
                f"patch_freq that divides it (e.g. {math.gcd(n_mels, patch_freq)})"
            )
        self.encoder = MaskedTransformer(dim, num_layers, num_heads, ff_mult, dropout)
        self.input_norm = nn.BatchNorm2d(1)
        self.patch = nn.Conv2d(1, dim, (patch_freq, patch_time), stride=(patch_freq, patch_time))
        self.freq_pos = nn.Embedding(n_mels // patch_freq, dim)
        self.time_pos = nn.Embedding(math.ceil(max_frames / patch_time), dim)
        for table in (self.freq_pos, self.time_pos):
            nn.init.trunc_normal_(table.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.n_mels = n_mels
        self.patch_time = patch_time
        self.max_frames = max_frames
        self.out_dim = dim
        self._set_frozen(freeze)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode log-mels ``x`` (B, n_mels, T); ``mask`` (B, T) is True on real frames.

        Returns:
            ``Features`` with ``(B, ceil(T / patch_time) * n_mels // patch_freq, dim)`` tokens
            and their mask (None when ``mask`` is None).

        Raises:
            ValueError: if ``x`` has another number of mel bins, or more than ``max_frames``
                frames.
        """
        _, n_mels, frames = x.shape
        if n_mels != self.n_mels:
            raise ValueError(
                f"expected {self.n_mels} mel bins, got input of shape {tuple(x.shape)}"
            )
        if frames > self.max_frames:
            raise ValueError(
                f"{frames} frames is more than max_frames={self.max_frames} of ASTEncoder; raise "
                "encoder.audio.max_frames or crop the clips (data.audio.max_seconds)"
            )
        h = self.input_norm(x.unsqueeze(1))  # (B, 1, F, T)
        if mask is not None:  # padding reads as the zero of the end-of-clip fill below
            h = h * mask[:, None, None, :].to(h.dtype)
        fill = -frames % self.patch_time
        h = self.patch(F.pad(h, (0, fill)))  # (B, D, F', T')
        h = h.permute(0, 3, 2, 1)  # (B, T', F', D): time-major
        n_time, n_freq = h.shape[1], h.shape[2]
        time_ids = torch.arange(n_time, device=x.device)
        freq_ids = torch.arange(n_freq, device=x.device)
        h = h + self.time_pos(time_ids)[:, None] + self.freq_pos(freq_ids)  # (B, T', F', D)
        tokens = self.dropout(h.flatten(1, 2))  # (B, T' * F', D)
        token_mask = None
        if mask is not None:
            # A time patch is real when any of its frames is; each covers F' tokens.
            patch_mask = F.pad(mask, (0, fill)).view(mask.shape[0], n_time, -1).any(dim=2)
            token_mask = patch_mask.repeat_interleave(n_freq, dim=1)  # (B, T' * F')
        return Features(self.encoder(tokens, token_mask), token_mask)
