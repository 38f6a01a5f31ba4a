"""Audio preprocessing: mono mix, resampling and log-mel features with torchaudio."""

from __future__ import annotations

import numpy as np
import torch
import torchaudio
from torch import Tensor


class AudioTransform:
    """Waveform at any sample rate -> log-mel features ``(n_mels, frames)``.

    Channels are averaged to mono, the signal is resampled to ``sample_rate``
    (``torchaudio.transforms.Resample``, one cached kernel per input rate), cropped to
    ``max_seconds`` (a random window in training, the start otherwise) and turned into
    ``log(mel + 1e-6)``.

    Args:
        sample_rate: the rate every clip is resampled to.
        n_mels: mel bins.
        n_fft: FFT size.
        hop_length: hop between frames in samples; frames = samples // hop + 1.
        f_min: lowest mel frequency in Hz.
        f_max: highest mel frequency in Hz (None = Nyquist).
        max_seconds: crop longer clips to this length; None keeps everything.

    Raises:
        ValueError: for non-positive sizes.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: float | None = None,
        max_seconds: float | None = None,
    ) -> None:
        if min(sample_rate, n_mels, n_fft, hop_length) <= 0:
            raise ValueError(
                f"sizes must be positive, got sample_rate={sample_rate}, n_mels={n_mels}, "
                f"n_fft={n_fft}, hop_length={hop_length}"
            )
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.max_samples = None if max_seconds is None else int(max_seconds * sample_rate)
        self._resamplers: dict[int, torchaudio.transforms.Resample] = {}  # kernels, by rate
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
        )

    def waveform(self, samples: np.ndarray | Tensor, rate: int, train: bool = False) -> Tensor:
        """Mono, resampled (and cropped) waveform ``(T,)`` from ``(channels, T)`` samples."""
        wav = torch.as_tensor(samples, dtype=torch.float32)
        if wav.ndim == 2:
            wav = wav.mean(dim=0)
        if rate != self.sample_rate:
            if rate not in self._resamplers:
                self._resamplers[rate] = torchaudio.transforms.Resample(rate, self.sample_rate)
            wav = self._resamplers[rate](wav)
        if self.max_samples is not None and wav.shape[-1] > self.max_samples:
            start = (
                int(torch.randint(0, wav.shape[-1] - self.max_samples + 1, ()).item())
                if train
                else 0
            )
            wav = wav[start : start + self.max_samples]
        return wav

    def __call__(self, samples: np.ndarray | Tensor, rate: int, train: bool = False) -> Tensor:
        """Log-mel features ``(n_mels, frames)`` of one clip."""
        with torch.no_grad():
            return torch.log(self.mel(self.waveform(samples, rate, train)) + 1e-6)
