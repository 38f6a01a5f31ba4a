"""The embedded default data set: coloured shapes you can see, read about and hear.

Each sample is a scene with one shape, written once (seeded, deterministic) in real formats:

* ``images/<id>.jpg`` (every fourth one ``.png``): a red, green or blue circle, square or
  triangle, small or large, in one of four corners, on a noisy background;
* ``audio/<id>.wav``: a 0.3-0.6 s tone at 22.05 kHz, low (220-440 Hz) or high (880-1760 Hz);
* ``text``: a short note on the shape, which names it in 70% of the samples ("a large circle")
  and says "shape" otherwise;
* ``caption``: the image described in full ("a large red circle in the top left"), a target:
  colour and corner are only in the image, so the text input cannot be copied into it;
* ``label``: ``<shape>_<tone>`` (6 classes). The shape is in the image (and often the text), the
  tone only in the audio, so one modality alone cannot reach more than about 50% accuracy.

The manifests ``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` use the manifest format
(:class:`mmtrain.data.manifest.ManifestDataset`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from mmtrain.contracts import SPLITS
from mmtrain.data.manifest import ManifestDataset
from mmtrain.errors import MMTrainError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 215)}
SIZES = ("small", "large")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
TONES = {"low": (220.0, 440.0), "high": (880.0, 1760.0)}
IMAGE_SIZE = 64
AUDIO_RATE = 22050
_VERSION = 3


def _draw(rng: np.random.Generator, shape: str, colour: str, size: str, corner: str) -> Image.Image:
    pixels = rng.normal(128, 20, (IMAGE_SIZE, IMAGE_SIZE, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    half = IMAGE_SIZE // 2
    radius = int(rng.integers(8, 11) if size == "small" else rng.integers(13, 16))
    cx = int(rng.integers(radius, half - radius + 1)) + (half if "right" in corner else 0)
    cy = int(rng.integers(radius, half - radius + 1)) + (half if "bottom" in corner else 0)
    rgb = tuple(
        int(c) for c in np.clip(np.array(COLOURS[colour]) + rng.integers(-25, 26, 3), 0, 255)
    )
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=rgb
        )
    return img


def _tone(rng: np.random.Generator, tone: str) -> np.ndarray:
    n = int(AUDIO_RATE * rng.uniform(0.3, 0.6))
    t = np.arange(n) / AUDIO_RATE
    freq = rng.uniform(*TONES[tone])
    wave = np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(4 * np.pi * freq * t)
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # 20 ms fade in and out
    signal = 0.4 * wave * envelope + rng.normal(0, 0.05, n)
    return signal.clip(-1, 1).astype(np.float32)


def _sample(root: Path, split: str, index: int, seed: int) -> dict[str, str]:
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    size = SIZES[rng.integers(len(SIZES))]
    corner = CORNERS[rng.integers(len(CORNERS))]
    tone = list(TONES)[rng.integers(len(TONES))]
    sample_id = f"{split}_{index:05d}"
    image_file = f"images/{sample_id}.{'png' if index % 4 == 3 else 'jpg'}"
    img = _draw(rng, shape, colour, size, corner)
    img.save(root / image_file, **({"quality": 90} if image_file.endswith("jpg") else {}))
    sf.write(root / f"audio/{sample_id}.wav", _tone(rng, tone), AUDIO_RATE, subtype="PCM_16")
    noun = shape if rng.random() < 0.7 else "shape"
    return {
        "id": sample_id,
        "image": image_file,
        "audio": f"audio/{sample_id}.wav",
        "text": f"a {size} {noun}",
        "caption": f"a {size} {colour} {shape} in the {corner}",
        "label": f"{shape}_{tone}",
    }


def write_once(
    root: str | Path, stamp: dict[str, Any], stamp_name: str, write: Callable[[Path], None]
) -> Path:
    """Write a generated data set into ``root`` unless one with the same ``stamp`` is there.

    ``write(folder)`` fills a temporary sibling folder, which is moved into place at the end
    with ``stamp`` saved as ``stamp_name``, so an interrupted run never leaves a half-written
    data set under ``root``.

    Returns:
        ``root`` as a Path.

    Raises:
        MMTrainError: if ``root`` is a non-empty folder without ``stamp_name`` (not written
            here).
    """
    root = Path(root)
    stamp_file = root / stamp_name
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return root
    if root.is_dir() and any(root.iterdir()) and not stamp_file.is_file():
        raise MMTrainError(
            f"data.root: {root} exists and is not a generated data set (no {stamp_name}); "
            "choose an empty or new folder"
        )
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / stamp_name).write_text(json.dumps(stamp))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root


def generate_shapes(root: str | Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Write the data set under ``root`` unless the same version, sizes and seed are there
    (:func:`write_once`: atomic, and a folder it did not write is refused).

    Returns:
        ``root`` as a Path.
    """
    stamp = {"version": _VERSION, "sizes": {s: int(sizes[s]) for s in SPLITS}, "seed": seed}

    def write(folder: Path) -> None:
        (folder / "images").mkdir()
        (folder / "audio").mkdir()
        for split in SPLITS:
            rows = [_sample(folder, split, i, seed) for i in range(stamp["sizes"][split])]
            with (folder / f"{split}.jsonl").open("w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    return write_once(root, stamp, "shapes.json", write)


class ShapesDataset(ManifestDataset):
    """One split of the shapes data set, generated on first use by :meth:`prepare_data`.

    Args:
        root: folder of the data set.
        split: ``train``, ``val`` or ``test``.
        columns: columns to load (set by the data module).
        num_train: training samples to generate.
        num_val: validation samples to generate.
        num_test: test samples to generate.
        seed: generation seed.

    Raises:
        ValueError: for an unknown split.
    """

    def __init__(
        self,
        root: str,
        split: str,
        columns: list[str] | None = None,
        num_train: int = 1200,
        num_val: int = 300,
        num_test: int = 300,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.prepare_data(root, num_train, num_val, num_test, seed)
        super().__init__(Path(root) / f"{split}.jsonl", columns)

    @staticmethod
    def prepare_data(
        root: str,
        num_train: int = 1200,
        num_val: int = 300,
        num_test: int = 300,
        seed: int = 0,
        **_: object,
    ) -> None:
        """Generate the files once (called on one process by the data module)."""
        generate_shapes(root, {"train": num_train, "val": num_val, "test": num_test}, seed)
