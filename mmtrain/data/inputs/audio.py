"""The audio input: ``audio (B, n_mels, T)`` log-mels + ``audio_mask (B, T)``; ``data.audio``.

With a pretrained waveform model's feature extractor (wav2vec 2.0, HuBERT, WavLM) the batch is
the waveform instead: ``audio (B, T)`` + ``audio_mask (B, T)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmtrain.data.collate import pad_last, padded
from mmtrain.data.inputs.base import Input, settings_digest
from mmtrain.data.transforms.audio import WAVEFORM, AudioTransform
from mmtrain.errors import MMTrainError
from mmtrain.utils.preprocessing import preprocessing_digest

log = logging.getLogger(__name__)


class AudioInput(AudioTransform, Input):
    """Clips (``(samples (C, T), rate)``, as items give them) through :class:`AudioTransform`:
    mono, resampled, cropped, log-mels, SpecAugment in training. The keys of ``data.audio`` are
    those of :class:`AudioTransform` (``data.audio.n_mels=80``).

    Its length for bucketing is in seconds: a numeric ``duration`` column when the data set
    has one, else each file's header (no sample is decoded), capped at ``max_seconds``.

    With ``feature_extractor`` (a pretrained audio encoder sets it) the batch is what the
    extractor gives, as a model takes it:

    - a waveform extractor: ``audio (B, T)`` float, each clip as the extractor returns it
      (normalised per clip when it says so), padded with its ``padding_value``, and
      ``audio_mask (B, T)`` marking the samples of the clip;
    - Whisper: ``audio (B, n_mels, 3000)`` log-mels (the extractor's own 30 s padding) and
      ``audio_mask (B, 3000)`` marking the frames that hold audio (its attention mask);
    - AST: ``audio (B, n_mels, 1024)`` (its fbank transposed to the mel contract) and
      ``audio_mask (B, 1024)`` marking the frames computed from the clip rather than padded.

    For the last two, a sample's tensor (:meth:`encode`) carries its frame mask as an extra
    last row, ``(n_mels + 1, frames)``, which :meth:`collate` splits off: the mask cannot be
    recovered from the padded features.
    """

    name = "audio"
    bucketable = True

    def encode(self, value: tuple[np.ndarray, int], train: bool) -> Tensor:
        samples, rate = value
        if self.frames is None:  # mmtrain's log-mels or a waveform: the length is the tensor's
            return self(samples, rate, train=train)
        feats, length = self.extract(samples, rate, train=train)
        holds_audio = torch.zeros(1, feats.shape[-1])
        holds_audio[0, :length] = 1.0
        return torch.cat([feats, holds_audio])  # (n_mels + 1, frames)

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
        if self.frames is not None:  # split the frame mask off (see encode)
            batch = torch.stack(values)  # (B, n_mels + 1, frames)
            return {
                self.name: batch[:, :-1].contiguous(),
                f"{self.name}_mask": batch[:, -1] > 0.5,
            }
        if self.kind == WAVEFORM:
            audio, mask = pad_last(values, float(self.extractor.padding_value))
            return {self.name: audio, f"{self.name}_mask": mask}
        return padded(self.name, values)

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]:
        """Seconds per clip.

        Raises:
            MMTrainError: when the data set gives neither a numeric ``duration`` column nor
                audio file paths.
        """
        try:
            durations = list(values("duration"))
        except (KeyError, ValueError):  # no such column
            durations = []
        if durations and all(
            isinstance(d, (int, float)) and not isinstance(d, bool) for d in durations
        ):
            seconds = [float(d) for d in durations]
        else:
            paths = list(values(self.name))
            if not (paths and all(isinstance(v, (str, Path)) for v in paths)):
                raise MMTrainError(
                    "data.bucket_by='audio': the data set gives no audio file paths "
                    "(values('audio')) nor a numeric 'duration' column, and the audio lengths "
                    "are not known without decoding every sample; add a duration column, "
                    "bucket by a text column, or set data.bucket_by=null"
                )
            seconds = audio_seconds(paths, base)
        cap = math.inf if self.max_samples is None else self.max_samples / self.sample_rate
        return [min(s, cap) for s in seconds]

    def facts(self) -> dict[str, Any]:
        """``n_mels`` (mmtrain's log-mels); with a feature extractor also ``waveform`` (whether
        the batch is the waveform), and ``sample_rate`` (a waveform) or ``frames`` (the fixed
        frames of Whisper and AST) in place of ``n_mels`` for a waveform."""
        if self.kind is None:
            return {"n_mels": self.n_mels}
        if self.kind == WAVEFORM:
            return {"waveform": True, "sample_rate": self.sample_rate}
        return {"n_mels": self.n_mels, "waveform": False, "frames": self.frames}

    def fingerprint(self) -> str:
        """The feature-cache key: settings, and with a feature extractor its files' hash (not
        its folder, which a checkpoint rebuilds elsewhere)."""
        if self.feature_extractor is None:
            return super().fingerprint()
        settings = {
            k: v for k, v in vars(self).items() if k not in ("extractor", "feature_extractor")
        }
        own = settings_digest(SimpleNamespace(**settings))
        return f"{type(self).__qualname__}:{own}:{preprocessing_digest(self.feature_extractor)}"


def audio_seconds(paths: Sequence[str | Path | None], base: Path | None = None) -> list[float]:
    """The duration of each audio file from its header (nothing is decoded).

    Args:
        paths: the files; a relative path is relative to ``base`` (else the working directory).
        base: the folder that relative paths are relative to (a manifest's folder).

    Returns:
        Seconds per file; 0 for a missing value or a file whose header cannot be read (its
        loading reports the problem, or skips it with ``data.on_error=skip``), logged.
    """
    import soundfile as sf

    def seconds(path: str | Path | None) -> float:
        if path is None:
            return math.nan
        file = Path(path)
        if base is not None and not file.is_absolute():
            file = base / file
        try:
            info = sf.info(str(file))
        except (RuntimeError, OSError, ValueError):  # missing or unreadable: its loading says
            return math.nan
        return info.frames / info.samplerate if info.samplerate else math.nan

    with ThreadPoolExecutor(max_workers=8) as pool:  # headers: I/O-bound on network storage
        durations = list(pool.map(seconds, paths, chunksize=256))
    bad = [i for i, d in enumerate(durations) if math.isnan(d)]
    if bad:
        log.warning(
            "length bucketing: %d of %d audio files have no readable header (the first: %s); "
            "they count as length 0",
            len(bad),
            len(durations),
            paths[bad[0]],
        )
    return [0.0 if math.isnan(d) else d for d in durations]
