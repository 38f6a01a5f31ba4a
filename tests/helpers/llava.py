"""LLaVA instruction data in its real layout (LLaVA-1.5's mix665k), for tests.

The image folder (LLaVA's ``--image_folder``) holds the images of the source data sets under
their own paths (``coco/train2017/``, ``gqa/images/``, ``ocr_vqa/images/``); the JSON files list
entries with image paths relative to it, text-only entries (ShareGPT, with their ``model`` key)
among them, as ``llava_v1_5_mix665k.json`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# image path (relative to the image folder) -> (PIL mode, width, height)
IMAGES = {
    "coco/train2017/000000033471.jpg": ("RGB", 24, 16),
    "coco/train2017/000000052846.jpg": ("L", 20, 20),  # COCO has grayscale JPEGs
    "gqa/images/2354786.jpg": ("RGB", 18, 12),
    "ocr_vqa/images/689852649.jpg": ("RGB", 12, 20),
    "coco/val2017/000000000139.jpg": ("RGB", 16, 16),
}

TRAIN: list[dict[str, Any]] = [
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
        ],
    },
    {
        "id": "i6IyJda_0",  # ShareGPT: text only, with the key mix665k keeps
        "model": "",
        "conversations": [
            {"from": "human", "value": "Write a haiku about autumn."},
            {"from": "gpt", "value": "Red leaves drift and fall / quiet paths beneath bare trees"},
        ],
    },
    {
        "id": 2354786,  # GQA ids are numbers in some releases
        "image": "gqa/images/2354786.jpg",
        "conversations": [
            {
                "from": "human",
                "value": "<image>\nIs the sky dark?\nAnswer the question using a "
                "single word or phrase.",
            },
            {"from": "gpt", "value": "No"},
        ],
    },
    {
        "id": "689852649",  # OCR-VQA: the placeholder at the end of the first question
        "image": "ocr_vqa/images/689852649.jpg",
        "conversations": [
            {"from": "human", "value": "Who wrote this book?\n<image>"},
            {"from": "gpt", "value": "Jane Doe"},
            {"from": "human", "value": "Is this a comedy book?"},
            {"from": "gpt", "value": "No"},
        ],
    },
    {
        "id": "000000052846",  # no placeholder: the data set prepends it
        "image": "coco/train2017/000000052846.jpg",
        "conversations": [
            {"from": "human", "value": "Describe the image briefly."},
            {"from": "gpt", "value": "A grey square."},
        ],
    },
]

VAL: list[dict[str, Any]] = [
    {
        "id": "000000000139",
        "image": "coco/val2017/000000000139.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat room is this?"},
            {"from": "gpt", "value": "A living room."},
        ],
    },
    {
        "id": "val_text",
        "conversations": [
            {"from": "system", "value": "You are a helpful assistant."},
            {"from": "human", "value": "Say hello."},
            {"from": "gpt", "value": "Hello."},
        ],
    },
]


def write_image(path: Path, mode: str, width: int, height: int) -> None:
    """A real JPEG of noise, in ``mode`` (``L``: grayscale)."""
    rng = np.random.default_rng(width * 100 + height)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, quality=90)


def write_entries(path: Path, entries: list[Any]) -> Path:
    """A LLaVA file: a JSON list, or JSON Lines (one entry a line) for ``.jsonl``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    else:
        path.write_text(json.dumps(entries, indent=1))
    return path


def write_llava(root: Path, jsonl: bool = False) -> dict[str, Path]:
    """LLaVA data under ``root``: the images under ``root/images/`` (the image folder) and
    ``root/llava_train.json`` / ``root/llava_val.json`` (``.jsonl`` with ``jsonl``).

    Returns:
        ``{"root", "images", "train", "val"}``: the folders and the split files.
    """
    for name, (mode, width, height) in IMAGES.items():
        write_image(root / "images" / name, mode, width, height)
    suffix = ".jsonl" if jsonl else ".json"
    return {
        "root": root,
        "images": root / "images",
        "train": write_entries(root / f"llava_train{suffix}", TRAIN),
        "val": write_entries(root / f"llava_val{suffix}", VAL),
    }
