"""Reading image and audio files, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from mmtrain.errors import MMTrainError


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file fully into RGB.

    Raises:
        MMTrainError: if the file is missing, not an image or truncated.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode inside the try
    except FileNotFoundError:
        raise MMTrainError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MMTrainError(f"cannot decode image {path}: {err}") from None


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file with soundfile as float32 ``(channels, samples)`` and its rate.

    Raises:
        MMTrainError: if the file is missing, unreadable or empty.
    """
    if not Path(path).is_file():
        raise MMTrainError(f"audio file not found: {path}")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise MMTrainError(f"cannot decode audio {path}: {err}") from None
    if samples.shape[0] == 0:
        raise MMTrainError(f"audio file has no samples: {path}")
    return samples.T, int(rate)
