"""A pretrained model's own preprocessing, as ``data.<modality>`` keys (torch-free).

A pretrained encoder decides how its input is preprocessed: build.py asks the encoder class
for these keys and writes them into ``cfg.data.<modality>`` before the data module is built.
The functions here turn what a model ships into those keys, reading plain files and dicts only
(no torch, no transformers), so that they run before anything heavy is imported:

- :func:`image_keys_from_hf`: a Hugging Face image processor's ``preprocessor_config.json``;
- :func:`image_keys_from_timm`: timm's resolved data config
  (``timm.data.resolve_data_config({}, model=m)``);
- :func:`image_keys_from_open_clip`: open_clip's preprocess config
  (``model.visual.preprocess_cfg``);
- :func:`text_keys_from_hf`: a Hugging Face tokenizer folder;
- :func:`audio_keys_from_hf`: a Hugging Face feature extractor's folder.

The image keys are those of :class:`mmtrain.data.transforms.image.ImageTransform`: ``size``,
``resize`` (``square``, ``shortest`` or ``longest``), ``resize_size``, ``interpolation``,
``mean``, ``std``, ``resize_backend`` (``pil``: timm and open_clip resize PIL images;
``tensor``: transformers 5 resizes uint8 tensors), ``crop_anchor`` (``round``: torchvision's
centre crop, which timm and open_clip use; ``floor``: transformers') and ``fill`` (the padding
colour). Every image function returns all of them, so no key of an earlier config leaks into
the model's preprocessing. A description that this pipeline cannot reproduce exactly is one
:class:`~mmtrain.errors.MMTrainError` naming the file (or the dict) and the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmtrain.errors import MMTrainError

PROCESSOR_FILE = "processor_config.json"  # transformers 5: processors nest their parts here
PREPROCESSOR_FILE = "preprocessor_config.json"  # image processors and feature extractors
TOKENIZER_CONFIG = "tokenizer_config.json"
MODEL_CONFIG = "config.json"
# Files that hold a tokenizer's vocabulary: one of them must be in a tokenizer folder.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "merges.txt",
    "tokenizer.tiktoken",
)
# What a tokenizer or a feature extractor depends on besides its vocabulary (fingerprints).
PREPROCESSING_FILES = (
    *TOKENIZER_FILES,
    TOKENIZER_CONFIG,
    "special_tokens_map.json",
    "added_tokens.json",
    PREPROCESSOR_FILE,
    PROCESSOR_FILE,
)
VERY_LARGE_LENGTH = 1_000_000  # a model_max_length above this is transformers' "no limit"

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]

# PIL's resampling codes (what "resample" holds) -> the interpolation that transformers 5's
# torchvision backend uses for them (transformers.image_utils.pil_torch_interpolation_mapping:
# NEAREST is torchvision's NEAREST_EXACT).
HF_RESAMPLE = {
    0: "nearest-exact",
    1: "lanczos",
    2: "bilinear",
    3: "bicubic",
    4: "box",
    5: "hamming",
}
PIL_RESAMPLE_NAMES = ("NEAREST", "LANCZOS", "BILINEAR", "BICUBIC", "BOX", "HAMMING")  # by code
TENSOR_INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "lanczos")

# The defaults of the transformers 5.25 image processors whose pipeline is the standard one
# (resize, centre crop, rescale, normalise; ConvNeXt's crop_pct below), for the keys that a
# preprocessor_config.json may leave out (class attributes; a test checks them against the
# classes). Processors with their own pipeline (DINOv3 rescales before resizing, MobileViT
# flips channels, patch-based ones) are refused rather than approximated.
_HF_IMAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "CLIPImageProcessor": {
        "resample": 3,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "size": {"shortest_edge": 224},
        "default_to_square": False,
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
    },
    "ViTImageProcessor": {
        "resample": 2,
        "image_mean": HALF,
        "image_std": HALF,
        "size": {"height": 224, "width": 224},
        "default_to_square": True,
        "crop_size": None,
        "do_center_crop": None,
    },
    "SiglipImageProcessor": {
        "resample": 3,
        "image_mean": HALF,
        "image_std": HALF,
        "size": {"height": 224, "width": 224},
        "default_to_square": False,
        "crop_size": None,
        "do_center_crop": None,
    },
    "DeiTImageProcessor": {
        "resample": 3,
        "image_mean": HALF,
        "image_std": HALF,
        "size": {"height": 256, "width": 256},
        "default_to_square": True,
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
    },
    "BlipImageProcessor": {
        "resample": 3,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "size": {"height": 384, "width": 384},
        "default_to_square": True,
        "crop_size": None,
        "do_center_crop": None,
    },
    "ConvNextImageProcessor": {
        "resample": 3,
        "image_mean": HALF,
        "image_std": HALF,
        "size": {"shortest_edge": 384},
        "default_to_square": False,
        "crop_size": None,
        "do_center_crop": None,
        "crop_pct": 224 / 256,
    },
}
_HF_IMAGE_DEFAULTS["ChineseCLIPImageProcessor"] = _HF_IMAGE_DEFAULTS["CLIPImageProcessor"]
_HF_IMAGE_DEFAULTS["BitImageProcessor"] = _HF_IMAGE_DEFAULTS["CLIPImageProcessor"]  # DINOv2
# Keys every processor above shares (BaseImageProcessor and the classes).
_HF_COMMON = {
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_pad": None,
}
# config.json's model_type -> the image processor transformers picks when the processor's
# config names none (a subset of transformers' IMAGE_PROCESSOR_MAPPING_NAMES).
_HF_IMAGE_BY_MODEL = {
    "clip": "CLIPImageProcessor",
    "clip_vision_model": "CLIPImageProcessor",
    "chinese_clip": "ChineseCLIPImageProcessor",
    "vit": "ViTImageProcessor",
    "siglip": "SiglipImageProcessor",
    "siglip_vision_model": "SiglipImageProcessor",
    "dinov2": "BitImageProcessor",
    "bit": "BitImageProcessor",
    "deit": "DeiTImageProcessor",
    "convnext": "ConvNextImageProcessor",
    "convnextv2": "ConvNextImageProcessor",
    "resnet": "ConvNextImageProcessor",
    "blip": "BlipImageProcessor",
}

# The audio feature extractors whose output mmtrain batches, with the defaults of the keys a
# config may leave out; anything else is refused by name.
_HF_AUDIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "Wav2Vec2FeatureExtractor": {"sampling_rate": 16000, "feature_size": 1},
    "WhisperFeatureExtractor": {"sampling_rate": 16000, "feature_size": 80},
    "ASTFeatureExtractor": {"sampling_rate": 16000, "num_mel_bins": 128},
}
_HF_AUDIO_BY_MODEL = {
    "wav2vec2": "Wav2Vec2FeatureExtractor",
    "hubert": "Wav2Vec2FeatureExtractor",
    "wavlm": "Wav2Vec2FeatureExtractor",
    "data2vec-audio": "Wav2Vec2FeatureExtractor",
    "whisper": "WhisperFeatureExtractor",
    "audio-spectrogram-transformer": "ASTFeatureExtractor",
}


# ---- files ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
        MMTrainError: naming the file, when it is not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MMTrainError(f"{path}: cannot read it as JSON ({err})") from None
    if not isinstance(data, dict):
        raise MMTrainError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _folder(folder: str | Path, what: str) -> Path:
    """``folder`` as a Path, checked to be a folder.

    Raises:
        MMTrainError: when it is not a folder.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise MMTrainError(f"{what}: {folder} is not a folder")
    return path


def _processor_part(folder: Path, keys: tuple[str, ...], what: str) -> tuple[dict[str, Any], Path]:
    """The config of a processor part and its file, found as transformers finds it: nested
    under one of ``keys`` in ``processor_config.json``, else ``preprocessor_config.json``.

    Raises:
        MMTrainError: naming the folder, when neither file holds the part.
    """
    nested = folder / PROCESSOR_FILE
    if nested.is_file():
        processor = _read_json(nested)
        for key in keys:
            if isinstance(processor.get(key), dict):
                return processor[key], nested
    own = folder / PREPROCESSOR_FILE
    if own.is_file():
        return _read_json(own), own
    raise MMTrainError(
        f"{folder} has no {what} config: neither {PREPROCESSOR_FILE} nor a {PROCESSOR_FILE} "
        f"with a {' or '.join(repr(k) for k in keys)} entry"
    )


def _model_type(folder: Path) -> str | None:
    """``model_type`` of the folder's ``config.json``, if it has one."""
    config = folder / MODEL_CONFIG
    if not config.is_file():
        return None
    model_type = _read_json(config).get("model_type")
    return model_type if isinstance(model_type, str) else None


def preprocessing_digest(folder: str | Path) -> str:
    """A hash of what a tokenizer or feature extractor in ``folder`` reads: its vocabulary,
    tokenizer and processor files (names and contents), not the folder's path (a checkpoint
    rebuilds them elsewhere) and not the weights.

    Args:
        folder: the model, tokenizer or processor folder.

    Returns:
        16 hex digits.
    """
    digest = hashlib.sha256()
    for name in sorted(PREPROCESSING_FILES):
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


# ---- images -----------------------------------------------------------------------------------
def _triple(value: Any, where: str, key: str) -> list[float]:
    """A per-channel value (mean, std) as three floats; one number is repeated.

    Raises:
        MMTrainError: naming ``where``, for anything but one or three numbers.
    """
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise MMTrainError(f"{where}: {key} must be 1 or 3 numbers (RGB), got {value!r}")
    return [float(v) for v in values]


def _positive(value: Any, where: str, key: str) -> float:
    """``value`` as a positive float.

    Raises:
        MMTrainError: naming ``where`` and ``key``, for anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MMTrainError(f"{where}: {key} must be a positive number, got {value!r}")
    return float(value)


def _image_keys(
    size: int,
    resize: str,
    resize_size: int,
    interpolation: str,
    mean: list[float],
    std: list[float],
    backend: str,
    anchor: str,
    fill: int | list[int] | tuple[int, ...] = 0,
) -> dict[str, Any]:
    """The ``data.image`` keys, all of them (see the module docstring)."""
    return {
        "size": int(size),
        "resize": resize,
        "resize_size": int(resize_size),
        "interpolation": interpolation,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "resize_backend": backend,
        "crop_anchor": anchor,
        "fill": [int(v) for v in fill] if isinstance(fill, (list, tuple)) else int(fill),
    }


def _hf_size(value: Any, default_to_square: bool, where: str, key: str) -> dict[str, int]:
    """A size of a processor config as transformers reads it (``get_size_dict``): an int is a
    square (``default_to_square``) or the shortest edge, a pair is ``(height, width)``.

    Raises:
        MMTrainError: naming ``where``, for anything else.
    """
    if isinstance(value, bool):
        raise MMTrainError(f"{where}: {key}={value!r} is not a size")
    if isinstance(value, int):
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": value[0], "width": value[1]}
    if isinstance(value, dict) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()
    ):
        return dict(value)
    raise MMTrainError(f"{where}: {key}={value!r} is not a size")


def _square(size: dict[str, int], where: str, key: str) -> int:
    """The side of a ``{height, width}`` size that is square.

    Raises:
        MMTrainError: naming ``where``, for another size or a non-square one.
    """
    if set(size) != {"height", "width"} or size["height"] != size["width"]:
        raise MMTrainError(
            f"{where}: {key}={size} is not a square {{height, width}}: mmtrain's image batches "
            "are square (data.image.size)"
        )
    return int(size["height"])


def image_keys_from_hf(folder: str | Path) -> dict[str, Any]:
    """The ``data.image`` keys that reproduce a Hugging Face image processor (transformers 5's
    torchvision backend, which ``AutoImageProcessor.from_pretrained`` gives).

    Its config is read as transformers reads it (``processor_config.json``'s
    ``image_processor``, else ``preprocessor_config.json``; the processor class from
    ``image_processor_type``, the legacy ``feature_extractor_type`` or ``config.json``'s
    ``model_type``), with the class's defaults for the keys it leaves out. Supported: the
    processors of CLIP, Chinese-CLIP, ViT, SigLIP, DeiT, BLIP, BiT/DINOv2 and ConvNeXt.
    ``rescale_factor`` and ``do_rescale`` are folded into mean and std
    (``(x * r - m) / s == (x / 255 - m / (255 r)) / (s / (255 r))``); ``do_normalize: false``
    is mean 0, std 1.

    Args:
        folder: the model or processor folder.

    Returns:
        ``size``, ``resize``, ``resize_size``, ``interpolation``, ``mean``, ``std``,
        ``resize_backend: tensor``, ``crop_anchor: floor`` and ``fill: 0``.

    Raises:
        MMTrainError: naming the file, for a missing or unreadable config, a processor that is
            not supported (remote code, its own pipeline), or settings this pipeline cannot
            reproduce (no resize, a non-square output, padding, an interpolation that
            torchvision cannot apply to tensors).
    """
    path = _folder(folder, "image processor")
    config, file = _processor_part(path, ("image_processor",), "image processor")
    where = str(file)
    if "AutoImageProcessor" in (config.get("auto_map") or {}):
        raise MMTrainError(
            f"{where}: the image processor is remote code (auto_map), which mmtrain does not run"
        )
    name = config.get("image_processor_type")
    if not name and config.get("feature_extractor_type"):  # transformers' legacy name
        name = str(config["feature_extractor_type"]).replace("FeatureExtractor", "ImageProcessor")
    if not name:
        name = _HF_IMAGE_BY_MODEL.get(_model_type(path) or "")
    name = str(name or "")
    name = name.removesuffix("Fast")  # transformers 4's fast processors are 5's default
    if name not in _HF_IMAGE_DEFAULTS:
        raise MMTrainError(
            f"{where}: image processor {name or '(none named)'!r} is not one mmtrain reproduces; "
            f"supported: {', '.join(sorted(_HF_IMAGE_DEFAULTS))}"
        )
    # A key left out is the class default; a null is None, as transformers' from_dict reads it.
    cfg = {**_HF_COMMON, **_HF_IMAGE_DEFAULTS[name], **config}
    if not cfg["do_resize"]:
        raise MMTrainError(
            f"{where}: do_resize is false (images keep their own sizes); mmtrain batches need "
            "one size"
        )
    if cfg.get("do_pad"):
        raise MMTrainError(f"{where}: do_pad is not reproduced (images are resized to one size)")

    resample = cfg["resample"]
    if isinstance(resample, str) and resample.upper() in PIL_RESAMPLE_NAMES:
        resample = PIL_RESAMPLE_NAMES.index(resample.upper())  # a name: its PIL code
    interpolation = HF_RESAMPLE.get(resample) if isinstance(resample, int) else None
    if interpolation not in TENSOR_INTERPOLATIONS:
        raise MMTrainError(
            f"{where}: resample={cfg['resample']!r} is not an interpolation torchvision applies "
            f"to tensors ({', '.join(TENSOR_INTERPOLATIONS)})"
        )

    size = _hf_size(cfg["size"], bool(cfg.get("default_to_square", True)), where, "size")
    crop = None
    if cfg.get("do_center_crop"):
        if cfg.get("crop_size") is None:
            raise MMTrainError(f"{where}: do_center_crop is true but crop_size is not set")
        crop = _square(_hf_size(cfg["crop_size"], True, where, "crop_size"), where, "crop_size")

    if name == "ConvNextImageProcessor":
        if set(size) != {"shortest_edge"}:
            raise MMTrainError(f"{where}: ConvNeXt's size must be a shortest_edge, got {size}")
        if crop is not None:
            raise MMTrainError(f"{where}: ConvNeXt with do_center_crop is not reproduced")
        edge, crop_pct = int(size["shortest_edge"]), _positive(cfg["crop_pct"], where, "crop_pct")
        # ConvNextImageProcessor.resize: below 384 px the shorter side goes to edge / crop_pct
        # and the centre edge x edge is kept; from 384 px on the image is squashed to a square.
        if edge < 384:
            resize, resize_size, out = "shortest", int(edge / crop_pct), edge
        else:
            resize, resize_size, out = "square", edge, edge
    elif set(size) == {"shortest_edge"}:
        if crop is None:
            raise MMTrainError(
                f"{where}: size={size} without a centre crop gives images of different shapes; "
                "mmtrain's image batches are square (set do_center_crop and crop_size)"
            )
        resize, resize_size, out = "shortest", int(size["shortest_edge"]), crop
    else:
        side = _square(size, where, "size")
        resize, resize_size, out = "square", side, crop if crop is not None else side

    mean = _triple(cfg["image_mean"], where, "image_mean") if cfg["do_normalize"] else [0.0] * 3
    std = _triple(cfg["image_std"], where, "image_std") if cfg["do_normalize"] else [1.0] * 3
    rescale = (
        _positive(cfg["rescale_factor"], where, "rescale_factor") if cfg["do_rescale"] else 1.0
    )
    if not all(s > 0 for s in std):
        raise MMTrainError(f"{where}: image_std must be positive, got {std}")
    unit = 255.0 * rescale  # 1.0 for the usual 1/255: mean and std are kept as written
    if not math.isclose(unit, 1.0, rel_tol=1e-12):
        mean, std = [m / unit for m in mean], [s / unit for s in std]
    return _image_keys(out, resize, resize_size, interpolation, mean, std, "tensor", "floor")


TIMM_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def image_keys_from_timm(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data.image`` keys that reproduce timm's evaluation transform,
    ``timm.data.create_transform(**data_config)`` (PIL images).

    timm resizes to ``floor(size / crop_pct)`` and keeps the centre ``size`` x ``size``:
    ``crop_mode: center`` resizes the shorter side, ``squash`` both sides, ``border`` the
    longer side and pads with the mean colour.

    Args:
        data_config: timm's resolved data config
            (``timm.data.resolve_data_config({}, model=model)``): ``input_size``,
            ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``.

    Returns:
        The image keys (``resize_backend: pil``, ``crop_anchor: round``).

    Raises:
        MMTrainError: for a missing key, a non-square or non-RGB input size, a crop mode or
            interpolation this pipeline does not reproduce.
    """
    where = "timm data config"
    missing = [k for k in ("input_size", "mean", "std") if k not in data_config]
    if missing:
        raise MMTrainError(f"{where}: {', '.join(missing)} missing (got {dict(data_config)})")
    input_size = list(data_config["input_size"])
    if len(input_size) != 3 or input_size[0] != 3 or input_size[1] != input_size[2]:
        raise MMTrainError(
            f"{where}: input_size={tuple(input_size)} is not (3, S, S): mmtrain's image batches "
            "are square RGB"
        )
    size = int(input_size[1])
    interpolation = str(data_config.get("interpolation") or "bicubic")
    if interpolation not in TIMM_INTERPOLATIONS:
        raise MMTrainError(
            f"{where}: interpolation={interpolation!r} is not one of "
            + ", ".join(TIMM_INTERPOLATIONS)
        )
    crop_pct = _positive(data_config.get("crop_pct") or 0.875, where, "crop_pct")  # timm's default
    scale = math.floor(size / crop_pct)  # timm's transforms_imagenet_eval
    mean = _triple(data_config["mean"], where, "mean")
    std = _triple(data_config["std"], where, "std")
    crop_mode = data_config.get("crop_mode") or "center"
    if crop_mode == "center":
        resize, fill = "shortest", 0
    elif crop_mode == "squash":
        resize, fill = "square", 0
    elif crop_mode == "border":
        resize, fill = "longest", [round(255 * m) for m in mean]  # timm pads with the mean
    else:
        raise MMTrainError(f"{where}: crop_mode={crop_mode!r} is not one of center, squash, border")
    return _image_keys(size, resize, scale, interpolation, mean, std, "pil", "round", fill)


def image_keys_from_open_clip(preprocess_cfg: Any) -> dict[str, Any]:
    """The ``data.image`` keys that reproduce ``open_clip.image_transform(..., is_train=False)``
    for a model's preprocess config (PIL images).

    Args:
        preprocess_cfg: ``model.visual.preprocess_cfg`` (a dict) or an
            ``open_clip.transform.PreprocessCfg``: ``size``, ``mean``, ``std``,
            ``interpolation``, ``resize_mode``, ``fill_color``.

    Returns:
        The image keys (``resize_backend: pil``, ``crop_anchor: round``).

    Raises:
        MMTrainError: for a missing or non-square size, or a mode or interpolation that
            open_clip does not have.
    """
    where = "open_clip preprocess config"
    if dataclasses.is_dataclass(preprocess_cfg) and not isinstance(preprocess_cfg, type):
        cfg = dataclasses.asdict(preprocess_cfg)
    elif isinstance(preprocess_cfg, Mapping):
        cfg = dict(preprocess_cfg)
    else:
        raise MMTrainError(f"{where}: expected a dict, got {type(preprocess_cfg).__name__}")
    if "size" not in cfg:
        raise MMTrainError(f"{where}: size missing (got {cfg})")
    size = cfg["size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise MMTrainError(f"{where}: size={size} is not square: mmtrain's image batches are")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise MMTrainError(f"{where}: size={size!r} is not a positive integer")
    if cfg.get("mode", "RGB") != "RGB":
        raise MMTrainError(f"{where}: mode={cfg['mode']!r}: only RGB is supported")
    # open_clip's defaults (image_transform): OpenAI's mean and std, bicubic, shortest.
    mean = _triple(cfg.get("mean") or OPENAI_CLIP_MEAN, where, "mean")
    std = _triple(cfg.get("std") or OPENAI_CLIP_STD, where, "std")
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in ("bicubic", "bilinear", "random"):
        raise MMTrainError(
            f"{where}: interpolation={interpolation!r} is not bicubic, bilinear or random"
        )
    # open_clip evaluates 'random' with bicubic.
    interpolation = "bilinear" if interpolation == "bilinear" else "bicubic"
    mode = cfg.get("resize_mode") or "shortest"
    fill = cfg.get("fill_color") or 0
    if mode not in ("shortest", "longest", "squash"):
        raise MMTrainError(f"{where}: resize_mode={mode!r} is not shortest, longest or squash")
    resize = "square" if mode == "squash" else mode
    return _image_keys(size, resize, size, interpolation, mean, std, "pil", "round", fill)


# ---- text and audio ---------------------------------------------------------------------------
def tokenizer_folder(folder: str | Path) -> Path:
    """``folder``, checked to hold a tokenizer's vocabulary.

    Raises:
        MMTrainError: naming the folder, when it is not a folder or holds none of the
            vocabulary files of a Hugging Face tokenizer.
    """
    path = _folder(folder, "tokenizer")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise MMTrainError(
            f"{folder} holds no tokenizer: none of {', '.join(TOKENIZER_FILES)} is there"
        )
    return path


def text_keys_from_hf(folder: str | Path) -> dict[str, Any]:
    """The ``data.text`` keys of a Hugging Face tokenizer folder.

    Args:
        folder: the model or tokenizer folder.

    Returns:
        ``{"tokenizer": folder}``, plus ``max_length``: the tokenizer's ``model_max_length``
        (the longest input the model takes, special tokens included) when its
        ``tokenizer_config.json`` sets a real one (not transformers' "no limit").

    Raises:
        MMTrainError: naming the folder, when it holds no tokenizer; naming the file, when its
            ``model_max_length`` is not a positive integer.
    """
    path = tokenizer_folder(folder)
    keys: dict[str, Any] = {"tokenizer": str(folder)}
    config = path / TOKENIZER_CONFIG
    if config.is_file():
        length = _read_json(config).get("model_max_length")
        if length is not None:
            if isinstance(length, float) and length.is_integer():
                length = int(length)
            if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
                raise MMTrainError(f"{config}: model_max_length={length!r} is not a length")
            if length <= VERY_LARGE_LENGTH:
                keys["max_length"] = length
    return keys


def audio_keys_from_hf(folder: str | Path) -> dict[str, Any]:
    """The ``data.audio`` keys of a Hugging Face feature extractor folder.

    Supported: ``Wav2Vec2FeatureExtractor`` (wav2vec 2.0, HuBERT, WavLM: the waveform),
    ``WhisperFeatureExtractor`` and ``ASTFeatureExtractor`` (log-mels).

    Args:
        folder: the model or feature extractor folder.

    Returns:
        ``feature_extractor`` (the folder), ``sample_rate`` (the extractor's
        ``sampling_rate``, what clips are resampled to) and, for the log-mel extractors,
        ``n_mels``.

    Raises:
        MMTrainError: naming the file, for a missing config, another extractor, or a
            waveform extractor whose ``feature_size`` is not 1.
    """
    path = _folder(folder, "feature extractor")
    config, file = _processor_part(
        path, ("feature_extractor", "audio_processor"), "feature extractor"
    )
    where = str(file)
    name = str(config.get("feature_extractor_type") or "") or _HF_AUDIO_BY_MODEL.get(
        _model_type(path) or "", ""
    )
    if name not in _HF_AUDIO_DEFAULTS:
        raise MMTrainError(
            f"{where}: feature extractor {name or '(none named)'!r} is not one mmtrain batches; "
            f"supported: {', '.join(sorted(_HF_AUDIO_DEFAULTS))}"
        )
    cfg = {**_HF_AUDIO_DEFAULTS[name], **config}
    rate = cfg["sampling_rate"]
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise MMTrainError(f"{where}: sampling_rate={rate!r} is not a positive integer")
    keys: dict[str, Any] = {"feature_extractor": str(folder), "sample_rate": rate}
    if name == "Wav2Vec2FeatureExtractor":
        if cfg["feature_size"] != 1:
            raise MMTrainError(
                f"{where}: feature_size={cfg['feature_size']}: a waveform has 1 value per sample"
            )
    else:
        key = "feature_size" if name == "WhisperFeatureExtractor" else "num_mel_bins"
        bins = cfg[key]
        if isinstance(bins, bool) or not isinstance(bins, int) or bins <= 0:
            raise MMTrainError(f"{where}: {key}={bins!r} is not a number of mel bins")
        keys["n_mels"] = bins
    return keys
