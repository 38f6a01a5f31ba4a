"""The refshapes data set: determinism, the stamp, and what each sample promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_cfg
from PIL import Image

from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.refshapes import (
    COLOUR_JITTER,
    COLOURS,
    PROMPTS,
    QUADRANTS,
    SHAPES,
    RefShapesDataset,
    generate_refshapes,
)
from mmtrain.errors import MMTrainError

SIZES = {"train": 12, "val": 4, "test": 4}
COLUMNS = ["caption", "id", "image", "label", "mask", "text"]
_PART = re.compile(
    rf"a (small|large) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(QUADRANTS)})"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_refshapes(tmp_path_factory.mktemp("refshapes") / "data", SIZES, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _rows(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


def _scene(caption: str) -> list[tuple[str, str, str, str]]:
    """``[(size, colour, shape, quadrant)]`` from a caption, which must be nothing else."""
    parts = _PART.findall(caption)
    listed = [f"a {' '.join(p)}" for p in parts]
    expected = " and ".join(listed) if len(listed) < 3 else ", ".join(listed[:-1])
    if len(listed) >= 3:
        expected += f" and {listed[-1]}"
    assert caption == expected, f"caption not in the expected form: {caption!r}"
    return parts


def _referred(prompt: str) -> tuple[str, str]:
    """``(colour, shape)`` named by a prompt in one of the templates."""
    for template in PROMPTS:
        m = re.fullmatch(template.format(r"(\w+) (\w+)"), prompt)
        if m:
            return m.group(1), m.group(2)
    raise AssertionError(f"prompt {prompt!r} matches no template of {PROMPTS}")


def _quadrant_slices(quadrant: str) -> tuple[slice, slice]:
    rows = slice(32, 64) if quadrant.startswith("bottom") else slice(0, 32)
    cols = slice(32, 64) if quadrant.endswith("right") else slice(0, 32)
    return rows, cols


def _shape_pixels(image: np.ndarray, colour: str, quadrant: str) -> np.ndarray:
    """Boolean (H, W): the pixels of the shape of ``colour`` in ``quadrant``.

    A shape is filled with one exact RGB value near its colour: the most frequent such value in
    the quadrant. The noisy background matching it exactly on three channels is negligible.
    """
    rows, cols = _quadrant_slices(quadrant)
    region = image[rows, cols].reshape(-1, 3).astype(int)
    near = np.abs(region - np.array(COLOURS[colour])).max(axis=1) <= COLOUR_JITTER
    values, counts = np.unique(region[near], axis=0, return_counts=True)
    assert len(values), f"no {colour} pixels in the {quadrant}"
    fill = values[counts.argmax()]
    return (image.astype(int) == fill).all(axis=2)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, data: Path) -> None:
    again = generate_refshapes(tmp_path / "again", SIZES, seed=0)
    assert _files(again) == _files(data)
    other = generate_refshapes(tmp_path / "other", SIZES, seed=1)
    assert _rows(other, "train") != _rows(data, "train")


def test_stamp_skips_rerun_regenerates_on_change_and_refuses_foreign_folders(
    tmp_path: Path,
) -> None:
    root = generate_refshapes(tmp_path / "d", {"train": 2, "val": 1, "test": 1}, seed=0)
    stamp = json.loads((root / "refshapes.json").read_text())
    assert stamp["sizes"] == {"train": 2, "val": 1, "test": 1} and stamp["seed"] == 0
    (root / "images" / "train_00000.png").write_bytes(b"edited")  # a rerun must not touch it
    generate_refshapes(root, {"train": 2, "val": 1, "test": 1}, seed=0)
    assert (root / "images" / "train_00000.png").read_bytes() == b"edited"
    generate_refshapes(root, {"train": 3, "val": 1, "test": 1}, seed=0)  # new sizes: rewritten
    assert len(_rows(root, "train")) == 3
    assert (root / "images" / "train_00000.png").read_bytes() != b"edited"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(MMTrainError, match="refshapes.json"):
        generate_refshapes(foreign, SIZES)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]


def test_manifests_are_readable_by_the_manifest_dataset(data: Path) -> None:
    for split, n in SIZES.items():
        rows = _rows(data, split)
        assert len(rows) == n and all(sorted(r) == COLUMNS for r in rows)
        assert all((data / r["image"]).is_file() and (data / r["mask"]).is_file() for r in rows)
        ds = ManifestDataset(data / f"{split}.jsonl", columns=["image", "text", "caption", "label"])
        item = ds[0]
        assert item["id"] == f"{split}_00000" and item["image"].size == (64, 64)
        assert item["image"].mode == "RGB" and item["text"] == rows[0]["text"]
        assert item["label"] == rows[0]["label"] and item["caption"] == rows[0]["caption"]


def test_every_sample_keeps_its_promises(data: Path) -> None:
    for split in SIZES:
        rows = _rows(data, split)
        assert len({r["caption"] for r in rows}) == len(rows), "captions repeat within a split"
        for r in rows:
            where = f"{split} {r['id']}"
            scene = _scene(r["caption"])
            assert 2 <= len(scene) <= 3, where
            assert len({q for *_, q in scene}) == len(scene), f"{where}: a quadrant twice"
            kinds = [(c, s) for _, c, s, _ in scene]
            assert len(set(kinds)) == len(kinds), f"{where}: a (colour, shape) twice"
            colour, shape = _referred(r["text"])
            assert kinds.count((colour, shape)) == 1, f"{where}: {r['text']!r} vs the scene"
            assert r["label"] == f"{colour}_{shape}", where

            with Image.open(data / r["image"]) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)
                image = np.asarray(im)
            with Image.open(data / r["mask"]) as m:
                assert m.format == "PNG" and m.mode == "L" and m.size == (64, 64)
                mask = np.asarray(m)
            assert set(np.unique(mask)) == {0, 1} and (mask == 1).sum() > 0, where
            # The target's pixels all have one fill colour, within the jitter of its colour.
            target_rgb = np.unique(image[mask == 1], axis=0)
            assert len(target_rgb) == 1, where
            assert np.abs(target_rgb[0].astype(int) - COLOURS[colour]).max() <= COLOUR_JITTER

            for size, c, s, quadrant in scene:
                pixels = _shape_pixels(image, c, quadrant)
                ys, xs = np.nonzero(pixels)
                rows_q, cols_q = _quadrant_slices(quadrant)
                # Strictly inside its quadrant, off its border: shapes neither overlap nor touch.
                assert rows_q.start < ys.min() and ys.max() < rows_q.stop - 1, where
                assert cols_q.start < xs.min() and xs.max() < cols_q.stop - 1, where
                width = xs.max() - xs.min() + 1
                assert (width <= 17) if size == "small" else (width >= 23), f"{where}: {size}"
                if (c, s) == (colour, shape):  # mask and image agree pixel for pixel
                    assert np.array_equal(pixels, mask == 1), where


def test_dataset_generates_on_first_use_and_checks_the_split(tmp_path: Path) -> None:
    root = str(tmp_path / "rs")
    ds = RefShapesDataset(
        root, "val", columns=["text", "label"], num_train=2, num_val=3, num_test=1
    )
    assert len(ds) == 3 and set(ds[0]) == {"id", "text", "label"}
    assert json.loads((tmp_path / "rs" / "refshapes.json").read_text())["sizes"]["val"] == 3
    with pytest.raises(ValueError, match="split"):
        RefShapesDataset(root, "dev", num_train=2, num_val=3, num_test=1)


def test_preset_composes_and_names_the_dataset() -> None:
    cfg = compose_cfg("data=refshapes")
    assert cfg.data.dataset._target_ == "mmtrain.data.refshapes.RefShapesDataset"
    assert cfg.data.root.endswith("/refshapes") and "audio" not in cfg.data
    assert list(cfg.data.targets.mask.classes) == ["background", "target"]
    assert cfg.data.image.hflip == 0.0 and list(cfg.data.targets) == ["mask"]
