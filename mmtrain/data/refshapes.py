"""A generated data set for referring segmentation and image-text retrieval.

Each sample is a scene of 2 or 3 shapes, written once (seeded, deterministic) in real formats:

* ``images/<id>.png`` (lossless): a 64x64 noisy background with 2 or 3 shapes, each a circle,
  square or triangle in red, green or blue, small or large, each in its own quadrant (with a
  margin, so shapes never overlap or touch) and each a different (colour, shape) pair;
* ``masks/<id>.png``: a mode ``L`` PNG of class ids for referring segmentation, 1 on the pixels
  of the referred shape and 0 elsewhere. It is drawn with the same ``ImageDraw`` calls as the
  image, so mask and image agree pixel for pixel;
* ``text``: the referring prompt, naming the target by colour and shape ("segment the red
  circle", "the red circle" or "where is the red circle"). Without it the target is one of the
  2-3 shapes of the scene (chosen uniformly); with it the target is determined;
* ``caption``: the whole scene for retrieval, every shape with its size, colour and quadrant in
  reading order ("a large red circle top left and a small blue square bottom right"). Captions
  are unique within a split (a scene is redrawn when its caption is taken);
* ``label``: the referred shape as ``<colour>_<shape>`` (9 classes).

The manifests ``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` use the manifest format
(:class:`mmtrain.data.manifest.ManifestDataset`) with the columns ``id``, ``image``, ``mask``,
``text``, ``caption`` and ``label``; the mask's class names are :data:`MASK_CLASSES`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from mmtrain.contracts import SPLITS
from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.shapes import write_once

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 215)}
SIZES = {"small": (6, 9), "large": (11, 15)}  # radius ranges [low, high) in pixels
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")  # reading order
PROMPTS = ("segment the {}", "the {}", "where is the {}")
MASK_CLASSES = ("background", "target")
IMAGE_SIZE = 64
COLOUR_JITTER = 25  # each shape's fill is its colour +- this, per channel
_MAX_REDRAWS = 100  # scenes drawn for a caption not yet in the split, before accepting a repeat
_VERSION = 1


class PlacedShape(NamedTuple):
    """One shape of a scene: what it is and where it is drawn.

    Attributes:
        shape: ``circle``, ``square`` or ``triangle``.
        colour: ``red``, ``green`` or ``blue``.
        size: ``small`` or ``large``.
        quadrant: one of :data:`QUADRANTS`.
        box: ``(x0, y0, x1, y1)``, inclusive pixel bounds, inside the quadrant.
        rgb: the fill colour.
    """

    shape: str
    colour: str
    size: str
    quadrant: str
    box: tuple[int, int, int, int]
    rgb: tuple[int, int, int]

    @property
    def name(self) -> str:
        """``<colour> <shape>``, as the prompts say it."""
        return f"{self.colour} {self.shape}"


def _layout(rng: np.random.Generator) -> list[PlacedShape]:
    """2-3 shapes in distinct quadrants with distinct (colour, shape) pairs, in reading order."""
    count = int(rng.integers(2, 4))
    quadrants = sorted(int(q) for q in rng.choice(len(QUADRANTS), size=count, replace=False))
    kinds = rng.choice(len(SHAPES) * len(COLOURS), size=count, replace=False)
    half = IMAGE_SIZE // 2
    placed = []
    for q, kind in zip(quadrants, kinds):
        shape, colour = SHAPES[kind % len(SHAPES)], list(COLOURS)[kind // len(SHAPES)]
        size = list(SIZES)[rng.integers(len(SIZES))]
        radius = int(rng.integers(*SIZES[size]))
        x0, y0 = half * (q % 2), half * (q // 2)
        # A 1-pixel margin inside the quadrant: shapes of neighbouring quadrants never touch.
        cx = int(rng.integers(x0 + radius + 1, x0 + half - 1 - radius))
        cy = int(rng.integers(y0 + radius + 1, y0 + half - 1 - radius))
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
        rgb = tuple(int(c) for c in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        placed.append(PlacedShape(shape, colour, size, QUADRANTS[q], box, rgb))
    return placed


def _paint(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, ...], fill: object) -> None:
    """Draw one shape; the image and the mask both go through here, so they agree."""
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)


def caption_of(scene: list[PlacedShape]) -> str:
    """The retrieval caption: every shape with size, colour and quadrant, in scene order."""
    parts = [f"a {s.size} {s.colour} {s.shape} {s.quadrant}" for s in scene]
    return " and ".join(parts) if len(parts) < 3 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _sample(root: Path, split: str, index: int, seed: int, seen: set[str]) -> dict[str, str]:
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    for _ in range(_MAX_REDRAWS):
        scene = _layout(rng)
        caption = caption_of(scene)
        if caption not in seen:
            break
    seen.add(caption)
    target = scene[int(rng.integers(len(scene)))]
    prompt = PROMPTS[int(rng.integers(len(PROMPTS)))].format(target.name)

    pixels = rng.normal(128, 20, (IMAGE_SIZE, IMAGE_SIZE, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for s in scene:
        _paint(draw, s.shape, s.box, s.rgb)
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    _paint(ImageDraw.Draw(mask), target.shape, target.box, 1)

    sample_id = f"{split}_{index:05d}"
    image.save(root / f"images/{sample_id}.png")
    mask.save(root / f"masks/{sample_id}.png")
    return {
        "id": sample_id,
        "image": f"images/{sample_id}.png",
        "mask": f"masks/{sample_id}.png",
        "text": prompt,
        "caption": caption,
        "label": f"{target.colour}_{target.shape}",
    }


def generate_refshapes(root: str | Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Write the data set under ``root`` unless the same version, sizes and seed are there.

    The files are written into a temporary sibling folder and moved into place at the end, so
    an interrupted run never leaves a half-written data set under ``root``.

    Args:
        root: the folder of the data set (created; replaced if it holds another generation).
        sizes: samples per split, ``{"train": n, "val": n, "test": n}``.
        seed: generation seed.

    Returns:
        ``root`` as a Path.

    Raises:
        MMTrainError: if ``root`` is a non-empty folder without the stamp file
            ``refshapes.json`` (not written by this function).
    """
    stamp = {"version": _VERSION, "sizes": {s: int(sizes[s]) for s in SPLITS}, "seed": seed}

    def write(folder: Path) -> None:
        (folder / "images").mkdir()
        (folder / "masks").mkdir()
        for split in SPLITS:
            seen: set[str] = set()
            rows = [_sample(folder, split, i, seed, seen) for i in range(stamp["sizes"][split])]
            with (folder / f"{split}.jsonl").open("w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    return write_once(root, stamp, "refshapes.json", write)


class RefShapesDataset(ManifestDataset):
    """One split of the refshapes data set, generated on first use by :meth:`prepare_data`.

    Args:
        root: folder of the data set.
        split: ``train``, ``val`` or ``test``.
        columns: columns to load (set by the data module).
        num_train: training samples to generate.
        num_val: validation samples to generate.
        num_test: test samples to generate.
        seed: generation seed.
        text: what the ``text`` input holds: the referring ``prompt`` ("the red circle", for
            text-guided segmentation) or the scene's ``caption`` (for image-text retrieval).

    Raises:
        ValueError: for an unknown split or ``text``.
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
        text: Literal["prompt", "caption"] = "prompt",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if text not in ("prompt", "caption"):
            raise ValueError(f"text must be 'prompt' or 'caption', got {text!r}")
        self.prepare_data(root, num_train, num_val, num_test, seed)
        super().__init__(Path(root) / f"{split}.jsonl", columns)
        if text == "caption":  # the description of the whole scene as the text input
            for record in self.records:
                record["text"] = record["caption"]

    @staticmethod
    def prepare_data(
        root: str,
        num_train: int = 1200,
        num_val: int = 300,
        num_test: int = 300,
        seed: int = 0,
        **_: object,
    ) -> None:
        """Generate the files once (called on one process by the data module).

        Args:
            root: folder of the data set.
            num_train: training samples.
            num_val: validation samples.
            num_test: test samples.
            seed: generation seed.
        """
        generate_refshapes(root, {"train": num_train, "val": num_val, "test": num_test}, seed)
