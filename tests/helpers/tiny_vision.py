"""Tiny random timm and open_clip models in the libraries' own local formats, for tests.

Each function builds one model at toy size (width 32, 2 blocks, 32 px images in 8 px patches)
and saves it into ``folder`` (created), which it returns, as the library writes it for the
Hugging Face hub (and reads back with its ``local-dir:`` names):

- timm: ``config.json`` (``architecture``, ``model_args``, ``pretrained_cfg``) and
  ``model.safetensors``, written by ``timm.models.save_for_hf``;
- open_clip: ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``) and
  ``open_clip_model.safetensors``.

Nothing is downloaded. Weights are seeded, so a folder is the same every time it is written.
A model store for ``paths.model_dir`` lays these out as ``<store>/<name>/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SIZE = 32  # image side, pixels
PATCH = 8  # patch side: a 4 x 4 grid of patches
WIDTH = 32  # every tower's width
CONTEXT = 16  # the open_clip text tower's context length
VOCAB = 49408  # open_clip's SimpleTokenizer: the ids it gives must fit the embedding
NUM_CLASSES = 10  # the timm models' classifier, which the encoders remove
# Not ImageNet's nor OpenAI's statistics: a test can tell which preprocessing is used.
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
# ViT-Tiny's layout at toy size: 2 blocks of width 32 with 2 heads, 4 x 4 patches + 1 class token.
TIMM_VIT_ARGS = {
    "depth": 2,
    "embed_dim": WIDTH,
    "num_heads": 2,
    "img_size": SIZE,
    "patch_size": PATCH,
}
# A ResNet-18 layout with one basic block a stage of 8 to 32 channels (its stem keeps 64): a
# stride of 32, so 64 px images give a 2 x 2 grid of tokens.
TIMM_CNN_ARGS = {"layers": [1, 1, 1, 1], "channels": [8, 16, 24, 32]}
OPEN_CLIP_CFG: dict[str, Any] = {  # open_clip's model_cfg schema (model_configs/ViT-B-32.json)
    "embed_dim": 24,  # the shared embedding: not the towers' width, so a test can tell them apart
    "quick_gelu": True,  # OpenAI's activation: a config value a rebuild must keep
    "vision_cfg": {
        "image_size": SIZE,
        "layers": 2,
        "width": WIDTH,
        "patch_size": PATCH,
        "head_width": 16,
    },
    "text_cfg": {
        "context_length": CONTEXT,
        "vocab_size": VOCAB,
        "width": WIDTH,
        "heads": 2,
        "layers": 2,
    },
}


def _seeded(build: Any) -> Any:
    """``build()`` with weights that do not depend on the global random state, in eval mode."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build().eval()


def _save_timm(model: Any, folder: Path, model_args: dict[str, Any]) -> Path:
    """``model`` as timm exports it for the hub: config.json + model.safetensors."""
    from timm.models import save_for_hf

    folder.mkdir(parents=True, exist_ok=True)
    data_config = {"mean": MEAN, "std": STD, "crop_pct": 0.9, "interpolation": "bilinear"}
    save_for_hf(
        model,
        str(folder),
        model_args=model_args,
        safe_serialization=True,
        data_config=data_config,
    )
    return folder


def timm_vit(folder: Path) -> Path:
    """A 2-block ViT (``vit_tiny_patch16_224``'s family) with a class token and a 10-class
    head, for 32 px images (16 patch tokens + 1 class token of width 32)."""
    import timm

    def build() -> Any:
        return timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES, **TIMM_VIT_ARGS
        )

    return _save_timm(_seeded(build), folder, TIMM_VIT_ARGS)


def timm_cnn(folder: Path) -> Path:
    """A ResNet with one basic block in each of its 4 stages (8 to 32 channels) and a 10-class
    head: a 64 px image gives a 2 x 2 grid of 32 channels (stride 32)."""
    import timm

    def build() -> Any:
        return timm.create_model(
            "resnet18", pretrained=False, num_classes=NUM_CLASSES, **TIMM_CNN_ARGS
        )

    return _save_timm(_seeded(build), folder, TIMM_CNN_ARGS)


def open_clip_state(cfg: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """A seeded open_clip CLIP model of ``cfg`` (:data:`OPEN_CLIP_CFG`) and its state_dict, with
    a logit scale that is not the initial one (a test can tell it was loaded)."""
    import open_clip
    import torch

    cfg = json.loads(json.dumps(cfg or OPEN_CLIP_CFG))  # a deep copy: CLIP edits its configs

    # open_clip's factory picks the class: a config with custom_text is a CustomTextCLIP.
    kind = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP

    def build() -> Any:
        model = kind(**cfg)
        with torch.no_grad():
            model.logit_scale.fill_(3.0)
        return model

    model = _seeded(build)
    return model, model.state_dict()


def open_clip_model(folder: Path, cfg: dict[str, Any] | None = None) -> Path:
    """A tiny open_clip CLIP (ViT image tower of 2 blocks, 32 px in 8 px patches; text tower of
    2 blocks, context 16, the SimpleTokenizer's vocabulary) as its hub folder:
    open_clip_config.json and open_clip_model.safetensors."""
    from safetensors.torch import save_file

    cfg = cfg or OPEN_CLIP_CFG
    model, state = open_clip_state(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {
        "mean": list(MEAN),
        "std": list(STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    return folder
