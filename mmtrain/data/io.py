"""Reading image, mask and audio files, with errors that name the file."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

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
    except UnidentifiedImageError:
        raise MMTrainError(f"cannot decode image {path}: {_not_an_image(path)}") from None
    except (OSError, SyntaxError) as err:
        raise MMTrainError(f"cannot decode image {path}: {err}") from None


def load_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode an image held in memory (a Hugging Face ``Image`` value) fully into RGB, as
    :func:`load_image` decodes a file.

    Args:
        data: the encoded image (PNG, JPEG...).
        name: what to call it in errors (the sample and its file name).

    Raises:
        MMTrainError: if the bytes are not an image or are truncated.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise MMTrainError(f"cannot decode image {name}: {_not_image_bytes(data[:256])}") from None
    except (OSError, SyntaxError) as err:
        raise MMTrainError(f"cannot decode image {name}: {err}") from None


def _not_an_image(path: str | Path) -> str:
    """What a file that PIL cannot identify is instead: empty, a web page, or unknown."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as err:
        return str(err)
    return _not_image_bytes(head)


def _not_image_bytes(head: bytes) -> str:
    """What data that PIL cannot identify is instead, from its first bytes."""
    if not head:
        return "the file is empty"
    if head.lstrip().startswith(b"<"):  # <!DOCTYPE html>, <html>, <?xml ...
        return "the file is markup (an HTML page? a download that failed), not an image"
    return "not an image format PIL can read"


# PIL modes of single-channel masks: 8-bit grey, palette (VOC, ADE20K), bilevel, 16/32-bit grey.
MASK_MODES = ("L", "P", "1", "I;16", "I")


def load_mask(path: str | Path) -> np.ndarray:
    """Decode a segmentation mask (a PNG of class ids) into a ``(H, W)`` uint8 array.

    The pixel values are the class ids: grey levels in mode ``L``; palette indices in mode
    ``P`` (the colours of the palette are only for viewing, as in Pascal VOC and ADE20K
    masks); 0/1 in mode ``1``; 16/32-bit grey (``I;16``, ``I``) when every value is below 256.
    255 is the usual id of unlabelled pixels (the head's ``ignore_index``).

    Args:
        path: the mask file.

    Returns:
        The ``(H, W)`` uint8 class ids.

    Raises:
        MMTrainError: if the file is missing, not an image or truncated, has colour channels
            (an RGB or RGBA mask: the ids must be grey levels or palette indices), or holds
            values above 255.
    """
    try:
        return _decode_mask(path, path)
    except FileNotFoundError:
        raise MMTrainError(f"mask file not found: {path}") from None


def load_mask_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode a segmentation mask held in memory (a Hugging Face ``Image`` value) as
    :func:`load_mask` decodes a file.

    Args:
        data: the encoded mask (a PNG of class ids).
        name: what to call it in errors (the sample and its file name).

    Returns:
        The ``(H, W)`` uint8 class ids.

    Raises:
        MMTrainError: as :func:`load_mask`.
    """
    return _decode_mask(io.BytesIO(data), name)


def _decode_mask(source: str | Path | BinaryIO, path: str | Path) -> np.ndarray:
    """:func:`load_mask` of a file or file object; ``path`` names it in errors.

    Raises:
        FileNotFoundError: for a missing file.
        MMTrainError: as :func:`load_mask`.
    """
    try:
        with Image.open(source) as img:
            mode = img.mode
            if mode not in MASK_MODES:
                raise MMTrainError(
                    f"mask {path} has mode {mode} ({len(img.getbands())} channels): a mask must "
                    "be a single-channel PNG of class ids (mode L, or P with palette indices "
                    "as ids), not colours; convert it with a colour -> id table"
                )
            ids = np.array(img)  # array() forces the full decode inside the try
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MMTrainError(f"cannot decode mask {path}: {err}") from None
    if ids.ndim != 2:
        raise MMTrainError(f"mask {path} has shape {ids.shape}, expected (H, W)")
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise MMTrainError(
                f"mask {path} has class ids in [{ids.min()}, {ids.max()}]: ids must be in "
                "[0, 255] (255: unlabelled)"
            )
        ids = ids.astype(np.uint8)
    return ids


# A RIFF chunk size that means "unknown" (streamed WAV files write one of these).
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def wav_shortfall(path: str | Path) -> tuple[int, int] | None:
    """How much of a RIFF/WAVE file's sample data is missing, from its chunk headers alone.

    libsndfile reads a truncated WAV without complaint (it returns the samples that are there),
    so a file cut off in a copy or download would train as a shorter clip.

    Args:
        path: the audio file.

    Returns:
        ``(bytes of samples the header declares, bytes the file holds)`` for a WAV cut short;
        None for a complete WAV, another format (FLAC, RF64...), a header that declares no size
        (a stream), or a file too damaged to find its ``data`` chunk (libsndfile's own error
        then says why).
    """
    with open(path, "rb") as f:
        return _wav_shortfall(f, os.fstat(f.fileno()).st_size)


def _wav_shortfall(f: BinaryIO, size_of_file: int) -> tuple[int, int] | None:
    """:func:`wav_shortfall` of an open file (at its start) of ``size_of_file`` bytes."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        declared = int.from_bytes(chunk[4:], "little")
        if chunk[:4] == b"data":
            there = size_of_file - f.tell()
            if declared in _UNKNOWN_SIZES or there >= declared:
                return None
            return declared, there
        f.seek(declared + (declared & 1), os.SEEK_CUR)  # chunks are padded to even sizes


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file with soundfile as float32 ``(channels, samples)`` and its rate.

    Raises:
        MMTrainError: if the file is missing, unreadable, empty or (a WAV) truncated.
    """
    if not Path(path).is_file():
        raise MMTrainError(f"audio file not found: {path}")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise MMTrainError(f"cannot decode audio {path}: {err}") from None
    if samples.shape[0] == 0:
        raise MMTrainError(f"audio file has no samples: {path}")
    shortfall = wav_shortfall(path)
    if shortfall is not None:
        declared, there = shortfall
        raise MMTrainError(
            f"audio file {path} is truncated: its header declares {declared} bytes of samples, "
            f"the file holds {there}"
        )
    return samples.T, int(rate)


def load_audio_bytes(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Read audio held in memory (a Hugging Face ``Audio`` value) as :func:`load_audio` reads a
    file: with soundfile, as float32 ``(channels, samples)`` and its rate.

    Args:
        data: the encoded audio (WAV, FLAC, OGG...).
        name: what to call it in errors (the sample and its file name).

    Raises:
        MMTrainError: if the bytes are not audio that soundfile reads, hold no samples or are
            (a WAV) truncated.
    """
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        why = getattr(err, "error_string", err)  # not "Error opening <_io.BytesIO object ...>"
        raise MMTrainError(f"cannot decode audio {name}: {why}") from None
    if samples.shape[0] == 0:
        raise MMTrainError(f"audio has no samples: {name}")
    shortfall = _wav_shortfall(io.BytesIO(data), len(data))
    if shortfall is not None:
        declared, there = shortfall
        raise MMTrainError(
            f"audio {name} is truncated: its header declares {declared} bytes of samples, "
            f"the data holds {there}"
        )
    return samples.T, int(rate)
