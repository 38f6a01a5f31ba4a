"""The audio input: ``audio (B, n_mels, T)`` log-mels + ``audio_mask (B, T)``; ``data.audio``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from mmtrain.data.collate import padded
from mmtrain.data.inputs.base import Input
from mmtrain.data.transforms.audio import AudioTransform
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)


class AudioInput(AudioTransform, Input):
    """Clips (``(samples (C, T), rate)``, as items give them) through :class:`AudioTransform`:
    mono, resampled, cropped, log-mels, SpecAugment in training. The keys of ``data.audio`` are
    those of :class:`AudioTransform` (``data.audio.n_mels=80``).

    Its length for bucketing is in seconds: a numeric ``duration`` column when the data set
    has one, else each file's header (no sample is decoded), capped at ``max_seconds``.
    """

    name = "audio"
    bucketable = True

    def encode(self, value: tuple[np.ndarray, int], train: bool) -> Tensor:
        samples, rate = value
        return self(samples, rate, train=train)

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
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
        return {"n_mels": self.n_mels}


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
