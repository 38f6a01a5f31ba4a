"""Hugging Face transformers towers as encoders: a model folder or hub id -> :class:`Features`.

:class:`HFImageEncoder` (CLIP and SigLIP vision, ViT, DINOv2) and :class:`HFTextEncoder` (BERT,
RoBERTa, the T5 encoder, CLIP and SigLIP text) live here, ``HFAudioEncoder`` (wav2vec2, HuBERT,
WavLM, Whisper's encoder, AST) in :mod:`mmtrain.encoders.hf_audio`. What they share
(:class:`HFEncoder`):

- the folder comes from :func:`mmtrain.utils.hub.resolve` (offline by design); the
  ``model_type`` of its ``config.json`` picks the transformers class (a :class:`Family`):
  mmtrain's choice, never the folder's (no ``AutoModel``, no remote code). Of a dual model
  (``CLIPModel``, ``SiglipModel``) only the modality's tower is built, of T5 and Whisper only
  the encoder;
- weights load from the local folder, in float32, from safetensors unless ``safetensors=false``;
  a weight the class needs and the folder lacks is an error, not a silent random init;
- parameters the output never reaches (CLIP's post-norm under ``tokens``, the blocks after
  ``layer``) are frozen: DDP fails on parameters without a gradient;
- ``pretrained=false`` builds the architecture from ``config.json`` alone (a checkpoint's
  rebuild, from :attr:`~HFEncoder.model_files`).

transformers is imported when a tower is built, never with this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features
from mmtrain.encoders.pretrained import PretrainedEncoder
from mmtrain.errors import MMTrainError
from mmtrain.utils import hub

OUTPUTS = ("tokens", "pooled", "projected")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Family:
    """How mmtrain builds and reads one model type; parts are dotted attribute paths.

    Attributes:
        model_class: the transformers class built for ``tokens`` and ``pooled``.
        sub_config: the tower's part of a dual model's config (``vision_config``), or None.
        projected_class: the class built for ``projected``; None: the type has no embedding.
        core: the tower inside ``projected_class`` (CLIP's ``vision_model``).
        projection: the projection of the pooled output, inside ``projected_class``.
        submodule: the part of the built model that is kept (Whisper's ``encoder``).
        layers: the block list, inside the tower.
        final: what follows the blocks to give ``last_hidden_state`` (a final norm).
        pool: what only the pooled output uses (CLIP's post-norm, a pooler, SigLIP's head).
        pooled: whether the model has a pooled output.
        prefix: the tokens before the content (CLS, registers), dropped by ``keep_cls=false``.
        pooling_layer: the class takes ``add_pooling_layer`` (built only for ``pooled``).
    """

    model_class: str
    sub_config: str | None = None
    projected_class: str | None = None
    core: str = ""
    projection: str | None = None
    submodule: str = ""
    layers: str = "encoder.layer"
    final: tuple[str, ...] = ()
    pool: tuple[str, ...] = ()
    pooled: bool = True
    prefix: int = 0
    pooling_layer: bool = False


def _part(module: nn.Module, path: str) -> Any:
    """``module.<path>`` for a dotted path (``""``: the module); None where a part is absent."""
    for name in filter(None, path.split(".")):
        module = getattr(module, name, None)
    return module


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Keep transformers' loading reports and progress bars quiet: it reports every weight of
    a dual model's other tower as "unexpected"; mmtrain checks the missing and mismatched ones
    itself (:func:`load_checked`)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_checked(cls: Any, folder: Path, where: str, safetensors: bool, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder, ...)`` offline, every weight checked: a missing one, or
    one whose shape differs from the config's, is an error naming them (five at most).

    Args:
        cls: the transformers class.
        folder: the model folder.
        where: how messages name the model (``encoder.image.model_name_or_path=...``).
        safetensors: safetensors weights only.
        **kwargs: more ``from_pretrained`` keywords (``config``, ``dtype``...).

    Raises:
        ValueError: naming ``where``, the folder and the weights that do not fit.
    """
    with _quiet_loading():
        model, info = cls.from_pretrained(
            folder,
            use_safetensors=True if safetensors else None,
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below, naming the folder
            **kwargs,
        )
    bad = [f"{k} missing" for k in sorted(info["missing_keys"])]
    bad += [
        f"{k} is {tuple(a)} in the weights, {tuple(b)} by the config"
        for k, a, b in sorted(info["mismatched_keys"])
    ]
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise ValueError(f"{where}: the weights in {folder} do not fit {cls.__name__}: {shown}")
    return model


def weight_files(folder: Path, safetensors: bool = True) -> list[Path]:
    """The weight files transformers reads from ``folder``: the safetensors file or shards,
    else (``safetensors=False``) the pickled ones; empty when there are none."""
    for name in SAFE_WEIGHTS if safetensors else (*SAFE_WEIGHTS, *PICKLED_WEIGHTS):
        path = folder / name
        if path.is_file():
            if not name.endswith(".index.json"):
                return [path]
            shards = json.loads(path.read_text())["weight_map"].values()
            return [folder / shard for shard in dict.fromkeys(shards)]
    return []


def stored_scalars(files: list[Path], names: tuple[str, ...]) -> dict[str, float]:
    """The scalar tensors ``names`` of a checkpoint (CLIP's ``logit_scale``), read alone."""
    found: dict[str, float] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as weights:
                keys = set(weights.keys())
                found.update({n: weights.get_tensor(n).item() for n in names if n in keys})
        else:  # memory-mapped where the format allows (zip): only the scalars are read
            mmap = zipfile.is_zipfile(file)
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
            found.update({n: state[n].item() for n in names if n in state})
    return found


class HFEncoder(PretrainedEncoder, ABC):
    """A Hugging Face tower (see the module docstring); a subclass names its modality, its
    families and how its batch reaches the model (:meth:`_run`).

    Args:
        model_name_or_path: a model folder or hub id (see :func:`mmtrain.utils.hub.resolve`).
        revision: the hub revision (branch, tag or commit) that pins the model.
        model_dir: ``paths.model_dir``, searched first (wired by build.py).
        pretrained: load the weights; false (:attr:`NO_WEIGHTS`) builds the architecture
            only, randomly initialised (a checkpoint's rebuild).
        safetensors: read weights from safetensors only; false also accepts pickled ones.
        layer: the hidden state: -1 the model's last output (``last_hidden_state``), else
            ``hidden_states[layer]`` (0 the embeddings, k after the k-th block; LLaVA: -2).
        keep_cls: keep the prefix tokens (CLS, DINOv2's registers, AST's two).
        output: ``tokens``; ``pooled``, the model's pooled output as one token; or
            ``projected``, a CLIP/SigLIP tower's embedding in the shared space (one token,
            not normalised).
        freeze: fix every weight (eval mode).
        unfreeze_last: with ``freeze``, train the last N blocks and what follows them.
        gradient_checkpointing: recompute activations in backward (less memory).

    Attributes:
        out_dim: the width of the output tokens.
        model: the transformers model (the tower; with its projection for ``projected``).
        model_type: the ``model_type`` of the folder's ``config.json``.
        logit_scale: with ``output=projected`` from a pretrained dual model, its log logit
            scale (CLIP's ``logit_scale``); None otherwise.
        logit_bias: likewise SigLIP's ``logit_bias``.
        model_files: the folder's config, tokenizer and processor files.

    Raises:
        ValueError: naming the key and folder, for a folder without ``config.json`` or
            weights, one of another modality, a weight missing or of another shape, an
            ``output`` the model lacks, or a ``layer`` out of range.
    """

    modality: ClassVar[str]
    families: ClassVar[dict[str, Family]]
    keys_from_hf: ClassVar[str]  # the function of mmtrain.utils.preprocessing for the modality

    def __init__(
        self,
        model_name_or_path: str,
        revision: str | None = None,
        model_dir: str | None = None,
        pretrained: bool = True,
        safetensors: bool = True,
        layer: int = -1,
        keep_cls: bool = True,
        output: str = "tokens",
        freeze: bool = False,
        unfreeze_last: int | str = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(
                f"encoder.{self.modality}.output must be one of {list(OUTPUTS)}, got {output!r}"
            )
        if output != "tokens" and layer != -1:
            raise ValueError(
                f"encoder.{self.modality}.layer={layer} selects a hidden state for "
                f"output=tokens; output={output} is the model's own last output (keep layer=-1)"
            )
        self.key, self.name = f"encoder.{self.modality}.model_name_or_path", model_name_or_path
        folder = self._resolve(model_name_or_path, revision, model_dir, safetensors)
        self.model_type = self._model_type(folder)
        import transformers

        config = transformers.AutoConfig.from_pretrained(
            folder, trust_remote_code=False, local_files_only=True
        )
        family = self.families[self.model_type]
        tower = getattr(config, family.sub_config) if family.sub_config else config
        if family.sub_config and hasattr(config, "projection_dim"):
            tower.projection_dim = config.projection_dim  # CLIP keeps it in the outer config
        self.family = self._specialise(family, tower)
        self.output, self.num_layers = output, int(tower.num_hidden_layers)
        self._check_options(layer)
        self.layer, self.keep_cls = int(layer), bool(keep_cls)
        cls = self.family.projected_class if output == "projected" else self.family.model_class
        self.model = self._make(getattr(transformers, cls), folder, tower, pretrained, safetensors)
        self.model.train(self.training)  # transformers hands it over in eval mode
        self.model_files = hub.model_files(folder)
        scalars: dict[str, float] = {}
        if output == "projected" and pretrained:  # they live outside the tower, in the weights
            names = ("logit_scale", "logit_bias")
            scalars = stored_scalars(weight_files(folder, safetensors), names)
        self.logit_scale: float | None = scalars.get("logit_scale")
        self.logit_bias: float | None = scalars.get("logit_bias")
        projection = self._projection()
        if projection is not None:
            self.out_dim = int(projection.out_features)
        elif output != "tokens" and hasattr(tower, "projection_size"):
            self.out_dim = int(tower.projection_size)  # SigLIP text's head
        else:
            self.out_dim = int(tower.hidden_size)
        self._finish(freeze, unfreeze_last, gradient_checkpointing)

    @classmethod
    def _resolve(
        cls, name: str, revision: str | None, model_dir: str | None, safetensors: bool
    ) -> Path:
        """The model's folder (:func:`mmtrain.utils.hub.resolve`)."""
        key = f"encoder.{cls.modality}.model_name_or_path"
        return hub.resolve(
            name, key=key, revision=revision, model_dir=model_dir, pickled=not safetensors
        )

    def _model_type(self, folder: Path) -> str:
        """The folder's ``model_type``, checked to be one of this class's families."""
        config = folder / "config.json"
        if not config.is_file():
            raise ValueError(
                f"{self.key}={self.name}: {folder} has no config.json, so it is not a Hugging "
                "Face transformers model folder"
            )
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type not in self.families:
            raise ValueError(
                f"{self.key}={self.name}: model type {model_type!r} is not one "
                f"{type(self).__name__} takes; expected one of the {self.modality} models "
                f"{sorted(self.families)}"
            )
        return model_type

    @classmethod
    def _specialise(cls, family: Family, config: Any) -> Family:
        """The family adjusted to what ``config`` says (DINOv2's registers...)."""
        return family

    def _check_options(self, layer: Any) -> None:
        """Raise a ValueError for an output the model lacks or a ``layer`` out of range."""
        where = f"{self.key}={self.name}"
        if self.output == "pooled" and not self.family.pooled:
            raise ValueError(
                f"{where}: a {self.model_type} model has no pooled output; use output=tokens "
                "(the fusion pools them)"
            )
        if self.output == "projected" and self.family.projected_class is None:
            raise ValueError(
                f"{where}: output=projected is the embedding of a CLIP/SigLIP style dual "
                f"model; a {self.model_type} model has none (use tokens or pooled)"
            )
        n = self.num_layers
        if isinstance(layer, bool) or not -(n + 1) <= layer <= n:
            raise ValueError(
                f"encoder.{self.modality}.layer={layer!r}: {self.model_type} has {n} layers "
                f"(config.json), so layer must be in [{-(n + 1)}, {n}]: -1 the last output, 0 "
                "the embeddings, k the output of the k-th layer, negative ones from the end"
            )

    def _make(
        self, cls: type, folder: Path, config: Any, pretrained: bool, safetensors: bool
    ) -> nn.Module:
        """The model, with the folder's weights (every one present) if ``pretrained``."""
        kwargs: dict[str, Any] = {
            "dtype": torch.float32,  # transformers 5 keeps the checkpoint's dtype by default
            "attn_implementation": "sdpa" if cls._supports_sdpa else "eager",
        }
        if self.family.pooling_layer:  # ViT's and BERT's pooler exist only when used
            kwargs["add_pooling_layer"] = self.output == "pooled"
        if not pretrained:
            return _part(cls._from_config(config, **kwargs), self.family.submodule)
        if not weight_files(folder, safetensors):
            where = f"{self.key}={self.name}: {folder}"
            if weight_files(folder, safetensors=False):
                raise ValueError(
                    f"{where} has only pickled weights (pytorch_model.bin); set "
                    f"encoder.{self.modality}.safetensors=false to load them (unpickling can "
                    "run code from the file: only for a source you trust)"
                )
            raise ValueError(
                f"{where} has no weights (model.safetensors or pytorch_model.bin); set "
                f"encoder.{self.modality}.pretrained=false for the architecture only"
            )
        where = f"{self.key}={self.name}"
        model = load_checked(cls, folder, where, safetensors, config=config, **kwargs)
        return _part(model, self.family.submodule)

    # ---- the parts ----------------------------------------------------------------------------
    def _core(self) -> nn.Module:
        """The tower inside :attr:`model` (the model itself but for CLIP's projected class)."""
        return _part(self.model, self.family.core if self.output == "projected" else "")

    def _projection(self) -> nn.Module | None:
        """CLIP's projection under ``projected``; None otherwise (SigLIP's is its pooler)."""
        if self.output != "projected" or not self.family.projection:
            return None
        return _part(self.model, self.family.projection)

    def _parts(self, paths: tuple[str, ...]) -> list[nn.Module]:
        """The parts of the tower at ``paths`` that this model has."""
        return [m for m in (_part(self._core(), p) for p in paths) if m is not None]

    def _all_blocks(self) -> list[nn.Module]:
        """Every block of the tower, checked against the config's number of layers."""
        blocks = list(_part(self._core(), self.family.layers) or [])
        if len(blocks) != self.num_layers:  # a transformers version that renamed the list
            raise ValueError(
                f"{self.model_type}: no {self.num_layers} blocks at {self.family.layers}"
            )
        return blocks

    def blocks(self) -> list[nn.Module]:
        """The blocks that produce the output, input to output: all of them, or those
        before the hidden state ``layer`` selects."""
        blocks = self._all_blocks()
        return blocks if self.layer == -1 else blocks[: self.layer % (self.num_layers + 1)]

    def after_blocks(self) -> list[nn.Module]:
        """What the output passes through after the blocks: the final norm; the pooler (or
        CLIP's post-norm, SigLIP's head) for ``pooled``; the projection for ``projected``;
        nothing for a hidden state other than the last."""
        if self.layer != -1:
            return []
        parts = self._parts(self.family.final)
        parts += self._parts(self.family.pool) if self.output != "tokens" else []
        projection = self._projection()
        return parts + ([projection] if projection is not None else [])

    def unused(self) -> list[nn.Module]:
        """The parts the output never reaches, frozen: what only pools under ``tokens``; with
        ``layer`` the blocks after it and the final norm (hidden states come before it; of
        Whisper's and T5's last one, ``layer=N``, after it: that norm then stays fixed)."""
        parts = self._parts(self.family.pool) if self.output == "tokens" else []
        if self.layer != -1:
            parts += self._all_blocks()[len(self.blocks()) :] + self._parts(self.family.final)
        return parts

    def _finish(
        self, freeze: bool, unfreeze_last: int = 0, gradient_checkpointing: bool = False
    ) -> None:
        """Apply the freezing options, then freeze :meth:`unused`."""
        super()._finish(freeze, unfreeze_last, gradient_checkpointing)
        for part in self.unused():
            part.requires_grad_(False)

    def enable_gradient_checkpointing(self) -> None:
        """transformers' checkpointing of each block (``activation_checkpointing_enable``,
        transformers 5's name for ``gradient_checkpointing_enable``), non-reentrant: it works
        with frozen inputs and DDP. transformers checkpoints in training mode only."""
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{self.model_type} has no gradient checkpointing")
        kwargs = {"use_reentrant": False}
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)

    # ---- forward ------------------------------------------------------------------------------
    @abstractmethod
    def _run(self, x: Tensor, mask: Tensor | None, hidden: bool) -> tuple[Any, Tensor | None]:
        """Run the tower on a batch of the modality.

        Returns:
            The model's output (with ``hidden_states`` if ``hidden``) and the ``(B, N)`` bool
            mask of its tokens, or None when all are real.
        """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode a batch of the modality (see the subclass for its shapes).

        Returns:
            ``tokens``: ``(B, N, D)`` and their mask (without the prefix tokens with
            ``keep_cls=false``); ``pooled`` and ``projected``: ``(B, 1, D)``, no mask.
        """
        out, out_mask = self._run(x, mask, hidden=self.layer != -1)
        if self.output == "tokens":
            tokens = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
            prefix = 0 if self.keep_cls else self.family.prefix
            if prefix:
                tokens = tokens[:, prefix:]  # (B, N - prefix, D)
                out_mask = None if out_mask is None else out_mask[:, prefix:]
            return Features(tokens, out_mask)
        pooled = out.pooler_output  # (B, D)
        projection = self._projection()
        if projection is not None:
            pooled = projection(pooled)  # (B, D'): CLIP's embedding, not normalised
        return Features(pooled.unsqueeze(1), None)  # (B, 1, D)

    @classmethod
    def preprocessing(
        cls,
        model_name_or_path: str,
        revision: str | None = None,
        model_dir: str | None = None,
        safetensors: bool = True,
        **node: Any,
    ) -> dict[str, Any]:
        """The ``data.<modality>`` keys of the model's processor, tokenizer or feature
        extractor, from its config files (no weights are read).

        Args:
            model_name_or_path: the preset's model.
            revision: the hub revision.
            model_dir: ``paths.model_dir``.
            safetensors: as the preset (the same hub snapshot).
            **node: the preset's other keys (unused here).

        Returns:
            ``{key: value}`` for ``data.<modality>``.
        """
        from mmtrain.utils import preprocessing

        folder = cls._resolve(model_name_or_path, revision, model_dir, safetensors)
        return getattr(preprocessing, cls.keys_from_hf)(folder)


# ---- images ------------------------------------------------------------------------------------
_CLIP_VISION = Family(
    "CLIPVisionModel",
    projected_class="CLIPVisionModelWithProjection",
    core="vision_model",
    projection="visual_projection",
    layers="encoder.layers",
    pool=("post_layernorm",),
    prefix=1,
)
_SIGLIP_VISION = Family(
    "SiglipVisionModel",
    projected_class="SiglipVisionModel",  # its pooled output (the head) is the embedding
    layers="encoder.layers",
    final=("post_layernorm",),
    pool=("head",),
)
_VIT = Family(
    "ViTModel",
    layers="layers",
    final=("layernorm",),
    pool=("pooler",),
    prefix=1,
    pooling_layer=True,
)
_DINOV2 = Family("Dinov2Model", final=("layernorm",), prefix=1)  # pooled: the normed CLS


class HFImageEncoder(HFEncoder):
    """A Hugging Face vision tower: images ``(B, 3, H, W)`` (as the model's processor makes
    them) -> its tokens ``(B, N, D)``, no mask. Its keys are :class:`HFEncoder`'s.

    From a full ``CLIPModel``/``SiglipModel`` folder the vision tower is built, a vision-only
    folder is used as it is. Another image size than the model's interpolates the position
    embeddings (DINOv2 always does).
    """

    modality = "image"
    keys_from_hf = "image_keys_from_hf"
    families: ClassVar[dict[str, Family]] = {
        "clip": dataclasses.replace(_CLIP_VISION, sub_config="vision_config"),
        "clip_vision_model": _CLIP_VISION,
        "siglip": dataclasses.replace(_SIGLIP_VISION, sub_config="vision_config"),
        "siglip_vision_model": _SIGLIP_VISION,
        "vit": _VIT,
        "dinov2": _DINOV2,
        "dinov2_with_registers": dataclasses.replace(
            _DINOV2, model_class="Dinov2WithRegistersModel"
        ),
    }

    @classmethod
    def preprocessing(cls, **node: Any) -> dict[str, Any]:
        """The processor's ``data.image`` keys (see :meth:`HFEncoder.preprocessing`), checked
        against the model: a processor whose output size is not the image size the model was
        trained at (its position embeddings; DINOv2 interpolates them by design) is refused.

        Raises:
            MMTrainError: naming both sizes and the folder.
        """
        keys = super().preprocessing(**node)
        folder = cls._resolve(
            node["model_name_or_path"],
            node.get("revision"),
            node.get("model_dir"),
            node.get("safetensors", True),
        )
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        config = config.get("vision_config", config)  # a full CLIP/SigLIP folder
        trained = config.get("image_size")
        fixed = not str(config.get("model_type", "")).startswith("dinov2")
        if fixed and isinstance(trained, int) and keys.get("size") != trained:
            raise MMTrainError(
                f"encoder.image.model_name_or_path={node['model_name_or_path']}: the processor "
                f"config in {folder} makes {keys.get('size')} px images, but config.json says "
                f"the model was trained at image_size={trained}; fix one of the two files"
            )
        return keys

    @classmethod
    def _specialise(cls, family: Family, config: Any) -> Family:
        if getattr(config, "num_register_tokens", 0):
            return dataclasses.replace(family, prefix=1 + int(config.num_register_tokens))
        if family.model_class == "SiglipVisionModel" and not config.vision_use_head:
            return dataclasses.replace(family, pool=(), pooled=False, projected_class=None)
        return family

    def _run(self, x: Tensor, mask: Tensor | None, hidden: bool) -> tuple[Any, Tensor | None]:
        if x.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        core, kwargs = self._core(), {"output_hidden_states": hidden}
        size = core.config.image_size
        if not self.model_type.startswith("dinov2") and tuple(x.shape[-2:]) != (size, size):
            kwargs["interpolate_pos_encoding"] = True
        return core(pixel_values=x, **kwargs), None


# ---- text --------------------------------------------------------------------------------------
_BERT = Family("BertModel", pool=("pooler",), prefix=1, pooling_layer=True)
_CLIP_TEXT = Family(
    "CLIPTextModel",
    projected_class="CLIPTextModelWithProjection",
    core="text_model",
    projection="text_projection",
    layers="encoder.layers",
    final=("final_layer_norm",),  # pooled: the end-of-text token of the normed output
)
_SIGLIP_TEXT = Family(
    "SiglipTextModel",
    projected_class="SiglipTextModel",  # its pooled output (the head) is the embedding
    layers="encoder.layers",
    final=("final_layer_norm",),
    pool=("head",),
)
_T5 = Family(
    "T5EncoderModel", layers="encoder.block", final=("encoder.final_layer_norm",), pooled=False
)


class HFTextEncoder(HFEncoder):
    """A Hugging Face text tower: token ids ``(B, L)`` of the model's own tokenizer and their
    mask -> ``(B, L, D)`` tokens and that mask.

    T5 folders give their encoder, full ``CLIPModel``/``SiglipModel`` folders their text
    tower. SigLIP's text tower was trained on text padded to its maximum length without an
    attention mask, pooling the last position: it reads the padded sequence whole, as then
    (the output mask still marks the real tokens).

    Args:
        model_name_or_path, revision, model_dir, pretrained, safetensors, layer, keep_cls,
            output, freeze, unfreeze_last, gradient_checkpointing: see :class:`HFEncoder`
            (``keep_cls=false`` drops BERT's ``[CLS]``, RoBERTa's ``<s>``).
        vocab_size: the tokenizer's number of ids (wired by build.py from the data).
        pad_id: the tokenizer's padding id (wired by build.py).

    Raises:
        ValueError: as :class:`HFEncoder`, and for a tokenizer whose ids do not fit the
            model's embeddings.
    """

    modality = "text"
    keys_from_hf = "text_keys_from_hf"
    families: ClassVar[dict[str, Family]] = {
        "bert": _BERT,
        "roberta": dataclasses.replace(_BERT, model_class="RobertaModel"),
        "t5": _T5,
        "clip": dataclasses.replace(_CLIP_TEXT, sub_config="text_config"),
        "clip_text_model": _CLIP_TEXT,
        "siglip": dataclasses.replace(_SIGLIP_TEXT, sub_config="text_config"),
        "siglip_text_model": _SIGLIP_TEXT,
    }

    def __init__(
        self,
        model_name_or_path: str,
        revision: str | None = None,
        model_dir: str | None = None,
        pretrained: bool = True,
        safetensors: bool = True,
        layer: int = -1,
        keep_cls: bool = True,
        output: str = "tokens",
        freeze: bool = False,
        unfreeze_last: int | str = 0,
        gradient_checkpointing: bool = False,
        vocab_size: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        super().__init__(
            model_name_or_path,
            revision,
            model_dir,
            pretrained,
            safetensors,
            layer,
            keep_cls,
            output,
            freeze,
            unfreeze_last,
            gradient_checkpointing,
        )
        rows = self.model.get_input_embeddings().num_embeddings
        if vocab_size is not None and vocab_size > rows:
            raise ValueError(
                f"{self.key}={self.name}: the tokenizer has {vocab_size} ids but the model's "
                f"embeddings have {rows} rows; tokenize with the model's own tokenizer"
            )
        if pad_id is not None and not 0 <= pad_id < rows:
            raise ValueError(
                f"{self.key}={self.name}: pad_id={pad_id} is not one of the model's {rows} "
                "ids; tokenize with the model's own tokenizer"
            )
        self.attention_mask = self.family.model_class != "SiglipTextModel"  # see the docstring

    def _run(self, x: Tensor, mask: Tensor | None, hidden: bool) -> tuple[Any, Tensor | None]:
        if x.ndim != 2:
            raise ValueError(f"expected token ids (B, L), got shape {tuple(x.shape)}")
        attention = mask.long() if mask is not None and self.attention_mask else None
        out = self._core()(input_ids=x, attention_mask=attention, output_hidden_states=hidden)
        return out, None if mask is None else mask.bool()
