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

    SpecAugment (Park et al., 2019) is a training-time option, off by default: with ``train=True``
    and ``freq_mask > 0`` (or ``time_mask > 0``), ``num_masks`` frequency bands (time spans) of
    random width in ``[0, freq_mask)`` (``[0, time_mask)``) are masked with
    ``torchaudio.transforms.FrequencyMasking`` (``TimeMasking``). Masked values are set to the
    clip's mean log-mel, not to 0: in the log domain 0 is an arbitrary loudness, while the mean
    keeps the masked cells neutral for the encoder's input normalisation. Evaluation and
    prediction (``train=False``) never mask.

    Args:
        sample_rate: the rate every clip is resampled to.
        n_mels: mel bins.
        n_fft: FFT size.
        hop_length: hop between frames in samples; frames = samples // hop + 1.
        f_min: lowest mel frequency in Hz.
        f_max: highest mel frequency in Hz (None = Nyquist).
        max_seconds: crop longer clips to this length; None keeps everything.
        freq_mask: SpecAugment's largest frequency mask width F in mel bins (0 = none);
            at most ``n_mels``.
        time_mask: SpecAugment's largest time mask width T in frames (0 = none).
        num_masks: how many frequency masks and how many time masks each clip gets.

    Raises:
        ValueError: for non-positive sizes, negative mask widths, ``freq_mask > n_mels`` or
            ``num_masks < 1``.
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
        freq_mask: int = 0,
        time_mask: int = 0,
        num_masks: int = 1,
    ) -> None:
        if min(sample_rate, n_mels, n_fft, hop_length) <= 0:
            raise ValueError(
                f"sizes must be positive, got sample_rate={sample_rate}, n_mels={n_mels}, "
                f"n_fft={n_fft}, hop_length={hop_length}"
            )
        if min(freq_mask, time_mask) < 0 or freq_mask > n_mels or num_masks < 1:
            raise ValueError(
                f"SpecAugment needs 0 <= freq_mask <= n_mels, time_mask >= 0 and num_masks >= 1, "
                f"got freq_mask={freq_mask}, n_mels={n_mels}, time_mask={time_mask}, "
                f"num_masks={num_masks}"
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
        # SpecAugment, training only: the maskings that are switched on (width > 0).
        self.spec_augment: list[torch.nn.Module] = []
        if freq_mask > 0:
            self.spec_augment.append(torchaudio.transforms.FrequencyMasking(freq_mask))
        if time_mask > 0:
            self.spec_augment.append(torchaudio.transforms.TimeMasking(time_mask))
        self.num_masks = num_masks

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
        """Log-mel features ``(n_mels, frames)`` of one clip, SpecAugmented when ``train``."""
        with torch.no_grad():
            feats = torch.log(self.mel(self.waveform(samples, rate, train)) + 1e-6)
            if train and self.spec_augment:
                fill = float(feats.mean())  # the unmasked clip's mean (see the class docstring)
                for masking in self.spec_augment:
                    for _ in range(self.num_masks):
                        feats = masking(feats, mask_value=fill)
            return feats
