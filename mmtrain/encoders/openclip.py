"""open_clip towers as encoders: an image tower ``(B, 3, H, W) -> (B, N, D)`` and a text tower
``(B, L) ids -> (B, L, D)`` (or each tower's own projected embedding as one token).

Each encoder builds and keeps only its own tower (open_clip's ``_build_vision_tower`` and
``_build_text_tower``, the builders its CLIP, CustomTextCLIP and CoCa use), and loads only that
tower's weights from the checkpoint, so an image and a text encoder of one CLIP hold one CLIP
between them. Weights are found offline by design (:mod:`mmtrain.utils.hub`): a pretrained
tag's Hugging Face repository (``hf_hub`` of ``open_clip.get_pretrained_cfg``) is looked up in
``paths.model_dir`` and the Hugging Face cache, and downloaded only on a connected machine.

open_clip is imported inside functions: importing this module does not import it.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtrain.contracts import Features
from mmtrain.encoders.pretrained import PretrainedEncoder
from mmtrain.encoders.timm_image import hub_weights, timm_blocks, weights_file
from mmtrain.errors import MMTrainError
from mmtrain.utils import hub
from mmtrain.utils.open_clip_models import (
    CONFIG,
    LOCAL_PREFIX,
    OpenCLIPModel,
    find_model,
)

OUTPUTS = ("tokens", "projected")
HUB_WEIGHTS = "open_clip_pytorch_model.bin"  # an hf_hub entry without a file name means this
# The weights a folder may hold, in open_clip's order of preference (its local-dir loader).
CHECKPOINTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def tag_cfg(model: OpenCLIPModel, pretrained: str | None, key: str) -> dict[str, Any] | None:
    """open_clip's pretrained config of the tag ``pretrained`` for a registry model; None for
    no weights, a weights file or a folder (which has its own weights).

    Raises:
        ValueError: for a string that is neither a tag of the model nor a weights file, naming
            the model's tags.
    """
    import open_clip

    if pretrained is None or model.folder is not None or Path(pretrained).expanduser().is_file():
        return None
    cfg = open_clip.get_pretrained_cfg(model.name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model.name)
        raise ValueError(
            f"{key}={pretrained}: neither a weights file nor a pretrained tag of {model.name} "
            f"(its tags: {tags}); null for random init"
        )
    return cfg


def weights_path(
    model: OpenCLIPModel,
    pretrained: str | None,
    tag: dict[str, Any] | None,
    key: str,
    revision: str | None = None,
    model_dir: str | Path | None = None,
) -> Path | None:
    """The weights file to load: None (random init), a file given, a folder's own weights (any
    tag given with a folder means those, as open_clip ignores tags for its ``local-dir:`` and
    ``hf-hub:`` models), or the tag's hub repository (open_clip's own download from the tag's
    URL where it has no hub entry, on a connected machine only).

    Raises:
        ValueError: for a folder without weights.
        MMTrainError: for weights that are not available (offline).
    """
    import open_clip

    if pretrained is None:
        return None
    if Path(pretrained).expanduser().is_file():
        return weights_file(pretrained, key)
    if model.folder is not None:
        found = [model.folder / f for f in CHECKPOINTS if (model.folder / f).is_file()]
        if not found:
            raise ValueError(
                f"{key}={pretrained}: {model.folder} holds none of the weights files "
                f"{list(CHECKPOINTS)}; pretrained=null builds the model without weights"
            )
        return found[0]
    assert tag is not None  # a registry model with a string that is not a file: a tag
    if tag.get("hf_hub"):
        repo, _, filename = tag["hf_hub"].rstrip().rpartition("/")
        return hub_weights(repo, [filename or HUB_WEIGHTS], key, revision, model_dir)
    if hub.offline():
        raise MMTrainError(
            f"{key}={pretrained}: open_clip has the weights of {model.name}:{pretrained} only at "
            f"{tag.get('url')} (offline: HF_HUB_OFFLINE=1); download the file on a machine with "
            "a network and set pretrained to its path"
        )
    try:
        return Path(open_clip.download_pretrained({"url": tag["url"]}))
    except Exception as err:  # no network, a moved URL, a bad checksum
        raise MMTrainError(
            f"{key}={pretrained}: could not download {tag.get('url')}: {err}"
        ) from None


def effective_cfg(model: OpenCLIPModel, tag: dict[str, Any] | None) -> dict[str, Any]:
    """The model config the tower is built with: the model's, with the activation the tag's
    weights were trained with (open_clip only warns on a QuickGELU mismatch, which changes every
    output), and no library download of base tower weights."""
    cfg = copy.deepcopy(model.model_cfg)
    if tag is not None and "quick_gelu" in tag:
        cfg["quick_gelu"] = bool(tag["quick_gelu"])
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    return cfg


def preprocess_cfg(model: OpenCLIPModel, tag: dict[str, Any] | None) -> dict[str, Any]:
    """open_clip's preprocessing of the model (what ``get_model_preprocess_cfg`` gives for it
    built): the defaults, the folder's or the tag's values, the tower's image size."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), model.preprocess_cfg or (tag or {}))
    cfg["size"] = model.model_cfg["vision_cfg"].get("image_size", cfg["size"])
    return cfg


def build_tower(which: str, cfg: dict[str, Any], key: str) -> nn.Module:
    """open_clip's ``visual`` or ``text`` tower of ``cfg`` (random init, float32).

    Raises:
        ValueError: for a text tower from Hugging Face transformers (``hf_model_name``).
    """
    from open_clip.model import _build_text_tower, _build_vision_tower

    quick_gelu = bool(cfg.get("quick_gelu", False))
    if which == "visual":
        return _build_vision_tower(cfg["embed_dim"], dict(cfg["vision_cfg"]), quick_gelu, None)
    hf_name = cfg["text_cfg"].get("hf_model_name")
    if hf_name:
        raise ValueError(
            f"{key}: the text tower of this open_clip model is the Hugging Face model "
            f"{hf_name}; use the Hugging Face text encoder (encoder/text=hf) for it"
        )
    return _build_text_tower(cfg["embed_dim"], dict(cfg["text_cfg"]), quick_gelu, None)


def load_tower(which: str, tower: nn.Module, cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """Load the ``which`` (``visual``/``text``) part of a CLIP checkpoint into ``tower``, as
    open_clip's ``load_checkpoint`` does for the whole model (its file formats, MobileCLIP
    conversion, CLIP's top-level text keys, resized position embeddings); the other tower's
    weights are not kept.

    Returns:
        ``{"logit_scale": float, "logit_bias": float | None}`` of the checkpoint.

    Raises:
        ValueError: for big_vision ``.npz`` files, or weights that do not fit the tower.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.factory import load_state_dict
    from open_clip.model import (
        convert_to_custom_text_state_dict,
        resize_pos_embed,
        resize_text_pos_embed,
    )

    if path.suffix in (".npz", ".npy"):
        raise ValueError(
            f"{path}: big_vision .npz weights need open_clip's full model; use "
            "the open_clip (safetensors) copy of the checkpoint"
        )
    state = load_state_dict(str(path), weights_only=True)
    holder = nn.Module()  # what open_clip's helpers look at: a model with this one tower
    setattr(holder, which, tower)
    if which == "visual":
        holder.text = None
        state = convert_state_dict(holder, state)
        resize_pos_embed(state, holder)
    else:
        holder.visual = None
        state = convert_to_custom_text_state_dict(state)  # CLIP's text keys -> text.*
        resize_text_pos_embed(state, holder)
    own = {k[len(which) + 1 :]: v for k, v in state.items() if k.startswith(f"{which}.")}
    try:
        tower.load_state_dict(own, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the {which} tower: {err}") from None
    bias = state.get("logit_bias")
    if bias is None and cfg.get("init_logit_bias") is not None:
        bias = torch.zeros(())  # open_clip's start for a SigLIP model from CLIP weights
    return {
        "logit_scale": float(state["logit_scale"].flatten()[0])
        if "logit_scale" in state
        else float(cfg.get("init_logit_scale", math.log(1 / 0.07))),
        "logit_bias": None if bias is None else float(bias.flatten()[0]),
    }


def model_files(
    model: OpenCLIPModel, cfg: dict[str, Any], preprocess: dict[str, Any]
) -> dict[str, bytes]:
    """The files that rebuild the tower: a folder's own (config, tokenizer), or for a registry
    name the ``open_clip_config.json`` it was built with (the tag may have changed its
    activation, which the name alone would not rebuild)."""
    if model.folder is not None:
        return hub.model_files(model.folder)
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess}
    return {CONFIG: json.dumps(config, indent=2, default=list).encode()}


class _OpenCLIPEncoder(PretrainedEncoder):
    """What both towers share: finding the model and its weights, the output options."""

    NO_WEIGHTS = None
    TOWER = "visual"
    MODALITY = "image"
    tower: nn.Module

    def _build(
        self,
        model_name_or_path: str,
        pretrained: str | None,
        revision: str | None,
        model_dir: str | None,
        layer: int,
        output: str,
    ) -> tuple[OpenCLIPModel, dict[str, Any]]:
        """Build and load ``self.tower``; set ``model_files``, ``logit_scale``, ``logit_bias``.

        Returns:
            The model's source and the config the tower was built with.
        """
        key = f"encoder.{self.MODALITY}"
        if output not in OUTPUTS:
            raise ValueError(f"{key}.output must be one of {OUTPUTS}, got {output!r}")
        if output == "projected" and layer != -1:
            raise ValueError(
                f"{key}: output=projected is the tower's final embedding; layer "
                f"must be -1, got {layer}"
            )
        if pretrained is not None and not isinstance(pretrained, str):
            raise ValueError(f"{key}.pretrained: a tag, a weights file or null, got {pretrained!r}")
        model = find_model(model_name_or_path, f"{key}.model_name_or_path", revision, model_dir)
        tag = tag_cfg(model, pretrained, f"{key}.pretrained")
        cfg = effective_cfg(model, tag)
        self.tower = build_tower(self.TOWER, cfg, f"{key}.model_name_or_path")  # before a download
        path = weights_path(model, pretrained, tag, f"{key}.pretrained", revision, model_dir)
        scales = {
            "logit_scale": float(cfg.get("init_logit_scale", math.log(1 / 0.07))),
            "logit_bias": cfg.get("init_logit_bias"),
        }
        if path is not None:
            scales = load_tower(self.TOWER, self.tower, cfg, path)
        self.model_files = model_files(model, cfg, preprocess_cfg(model, tag))
        self.output, self.layer = output, int(layer)
        # What a contrastive head starts from: only the projected embeddings share CLIP's space.
        projected = output == "projected"
        self.logit_scale: float | None = scales["logit_scale"] if projected else None
        bias = scales["logit_bias"]
        self.logit_bias: float | None = float(bias) if projected and bias is not None else None
        return model, cfg

    def _level(self, n: int) -> int:
        """``self.layer`` as an index into ``n`` blocks.

        Raises:
            ValueError: for a layer outside ``[-n, n-1]``.
        """
        if not -n <= self.layer < n:
            raise ValueError(
                f"encoder.{self.MODALITY}.layer must be in [{-n}, {n - 1}] (the tower's {n} "
                f"blocks; -1 the final features), got {self.layer}"
            )
        return self.layer % n


class OpenCLIPImageEncoder(_OpenCLIPEncoder):
    """An open_clip image tower (a ViT, a timm model as SigLIP's, or CLIP's ModifiedResNet).

    ``output=tokens``: every token of the tower (a ViT's class token first, kept with
    ``keep_cls``, then its patches; a CNN's last feature map as grid tokens), after the final
    norm (``ln_post``) at ``layer=-1``, else the raw output of that block (the blocks after it
    are removed). ``output=projected``: the tower's pooled and projected embedding, unnormalised,
    as one token ``(B, 1, D)`` (what ``encode_image(normalize=False)`` gives).

    Args:
        model_name_or_path: an open_clip model name (``ViT-B-32``), ``hf-hub:<org/name>``, or a
            folder with ``open_clip_config.json`` and weights (also ``<store>/<name>``).
        pretrained: a pretrained tag of the model (``openai``, ``laion2b_s34b_b79k``), a
            weights file, or None (random init). With a folder or hub id, a tag means its own
            weights.
        revision: the hub revision of the weights' repository.
        model_dir: ``paths.model_dir``, searched first (wired by build.py).
        layer: the block whose output is used, ``[-n, n-1]``; -1 the final (normed) tokens.
        keep_cls: keep the class token (ViT towers).
        output: ``tokens`` or ``projected``.
        freeze: fix every weight (see :class:`~mmtrain.encoders.FreezableEncoder`).
        unfreeze_last: with ``freeze``, leave the last N blocks (and what follows) trainable.
        gradient_checkpointing: recompute activations in the backward pass.

    Attributes:
        logit_scale: with ``output=projected``, the model's pretrained log logit scale (None
            otherwise).
        logit_bias: with ``output=projected``, a SigLIP model's logit bias (None otherwise).

    Raises:
        ValueError: for an unknown model (did-you-mean) or tag (the model's tags), a bad
            ``output`` or ``layer``, a missing weights file.
        MMTrainError: for weights that are not available offline.
    """

    TOWER, MODALITY = "visual", "image"

    def __init__(
        self,
        model_name_or_path: str = "ViT-B-32",
        pretrained: str | None = "openai",
        revision: str | None = None,
        model_dir: str | None = None,
        layer: int = -1,
        keep_cls: bool = True,
        output: str = "tokens",
        freeze: bool = False,
        unfreeze_last: int | str = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _, cfg = self._build(model_name_or_path, pretrained, revision, model_dir, layer, output)
        self.keep_cls = bool(keep_cls)
        self.kind = type(self.tower).__name__  # VisionTransformer, TimmModel or ModifiedResNet
        visual = self.tower
        self.index = self._level(self._levels())
        # The final tokens of a ViT go through ln_post, unless it belongs to attention pooling
        # (CoCa), whose queries it normalises.
        self.normed = self.layer == -1 and getattr(visual, "attn_pool", None) is None
        if output == "projected":
            self.out_dim = int(cfg["embed_dim"])
        else:
            self.out_dim = self._width()
            self._prune()
        self.options = self._options()  # how forward_intermediates gives this tower's tokens
        self._finish(freeze, unfreeze_last, gradient_checkpointing)

    @classmethod
    def preprocessing(cls, **node: Any) -> dict[str, Any]:
        """The ``data.image`` keys of open_clip's preprocessing of the model (size,
        interpolation, resize mode, mean/std), from its configs without building it.

        Args:
            **node: the preset's keys (``model_name_or_path``, ``pretrained``, ``model_dir``...).

        Returns:
            What :func:`mmtrain.utils.preprocessing.image_keys_from_open_clip` makes of it.
        """
        from mmtrain.utils.preprocessing import image_keys_from_open_clip

        defaults = inspect.signature(cls.__init__).parameters
        name = node.get("model_name_or_path", defaults["model_name_or_path"].default)
        pretrained = node.get("pretrained", defaults["pretrained"].default)
        key = f"encoder.{cls.MODALITY}"
        model = find_model(
            name, f"{key}.model_name_or_path", node.get("revision"), node.get("model_dir")
        )
        return image_keys_from_open_clip(
            preprocess_cfg(model, tag_cfg(model, pretrained, f"{key}.pretrained"))
        )

    # ---- the tower kinds ------------------------------------------------------------------
    def _levels(self) -> int:
        """The number of levels of the tower's ``forward_intermediates``."""
        if self.kind == "TimmModel":
            return len(self.tower.trunk.feature_info)
        if self.kind == "ModifiedResNet":
            return 5  # the stem and 4 stages
        return len(self.tower.transformer.resblocks)

    def _width(self) -> int:
        """The width of the tokens at ``self.index``."""
        visual = self.tower
        if self.kind == "TimmModel":
            final = self.layer == -1
            trunk = visual.trunk
            return int(trunk.num_features if final else trunk.feature_info[self.index]["num_chs"])
        if self.kind == "ModifiedResNet":
            stage = (
                visual.conv3 if self.index == 0 else getattr(visual, f"layer{self.index}")[-1].conv3
            )
            return int(stage.out_channels)
        return int(visual.transformer.width)

    def _prune(self) -> None:
        """Remove what the tokens do not use (the blocks after ``layer``, the pooling and the
        projection): parameters without gradients would stall distributed training."""
        visual = self.tower
        if self.kind == "TimmModel":
            visual.trunk.prune_intermediate_layers(
                [self.index], prune_norm=not self.normed, prune_head=True
            )
            visual.head = nn.Identity()
        elif self.kind == "ModifiedResNet":
            for stage in range(self.index + 1, 5):
                setattr(visual, f"layer{stage}", nn.Identity())
            visual.attnpool = nn.Identity()
        else:
            visual.prune_intermediate_layers(
                [self.index], prune_norm=not self.normed, prune_head=True
            )
            visual.attn_pool = visual.attn_pool_contrastive = None

    def _options(self) -> dict[str, Any]:
        """``forward_intermediates`` options: tokens (``NLC``) with the class token where the
        tower has them, else a feature map (``NCHW``)."""
        if self.kind == "VisionTransformer":
            return {"output_fmt": "NLC", "output_extra_tokens": self.keep_cls}
        if self.kind == "TimmModel":
            method = self.tower.trunk.forward_intermediates
            if "return_prefix_tokens" in inspect.signature(method).parameters:
                return {"output_fmt": "NLC", "output_extra_tokens": self.keep_cls}
        return {"output_fmt": "NCHW", "output_extra_tokens": False}

    def blocks(self) -> list[nn.Module]:
        if self.kind == "TimmModel":
            return timm_blocks(self.tower.trunk)[0]
        if self.kind == "ModifiedResNet":
            stages = [getattr(self.tower, f"layer{i}") for i in range(1, 5)]
            return [s for s in stages if any(True for _ in s.parameters())]
        return list(self.tower.transformer.resblocks)

    def after_blocks(self) -> list[nn.Module | nn.Parameter]:
        visual = self.tower
        if self.kind == "TimmModel":
            parts: list[Any] = [*timm_blocks(visual.trunk)[1], visual.head]
        elif self.kind == "ModifiedResNet":
            parts = [visual.attnpool]
        else:
            names = ("ln_post", "proj", "attn_pool", "attn_pool_contrastive")
            parts = [getattr(visual, n, None) for n in names]
        return [p for p in parts if isinstance(p, nn.Parameter) or _has_params(p)]

    def enable_gradient_checkpointing(self) -> None:
        if self.kind == "ModifiedResNet":
            raise ValueError("open_clip's ModifiedResNet has no gradient checkpointing")
        self.tower.set_grad_checkpointing(True)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode images ``(B, 3, H, W)``; ``mask`` is unused (images have no padding)."""
        if self.output == "projected":
            out = self.tower(x)
            pooled = out[0] if isinstance(out, tuple) else out  # CoCa: (pooled, tokens)
            return Features(pooled.unsqueeze(1), None)  # (B, 1, D)
        out = self.tower.forward_intermediates(
            x,
            indices=[self.index],
            stop_early=True,
            normalize_intermediates=self.normed,
            intermediates_only=True,
            **self.options,
        )
        tokens = out["image_intermediates"][0]
        if tokens.ndim == 4:  # (B, C, h, w) -> (B, h*w, C)
            tokens = tokens.flatten(2).transpose(1, 2)
        prefix = out.get("image_intermediates_prefix")
        if self.keep_cls and prefix:
            tokens = torch.cat([prefix[0], tokens], dim=1)  # (B, 1 + N, D): class token first
        return Features(tokens, None)


class OpenCLIPTextEncoder(_OpenCLIPEncoder):
    """An open_clip text tower (CLIP's, SigLIP's or CoCa's Transformer).

    Ids come from open_clip's tokenizer (:class:`mmtrain.data.transforms.open_clip_tokenizer.
    OpenCLIPTokenizer`: ids up to the end-of-text token, padded by the data side), at most the
    tower's context length; they are padded to it with the model's pad id, as open_clip's
    tokenizer pads them (positions matter to non-causal towers such as SigLIP's).

    ``output=tokens``: every token ``(B, L, D)`` after the final norm (``ln_final``) at
    ``layer=-1``, else the raw output of that block, with ``text_mask`` (real tokens up to the
    end-of-text token); CoCa's class token is appended with ``keep_cls``. ``output=projected``:
    the tower's pooled and projected embedding, unnormalised, as one token ``(B, 1, D)`` (what
    ``encode_text(normalize=False)`` gives).

    Args:
        model_name_or_path: an open_clip model name, ``hf-hub:<org/name>``, or a folder with
            ``open_clip_config.json`` and weights (also ``<store>/<name>``).
        pretrained: a pretrained tag, a weights file, or None (random init).
        revision: the hub revision of the weights' repository.
        model_dir: ``paths.model_dir``, searched first (wired by build.py).
        layer: the block whose output is used, ``[-n, n-1]``; -1 the final (normed) tokens.
        keep_cls: append CoCa's class token (other towers have none).
        output: ``tokens`` or ``projected``.
        freeze: fix every weight.
        unfreeze_last: with ``freeze``, leave the last N blocks (and what follows) trainable.
        gradient_checkpointing: recompute activations in the backward pass.

    Attributes:
        logit_scale: with ``output=projected``, the model's pretrained log logit scale.
        logit_bias: with ``output=projected``, a SigLIP model's logit bias.
        context_length: the most ids a text may have.

    Raises:
        ValueError: as :class:`OpenCLIPImageEncoder`, and for a Hugging Face text tower.
        MMTrainError: for weights that are not available offline.
    """

    TOWER, MODALITY = "text", "text"

    def __init__(
        self,
        model_name_or_path: str = "ViT-B-32",
        pretrained: str | None = "openai",
        revision: str | None = None,
        model_dir: str | None = None,
        layer: int = -1,
        keep_cls: bool = True,
        output: str = "tokens",
        freeze: bool = False,
        unfreeze_last: int | str = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        model, cfg = self._build(model_name_or_path, pretrained, revision, model_dir, layer, output)
        hf_tokenizer = cfg["text_cfg"].get("hf_tokenizer_name")
        if model.folder is None and hf_tokenizer:
            # A rebuild from the model files tokenizes from them: the tokenizer's files go too.
            folder = hub.resolve(hf_tokenizer, "encoder.text.model_name_or_path", None, model_dir)
            self.model_files = {**hub.model_files(folder), **self.model_files}
        text = self.tower
        self.keep_cls = bool(keep_cls) and text.cls_emb is not None
        self.context_length = int(text.context_length)
        self.pad_id, self.eos_id = int(text.pad_id), text.eos_id
        self.pool_type = str(text.pool_type)
        self.index = self._level(len(text.transformer.resblocks))
        if output == "projected":
            self.out_dim = int(cfg["embed_dim"])
        else:
            self.out_dim = int(text.width)
            text.prune_intermediate_layers(
                [self.index], prune_norm=self.layer != -1, prune_head=True
            )
        self._finish(freeze, unfreeze_last, gradient_checkpointing)

    @classmethod
    def preprocessing(cls, **node: Any) -> dict[str, Any]:
        """The ``data.text`` keys of open_clip's tokenizer: ``tokenizer: open_clip:<model>``
        (a registry name, or ``local-dir:<folder>``) and ``max_length``, its context length.

        Args:
            **node: the preset's keys (``model_name_or_path``, ``revision``, ``model_dir``).

        Returns:
            ``{"tokenizer": ..., "max_length": ...}``.
        """
        default = inspect.signature(cls.__init__).parameters["model_name_or_path"].default
        name = node.get("model_name_or_path", default)
        model = find_model(
            name, "encoder.text.model_name_or_path", node.get("revision"), node.get("model_dir")
        )
        source = model.name if model.folder is None else f"{LOCAL_PREFIX}{model.folder.resolve()}"
        length = int(model.model_cfg["text_cfg"].get("context_length", 77))
        return {"tokenizer": f"open_clip:{source}", "max_length": length}

    def blocks(self) -> list[nn.Module]:
        return list(self.tower.transformer.resblocks)

    def after_blocks(self) -> list[nn.Module | nn.Parameter]:
        parts = [self.tower.ln_final, self.tower.text_projection]
        return [p for p in parts if isinstance(p, nn.Parameter) or _has_params(p)]

    def enable_gradient_checkpointing(self) -> None:
        self.tower.set_grad_checkpointing(True)

    def real_tokens(self, ids: Tensor) -> Tensor:
        """``(B, L)`` bool: the ids up to and including the end-of-text token (the highest id
        for CLIP's tokenizer, ``eos_id`` for towers that pool there), or those that are not
        padding for towers that pool otherwise."""
        if self.pool_type == "argmax":
            end = ids.argmax(dim=-1)
        elif self.pool_type == "eos" and self.eos_id is not None:
            end = (ids == self.eos_id).int().argmax(dim=-1)
        else:
            return ids != self.pad_id
        positions = torch.arange(ids.shape[1], device=ids.device)
        return positions.unsqueeze(0) <= end.unsqueeze(1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode ids ``(B, L)`` with ``mask`` ``(B, L)`` (True for real tokens; None: derived
        from the ids, see :meth:`real_tokens`).

        Raises:
            ValueError: for texts longer than the context length.
        """
        length = x.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"text of {length} tokens: the open_clip text tower takes at most "
                f"{self.context_length} (data.text.max_length)"
            )
        real = self.real_tokens(x) if mask is None else mask.bool()
        ids = x.masked_fill(~real, self.pad_id)  # whatever the data side padded with
        ids = F.pad(ids, (0, self.context_length - length), value=self.pad_id)  # (B, C)
        if self.output == "projected":
            out = self.tower(ids)
            pooled = out[0] if isinstance(out, tuple) else out  # CoCa: (pooled, tokens)
            return Features(pooled.unsqueeze(1), None)  # (B, 1, D)
        out = self.tower.forward_intermediates(
            ids,
            indices=[self.index],
            stop_early=True,
            normalize_intermediates=self.layer == -1,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=self.keep_cls,
        )
        tokens = out["text_intermediates"][0][:, :length]  # (B, L, D)
        if self.keep_cls:  # CoCa's class token, after the text
            tokens = torch.cat([tokens, out["text_intermediates_suffix"][0]], dim=1)
            real = torch.cat([real, real.new_ones(real.shape[0], 1)], dim=1)
        return Features(tokens, real)


def _has_params(module: Any) -> bool:
    """Whether ``module`` is a module with parameters (not None, not an Identity)."""
    return isinstance(module, nn.Module) and any(True for _ in module.parameters())
