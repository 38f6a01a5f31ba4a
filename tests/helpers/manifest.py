"""Manifest data sets (JSONL/CSV rows: image, text, audio and label columns), for tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

COLOURS = {0: (200, 40, 40), 2: (40, 170, 60), 10: (50, 80, 215)}  # label -> image colour
TONES = {0: 330.0, 2: 660.0, 10: 1320.0}  # label -> tone (Hz)
WORDS = {0: "zero", 2: "two", 10: "ten"}


# ---- fixtures in the real on-disk layout ------------------------------------------------------
def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 16)) -> str:
    """A real JPEG or PNG (by suffix): a coloured square on noise. Returns the file name."""
    rng = np.random.default_rng(sum(colour))
    pixels = rng.normal(128, 30, (size[1], size[0], 3)).clip(0, 255).astype(np.uint8)
    pixels[4:12, 4:12] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path.name


def write_wav(path: Path, freq: float, seconds: float = 0.2, rate: int = 22050) -> None:
    """A real 16-bit WAV tone (resampled to 16 kHz when loaded)."""
    t = np.arange(int(rate * seconds)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, "PCM_16")


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A manifest: JSON Lines, or CSV (header = the columns in first-seen order) by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sample_rows(folder: Path, split: str, n: int) -> list[dict[str, Any]]:
    """``n`` samples under ``folder`` (media in images/ and audio/), labels 0, 2, 10 in turn."""
    rows = []
    for i in range(n):
        label = (0, 2, 10)[i % 3]
        name = f"{split}_{i}"
        image = write_image(
            folder / "images" / f"{name}.{'png' if i % 2 else 'jpg'}", COLOURS[label]
        )
        write_wav(folder / "audio" / f"{name}.wav", TONES[label])
        rows.append(
            {
                "id": name,
                "image": f"images/{image}",
                "audio": f"audio/{name}.wav",
                "text": f"a picture of {WORDS[label]}",
                "caption": f"a square number {WORDS[label]}",
                "label": label,
            }
        )
    return rows


def write_manifests(folder: Path, n_train: int = 6, n_val: int = 3) -> dict[str, Path]:
    """``folder/train.jsonl`` and ``folder/val.csv`` with their images and WAV files."""
    return {
        "train": write_rows(folder / "train.jsonl", sample_rows(folder, "train", n_train)),
        "val": write_rows(folder / "val.csv", sample_rows(folder, "val", n_val)),
    }
