"""Audio preprocessing: mono mix, resampling and log-mel features with torchaudio, or a
pretrained model's Hugging Face feature extractor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor

from mmtrain.errors import MMTrainError

WAVEFORM, WHISPER, AST = "waveform", "whisper", "ast"  # the feature extractors mmtrain batches
# AST's Kaldi fbank frames: 25 ms windows every 10 ms, only whole windows (snip_edges).
KALDI_WINDOW_MS, KALDI_SHIFT_MS = 25.0, 10.0


def load_feature_extractor(folder: str) -> tuple[Any, str]:
    """A Hugging Face feature extractor from ``folder`` (offline) and its kind.

    Args:
        folder: the model or feature extractor folder.

    Returns:
        ``(extractor, kind)``: ``"waveform"`` (``Wav2Vec2FeatureExtractor``: wav2vec 2.0,
        HuBERT, WavLM), ``"whisper"`` or ``"ast"``.

    Raises:
        MMTrainError: naming the folder, when transformers cannot load one from it, or it is
            another kind of extractor.
    """
    from transformers import (  # lazily: only runs that use one import transformers
        ASTFeatureExtractor,
        AutoFeatureExtractor,
        Wav2Vec2FeatureExtractor,
        WhisperFeatureExtractor,
    )

    try:
        extractor = AutoFeatureExtractor.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise MMTrainError(
            f"cannot load a feature extractor from {folder}: {first[:300]}"
        ) from None
    for cls, kind in (
        (Wav2Vec2FeatureExtractor, WAVEFORM),
        (WhisperFeatureExtractor, WHISPER),
        (ASTFeatureExtractor, AST),
    ):
        if isinstance(extractor, cls):
            if kind == WAVEFORM and extractor.feature_size != 1:
                raise MMTrainError(
                    f"{folder}: feature_size={extractor.feature_size}: a waveform extractor "
                    "gives 1 value per sample"
                )
            return extractor, kind
    raise MMTrainError(
        f"{folder}: {type(extractor).__name__} is not a feature extractor mmtrain batches "
        "(Wav2Vec2FeatureExtractor, WhisperFeatureExtractor, ASTFeatureExtractor)"
    )


class AudioTransform:
    """Waveform at any sample rate -> log-mel features ``(n_mels, frames)``, or what a
    pretrained model's feature extractor makes of it.

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

    With ``feature_extractor`` (the folder of a Hugging Face feature extractor, which a
    pretrained audio encoder sets) the mono, resampled, cropped clip goes through that
    extractor, called as a user calls it, and its ``sample_rate`` and ``n_mels`` must be the
    extractor's (:func:`mmtrain.utils.preprocessing.audio_keys_from_hf` gives them); ``n_fft``,
    ``hop_length``, ``f_min`` and ``f_max`` are the extractor's own:

    - ``Wav2Vec2FeatureExtractor`` (wav2vec 2.0, HuBERT, WavLM): the waveform ``(samples,)``,
      normalised per clip when the extractor says so; no SpecAugment (the models mask their
      own features);
    - ``WhisperFeatureExtractor``: log-mels ``(n_mels, 3000)``, padded to 30 s by the
      extractor;
    - ``ASTFeatureExtractor``: its ``(frames, mel_bins)`` fbank transposed to
      ``(mel_bins, frames)`` (1024 frames, padded or truncated by the extractor).

    SpecAugment applies to the log-mels of the last two as to mmtrain's own.
    :meth:`extract` also gives how many frames (samples) hold audio.

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
        feature_extractor: the folder of a Hugging Face feature extractor, or None for
            mmtrain's log-mels.

    Raises:
        ValueError: for non-positive sizes, negative mask widths, ``freq_mask > n_mels`` or
            ``num_masks < 1``; with a feature extractor, a ``sample_rate`` or ``n_mels`` that
            is not the extractor's, or SpecAugment on a waveform.
        MMTrainError: naming the folder, when ``feature_extractor`` holds no extractor that
            transformers loads offline, or another kind.
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
        feature_extractor: str | None = None,
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
        self.feature_extractor = feature_extractor
        self.extractor: Any = None  # the Hugging Face feature extractor, if any
        self.kind: str | None = None  # its kind: WAVEFORM, WHISPER or AST
        if feature_extractor is not None:
            self.extractor, self.kind = load_feature_extractor(feature_extractor)
            self._check_extractor(sample_rate, n_mels, freq_mask, time_mask)
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.max_samples = None if max_seconds is None else int(max_seconds * sample_rate)
        self._resamplers: dict[int, torchaudio.transforms.Resample] = {}  # kernels, by rate
        self.mel: torchaudio.transforms.MelSpectrogram | None = None  # an extractor's own
        if self.extractor is None:
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

    def _check_extractor(
        self, sample_rate: int, n_mels: int, freq_mask: int, time_mask: int
    ) -> None:
        """Check the keys against the loaded feature extractor.

        Raises:
            ValueError: for a sample rate or a number of mel bins that is not the extractor's,
                or SpecAugment on a waveform.
        """
        where = f"feature_extractor={self.feature_extractor}"
        rate = int(self.extractor.sampling_rate)
        if sample_rate != rate:
            raise ValueError(
                f"{where} takes {rate} Hz audio, got sample_rate={sample_rate}: set "
                f"sample_rate={rate} (clips are resampled to it)"
            )
        if self.kind == WAVEFORM:
            if freq_mask or time_mask:
                raise ValueError(
                    f"{where} gives a waveform: SpecAugment (freq_mask={freq_mask}, "
                    f"time_mask={time_mask}) needs log-mels"
                )
            return
        bins = int(
            self.extractor.feature_size if self.kind == WHISPER else self.extractor.num_mel_bins
        )
        if n_mels != bins:
            raise ValueError(
                f"{where} gives {bins} mel bins, got n_mels={n_mels}: set n_mels={bins}"
            )

    @property
    def frames(self) -> int | None:
        """The fixed number of frames of a Whisper or AST extractor's features; None when the
        length follows the clip."""
        if self.kind == WHISPER:
            return int(self.extractor.nb_max_frames)
        if self.kind == AST:
            return int(self.extractor.max_length)
        return None

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
        """Log-mel features ``(n_mels, frames)`` of one clip, SpecAugmented when ``train``; with
        a feature extractor, its features (see the class docstring)."""
        return self.extract(samples, rate, train)[0]

    def extract(
        self, samples: np.ndarray | Tensor, rate: int, train: bool = False
    ) -> tuple[Tensor, int]:
        """The features of one clip (:meth:`__call__`) and how many of their frames hold audio.

        Args:
            samples: ``(channels, T)`` or ``(T,)`` samples.
            rate: their sample rate.
            train: crop at random and SpecAugment (log-mels only).

        Returns:
            ``(features, length)``: ``(n_mels, frames)`` log-mels or a ``(samples,)`` waveform,
            and the frames (samples) of it that come from the clip rather than from padding.
        """
        with torch.no_grad():
            wav = self.waveform(samples, rate, train)
            if self.kind == WAVEFORM:
                out = self.extractor(
                    wav.numpy(), sampling_rate=self.sample_rate, return_tensors="np"
                )
                values = torch.from_numpy(np.asarray(out["input_values"][0], dtype=np.float32))
                return values, int(values.shape[-1])
            if self.kind == WHISPER:
                out = self.extractor(
                    wav.numpy(),
                    sampling_rate=self.sample_rate,
                    return_attention_mask=True,
                    return_tensors="np",
                )
                feats = torch.from_numpy(np.asarray(out["input_features"][0], dtype=np.float32))
                length = int(np.asarray(out["attention_mask"][0]).sum())
            elif self.kind == AST:
                frames = _kaldi_frames(wav.shape[-1], self.sample_rate)
                if frames == 0:  # torchaudio's fbank asserts on it: a bad sample instead
                    raise MMTrainError(
                        f"a clip of {wav.shape[-1]} samples at {self.sample_rate} Hz is shorter "
                        "than one 25 ms window of AST's features"
                    )
                out = self.extractor(
                    wav.numpy(), sampling_rate=self.sample_rate, return_tensors="np"
                )
                fbank = np.asarray(out["input_values"][0], dtype=np.float32)  # (frames, bins)
                feats = torch.from_numpy(fbank.T.copy())  # (bins, frames): the mel contract
                length = min(frames, feats.shape[-1])
            else:
                feats = torch.log(self.mel(wav) + 1e-6)
                length = int(feats.shape[-1])
            if train and self.spec_augment:
                fill = float(feats.mean())  # the unmasked clip's mean (see the class docstring)
                for masking in self.spec_augment:
                    for _ in range(self.num_masks):
                        feats = masking(feats, mask_value=fill)
            return feats, length


def _kaldi_frames(samples: int, rate: int) -> int:
    """Frames of ``torchaudio.compliance.kaldi.fbank`` (AST's features) for ``samples``:
    whole 25 ms windows every 10 ms."""
    # The same float expressions as torchaudio.compliance.kaldi's window sizes.
    window, shift = int(rate * KALDI_WINDOW_MS * 0.001), int(rate * KALDI_SHIFT_MS * 0.001)
    return 0 if samples < window else 1 + (samples - window) // shift
