"""The data side of segmentation: ``mask`` PNGs in manifests, transformed with their images.

The fixtures are written as a user would lay them out: RGB PNG images and mask PNGs of class
ids (grey levels, mode L, and palette indices, mode P, as Pascal VOC and ADE20K ship them)
next to the manifests, paths relative to the manifest file. The picture is its own mask in
colour: class 1 is red (the left half), class 2 green (the bottom right), class 0 blue, and the
top rows are unlabelled (255) and grey, so the alignment of a transformed image and its
transformed mask can be read off the pixels.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import QUIET
from PIL import Image
from torchvision.transforms import v2

from mmtrain.build import head_facts
from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.inputs import ImageInput, TextInput
from mmtrain.data.io import load_mask
from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.targets import MaskTarget
from mmtrain.data.transforms import ImageTransform
from mmtrain.data.transforms.image import IMAGENET_MEAN, IMAGENET_STD
from mmtrain.errors import MMTrainError
from mmtrain.run import run

CLASSES = ["background", "red", "green"]
COLOURS = {0: (30, 40, 200), 1: (210, 30, 30), 2: (30, 190, 40), 255: (128, 128, 128)}
WIDTH, HEIGHT = 40, 30
# A VOC-like palette: the colours a viewer shows; the pixel values (indices) are the ids.
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]


# ---- fixtures in the real on-disk layout --------------------------------------------------------
def class_ids(flip: bool = False) -> np.ndarray:
    """``(H, W)`` uint8 ids: left half 1, bottom right 2, the rest 0, top 3 rows 255."""
    ids = np.zeros((HEIGHT, WIDTH), np.uint8)
    ids[:, : WIDTH // 2] = 1
    ids[18:, WIDTH // 2 :] = 2
    ids[:3] = 255
    return ids[:, ::-1].copy() if flip else ids


def picture(ids: np.ndarray) -> Image.Image:
    """The RGB image whose colours are the classes of ``ids``."""
    table = np.zeros((256, 3), np.uint8)
    for class_id, colour in COLOURS.items():
        table[class_id] = colour
    return Image.fromarray(table[ids])


def write_mask(path: Path, ids: np.ndarray, mode: str) -> str:
    """A mask PNG in mode ``L`` (grey levels) or ``P`` (palette indices). Returns its name."""
    img = Image.fromarray(ids)  # mode L
    if mode == "P":
        img.putpalette(PALETTE)  # L -> P, the values (now indices) unchanged
    assert img.mode == mode
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path.name


def write_split(folder: Path, split: str, n: int) -> Path:
    """``folder/<split>.jsonl``: ``n`` samples of image + text + mask, every other one mirrored
    and every other mask a palette PNG."""
    rows = []
    for i in range(n):
        ids = class_ids(flip=bool(i % 2))
        name = f"{split}_{i}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        picture(ids).save(folder / "images" / f"{name}.png")
        write_mask(folder / "masks" / f"{name}.png", ids, "P" if i % 2 else "L")
        side = "right" if i % 2 else "left"
        rows.append(
            {
                "id": name,
                "image": f"images/{name}.png",
                "text": f"red on the {side}",
                "mask": f"masks/{name}.png",
            }
        )
    path = folder / f"{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def manifests(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "segdata"
    return {"train": write_split(folder, "train", 4), "val": write_split(folder, "val", 2)}


def _dm(files: dict[str, Path], **kwargs: Any) -> MultimodalDataModule:
    """A data module over the manifests: image + text -> mask, 16 px."""
    defaults: dict[str, Any] = {
        "dataset": functools.partial(ManifestDataset),
        "train": str(files["train"]),
        "val": str(files["val"]),
        "image": ImageInput(size=16),
        "text": TextInput(max_length=8),
        "modalities": ["image", "text"],
        "tasks": ["mask"],
        "batch_size": 2,
        "targets": {"mask": MaskTarget(CLASSES)},
    }
    return MultimodalDataModule(**{**defaults, **kwargs})


def colour_classes(image: torch.Tensor) -> torch.Tensor:
    """The class each pixel of a normalised ``(3, S, S)`` image shows: its strongest channel
    (red -> 1, green -> 2, blue -> 0)."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    channel = (image * std + mean).argmax(dim=0)  # 0 R, 1 G, 2 B
    return torch.tensor([1, 2, 0])[channel]


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one class: off the class borders, where the
    bilinear image and the nearest mask may differ by a pixel."""
    m = mask.float()[None, None]
    high = F.max_pool2d(m, 3, stride=1, padding=1)
    low = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (high == low)[0, 0]


# ---- reading masks ------------------------------------------------------------------------------
def test_grey_and_palette_masks_give_the_class_ids(tmp_path):
    ids = class_ids()
    for mode in ("L", "P"):
        loaded = load_mask(tmp_path / write_mask(tmp_path / f"m_{mode}.png", ids, mode))
        assert loaded.dtype == np.uint8 and loaded.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(loaded, ids)  # palette colours are not the ids


def test_rgb_mask_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "colour_mask.png"
    picture(class_ids()).save(path)
    with pytest.raises(MMTrainError, match=r"colour_mask\.png has mode RGB.*class ids"):
        load_mask(path)


def test_missing_or_corrupt_mask_file_names_it(tmp_path):
    with pytest.raises(MMTrainError, match=r"mask file not found: .*nowhere\.png"):
        load_mask(tmp_path / "nowhere.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MMTrainError, match=r"cannot decode mask .*broken\.png"):
        load_mask(tmp_path / "broken.png")


def test_manifest_reads_masks_relative_to_the_manifest(manifests):
    data = ManifestDataset(manifests["train"], columns=["image", "mask"])
    assert "mask" in data.columns
    for i in range(2):
        item = data[i]
        np.testing.assert_array_equal(item["mask"], class_ids(flip=bool(i)))
        assert item["image"].size == (WIDTH, HEIGHT)


def test_missing_mask_file_names_the_manifest_line(manifests):
    (manifests["train"].parent / "masks" / "train_1.png").unlink()
    data = ManifestDataset(manifests["train"], columns=["image", "mask"])
    with pytest.raises(MMTrainError, match=r"train\.jsonl:2: mask file not found: .*train_1"):
        data[1]


def test_mask_value_must_be_a_path(tmp_path):
    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    picture(class_ids()).save(tmp_path / "a.png")
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "a.png", "mask": 3}) + "\n")
    with pytest.raises(MMTrainError, match=r"m\.jsonl:1: mask must be a file path"):
        ManifestDataset(path, columns=["image", "mask"])[0]


# ---- the transform ------------------------------------------------------------------------------
def test_image_transform_without_mask_is_unchanged():
    """No mask: the same pipeline, draws and numbers as torchvision's v2 built directly."""
    image = picture(class_ids())
    size, scale, flip, jitter = 24, (0.6, 1.0), 0.5, 0.1
    reference = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(flip),
            v2.ColorJitter(jitter, jitter, jitter),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
        ]
    )
    transform = ImageTransform(size=size, crop_scale=list(scale), hflip=flip, color_jitter=jitter)
    for seed in range(4):
        torch.manual_seed(seed)
        ours = transform(image, train=True)
        torch.manual_seed(seed)
        theirs = reference(image)
        assert isinstance(ours, torch.Tensor)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        after = torch.rand(1)  # the generator is left where the reference leaves it
        torch.manual_seed(seed)
        transform(image, train=True, mask=class_ids())  # a mask draws nothing more
        assert torch.rand(1) == after
    plain = v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            *reference.transforms[3:],
        ]
    )
    torch.testing.assert_close(transform(image), plain(image), rtol=0, atol=0)


def test_training_crop_and_flip_keep_image_and_mask_aligned():
    ids = class_ids()
    image = picture(ids)
    transform = ImageTransform(size=32, crop_scale=[0.25, 1.0], hflip=0.5, color_jitter=0.2)
    flipped = []
    for seed in range(10):
        torch.manual_seed(seed)
        alone = transform(image, train=True)
        torch.manual_seed(seed)
        out, mask = transform(image, train=True, mask=ids)
        torch.testing.assert_close(out, alone, rtol=0, atol=0)  # same draws, same image
        assert mask.shape == (32, 32) and mask.dtype == torch.long
        assert set(mask.unique().tolist()) <= {0, 1, 2, 255}
        labelled = interior(mask) & (mask != 255)
        assert labelled.sum() > 100
        shown = colour_classes(out)
        assert torch.equal(shown[labelled], mask[labelled]), f"seed {seed}: misaligned"
        red_columns = (mask == 1).nonzero()[:, 1].float()
        if len(red_columns):
            flipped.append(bool(red_columns.mean() > 16 and (mask[:, -1] == 1).any()))
    assert any(flipped) and not all(flipped), "the seeds should flip some crops, not all"


def test_eval_is_a_plain_nearest_resize_keeping_255():
    ids = class_ids()
    image = picture(ids)
    transform = ImageTransform(size=20, color_jitter=0.3)
    out, mask = transform(image, mask=ids)
    expected = F.interpolate(torch.from_numpy(ids)[None, None].float(), (20, 20), mode="nearest")
    assert torch.equal(mask, expected[0, 0].long())
    assert (mask[:2] == 255).all() and (mask == 255).sum() < mask.numel()
    torch.testing.assert_close(out, transform(image), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"mask is 30x39 .*image 30x40"):
        transform(image, mask=ids[:, :-1])


# ---- the data module ----------------------------------------------------------------------------
def test_batches_carry_masks_aligned_with_images(manifests):
    dm = _dm(manifests)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert batch["mask"].shape == (2, 16, 16) and batch["mask"].dtype == torch.long
    assert "mask_mask" not in batch
    for i, flip in enumerate((False, True)):
        expected = F.interpolate(
            torch.from_numpy(class_ids(flip))[None, None].float(), (16, 16), mode="nearest"
        )
        assert torch.equal(batch["mask"][i], expected[0, 0].long())
    for seed in range(3):
        torch.manual_seed(seed)
        batch = next(iter(dm.train_dataloader()))
        assert batch["mask"].shape == (2, 16, 16)
        for image, mask in zip(batch["image"], batch["mask"]):
            labelled = interior(mask) & (mask != 255)
            assert torch.equal(colour_classes(image)[labelled], mask[labelled])


def test_mask_classes_are_the_class_names_and_saved(manifests):
    dm = _dm(manifests)
    dm.setup("fit")
    facts = dm.facts()
    assert facts["targets"]["mask"]["class_names"] == CLASSES
    wired = head_facts(facts, "mask")
    assert wired["num_classes"] == 3 and wired["class_names"] == CLASSES
    state = json.loads(json.dumps(dm.state_dict()))  # plain types
    assert state["targets"]["mask"]["classes"] == CLASSES

    restored = _dm(manifests, targets={"mask": MaskTarget()})
    restored.load_state_dict(state)
    restored.setup("validate")
    assert restored.facts()["targets"]["mask"]["class_names"] == CLASSES
    assert "train" not in restored.datasets  # nothing left to build from the training split


def test_without_mask_classes_no_class_names_come_from_file_names(manifests, caplog):
    dm = _dm(manifests, targets={"mask": MaskTarget()})
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
        assert dm.facts()["targets"]["mask"] == {}
    assert dm.state_dict()["targets"]["mask"] == {}
    assert "data.targets.mask.classes is not set" in caplog.text
    assert "head.mask.num_classes" in caplog.text
    batch = next(iter(dm.val_dataloader()))  # the masks load all the same
    assert batch["mask"].shape == (2, 16, 16)


@pytest.mark.parametrize("classes", [["background"], ["a", "b", "a"], [str(i) for i in range(256)]])
def test_bad_mask_classes_are_refused(manifests, classes):
    with pytest.raises(ValueError, match="classes must be 2 to 255 distinct class names"):
        MaskTarget(classes)


def test_mask_task_needs_the_image_modality(manifests):
    with pytest.raises(ValueError, match=r"head/mask .*needs the image modality"):
        _dm(manifests, modalities=["text"])


def test_bad_masks_name_the_sample(manifests):
    dm = _dm(manifests)
    image, ids = picture(class_ids()), class_ids()
    with pytest.raises(MMTrainError, match=r"sample s1: the mask target needs its image"):
        dm.encode({"id": "s1", "text": "red", "mask": ids}, train=False)
    bad = ids.copy()
    bad[10, 10] = 7
    with pytest.raises(MMTrainError, match=r"sample s2: mask class ids \[7\] .*3 classes"):
        dm.encode({"id": "s2", "image": image, "mask": bad}, train=True)
    with pytest.raises(MMTrainError, match=r"sample s3: the mask is 30x20"):
        dm.encode({"id": "s3", "image": image, "mask": ids[:, :20]}, train=False)
    out = dm.encode({"id": "s4", "image": image, "text": "red"}, train=False)  # no target
    assert "mask" not in out and out["image"].shape == (3, 16, 16)


def test_an_unreadable_mask_is_a_bad_sample_to_skip(manifests):
    (manifests["val"].parent / "masks" / "val_1.png").write_bytes(b"not a png")
    dm = _dm(manifests, on_error="skip", max_skipped=1)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [i for b in batches for i in b["id"]] == ["val_0"]
    assert dm.skipped["val"] == 1


# ---- end to end ---------------------------------------------------------------------------------
SEGMENT = [
    "experiment=manifest_label",
    "~head/label",
    "+head/mask=segmentation",
    "~encoder/audio",
    "fusion=film",
    "fusion.target=image",
    "head.mask.grid=null",
    "debug=fdr",
    "data.image.size=32",
    "data.batch_size=2",
]


def test_segmentation_from_manifests_end_to_end(compose_config, manifests, tmp_path):
    files = [f"data.train={manifests['train']}", f"data.val={manifests['val']}"]
    out = tmp_path / "run"
    cfg = compose_config(
        *SEGMENT,
        *files,
        f"data.targets.mask.classes=[{','.join(CLASSES)}]",
        *QUIET,
        output_dir=out,
    )
    metrics = run("fit", cfg)
    assert "val/mask/miou" in metrics and "val/mask/pixel_accuracy" in metrics
    assert all(math.isfinite(v) for v in metrics.values())
    state = json.loads((out / "data_state.json").read_text())
    assert state["targets"]["mask"]["classes"] == CLASSES


def test_without_classes_the_head_asks_for_num_classes(compose_config, manifests, tmp_path):
    files = [f"data.train={manifests['train']}", f"data.val={manifests['val']}"]
    cfg = compose_config(*SEGMENT, *files, *QUIET, output_dir=tmp_path / "run")
    with pytest.raises(MMTrainError, match=r"head\.mask.*num_classes"):
        run("fit", cfg)
    cfg = compose_config(
        *SEGMENT, *files, "+head.mask.num_classes=3", *QUIET, output_dir=tmp_path / "run2"
    )
    assert "val/mask/miou" in run("fit", cfg)
