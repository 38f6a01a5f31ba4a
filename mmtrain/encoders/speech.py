"""Speech encoders for CTC: log-mels ``(B, n_mels, T)`` -> about ``T / 4`` tokens ``(B, N, D)``.

Both encoders follow the ESPnet / WeNet recipe: a per-mel-bin input normalisation
(:class:`MaskedMelNorm`), a convolutional front end that cuts the frame rate by ``factor``
(:class:`ConvSubsampling`, one token per 40 ms at a 10 ms hop and ``factor=4``), then a context
network over the tokens: a Transformer (:class:`ConvTransformerEncoder`) or a bidirectional GRU
(:class:`ConvBiGRUEncoder`). The token sequence is what a CTC head reads, so its length matters:
``N = ConvSubsampling.output_length(T)``, and a CTC target needs ``N >= target length``.

Masks: real frames come first in each row of ``mask`` (as the collate function lays them out);
the number of real frames is ``mask.sum(1)``. Padding never changes the outputs on real tokens
(see :class:`ConvSubsampling`), a clip without any real frame gives finite (zero) tokens, all
masked, and a clip shorter than the convolutions' receptive field still gives one token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtrain.contracts import Features
from mmtrain.encoders import FreezableEncoder
from mmtrain.encoders.text import run_packed
from mmtrain.encoders.transformer import MaskedTransformer


def _check_positive(**sizes: int) -> None:
    """Raise a ValueError listing every size if one of them is not positive."""
    if min(sizes.values()) <= 0:
        got = ", ".join(f"{name}={value}" for name, value in sizes.items())
        raise ValueError(f"sizes must be positive, got {got}")


def _check_input(x: Tensor, mask: Tensor | None, n_mels: int) -> None:
    """Raise a ValueError unless ``x`` is ``(B, n_mels, T)``, ``mask`` None or ``(B, T)`` bool."""
    if x.ndim != 3 or x.shape[1] != n_mels:
        raise ValueError(f"expected log-mels (B, {n_mels}, T), got shape {tuple(x.shape)}")
    if mask is not None and (mask.shape != (x.shape[0], x.shape[2]) or mask.dtype != torch.bool):
        raise ValueError(
            f"expected a bool mask of shape {(x.shape[0], x.shape[2])}, got {mask.dtype} of "
            f"shape {tuple(mask.shape)}"
        )


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """The fixed position encoding of Vaswani et al. (2017), for any length.

    Args:
        length: number of positions.
        dim: encoding width; even columns hold ``sin(pos / 10000**(2i / dim))``, odd ones
            ``cos`` of the same angle.
        device: where to build it.

    Returns:
        ``(length, dim)`` float32 tensor.
    """
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (N, 1)
    rates = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # (ceil(D / 2),)
    angles = pos * rates  # (N, ceil(D / 2))
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]  # (N, D)


class MaskedMelNorm(nn.Module):
    """BatchNorm over mel bins whose statistics come from the real frames only.

    The data pipeline gives raw ``log(mel + 1e-6)`` values (silence near -14, and low bins far
    louder than high ones), so each bin is normalised, like ESPnet's global CMVN, but with
    running statistics learned in training as in ``nn.BatchNorm1d(n_mels)``. Unlike BatchNorm,
    padded frames do not enter the statistics, so even in training mode the real frames' outputs
    do not depend on how much padding the batch has. A training batch without any real frame
    uses (and keeps) the running statistics. Padded frames come out as zeros. Statistics are per
    device (no synchronisation across DDP ranks).

    Args:
        n_mels: mel bins.
        momentum: weight of the current batch in the running statistics.
        eps: added to the variance.

    Raises:
        ValueError: for a non-positive ``n_mels`` or a momentum outside ``(0, 1]``.
    """

    def __init__(self, n_mels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        _check_positive(n_mels=n_mels)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.weight = nn.Parameter(torch.ones(n_mels))
        self.bias = nn.Parameter(torch.zeros(n_mels))
        self.register_buffer("running_mean", torch.zeros(n_mels))
        self.register_buffer("running_var", torch.ones(n_mels))
        self.momentum = momentum
        self.eps = eps

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalise ``x`` (B, n_mels, T); ``mask`` (B, T) is True on real frames."""
        if mask is None:
            mask = torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
        real = mask[:, None, :]  # (B, 1, T)
        x = x.masked_fill(~real, 0.0)  # whatever the padding holds (even NaN) is gone
        if self.training:
            weight = real.to(x.dtype)
            count = weight.sum()
            mean = x.sum(dim=(0, 2)) / count.clamp_min(1.0)  # (F,)
            var = ((x - mean[:, None]) ** 2 * weight).sum(dim=(0, 2)) / count.clamp_min(1.0)
            # No real frame: keep the running statistics (torch.where, not an `if`: no sync).
            seen = count > 0
            mean = torch.where(seen, mean, self.running_mean)
            var = torch.where(seen, var, self.running_var)
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp_min(1.0)
                update = (count > 1).to(x.dtype) * self.momentum
                self.running_mean.lerp_(mean.detach(), update)
                self.running_var.lerp_(unbiased.detach(), update)
        else:
            mean, var = self.running_mean, self.running_var
        h = (x - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)  # (B, F, T)
        h = h * self.weight[:, None] + self.bias[:, None]
        return h.masked_fill(~real, 0.0)


class ConvSubsampling(nn.Module):
    """Strided 2-D convolutions over (time, frequency), then a Linear to ``dim``.

    ESPnet / WeNet ``Conv2dSubsampling4`` for ``factor=4``: ``log2(factor)`` blocks of
    ``Conv2d(kernel 3, stride 2, no padding) + ReLU`` over the ``(T, n_mels)`` image, the channels
    and remaining frequency bins of each frame flattened (channel-major) into a ``Linear``. Each
    block maps ``L`` frames to ``(L - 1) // 2`` (that is ``floor((L - 3) / 2) + 1``): 100 frames
    become 49, then 24 tokens.

    Short clips: two blocks need at least 7 frames (``2**(k + 1) - 1`` for ``k`` blocks). A clip
    with ``1 <= L < 7`` real frames is zero-padded to 7 (internally, and in the batch its padding
    already reads as zeros), so it gives exactly one token rather than none; a clip with no real
    frame gives none (all tokens masked). :meth:`output_lengths` gives the token counts.

    Padding never changes the outputs on real tokens, whatever the padding holds, in training
    mode too (nothing here keeps batch statistics). Three things make it so:

    - Exact lengths: the convolutions are unpadded and the token mask follows their arithmetic,
      so a real output frame ``t`` of a block reads frames ``2t..2t+2``, all real.
    - The input's padded frames are zeroed, with ``masked_fill`` rather than a multiply: a
      ``log(0) = -inf`` fill or NaN garbage would otherwise turn the padded activations into
      NaN, and as a convolution's weight gradient sums ``grad * input`` over every position,
      ``0 * NaN`` there would poison the weights even though those outputs are masked. Zeros
      are also what a short clip's frames up to ``min_frames`` hold in a batch: the same zeros
      as its internal padding when it is run alone.
    - Each block's padded output frames, and the padded tokens, are zeroed too (with the mask
      downsampled to that block). Given the exact lengths this changes no real token; it keeps
      every padded activation at exactly zero, independent of the padding, and keeps the
      guarantee should a block become a padded convolution, which reads past a clip's end.

    Args:
        n_mels: mel bins of the input.
        dim: output token width (``out_dim``).
        channels: channels of every conv block; None uses ``dim`` (as ESPnet does).
        factor: time (and frequency) downsampling, a power of two >= 2; 4 is the CTC standard.

    Raises:
        ValueError: for a non-positive size, a ``factor`` that is not a power of two >= 2, or
            fewer than ``2 * factor - 1`` mel bins.
    """

    def __init__(self, n_mels: int, dim: int, channels: int | None = None, factor: int = 4) -> None:
        super().__init__()
        channels = dim if channels is None else channels
        _check_positive(n_mels=n_mels, dim=dim, channels=channels)
        if factor < 2 or factor & (factor - 1):
            raise ValueError(f"factor must be a power of two >= 2 (2, 4, 8...), got {factor}")
        self.num_blocks = factor.bit_length() - 1  # log2(factor)
        self.min_frames = 2 * factor - 1  # receptive field: 7 frames for factor 4
        if n_mels < self.min_frames:
            raise ValueError(
                f"n_mels={n_mels} is too few mel bins for factor={factor}: the convolutions "
                f"need at least {self.min_frames}"
            )
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, kernel_size=3, stride=2)
            for i in range(self.num_blocks)
        )
        freq = n_mels
        for _ in range(self.num_blocks):
            freq = (freq - 1) // 2
        self.out = nn.Linear(channels * freq, dim)
        self.n_mels = n_mels
        self.factor = factor
        self.out_dim = dim

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Token counts of clips with ``lengths`` real frames (0 stays 0, 1..6 give 1)."""
        out = torch.where(lengths > 0, lengths.clamp_min(self.min_frames), 0)
        for _ in range(self.num_blocks):
            out = (out - 1).div(2, rounding_mode="floor").clamp_min(0)
        return out

    def output_length(self, frames: int) -> int:
        """Token count of a ``frames``-frame clip (the ``N`` of a ``(B, n_mels, T)`` batch)."""
        return int(self.output_lengths(torch.tensor(frames)))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Subsample log-mels ``x`` (B, n_mels, T); ``mask`` (B, T) is True on real frames.

        Returns:
            ``(B, N, dim)`` tokens, ``N = output_length(T)``, zero where padded, and their
            ``(B, N)`` bool mask (None when ``mask`` is None).

        Raises:
            ValueError: if ``x`` or ``mask`` has the wrong shape, or ``mask`` is not bool.
        """
        _check_input(x, mask, self.n_mels)
        fill = self.min_frames - x.shape[2]
        if fill > 0:  # too short for the convolutions: zero frames, padding in the mask
            x = F.pad(x, (0, fill))
            mask = None if mask is None else F.pad(mask, (0, fill), value=False)
        h = x.transpose(1, 2).unsqueeze(1)  # (B, 1, T, F): time as the image height
        lengths = None
        if mask is not None:
            h = h.masked_fill(~mask[:, None, :, None], 0.0)
            # A short clip's frames up to min_frames read as zeros: its own padding.
            lengths = mask.sum(dim=1)
            lengths = torch.where(lengths > 0, lengths.clamp_min(self.min_frames), 0)  # (B,)
        frame_mask = None
        for conv in self.convs:
            h = F.relu(conv(h))  # (B, C, T', F')
            if lengths is not None:
                lengths = (lengths - 1).div(2, rounding_mode="floor").clamp_min(0)
                frame_mask = torch.arange(h.shape[2], device=h.device) < lengths[:, None]
                h = h.masked_fill(~frame_mask[:, None, :, None], 0.0)  # (B, C, T', F')
        tokens = self.out(h.transpose(1, 2).flatten(2))  # (B, N, C * F') -> (B, N, D)
        if frame_mask is not None:
            tokens = tokens.masked_fill(~frame_mask[..., None], 0.0)
        return tokens, frame_mask


class ConvTransformerEncoder(FreezableEncoder):
    """Conv subsampling + sinusoidal positions + a pre-norm Transformer (ESPnet/WeNet style).

    :class:`MaskedMelNorm` (optional) and :class:`ConvSubsampling` give ``N ~ T / factor``
    tokens; fixed sinusoidal positions (any length works, no ``max_frames``) are added to them,
    then dropout, then :class:`~mmtrain.encoders.transformer.MaskedTransformer`, in which padded
    tokens are never attention keys and come out as zeros. The positions are added without
    ESPnet's ``sqrt(dim)`` scale: that scale is meant for small-init embeddings, while the
    subsampling's Linear gives unit-scale tokens. In eval mode a padded and an unpadded clip
    give the same tokens; a clip without real frames gives zeros (all masked).

    Args:
        n_mels: mel bins of the input (wired by build.py from the audio transform).
        dim: model width (``out_dim``).
        layers: Transformer layers.
        heads: attention heads; must divide ``dim``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout on the subsampled tokens and inside the layers.
        channels: channels of the conv blocks; None uses ``dim``.
        factor: time downsampling of the conv front end (power of two, 4 for CTC).
        input_norm: normalise each mel bin first (:class:`MaskedMelNorm`); turn off when the
            data pipeline already does.
        freeze: fix every weight and keep eval mode (see
            :class:`~mmtrain.encoders.FreezableEncoder`).

    Raises:
        ValueError: for a non-positive size, ``dim`` not divisible by ``heads``, or a bad
            ``factor`` / ``n_mels`` (see :class:`ConvSubsampling`).
    """

    def __init__(
        self,
        n_mels: int,
        dim: int = 256,
        layers: int = 6,
        heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.1,
        channels: int | None = None,
        factor: int = 4,
        input_norm: bool = True,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        self.norm = MaskedMelNorm(n_mels) if input_norm else None
        self.subsample = ConvSubsampling(n_mels, dim, channels, factor)
        self.encoder = MaskedTransformer(dim, layers, heads, ff_mult, dropout)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim
        self._set_frozen(freeze)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode log-mels ``x`` (B, n_mels, T); ``mask`` (B, T) is True on real frames.

        Returns:
            ``Features`` with ``(B, N, dim)`` tokens, ``N = subsample.output_length(T)``, and
            their ``(B, N)`` mask (None when ``mask`` is None).

        Raises:
            ValueError: if ``x`` or ``mask`` has the wrong shape, or ``mask`` is not bool.
        """
        _check_input(x, mask, self.subsample.n_mels)
        if self.norm is not None:
            x = self.norm(x, mask)
        tokens, token_mask = self.subsample(x, mask)  # (B, N, D), (B, N)
        pos = sinusoidal_positions(tokens.shape[1], tokens.shape[2], tokens.device)
        h = self.dropout(tokens + pos.to(tokens.dtype))  # (B, N, D)
        return Features(self.encoder(h, token_mask), token_mask)


class ConvBiGRUEncoder(FreezableEncoder):
    """Conv subsampling + a bidirectional GRU over the real tokens only (DeepSpeech-2 style).

    :class:`MaskedMelNorm` (optional) and :class:`ConvSubsampling` give ``N ~ T / factor``
    tokens of width ``dim``; the GRU runs over packed sequences
    (:func:`~mmtrain.encoders.text.run_packed`), so padding never reaches it, in either
    direction, and the backward direction starts at a clip's last real token. The output is the
    concatenated forward and backward states, ``out_dim = 2 * hidden``, with no projection: a
    CTC head has its own Linear to the vocabulary. Padded tokens and a clip without real frames
    give zeros (all masked).

    Args:
        n_mels: mel bins of the input (wired by build.py from the audio transform).
        dim: width of the subsampled tokens that the GRU reads.
        hidden: GRU hidden size per direction.
        layers: stacked GRU layers.
        dropout: dropout on the subsampled tokens and between GRU layers.
        channels: channels of the conv blocks; None uses ``dim``.
        factor: time downsampling of the conv front end (power of two, 4 for CTC).
        input_norm: normalise each mel bin first (:class:`MaskedMelNorm`); turn off when the
            data pipeline already does.
        freeze: fix every weight and keep eval mode (see
            :class:`~mmtrain.encoders.FreezableEncoder`).

    Raises:
        ValueError: for a non-positive size or a bad ``factor`` / ``n_mels`` (see
            :class:`ConvSubsampling`).
    """

    def __init__(
        self,
        n_mels: int,
        dim: int = 256,
        hidden: int = 256,
        layers: int = 3,
        dropout: float = 0.1,
        channels: int | None = None,
        factor: int = 4,
        input_norm: bool = True,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(hidden=hidden, layers=layers)
        self.norm = MaskedMelNorm(n_mels) if input_norm else None
        self.subsample = ConvSubsampling(n_mels, dim, channels, factor)
        self.dropout = nn.Dropout(dropout)
        self.rnn = nn.GRU(
            dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.out_dim = 2 * hidden
        self._set_frozen(freeze)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode log-mels ``x`` (B, n_mels, T); ``mask`` (B, T) is True on real frames.

        Returns:
            ``Features`` with ``(B, N, 2 * hidden)`` tokens, ``N = subsample.output_length(T)``,
            and their ``(B, N)`` mask (None when ``mask`` is None).

        Raises:
            ValueError: if ``x`` or ``mask`` has the wrong shape, or ``mask`` is not bool.
        """
        _check_input(x, mask, self.subsample.n_mels)
        if self.norm is not None:
            x = self.norm(x, mask)
        tokens, token_mask = self.subsample(x, mask)  # (B, N, D), (B, N)
        out = run_packed(self.rnn, self.dropout(tokens), token_mask)  # (B, N, 2H)
        if token_mask is not None:
            # run_packed gives a clip without real tokens one step; its output is masked: zero it.
            out = out.masked_fill(~token_mask[..., None], 0.0)
        return Features(out, token_mask)
