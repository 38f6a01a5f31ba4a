"""COCO captions in the official layout (annotations JSON, image folders), written for tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_IMAGES = {42: ("RGB", 5), 9: ("L", 6), 25: ("CMYK", 7), 30: ("RGB", 0)}
VAL_IMAGES = {285: ("RGB", 5), 632: ("L", 7), 139: ("CMYK", 6), 724: ("RGB", 0)}
ENDINGS = ("\n", " ", "", "  \n")


def caption_text(image_id: int, k: int) -> str:
    """A raw caption as in the release: capitals, punctuation, stray whitespace."""
    words = "A Dog, on a BEACH." if k % 2 else "the  man's red kite!"
    return f"{' ' if k == 3 else ''}{words} (image {image_id}, #{k}){ENDINGS[k % len(ENDINGS)]}"


def write_jpeg(path: Path, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (16 + seed % 5, 24, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb.convert(mode).save(path, quality=90)


def _official_name(split: str, year: int, image_id: int) -> str:
    return f"COCO_{split}{year}_{image_id:012d}.jpg" if year == 2014 else f"{image_id:012d}.jpg"


def write_coco(root: Path, year: int = 2017) -> dict[str, dict[int, list[str]]]:
    """Write the official layout; return ``{split: {image id: stripped captions in id order}}``."""
    rng = random.Random(year)
    ann_ids = iter(rng.sample(range(1, 900_000), 64))  # sparse, not in image order
    expected: dict[str, dict[int, list[str]]] = {}
    for split, table in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        images, annotations = [], []
        for image_id, (mode, n) in table.items():
            name = _official_name(split, year, image_id)
            write_jpeg(root / f"{split}{year}" / name, mode, image_id)
            images.append(
                {
                    "license": 3,
                    "file_name": name,
                    "coco_url": f"http://images.cocodataset.org/{split}{year}/{name}",
                    "height": 16 + image_id % 5,
                    "width": 24,
                    "date_captured": "2013-11-14 11:18:45",
                    "id": image_id,
                }
            )
            annotations += [
                {"image_id": image_id, "id": next(ann_ids), "caption": caption_text(image_id, k)}
                for k in range(n)
            ]
        rng.shuffle(annotations)  # the release does not group annotations by image
        by_id = sorted(annotations, key=lambda a: a["id"])
        expected[split] = {
            i: [a["caption"].strip() for a in by_id if a["image_id"] == i]
            for i in sorted(table)
            if table[i][1]
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}{year}.json").write_text(
            json.dumps(
                {
                    "info": {"description": "COCO", "year": year},
                    "licenses": [{"id": 3, "name": "Attribution-NonCommercial-NoDerivs"}],
                    "images": images,
                    "annotations": annotations,
                }
            )
        )
    return expected
