"""``format=hf``: an LLM-based model as Hugging Face transformers folders, LoRA merged.

Two layouts, chosen from the model (:func:`llava_mismatch` says why not the first):

- ``llava``: one image encoder that is a CLIP or SigLIP vision tower of transformers
  (:class:`~mmtrain.encoders.hf.HFImageEncoder`, its tokens), ``fusion=tokens``, one causal-LM
  head with the ``mlp2x_gelu`` projector and a Llama-style LM (Llama, Mistral, Qwen2, Qwen3):
  the folder is a ``LlavaForConditionalGeneration`` (``save_pretrained``, safetensors) with a
  ``LlavaProcessor`` (the tower's image processor, the LM's tokenizer with an ``<image>``
  token added, mmtrain's chat template) and a generation config that decodes as the head
  does. mmtrain's choice of hidden state (``encoder.image.layer``) and of the class token
  (``keep_cls``) become ``vision_feature_layer`` and ``vision_feature_select_strategy``;
- ``mmtrain``: anything else (a CNN or audio encoder, a Perceiver or Q-Former fusion, a
  ``linear`` projector, a GPT-2 LM, several heads): ``language_model/`` (the merged LM's
  ``save_pretrained`` and its tokenizer), ``encoders/<modality>/`` (a transformers tower's
  ``save_pretrained``, else ``model.safetensors`` of its state dict and its model files),
  ``projector.safetensors``, ``fusion.safetensors``, ``heads/<task>.safetensors`` for other
  heads, and ``mmtrain_hf.json`` (the parts, the stored config and data state), which
  :func:`load_hf_export` rebuilds a :class:`~mmtrain.module.MultimodalModule` from.

Either export checks itself: the folder is loaded back and compared with the model it came
from on one input (an image through the model's own preprocessing, the task's prompt): the
logits (max abs diffs, an error above the tolerance; see :func:`_differences`) and the greedy
answers (reported). A half-precision LM exports in its dtype, the tower and projector too
(transformers loads a model in one dtype). :func:`rebuild_hf_export` (what ``mmtrain.load``
calls) and :func:`load_hf_export` read the mmtrain layout back. torch and transformers are
imported inside the functions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mmtrain.errors import MMTrainError

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

INFO_FILE = "mmtrain_hf.json"  # the mmtrain layout's description
INFO_FORMAT = "mmtrain_hf"
INFO_VERSION = 1
LANGUAGE_MODEL = "language_model"
PROJECTOR = "projector.safetensors"
FUSION = "fusion.safetensors"
IMAGE_TOKEN = "<image>"
# Text model types that LlavaForConditionalGeneration runs as its language model (AutoModel)
# with mmtrain's splicing reproduced: decoder-only LMs whose causal-LM class is the base model
# (``model``) plus ``lm_head``.
LLAMA_STYLE = ("llama", "mistral", "qwen2", "qwen3")
# Vision model types of the towers LLaVA takes -> the prefix tokens before the patches (CLS).
LLAVA_TOWERS = {"clip_vision_model": 1, "siglip_vision_model": 0}
PARITY_PROMPT = "Describe the image."
# The logits' tolerance, relative to their largest magnitude (at least 1), by the LM's dtype.
PARITY_RTOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}
NO_LM = "format=hf: the model has no causal-LM head (head/<task>=causal_lm); use format=safetensors"


# ---- the export ---------------------------------------------------------------------------------
def export_hf(
    model: Any,
    cfg: DictConfig,
    out: Path,
    datamodule: Any = None,
    image: Image.Image | None = None,
) -> dict[str, Any]:
    """Write the hf export of ``model`` (weights loaded, LoRA possibly present) into the
    existing empty folder ``out`` (see the module docstring). The model itself is left as it
    was (LoRA is merged into a copy).

    Args:
        model: the :class:`~mmtrain.module.MultimodalModule`.
        cfg: its config (``export.hf_parity_atol``, when set, replaces the logits'
            relative tolerance).
        out: the folder, existing and empty.
        datamodule: the model's data module (its fitted state restored): the image's
            preprocessing and the data state kept by the mmtrain layout. None: the image is
            preprocessed from the tower's processor files and ``cfg.data.image``, and the
            mmtrain layout keeps no data state.
        image: the image of the parity check; None: a fixed synthetic one.

    Returns:
        ``{"layout": "llava" | "mmtrain", "files": [...] (relative to ``out``), "parity":
        {name: max_abs_diff}, "checked": [names held to "tolerance"], "tolerance": float,
        "greedy_identical": {task: bool}, "why_not_llava": str | None, "bytes": int, ...}``
        (see :func:`_differences` for the names).

    Raises:
        MMTrainError: when the model has no causal-LM head, its LM is quantized, or the
            folder loaded back differs from the model beyond the tolerance (the files stay).
    """
    heads = lm_heads(model)
    if not heads:
        raise MMTrainError(NO_LM)
    for task, head in heads.items():
        _check_full_precision(task, head)
    out = Path(out)
    image = image if image is not None else sample_image()
    merged = merged_copy(model)
    why = llava_mismatch(merged)
    pixels = None
    if why is None:
        pixels = _pixels(merged, cfg, datamodule, image)
        size = merged.encoders["image"].model.config.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            why = (
                f"the images are {tuple(pixels.shape[-2:])} px but the tower was trained at "
                f"{size} px (LLaVA does not interpolate its position embeddings)"
            )
    if why is None:
        result = _export_llava(merged, model, cfg, out, pixels, image)
    else:
        result = _export_mmtrain(merged, model, cfg, out, datamodule, image)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    result |= {
        "why_not_llava": why,
        "files": [str(p.relative_to(out)) for p in files],
        "bytes": sum(p.stat().st_size for p in files),
    }
    return result


def lm_heads(model: Any) -> dict[str, Any]:
    """``{task: head}`` of the causal-LM heads (those with an ``lm`` and a ``projector``)."""
    return {
        task: head
        for task, head in model.heads.items()
        if hasattr(head, "lm") and hasattr(head, "projector") and hasattr(head, "tokenizer")
    }


def _check_full_precision(task: str, head: Any) -> None:
    """Refuse a quantized LM (bitsandbytes weights do not merge or save as full ones)."""
    quantization = getattr(head.lm.config, "quantization_config", None)
    if quantization is None and getattr(head.lm, "hf_quantizer", None) is None:
        return
    bits = "4bit" if _get(quantization, "load_in_4bit") else "8bit"
    if not _get(quantization, "load_in_4bit") and not _get(quantization, "load_in_8bit"):
        bits = "quantized"
    raise MMTrainError(
        f"format=hf: head.{task}'s LM is quantized ({bits}), and quantized weights are not "
        f"exported; train or rebuild it with head.{task}.quantize=null, or use "
        "format=safetensors"
    )


def _get(config: Any, key: str) -> Any:
    """``config[key]`` of a dict or an object, None when absent."""
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def merged_copy(model: Any) -> Any:
    """A copy of ``model`` in eval mode with every LoRA adapter folded into its base weight and
    the adapter layers replaced by their base layers (plain transformers modules again)."""
    from mmtrain.adapters import merge

    merged = copy.deepcopy(model).cpu().eval()
    merge(merged)
    _unwrap_adapters(merged)
    return merged


def _unwrap_adapters(module: nn.Module) -> None:
    """Replace each peft tuner layer inside ``module`` by its base layer, in place."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no adapters either
        return
    layers = [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent), leaf, layer.get_base_layer())
    for sub in module.modules():  # what peft's injection records on the adapted model
        if "peft_config" in vars(sub):
            del sub.peft_config


# ---- which layout -------------------------------------------------------------------------------
def llava_mismatch(model: Any) -> str | None:
    """Why ``model`` (adapters merged) is not a LLaVA model, or None when it is one (see the
    module docstring); the images' size is checked later, on the preprocessed input."""
    from torch import nn

    from mmtrain.encoders.hf import HFImageEncoder
    from mmtrain.fusions.tokens import TokensFusion
    from mmtrain.utils.preprocessing import PREPROCESSOR_FILE, PROCESSOR_FILE

    heads = lm_heads(model)
    if len(model.heads) != 1 or len(heads) != 1:
        return f"LLaVA has one causal-LM head; this model has the heads {sorted(model.heads)}"
    if list(model.encoders) != ["image"]:
        return f"LLaVA has one image encoder; this model has {sorted(model.encoders)}"
    encoder = model.encoders["image"]
    if not isinstance(encoder, HFImageEncoder):
        return f"the image encoder is a {type(encoder).__name__}, not a CLIP or SigLIP tower"
    tower_type = getattr(encoder.model.config, "model_type", None)
    if tower_type not in LLAVA_TOWERS or encoder.family.submodule:
        return f"the image tower is a {tower_type}, not a CLIP or SigLIP vision tower"
    if not {PREPROCESSOR_FILE, PROCESSOR_FILE} & set(encoder.model_files or {}):
        return f"the image tower's folder has no image processor ({PREPROCESSOR_FILE})"
    if encoder.output != "tokens":
        return f"the image encoder gives its {encoder.output} output, LLaVA the patch tokens"
    if tower_type == "siglip_vision_model" and encoder.layer == -1:
        return (
            "the SigLIP tower's last output is post-normalised, which LLaVA's hidden states "
            "are not (encoder.image.layer=-1)"
        )
    if not isinstance(model.fusion, TokensFusion):
        return f"fusion is a {type(model.fusion).__name__}, LLaVA passes the tokens unchanged"
    ((task, head),) = heads.items()
    projector = head.projector
    mlp = (
        isinstance(projector, nn.Sequential)
        and len(projector) == 3
        and isinstance(projector[0], nn.Linear)
        and isinstance(projector[1], nn.GELU)
        and projector[1].approximate == "none"
        and isinstance(projector[2], nn.Linear)
        and projector[0].bias is not None
        and projector[2].bias is not None
    )
    if not mlp:
        return f"head.{task}'s projector is not mlp2x_gelu"
    lm = head.lm
    lm_type = lm.config.model_type
    if lm_type not in LLAMA_STYLE:
        return f"head.{task}'s LM is a {lm_type}, not one of {', '.join(LLAMA_STYLE)}"
    prefix = lm.base_model_prefix
    names = [n for n, _ in _tensors(lm)]
    if lm.get_output_embeddings() is not getattr(lm, "lm_head", None) or not all(
        n.startswith((f"{prefix}.", "lm_head.")) for n in names
    ):
        return f"head.{task}'s LM is not a base model ({prefix}) and an lm_head"
    return None


def _tensors(module: nn.Module) -> list[tuple[str, Any]]:
    """Every parameter and buffer of ``module`` by name, shared ones under each name."""
    return [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]


# ---- the input of the parity checks -------------------------------------------------------------
def sample_image(width: int = 320, height: int = 256) -> Image.Image:
    """A fixed RGB image (colour gradients with seeded noise): the parity check's input."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).integers(0, 64, (height, width, 3))
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    return Image.fromarray(((pixels + noise) % 256).astype("uint8"), "RGB")


@contextlib.contextmanager
def _materialized(files: dict[str, bytes]) -> Iterator[Path]:
    """``files`` ({name: content}) written into a temporary folder."""
    from mmtrain.utils.hub import materialize

    with tempfile.TemporaryDirectory(prefix="mmtrain_hf_") as scratch:
        yield materialize(files, Path(scratch) / "model")


def _pixels(model: Any, cfg: DictConfig, datamodule: Any, image: Image.Image) -> torch.Tensor:
    """``(1, 3, S, S)``: ``image`` through the model's image preprocessing: the data module's
    input, else ``cfg.data.image`` with the keys of the tower's processor files (what
    build.py writes there)."""
    if datamodule is not None and "image" in getattr(datamodule, "inputs", {}):
        part = datamodule.inputs["image"]
    else:
        from mmtrain.utils.instantiate import safe_instantiate
        from mmtrain.utils.preprocessing import image_keys_from_hf

        node = (cfg.get("data") or {}).get("image")
        if node is None:
            raise MMTrainError("format=hf: the config has no data.image to preprocess images with")
        with _materialized(model.encoders["image"].model_files) as folder:
            keys = image_keys_from_hf(folder)
        node = node.copy()
        with open_dict(node):
            node.merge_with(keys)
        part = safe_instantiate(node, "data.image", list(cfg.get("allowed_targets") or []))
        part.name = "image"
    return part.encode(image, train=False).unsqueeze(0)


@contextlib.contextmanager
def _greedy(head: Any, suppress: list[int] | None = None) -> Iterator[None]:
    """``head`` decoding greedily without stop strings (the parity's generation), never
    generating the ids ``suppress`` (as the exported generation config), then as it was."""
    saved = (head.beam_size, head.do_sample, head.stop)
    head.beam_size, head.do_sample, head.stop = 1, False, []
    if suppress:
        kwargs = head.generation_kwargs
        head.generation_kwargs = lambda: {**kwargs(), "suppress_tokens": list(suppress)}
    try:
        yield
    finally:
        head.beam_size, head.do_sample, head.stop = saved
        vars(head).pop("generation_kwargs", None)


def _until_stop(ids: list[int], stops: list[int]) -> list[int]:
    """``ids`` up to and including the first stop id."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    return ids


@contextlib.contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """``model`` in eval mode without gradients, its modes restored after."""
    import torch

    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _answer(
    head: Any, features: Any, prompt: list[int], suppress: list[int] | None = None
) -> list[int]:
    """The head's greedy answer to ``prompt`` (ids up to its first stop id, at least one),
    never the ids ``suppress``."""
    import torch

    with _greedy(head, suppress):
        ids = torch.tensor([prompt], device=features.tokens.device)
        generated = head.generate(features, prompt=ids)
    answer = _until_stop(generated[0].tolist(), list(head.tokenizer.stop_ids))
    return answer or [head.tokenizer.stop_ids[0]]


def _lm_logits(head: Any, features: Any, ids: list[int]) -> torch.Tensor:
    """``(S, V)`` the head's logits on the conversation ``ids`` (teacher forcing)."""
    import torch

    target = torch.tensor([ids], device=features.tokens.device)
    return head(features, target=target).logits[0].float().cpu()


def _tolerance(cfg: DictConfig, head: Any, logits: torch.Tensor) -> float:
    """``export.hf_parity_atol`` when set, else :data:`PARITY_RTOL` of the LM's dtype times
    the logits' largest magnitude (at least 1): logits are not unit-sized outputs, and merging
    LoRA into the weights changes their rounding."""
    atol = OmegaConf.select(cfg, "export.hf_parity_atol", default=None)
    if atol is not None:
        return float(atol)
    dtype = str(head.lm.dtype).removeprefix("torch.")
    return PARITY_RTOL.get(dtype, PARITY_RTOL["bfloat16"]) * max(1.0, logits.abs().max().item())


def _differences(
    task: str, head: Any, expected: Any, merged: Any, got: Any, answer: int
) -> tuple[dict[str, float], dict[str, float]]:
    """The logits' max abs differences, and those the tolerance applies to.

    ``<task>/logits``: the export against the model, over the positions that predict the
    answer (``answer`` ids) and what follows it; ``<task>/conversion``: the export against the
    merged copy computing as the export does (its dtype), over every position. Both are
    checked for a float32 LM; for a half-precision one only the conversion: the export runs
    its tower and projector in the LM's dtype too (transformers loads one dtype), and the
    adapters are merged into half-precision weights, which the model computes apart.
    """
    vocab = expected.shape[-1]
    span = answer + 1
    diffs = {
        f"{task}/logits": (got[-span:, :vocab] - expected[-span:]).abs().max().item(),
        f"{task}/conversion": (got[:, :vocab] - merged[:, :vocab]).abs().max().item(),
    }
    full = str(head.lm.dtype) == "torch.float32"
    checked = {k: v for k, v in diffs.items() if full or k.endswith("/conversion")}
    return diffs, checked


def _check_parity(diffs: dict[str, float], tolerance: float, what: str) -> None:
    """Raise when a difference is above ``tolerance``.

    Raises:
        MMTrainError: naming the outputs, their differences and the tolerance.
    """
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        listed = ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
        raise MMTrainError(
            f"format=hf: {what} differs from the model above the tolerance {tolerance:.3g}: "
            f"{listed} (max abs diff of the logits)"
        )


# ---- the llava layout ---------------------------------------------------------------------------
def _image_token(tokenizer: Any) -> int:
    """The id of :data:`IMAGE_TOKEN` in ``tokenizer``, added as a special token if missing."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        token = AddedToken(IMAGE_TOKEN, special=True, normalized=False)
        tokenizer.add_tokens([token], special_tokens=True)
    return int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def _make_room(lm: Any, token_id: int) -> bool:
    """Give ``lm`` an embedding row for ``token_id`` when it has none: the input row is the
    mean of the others (LLaVA's conversion), the output row zero (and the token suppressed
    in generation). Returns whether the embeddings grew."""
    import torch

    rows = lm.get_input_embeddings().num_embeddings
    if token_id < rows:
        return False
    lm.resize_token_embeddings(token_id + 1, mean_resizing=False)
    with torch.no_grad():
        embeddings = lm.get_input_embeddings().weight
        embeddings[rows:] = embeddings[:rows].mean(dim=0)
        output = lm.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != embeddings.data_ptr():
            output.weight[rows:] = 0.0
            if getattr(output, "bias", None) is not None:
                output.bias[rows:] = 0.0
    return True


def _strategy(encoder: Any) -> str:
    """LLaVA's ``vision_feature_select_strategy`` of mmtrain's encoder: ``default`` drops the
    class token (CLIP with ``keep_cls=false``), ``full`` keeps every token (SigLIP has none)."""
    prefix = LLAVA_TOWERS[encoder.model.config.model_type]
    return "default" if prefix and not encoder.keep_cls else "full"


def _llava_config(encoder: Any, head: Any, image_id: int, tokens: int) -> Any:
    """The ``LlavaConfig`` that reproduces mmtrain's encoder, projector and LM."""
    from transformers import LlavaConfig

    text = copy.deepcopy(head.lm.config)
    return LlavaConfig(
        vision_config=copy.deepcopy(encoder.model.config).to_dict(),
        text_config=text.to_dict(),
        image_token_index=image_id,
        image_seq_length=tokens,
        projector_hidden_act="gelu",
        vision_feature_layer=int(encoder.layer),
        vision_feature_select_strategy=_strategy(encoder),
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text.tie_word_embeddings),
    )


def _llava_sources(encoder: Any, head: Any) -> dict[str, Any]:
    """Every tensor of the LLaVA model by its name there, from mmtrain's parts."""
    lm = head.lm
    parts = {
        "model.vision_tower.": encoder.model,
        "model.multi_modal_projector.linear_1.": head.projector[0],
        "model.multi_modal_projector.linear_2.": head.projector[2],
        "model.language_model.": getattr(lm, lm.base_model_prefix),
        "lm_head.": lm.get_output_embeddings(),
    }
    return {prefix + name: t for prefix, part in parts.items() for name, t in _tensors(part)}


def _assemble_llava(config: Any, sources: dict[str, Any]) -> Any:
    """A ``LlavaForConditionalGeneration`` of ``config`` holding the ``sources`` tensors (built
    on the meta device: no random initialisation, no copy).

    Raises:
        MMTrainError: when the names or shapes do not map one to one (a transformers version
            whose LLaVA is laid out otherwise).
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    targets = dict(_tensors(llava))
    missing, extra = sorted(set(targets) - set(sources)), sorted(set(sources) - set(targets))
    shapes = [n for n in targets if n in sources and targets[n].shape != sources[n].shape]
    if missing or extra or shapes:
        raise MMTrainError(
            "format=hf: the model's weights do not map onto LlavaForConditionalGeneration "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, shapes {shapes[:3]})"
        )
    for name in targets:
        parent, _, leaf = name.rpartition(".")
        module = llava.get_submodule(parent)
        if leaf in module._parameters:
            module._parameters[leaf] = sources[name]
        else:
            module._buffers[leaf] = sources[name]
    return llava.eval()


def _non_tokens(head: Any, vocab: int, image_id: int) -> list[int]:
    """The ids the exported LM must never generate: the image token and the embedding rows
    beyond the tokenizer's ``vocab`` ids (padding rows, which no token decodes to)."""
    rows = head.lm.get_input_embeddings().num_embeddings
    return sorted({image_id, *range(vocab, rows)})


def _generation_config(head: Any, suppress: list[int]) -> Any:
    """The LM's generation config, decoding as the head does (its stop ids, beams, sampling),
    never generating the ids ``suppress``."""
    generation = copy.deepcopy(head.lm.generation_config)
    tokenizer = head.tokenizer
    generation.eos_token_id = list(tokenizer.stop_ids)
    generation.pad_token_id = int(tokenizer.pad_id)
    generation.max_new_tokens = head.max_new_tokens
    generation.num_beams = head.beam_size
    generation.do_sample = head.do_sample
    generation.repetition_penalty = 1.0
    generation.length_penalty = head.length_penalty
    generation.suppress_tokens = list(suppress)
    if head.do_sample:
        generation.temperature, generation.top_p, generation.top_k = (
            head.temperature,
            head.top_p,
            0,
        )
    else:
        generation.temperature = generation.top_p = generation.top_k = None
    return generation


def _processor(encoder: Any, tokenizer: Any, template: str) -> Any:
    """A ``LlavaProcessor``: the tower's image processor (its files) and ``tokenizer``."""
    from transformers import AutoImageProcessor, LlavaProcessor

    with _materialized(encoder.model_files) as folder:
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=encoder.model.config.patch_size,
        vision_feature_select_strategy=_strategy(encoder),
        chat_template=template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=LLAVA_TOWERS[encoder.model.config.model_type],
    )


@dataclass
class _Llava:
    """What the llava layout's parity check needs to know of the written folder."""

    task: str
    image_id: int  # the ``<image>`` token
    tokens: int  # image tokens per image
    suppress: list[int]  # ids never generated
    dtype: Any  # the export's (the LM's) torch dtype


def _export_llava(
    merged: Any, model: Any, cfg: DictConfig, out: Path, pixels: Any, image: Image.Image
) -> dict[str, Any]:
    """Write the llava layout of ``merged`` into ``out`` and check it against ``model``."""
    ((task, head),) = lm_heads(merged).items()
    encoder = merged.encoders["image"]
    with _evaluating(merged):
        tokens = encoder(pixels).tokens.shape[1]
    tokenizer = copy.deepcopy(head.tokenizer.hf_tokenizer)
    image_id = _image_token(tokenizer)
    grew = _make_room(head.lm, image_id)
    suppress = _non_tokens(head, head.tokenizer.vocab_size, image_id)
    dtype = head.lm.dtype  # transformers loads a model in one dtype: the tower's is the LM's
    encoder.to(dtype)
    head.projector.to(dtype)
    config = _llava_config(encoder, head, image_id, tokens)
    llava = _assemble_llava(config, _llava_sources(encoder, head))
    llava.generation_config = _generation_config(head, suppress)
    llava.save_pretrained(out)
    del llava
    template = head.tokenizer.template
    tokenizer.chat_template = template
    _processor(encoder, tokenizer, template).save_pretrained(out)
    written = _Llava(task, image_id, tokens, suppress, dtype)
    checked = _llava_parity(written, model, merged, cfg, out, pixels, image)
    return {
        "layout": "llava",
        "task": task,
        **checked,
        "dtype": str(dtype).removeprefix("torch."),
        "image_token_id": image_id,
        "image_tokens": tokens,
        "embeddings_resized": grew,
        "suppressed_tokens": len(suppress),
    }


def _llava_parity(
    written: _Llava,
    model: Any,
    merged: Any,
    cfg: DictConfig,
    out: Path,
    pixels: Any,
    image: Image.Image,
) -> dict[str, Any]:
    """The llava folder loaded by transformers against ``model`` and its ``merged`` copy (see
    :func:`_differences`), on ``pixels`` and the task's prompt; then the saved processor.

    Raises:
        MMTrainError: for a difference above the tolerance.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    from mmtrain.contracts import FEATURE_TOKEN

    task, dtype = written.task, written.dtype
    loaded = LlavaForConditionalGeneration.from_pretrained(out, local_files_only=True, dtype=dtype)
    loaded.eval()
    original, head = model.heads[task], merged.heads[task]
    prompt_text = original.prompt or PARITY_PROMPT
    prompt = original.tokenizer.prompt_ids(prompt_text)
    with _evaluating(model):
        features = model.fusion(model.encode({"image": pixels.to(model.device)}))
        answer = _answer(original, features, prompt, written.suppress)
        expected = _lm_logits(original, features, prompt + answer)
    with _evaluating(merged):  # the export's computation in mmtrain: the conversion's check
        inputs = {"image": pixels.to(dtype)}
        same = _lm_logits(head, merged.fusion(merged.encode(inputs)), prompt + answer)

    def llava_ids(ids: list[int]) -> torch.Tensor:
        image_ids = [written.image_id] * written.tokens
        return torch.tensor([[t for i in ids for t in (image_ids if i == FEATURE_TOKEN else [i])]])

    with torch.no_grad():
        ids = llava_ids(prompt + answer)
        got = loaded(input_ids=ids, pixel_values=pixels.to(dtype)).logits[0].float()
        asked = llava_ids(prompt)
        generated = loaded.generate(
            input_ids=asked,
            attention_mask=torch.ones_like(asked),
            pixel_values=pixels.to(dtype),
            do_sample=False,
            num_beams=1,
        )
    diffs, checked = _differences(task, original, expected, same, got, len(answer))
    tolerance = _tolerance(cfg, original, expected)
    _check_parity(checked, tolerance, f"the llava export in {out}")
    stops = list(original.tokenizer.stop_ids)
    exported = _until_stop(generated[0, asked.shape[1] :].tolist(), stops)
    return {
        "parity": diffs,
        "checked": sorted(checked),
        "tolerance": tolerance,
        "greedy_identical": {task: exported == answer},
        "greedy_tokens": {task: {"mmtrain": answer, "exported": exported}},
        "answer": original.tokenizer.decode(answer),
        "processor": _processor_check(out, original, prompt_text, image, pixels, asked),
    }


def _processor_check(
    out: Path, head: Any, prompt: str, image: Image.Image, pixels: Any, ids: Any
) -> dict[str, Any]:
    """What the saved processor makes of the image and the rendered prompt, against mmtrain's
    pixels and ids (reported: a tokenizer may merge text across the image tokens otherwise)."""
    from transformers import AutoProcessor

    from mmtrain.contracts import PLACEHOLDER

    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    text = prompt if PLACEHOLDER in prompt else f"{PLACEHOLDER}\n{prompt}"
    rendered = head.tokenizer.render([{"role": "user", "content": text}], generation=True)
    made = processor(images=image, text=rendered, add_special_tokens=False, return_tensors="pt")
    same_shape = tuple(made["pixel_values"].shape) == tuple(pixels.shape)
    pixel_diff = (
        (made["pixel_values"].float() - pixels.float()).abs().max().item() if same_shape else None
    )
    return {
        "pixel_values_max_abs_diff": pixel_diff,
        "input_ids_identical": made["input_ids"].tolist() == ids.tolist(),
    }


# ---- the mmtrain layout -------------------------------------------------------------------------
def _save_state(module: nn.Module, path: Path) -> None:
    """``module``'s state dict as safetensors at ``path`` (tied tensors copied apart)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def _write_files(files: dict[str, bytes], folder: Path) -> None:
    """``files`` into ``folder``, leaving the files already there (a saved config)."""
    for name, content in files.items():
        path = folder / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)


def _hf_tower(encoder: Any) -> bool:
    """Whether ``encoder`` is a transformers tower that ``save_pretrained`` round-trips: its
    weights are exactly its model's, and the model is the one its folder builds."""
    from transformers import PreTrainedModel

    inner = getattr(encoder, "model", None)
    family = getattr(encoder, "family", None)
    if not isinstance(inner, PreTrainedModel) or family is None or family.submodule:
        return False
    keys = set(encoder.state_dict())
    return keys == {f"model.{k}" for k in inner.state_dict()}


def _lm_folder(task: str, count: int) -> str:
    return LANGUAGE_MODEL if count == 1 else f"{LANGUAGE_MODEL}_{task}"


def _projector_file(task: str, count: int) -> str:
    return PROJECTOR if count == 1 else f"projector_{task}.safetensors"


def _save_lm(head: Any, folder: Path) -> None:
    """The merged LM and its tokenizer (with the chat template mmtrain renders with) into
    ``folder``."""
    head.lm.save_pretrained(folder)
    tokenizer = copy.deepcopy(head.tokenizer.hf_tokenizer)
    tokenizer.chat_template = head.tokenizer.template
    tokenizer.save_pretrained(folder)


def _export_mmtrain(
    merged: Any, model: Any, cfg: DictConfig, out: Path, datamodule: Any, image: Image.Image
) -> dict[str, Any]:
    """Write the mmtrain layout of ``merged`` into ``out`` and check it against ``model``."""
    heads = lm_heads(merged)
    parts: dict[str, dict[str, Any]] = {}
    for task, head in merged.heads.items():
        if task in heads:
            folder, projector = _lm_folder(task, len(heads)), _projector_file(task, len(heads))
            _save_lm(head, out / folder)
            _save_state(head.projector, out / projector)
            parts[f"heads.{task}"] = {
                "kind": "causal_lm",
                "language_model": folder,
                "projector": projector,
            }
        else:
            weights = f"heads/{task}.safetensors"
            _save_state(head, out / weights)
            parts[f"heads.{task}"] = {"kind": "state", "weights": weights}
    for modality, encoder in merged.encoders.items():
        folder = f"encoders/{modality}"
        files = dict(getattr(encoder, "model_files", None) or {})
        if _hf_tower(encoder):
            encoder.model.save_pretrained(out / folder)
            _write_files(files, out / folder)
            parts[f"encoders.{modality}"] = {"kind": "hf", "folder": folder}
        else:
            _save_state(encoder, out / folder / "model.safetensors")
            _write_files(files, out / folder / "files")
            parts[f"encoders.{modality}"] = {
                "kind": "state",
                "weights": f"{folder}/model.safetensors",
                "files": f"{folder}/files" if files else None,
            }
    fusion_files = dict(getattr(merged.fusion, "model_files", None) or {})
    _save_state(merged.fusion, out / FUSION)
    _write_files(fusion_files, out / "fusion")
    parts["fusion"] = {
        "kind": "state",
        "weights": FUSION,
        "files": "fusion" if fusion_files else None,
    }
    info = {
        "format": INFO_FORMAT,
        "version": INFO_VERSION,
        "config": model.config_yaml or OmegaConf.to_yaml(cfg),
        "data": datamodule.state_dict() if datamodule is not None else {},
        "parts": parts,
    }
    try:
        text = json.dumps(info, indent=2)
    except TypeError as err:
        raise MMTrainError(f"format=hf: the data state is not plain data ({err})") from None
    (out / INFO_FILE).write_text(text)
    return {"layout": "mmtrain", **_mmtrain_parity(model, merged, cfg, out, image)}


def _raw_inputs(image: Image.Image) -> dict[str, Any]:
    """One raw value per modality, for the parity batch."""
    import numpy as np

    t = np.arange(16000, dtype=np.float32) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.sin(2 * np.pi * 1250 * t))[None]
    return {"image": image, "text": "a photo of a red cat", "audio": (wave, 16000)}


def _mmtrain_parity(
    model: Any, merged: Any, cfg: DictConfig, out: Path, image: Image.Image
) -> dict[str, Any]:
    """The mmtrain layout loaded back (:func:`rebuild_hf_export`) against ``model`` and its
    ``merged`` copy (see :func:`_differences`): each causal-LM head's logits on its prompt and
    greedy answer, on one input per modality preprocessed by the loaded model's data module.

    Raises:
        MMTrainError: for a difference above the tolerance.
    """
    from mmtrain.data.collate import collate

    with tempfile.TemporaryDirectory(prefix="mmtrain_hf_") as scratch:
        _, datamodule, loaded = rebuild_hf_export(out, cfg, Path(scratch), inputs=scratch)
    raw = {m: v for m, v in _raw_inputs(image).items() if m in loaded.encoders}
    raw = {m: v for m, v in raw.items() if m in datamodule.inputs}
    if not raw:
        raise MMTrainError(
            f"format=hf: no input to check the export with (the model takes "
            f"{', '.join(loaded.encoders)})"
        )
    batch = collate([datamodule.encode({"id": "0", **raw}, train=False)], datamodule.parts)
    diffs: dict[str, float] = {}
    checked: dict[str, float] = {}
    identical: dict[str, bool] = {}
    tokens: dict[str, dict[str, list[int]]] = {}
    tolerance = 0.0
    with _evaluating(model), _evaluating(loaded), _evaluating(merged):
        ours = model.fusion(model.encode({k: _to(v, model.device) for k, v in batch.items()}))
        theirs = loaded.fusion(loaded.encode(batch))
        copied = merged.fusion(merged.encode(batch))
        for task, head in lm_heads(model).items():
            other = loaded.heads[task]
            prompt = head.tokenizer.prompt_ids(head.prompt or PARITY_PROMPT)
            answer = _answer(head, ours, prompt)
            exported = _answer(other, theirs, prompt)
            expected = _lm_logits(head, ours, prompt + answer)
            got = _lm_logits(other, theirs, prompt + answer)
            same = _lm_logits(merged.heads[task], copied, prompt + answer)
            found, kept = _differences(task, head, expected, same, got, len(answer))
            diffs |= found
            checked |= kept
            identical[task] = exported == answer
            tokens[task] = {"mmtrain": answer, "exported": exported}
            tolerance = max(tolerance, _tolerance(cfg, head, expected))
    _check_parity(checked, tolerance, f"the mmtrain-layout export in {out}")
    return {
        "parity": diffs,
        "checked": sorted(checked),
        "tolerance": tolerance,
        "greedy_identical": identical,
        "greedy_tokens": tokens,
        "inputs": sorted(raw),
    }


def _to(value: Any, device: Any) -> Any:
    import torch

    return value.to(device) if torch.is_tensor(value) else value


# ---- loading the mmtrain layout -----------------------------------------------------------------
def read_info(folder: Path) -> dict[str, Any]:
    """``mmtrain_hf.json`` of an mmtrain-layout hf export.

    Raises:
        MMTrainError: naming the folder, when it is not one (a llava-layout folder is loaded
            with transformers).
    """
    folder = Path(folder)
    path = folder / INFO_FILE
    if not path.is_file():
        hint = (
            " (a llava layout: load it with transformers' LlavaForConditionalGeneration "
            "and AutoProcessor)"
            if (folder / "config.json").is_file()
            else ""
        )
        raise MMTrainError(f"{folder} is not an mmtrain-layout hf export: no {INFO_FILE}{hint}")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MMTrainError(f"{path}: unreadable ({err})") from None
    if info.get("format") != INFO_FORMAT or info.get("version") != INFO_VERSION:
        raise MMTrainError(
            f"{path}: not a {INFO_FORMAT} description of version {INFO_VERSION} "
            f"(format {info.get('format')!r}, version {info.get('version')!r})"
        )
    return info


def _folder_files(folder: Path) -> dict[str, bytes]:
    """``{relative name: content}`` of the files under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _point_at_export(cfg: DictConfig, info: dict[str, Any], folder: Path, scratch: Path) -> None:
    """``cfg`` building each part from the export: the LMs and transformers towers from their
    folders (with weights), the other pretrained parts from their model files (without), no
    adapters (merged) and no phase."""
    from mmtrain.run import use_stored_models

    parts = info["parts"]
    stored = {}
    for path, part in parts.items():
        if part.get("files"):
            key = "fusion" if path == "fusion" else path.replace("encoders.", "encoder.")
            stored[key] = _folder_files(folder / part["files"])
    use_stored_models(cfg, stored, scratch / "models")
    with open_dict(cfg):
        cfg.peft = None
        cfg.phase = None
        for path, part in parts.items():
            group, name = path.split(".", 1) if "." in path else (path, "")
            if part["kind"] == "causal_lm":
                node = cfg.head[name]
                node.model_name_or_path = str((folder / part["language_model"]).resolve())
                node.quantize = None
            elif part["kind"] == "hf":
                node = cfg.encoder[name]
                node.model_name_or_path = str((folder / part["folder"]).resolve())
            else:
                continue
            node.pretrained = True
            node.safetensors = True
            if "revision" in node:
                node.revision = None


def _load_state(module: nn.Module, path: Path) -> None:
    """Load the safetensors state dict at ``path`` into ``module``, every key matched.

    Raises:
        MMTrainError: naming the file, when its weights do not fit the module.
    """
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:300]
        raise MMTrainError(f"{path} does not fit the rebuilt model: {first}") from None


def rebuild_hf_export(
    folder: Path, cfg: DictConfig, scratch: Path, inputs: str | None = None
) -> tuple[DictConfig, Any, Any]:
    """Rebuild the model of an mmtrain-layout hf export (what ``mmtrain.load`` needs), as
    :func:`mmtrain.predictor.rebuild` does from a checkpoint.

    Args:
        folder: the export folder.
        cfg: the composed config of this command (trainer, paths...); the model and data
            keys come from the export's stored config.
        scratch: a folder for the parts' model files; it must outlive the build only.
        inputs: read raw inputs from this folder instead of the data set (a predictor), or
            None to keep the stored data set.

    Returns:
        ``(config, data module, model)``: the data module's fitted state restored, the model
        in eval mode with every weight from the export.

    Raises:
        MMTrainError: for a folder that is not an mmtrain-layout hf export, or whose files do
            not fit the model they describe.
    """
    from mmtrain.build import build_datamodule, build_module, task_targets
    from mmtrain.run import config_from_checkpoint, predict_on_inputs

    folder = Path(folder)
    info = read_info(folder)
    cfg = task_targets(config_from_checkpoint(info["config"], cfg))
    _point_at_export(cfg, info, folder, scratch)
    if inputs is not None:
        predict_on_inputs(cfg, inputs)
    datamodule = build_datamodule(cfg)
    datamodule.load_state_dict(info.get("data") or {})
    model = build_module(cfg, datamodule.facts(), OmegaConf.to_yaml(cfg))
    for path, part in info["parts"].items():
        target = model.get_submodule(path)
        if part["kind"] == "causal_lm":
            _load_state(target.projector, folder / part["projector"])
        elif part["kind"] == "state":
            _load_state(target, folder / part["weights"])
    return cfg, datamodule, model.eval()


def load_hf_export(folder: str | Path) -> Any:
    """The :class:`~mmtrain.module.MultimodalModule` of an mmtrain-layout hf export (see
    :func:`rebuild_hf_export`), in eval mode.

    Raises:
        MMTrainError: as :func:`rebuild_hf_export`.
    """
    from mmtrain.config import task_config

    with tempfile.TemporaryDirectory(prefix="mmtrain_hf_") as scratch:
        base = task_config("predict", [], Path(scratch))
        _, _, model = rebuild_hf_export(Path(folder), base, Path(scratch), inputs=scratch)
    return model
