"""A pretrained model's image preprocessing on the data side, against the model's own.

The keys of :mod:`mmtrain.utils.preprocessing` configure :class:`ImageInput`; its evaluation
pixels are compared with those of the model's own pipeline on real photos (matplotlib's sample
photos, and crops of them in odd sizes saved as PNG and JPEG files): Hugging Face image
processors (CLIP, ViT, SigLIP, DINOv2, DeiT, ConvNeXt styles) saved with ``save_pretrained``
and loaded back with ``AutoImageProcessor``, timm's ``create_transform`` for resolved data
configs, open_clip's ``image_transform``. The largest absolute difference of each is printed
(``pytest -s``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from mmtrain.data.inputs import ImageInput
from mmtrain.data.io import load_image
from mmtrain.data.transforms.image import IGNORE_INDEX, ImageTransform
from mmtrain.errors import MMTrainError
from mmtrain.utils.preprocessing import (
    _HF_IMAGE_DEFAULTS,
    image_keys_from_hf,
    image_keys_from_open_clip,
    image_keys_from_timm,
)

TOLERANCE = 1e-4
# Crops of the photo (left, upper, right, lower): odd and even sizes, portrait and landscape,
# one smaller than the crops (upscaled, and padded by a letterbox).
CROPS = [(0, 0, 333, 517), (10, 50, 511, 383), (100, 100, 301, 300), (0, 0, 150, 97)]


def sample_photo(name: str) -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data(name, asfileobj=False))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    """Real photos as the data sets load them (RGB): Grace Hopper (512 x 600 JPEG), a 128 x 128
    RGBA PNG, and crops of the photo written as PNG and JPEG files."""
    folder = tmp_path_factory.mktemp("photos")
    hopper = sample_photo("grace_hopper.jpg")
    files = [hopper, sample_photo("Minduka_Present_Blue_Pack.png")]
    with Image.open(hopper) as source:
        for i, box in enumerate(CROPS):
            path = folder / f"crop{i}.{'png' if i % 2 else 'jpg'}"
            source.convert("RGB").crop(box).save(path, **({"quality": 92} if i % 2 == 0 else {}))
            files.append(path)
    return [load_image(path) for path in files]


def max_difference(
    name: str,
    keys: dict[str, Any],
    reference: Callable[[Image.Image], torch.Tensor],
    images: list[Image.Image],
) -> float:
    """The largest |ImageInput(**keys) - reference| over ``images`` (printed)."""
    image_input = ImageInput(**keys)
    worst = 0.0
    for image in images:
        ours, theirs = image_input.encode(image, train=False), reference(image)
        assert ours.shape == theirs.shape == (3, keys["size"], keys["size"]), (name, image.size)
        worst = max(worst, float((ours - theirs).abs().max()))
    print(f"max |diff| {name}: {worst:.2e}")
    return worst


# ---- Hugging Face image processors -------------------------------------------------------------
HF_PROCESSORS = {  # name: (processor class, its arguments)
    "clip": ("CLIPImageProcessor", {}),
    "vit": ("ViTImageProcessor", {}),
    "siglip": ("SiglipImageProcessor", {}),
    "dinov2": (  # facebook/dinov2-*: shortest edge 256, crop 224, bicubic
        "BitImageProcessor",
        {
            "size": {"shortest_edge": 256},
            "crop_size": {"height": 224, "width": 224},
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        },
    ),
    "deit": ("DeiTImageProcessor", {}),
    "convnext-224": ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}}),
    "convnext-384": ("ConvNextImageProcessor", {}),
    "clip-crop-larger-than-resize": ("CLIPImageProcessor", {"size": {"shortest_edge": 200}}),
    "vit-rescale-1/127.5": (
        "ViTImageProcessor",
        {"rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0] * 3},
    ),
    "vit-no-normalize": ("ViTImageProcessor", {"do_normalize": False}),
    "vit-no-rescale": ("ViTImageProcessor", {"do_rescale": False}),
    "vit-nearest": ("ViTImageProcessor", {"resample": 0}),
    "siglip-lanczos": ("SiglipImageProcessor", {"resample": 1}),
}


def hf_reference(folder: Path) -> Callable[[Image.Image], torch.Tensor]:
    """The processor that ``AutoImageProcessor`` loads from ``folder`` (offline), per image."""
    transformers = pytest.importorskip("transformers")
    from transformers.image_processing_backends import TorchvisionBackend

    processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    assert isinstance(processor, TorchvisionBackend)  # transformers 5's default backend
    return lambda image: processor(image, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("name", list(HF_PROCESSORS))
def test_hf_image_processors_are_reproduced(name, photos, tmp_path):
    transformers = pytest.importorskip("transformers")
    cls, kwargs = HF_PROCESSORS[name]
    getattr(transformers, cls)(**kwargs).save_pretrained(tmp_path)
    keys = image_keys_from_hf(tmp_path)
    assert keys["resize_backend"] == "tensor" and keys["crop_anchor"] == "floor"
    assert max_difference(f"hf {name}", keys, hf_reference(tmp_path), photos) < TOLERANCE


def test_the_hf_keys_of_the_usual_models(tmp_path):
    """What the keys say, per model style: the resize, its size, the crop, the interpolation."""
    transformers = pytest.importorskip("transformers")
    expected = {
        "clip": ("shortest", 224, 224, "bicubic"),
        "vit": ("square", 224, 224, "bilinear"),
        "siglip": ("square", 224, 224, "bicubic"),
        "dinov2": ("shortest", 256, 224, "bicubic"),
        "deit": ("square", 256, 224, "bicubic"),
        "convnext-224": ("shortest", 256, 224, "bicubic"),
        "convnext-384": ("square", 384, 384, "bicubic"),
        "vit-nearest": ("square", 224, 224, "nearest-exact"),
    }
    for name, (resize, resize_size, size, interpolation) in expected.items():
        cls, kwargs = HF_PROCESSORS[name]
        processor = getattr(transformers, cls)(**kwargs)
        keys = image_keys_from_hf(_saved(processor, tmp_path / name))
        got = (keys["resize"], keys["resize_size"], keys["size"], keys["interpolation"])
        assert got == (resize, resize_size, size, interpolation), name
    clip = image_keys_from_hf(_saved(transformers.CLIPImageProcessor(), tmp_path / "c"))
    assert clip["mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert clip["std"] == [0.26862954, 0.26130258, 0.27577711]
    no_norm = image_keys_from_hf(
        _saved(transformers.ViTImageProcessor(do_normalize=False), tmp_path / "n")
    )
    assert no_norm["mean"] == [0.0] * 3 and no_norm["std"] == [1.0] * 3


def _saved(processor: Any, folder: Path) -> Path:
    """``processor`` saved into ``folder``."""
    processor.save_pretrained(folder)
    return folder


# Hub-style configs: what older checkpoints ship (int sizes, legacy feature extractor names,
# keys left to the class defaults), a transformers 5 nested processor_config.json, and a config
# that names no processor (config.json's model_type decides).
HUB_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {}
HUB_CONFIGS["openai-clip-style"] = {
    "preprocessor_config.json": {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 224,
    }
}
HUB_CONFIGS["google-vit-style"] = {
    "preprocessor_config.json": {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "size": 160,
    }
}
HUB_CONFIGS["dinov2-style-fast"] = {
    "preprocessor_config.json": {
        "crop_size": {"height": 196, "width": 196},
        "do_center_crop": True,
        "do_pad": None,  # null is None (no padding), as transformers reads it
        "image_processor_type": "BitImageProcessorFast",  # transformers 4's name
        "size": {"shortest_edge": 222},
    }
}
HUB_CONFIGS["nested-processor-config"] = {
    "processor_config.json": {
        "processor_class": "SiglipProcessor",
        "image_processor": {
            "image_processor_type": "SiglipImageProcessor",
            "size": {"height": 192, "width": 192},
            "resample": 2,
        },
    }
}
HUB_CONFIGS["model-type-only"] = {
    "preprocessor_config.json": {"size": {"height": 128, "width": 128}, "resample": 3},
    "config.json": {"model_type": "vit"},
}


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_hub_style_configs_read_as_transformers_reads_them(name, photos, tmp_path):
    pytest.importorskip("transformers")
    for file, content in HUB_CONFIGS[name].items():
        (tmp_path / file).write_text(json.dumps(content))
    keys = image_keys_from_hf(tmp_path)
    assert max_difference(f"hf {name}", keys, hf_reference(tmp_path), photos) < TOLERANCE


def test_the_processor_defaults_are_transformers(tmp_path):
    """The class defaults used for keys a config leaves out are those of the classes."""
    transformers = pytest.importorskip("transformers")
    for name, defaults in _HF_IMAGE_DEFAULTS.items():
        processor = getattr(transformers, name)()
        for key, value in defaults.items():
            actual = getattr(processor, key)
            if key in ("size", "crop_size") and actual is not None:
                actual = {k: v for k, v in dict(actual).items() if v is not None}
            if key in ("image_mean", "image_std"):
                actual = list(actual)
            if key == "resample":
                actual = int(actual)
            assert actual == value or (key == "do_center_crop" and not actual and not value), (
                name,
                key,
                actual,
                value,
            )


HF_REFUSED = {  # what cannot be reproduced, and the words of the error
    "no resize": ({"image_processor_type": "ViTImageProcessor", "do_resize": False}, "do_resize"),
    "no crop after a shortest edge": (
        {"image_processor_type": "CLIPImageProcessor", "do_center_crop": False},
        "different shapes",
    ),
    "not square": (
        {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 256}},
        "not a square",
    ),
    "box on tensors": ({"image_processor_type": "ViTImageProcessor", "resample": 4}, "resample"),
    "null resample": (
        {"image_processor_type": "ViTImageProcessor", "resample": None},
        "resample=None",
    ),
    "own pipeline": ({"image_processor_type": "DINOv3ViTImageProcessor"}, "supported:"),
    "remote code": (
        {"image_processor_type": "X", "auto_map": {"AutoImageProcessor": "x.X"}},
        "remote code",
    ),
    "padding": ({"image_processor_type": "ViTImageProcessor", "do_pad": True}, "do_pad"),
    "no type": ({"size": 224}, "(none named)"),
}


@pytest.mark.parametrize("name", list(HF_REFUSED))
def test_what_cannot_be_reproduced_is_refused_naming_the_file(name, tmp_path):
    config, words = HF_REFUSED[name]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(MMTrainError, match="preprocessor_config.json") as err:
        image_keys_from_hf(tmp_path)
    assert words in str(err.value)


def test_a_folder_without_a_processor_is_one_error(tmp_path):
    with pytest.raises(MMTrainError, match="has no image processor config"):
        image_keys_from_hf(tmp_path)
    with pytest.raises(MMTrainError, match="is not a folder"):
        image_keys_from_hf(tmp_path / "missing")
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(MMTrainError, match="cannot read it as JSON"):
        image_keys_from_hf(tmp_path)


# ---- timm ----------------------------------------------------------------------------------------
TIMM_CONFIGS = [  # (crop_pct, crop_mode, interpolation, size)
    (0.875, "center", "bicubic", 224),
    (0.9, "center", "bilinear", 224),
    (0.9, "squash", "bicubic", 224),
    (0.95, "border", "bicubic", 224),
    (1.0, "center", "nearest", 160),
    (0.875, "center", "lanczos", 192),
]


@pytest.mark.parametrize(("crop_pct", "crop_mode", "interpolation", "size"), TIMM_CONFIGS)
def test_timm_transforms_are_reproduced(crop_pct, crop_mode, interpolation, size, photos):
    timm = pytest.importorskip("timm")
    pretrained_cfg = {
        "input_size": (3, size, size),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "interpolation": interpolation,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    config = timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg)
    keys = image_keys_from_timm(config)
    name = f"timm crop_pct={crop_pct} {crop_mode} {interpolation}"
    assert max_difference(name, keys, timm.data.create_transform(**config), photos) < TOLERANCE


@pytest.mark.parametrize(
    ("model", "overlay"),
    [("resnet10t", {}), ("resnet10t", {"crop_pct": 0.9}), ("vit_tiny_patch16_224", {})],
)
def test_timm_models_data_configs_are_reproduced(model, overlay, photos):
    """A model's own pretrained_cfg (no weights are loaded), as encoders resolve it."""
    timm = pytest.importorskip("timm")
    net = timm.create_model(model, pretrained=False, pretrained_cfg_overlay=overlay)
    config = timm.data.resolve_data_config({}, model=net)
    keys = image_keys_from_timm(config)
    assert keys["resize"] == "shortest" and keys["resize_size"] == int(
        keys["size"] / config["crop_pct"]
    )
    reference = timm.data.create_transform(**config)
    assert max_difference(f"timm {model} {overlay}", keys, reference, photos) < TOLERANCE


def test_timm_keys_refuse_what_they_cannot_reproduce():
    good = {"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert image_keys_from_timm(good)["resize_size"] == 256  # timm's default crop_pct 0.875
    for bad, words in [
        ({**good, "input_size": (3, 224, 256)}, "not \\(3, S, S\\)"),
        ({**good, "input_size": (1, 224, 224)}, "not \\(3, S, S\\)"),
        ({**good, "crop_mode": "random"}, "crop_mode"),
        ({**good, "interpolation": "random"}, "interpolation"),
        ({"mean": (0.5,) * 3}, "input_size, std missing"),
    ]:
        with pytest.raises(MMTrainError, match=words):
            image_keys_from_timm(bad)


# ---- open_clip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_open_clip_transforms_are_reproduced(resize_mode, interpolation, photos):
    open_clip = pytest.importorskip("open_clip")
    cfg = open_clip.transform.PreprocessCfg(
        size=224,
        interpolation=interpolation,
        resize_mode=resize_mode,
        fill_color=127 if resize_mode == "longest" else 0,
    )
    keys = image_keys_from_open_clip(cfg)
    reference = open_clip.transform.image_transform_v2(cfg, is_train=False)
    name = f"open_clip {resize_mode} {interpolation}"
    assert max_difference(name, keys, reference, photos) < TOLERANCE


def test_open_clip_keys_from_a_dict():
    """A model's ``visual.preprocess_cfg`` is a dict; missing keys are open_clip's defaults."""
    keys = image_keys_from_open_clip({"size": (256, 256), "mean": [0.5] * 3, "std": [0.5] * 3})
    assert keys["size"] == keys["resize_size"] == 256 and keys["resize"] == "shortest"
    assert keys["interpolation"] == "bicubic" and keys["mean"] == [0.5] * 3
    assert image_keys_from_open_clip({"size": 224, "interpolation": "random"})["interpolation"] == (
        "bicubic"  # what open_clip evaluates 'random' with
    )
    for bad in [{"size": (224, 256)}, {}, {"size": 224, "resize_mode": "crop"}]:
        with pytest.raises(MMTrainError, match="open_clip preprocess config"):
            image_keys_from_open_clip(bad)


# ---- the keys matter, training and masks ------------------------------------------------------
def test_the_photos_tell_the_crop_anchor_and_the_backend_apart(photos, tmp_path):
    """Each key is needed: changing one moves the pixels well beyond the tolerance."""
    transformers = pytest.importorskip("transformers")
    transformers.CLIPImageProcessor().save_pretrained(tmp_path)
    keys, reference = image_keys_from_hf(tmp_path), hf_reference(tmp_path)
    for change in (
        {"crop_anchor": "round"},
        {"resize_backend": "pil"},
        {"interpolation": "bilinear"},
    ):
        assert max_difference(f"changed {change}", {**keys, **change}, reference, photos) > 1e-3


def test_the_default_pipeline_is_unchanged(photos):
    """No new key set: the square bilinear PIL resize mmtrain always had."""
    old = v2.Compose(
        [
            v2.Resize((64, 64), antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    for image in photos:
        assert torch.equal(ImageTransform()(image), old(image))


def test_training_crops_at_the_models_size_with_its_interpolation_and_normalisation(
    photos, tmp_path
):
    transformers = pytest.importorskip("transformers")
    transformers.CLIPImageProcessor().save_pretrained(tmp_path)
    image_input = ImageInput(**image_keys_from_hf(tmp_path), color_jitter=0.2)
    crop, flip, jitter = image_input.train_transform.transforms[1:4]  # after ToImage
    assert isinstance(crop, v2.RandomResizedCrop) and crop.size == (224, 224)
    assert crop.interpolation == InterpolationMode.BICUBIC
    assert isinstance(flip, v2.RandomHorizontalFlip) and isinstance(jitter, v2.ColorJitter)
    normalize = image_input.train_transform.transforms[-1]
    assert normalize.mean == [0.48145466, 0.4578275, 0.40821073]
    torch.manual_seed(0)
    out = image_input.encode(photos[0], train=True)
    assert out.shape == (3, 224, 224) and not torch.equal(
        out, image_input.encode(photos[0], train=False)
    )


@pytest.mark.parametrize("resize", ["square", "shortest", "longest"])
@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_a_mask_follows_its_image_and_is_padded_unlabelled(resize, backend, photos):
    """The mask goes through the same resize and crop (nearest), letterbox padding is 255."""
    image = photos[5]  # 150 x 97: letterboxed by "longest"
    transform = ImageTransform(
        size=64,
        resize=resize,
        resize_size=72 if resize != "longest" else 64,
        interpolation="bicubic",
        resize_backend=backend,
        crop_anchor="floor",
        fill=[255, 0, 0],
        augment=False,
    )
    ids = np.zeros((image.height, image.width), dtype=np.uint8)
    ids[:, : image.width // 2] = 3  # left half class 3, right half class 0
    out, mask = transform(image, mask=ids)
    assert out.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.long
    assert set(mask.unique().tolist()) <= {0, 3, IGNORE_INDEX}
    # The image's own pixels carry labels; the padded ones are unlabelled and the fill colour.
    padded = mask == IGNORE_INDEX
    assert bool(padded.any()) == (resize == "longest")
    if resize == "longest":
        red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(transform.mean)) / torch.tensor(
            transform.std
        )
        assert torch.allclose(out[:, padded], red[:, None].expand(3, int(padded.sum())), atol=1e-5)
    # Class 3 stays on the left: the same geometry as the image.
    labelled = mask[:, :][~padded]
    assert (labelled == 3).any() and (labelled == 0).any()
    left = mask[:, :8]
    assert set(left[left != IGNORE_INDEX].unique().tolist()) == {3}
    # The same call with a mask draws the same numbers and gives the same image.
    torch.manual_seed(1)
    train_out, _ = ImageTransform(size=32, resize=resize, augment=True)(image, True, mask=ids)
    torch.manual_seed(1)
    assert torch.equal(train_out, ImageTransform(size=32, resize=resize)(image, True))


def test_auto_size_and_the_state_work_with_the_new_keys(photos):
    transform = ImageTransform(size="auto", resize="shortest", interpolation="bicubic")
    assert transform.fit_size([image.size for image in photos]) == transform.size
    out = transform(photos[0])
    assert out.shape == (3, transform.size, transform.size)
    again = ImageTransform(size="auto", resize="shortest", interpolation="bicubic")
    again.load_state_dict(transform.state_dict())
    assert torch.equal(again(photos[0]), out)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"resize": "crop"}, "resize must be one of"),
        ({"resize_backend": "numpy"}, "resize_backend must be one of"),
        ({"crop_anchor": "ceil"}, "crop_anchor must be one of"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
        ({"interpolation": "box", "resize_backend": "tensor"}, "resizes PIL images only"),
        ({"resize_size": 0}, "resize_size must be positive"),
        ({"size": "auto", "resize_size": 256}, "needs a fixed size"),
        ({"fill": 256}, "fill must be"),
        ({"fill": [0, 0]}, "fill must be"),
    ],
)
def test_bad_keys_are_value_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ImageTransform(**kwargs)


def test_the_keys_module_imports_neither_torch_nor_transformers():
    code = (
        "import sys, mmtrain.utils.preprocessing\n"
        "heavy = [m for m in ('torch', 'transformers', 'timm', 'open_clip') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
