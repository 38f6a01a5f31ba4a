"""Causal-LM head: a pretrained (or randomly initialised) decoder-only language model reads the
fused tokens as a prefix of its input and generates the text target (LLaVA style).

A projector maps the fused tokens ``(B, N, in_dim)`` to the LM's width; they take the place of
the one :data:`~mmtrain.contracts.FEATURE_TOKEN` of each sequence (the ``<image>`` placeholder;
a sequence without one gets no features), only the real ones (``features.mask``). The other ids
go through the LM's input embeddings, and the LM runs on the spliced ``inputs_embeds``:

- training (:meth:`CausalLMHead.forward`): the right-padded conversation with its labels, the
  feature positions :data:`~mmtrain.contracts.IGNORE_INDEX`; the loss is the LM's own (labels
  shifted inside, mean over the labelled positions);
- generation (:meth:`CausalLMHead.predict`): the left-padded prompts, through the LM's own
  ``generate`` (greedy, beam search or sampling; stop ids and stop strings).

The LM comes from a folder or hub id (:func:`mmtrain.utils.hub.resolve`, offline by design)
through ``AutoModelForCausalLM`` without remote code, or from a ``config`` alone (random
weights). transformers is imported when a head is built, never with this module.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.text import CharErrorRate, WordErrorRate

from mmtrain.contracts import FEATURE_TOKEN, IGNORE_INDEX, ChatTokenizer, Features
from mmtrain.encoders.hf import load_checked, weight_files
from mmtrain.heads.ctc import default_normalize
from mmtrain.metrics.caption import CaptionMetrics
from mmtrain.metrics.vqa import VQAAccuracy
from mmtrain.utils import hub

log = logging.getLogger(__name__)

PROJECTORS = ("linear", "mlp2x_gelu")
METRICS = ("caption", "vqa", "wer", "none")
QUANTIZE = (None, "4bit", "8bit")
DTYPES = {None: torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPES["float16"] = torch.float16


@dataclass
class Spliced:
    """Sequences with the projected fused tokens in place of their :data:`FEATURE_TOKEN`.

    Attributes:
        embeds: ``(B, S, H)`` the LM's input embeddings; padding positions hold the pad id's.
        attention_mask: ``(B, S)`` long, 1 at real positions.
        labels: ``(B, S)`` long, :data:`IGNORE_INDEX` at feature and padding positions; None
            when no labels were given.
        position_ids: ``(B, S)`` long: 0, 1, ... over the real positions, 0 on padding.
        spliced: how many sequences received features.
    """

    embeds: Tensor
    attention_mask: Tensor
    labels: Tensor | None
    position_ids: Tensor
    spliced: int


def make_projector(kind: str, in_dim: int, hidden: int) -> nn.Module:
    """The projector from the fused width to the LM's: ``linear`` (LLaVA-1) or ``mlp2x_gelu``
    (LLaVA-1.5: Linear, GELU, Linear).

    Raises:
        ValueError: for another kind.
    """
    if kind == "linear":
        return nn.Linear(in_dim, hidden)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    raise ValueError(f"projector must be one of {list(PROJECTORS)}, got {kind!r}")


class CausalLMHead(nn.Module):
    """A decoder-only LM that reads the fused tokens and writes the text target.

    See the module docstring for the splicing. The target's batch carries, for task ``T``,
    ``T``/``T_mask`` (the conversation, right-padded), ``T_labels``, ``T_prompt``/
    ``T_prompt_mask`` (the generation prompt, left-padded) and ``T_references``
    (:class:`~mmtrain.contracts.ChatTokenizer` describes them); the module passes the keys of
    :attr:`batch_keys` to :meth:`forward` and :meth:`predict`.

    The LM stays in eval mode (no dropout) while none of its weights trains (a frozen LM, as
    in LLaVA's first stage); with ``gradient_checkpointing`` its decoder layers alone then
    follow the training mode, since transformers checkpoints only layers in training mode
    (dropout sits in their sub-modules for the usual LMs, which stay in eval mode).

    Args:
        in_dim: width of the fused features (wired by build.py).
        tokenizer: the target's tokenizer (an ``LMTokenizer``, wired by build.py).
        model_name_or_path: the LM's folder or hub id (:func:`mmtrain.utils.hub.resolve`);
            None builds a random LM from ``config``.
        revision: the hub revision that pins the model.
        model_dir: ``paths.model_dir``, searched first (wired by build.py).
        pretrained: load the weights; false builds the architecture from the folder's
            ``config.json`` (a checkpoint's rebuild, from :attr:`model_files`).
        safetensors: read weights from safetensors only; false also accepts pickled ones.
        config: with a folder, keys of its ``config.json`` to override; without one, the
            architecture of a random LM (``model_type`` and sizes, e.g. ``{model_type: llama,
            hidden_size: 64, ...}``).
        vocab_size: the tokenizer's number of ids (wired by build.py): a random LM's vocabulary
            unless ``config`` sets one.
        projector: ``linear`` or ``mlp2x_gelu``.
        dtype: the LM's weights: null (float32), ``bfloat16`` or ``float16``.
        quantize: null, ``4bit`` (NF4, bfloat16 compute) or ``8bit`` (bitsandbytes; needs a
            CUDA GPU and pretrained weights).
        gradient_checkpointing: recompute the LM's activations in backward (less memory).
        prompt: the user turn generated from when the batch has no prompt (wired from the
            target's prompt; ``predict`` on data without targets).
        max_new_tokens: most tokens generated per answer.
        beam_size: beams; 1 is greedy (or sampling with ``do_sample``).
        length_penalty: exponent of the length normalisation of finished beams (HF's).
        do_sample: sample instead of searching.
        temperature: the sampling temperature.
        top_p: nucleus sampling's probability mass (1: off); no top-k cut.
        stop: strings that end an answer (besides the tokenizer's stop ids); the text from the
            first of them on is dropped.
        metrics: ``caption`` (BLEU, ROUGE-L, CIDEr-D), ``vqa`` (the official VQA accuracy),
            ``wer`` (word and character error rates) or ``none``.

    Attributes:
        lm: the transformers ``PreTrainedModel``.
        projector: the projector (trains; the LM's weights are frozen by peft or phases).
        model_files: ``{file name: content}`` of the LM folder's config, generation config and
            tokenizer files (none for a random LM from ``config``).
        max_positions: the LM's ``max_position_embeddings``, or None.

    Raises:
        ValueError: for a bad option, a folder that asks for remote code, weights that do not
            fit, ``quantize`` without CUDA or bitsandbytes, or a tokenizer with more ids than
            the LM's embeddings.
    """

    unfused = False  # reads the fused features (contracts.Head)
    modalities: tuple[str, ...] = ()  # runs on every batch that has its target
    batch_keys = ("labels", "prompt", "prompt_mask")  # T_<key> of the batch, as keywords
    NO_WEIGHTS: Any = False  # ``pretrained`` of a checkpoint's rebuild
    # The target this head's task needs (build.task_targets makes data.targets.<task> one):
    # the prompt and answer in the LM's tokenizer and chat template.
    TARGET = {
        "_target_": "mmtrain.data.targets.ChatTarget",
        "tokenizer": {"_target_": "mmtrain.data.transforms.LMTokenizer"},
    }

    def __init__(
        self,
        in_dim: int,
        tokenizer: ChatTokenizer,
        model_name_or_path: str | None = None,
        revision: str | None = None,
        model_dir: str | None = None,
        pretrained: bool = True,
        safetensors: bool = True,
        config: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        projector: str = "mlp2x_gelu",
        dtype: str | None = None,
        quantize: str | None = None,
        gradient_checkpointing: bool = False,
        prompt: str | None = None,
        max_new_tokens: int = 32,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        metrics: str = "caption",
    ) -> None:
        super().__init__()
        self._check_options(
            projector, dtype, quantize, max_new_tokens, beam_size, temperature, top_p, stop, metrics
        )
        self.tokenizer = tokenizer
        self.name = model_name_or_path
        self.prompt = prompt
        self.max_new_tokens, self.beam_size = int(max_new_tokens), int(beam_size)
        self.length_penalty, self.do_sample = float(length_penalty), bool(do_sample)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.stop = list(stop or [])
        self.metrics = metrics
        config = dict(config or {})
        if model_name_or_path is None:
            if not config:
                raise ValueError(
                    "set model_name_or_path (a causal LM folder or hub id) or config (the "
                    "model_type and sizes of a randomly initialised LM)"
                )
            if quantize:
                raise ValueError(f"quantize={quantize} needs pretrained weights (a model folder)")
            folder = None
            self.lm = self._random_lm(config, vocab_size or tokenizer.vocab_size, DTYPES[dtype])
        else:
            folder = hub.resolve(
                model_name_or_path,
                key="model_name_or_path",
                revision=revision,
                model_dir=model_dir,
                pickled=not safetensors,
            )
            self.lm = self._folder_lm(folder, config, pretrained, safetensors, dtype, quantize)
        if getattr(self.lm, "loss_type", None) is None:  # GPT-2: what transformers falls back to
            self.lm.loss_type = "ForCausalLM"  # (without warning that it does)
        self.model_files = hub.model_files(folder) if folder is not None else {}
        rows = self.lm.get_input_embeddings().num_embeddings
        if tokenizer.vocab_size > rows:
            raise ValueError(
                f"{self._where()}: the tokenizer has {tokenizer.vocab_size} ids but the LM's "
                f"embeddings have {rows} rows; use the LM's own tokenizer (or a larger "
                "vocab_size for a random LM)"
            )
        text_config = self.lm.config.get_text_config()
        self.max_positions: int | None = getattr(text_config, "max_position_embeddings", None)
        self.projector = make_projector(
            projector, in_dim, self.lm.get_input_embeddings().embedding_dim
        )
        self._warned_truncation = False
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:
            if not getattr(self.lm, "supports_gradient_checkpointing", False):
                raise ValueError(f"{self._where()}: this LM has no gradient checkpointing")
            kwargs = {"use_reentrant": False}
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        self.train(self.training)

    # ---- building -----------------------------------------------------------------------------
    @staticmethod
    def _check_options(
        projector: str,
        dtype: str | None,
        quantize: str | None,
        max_new_tokens: int,
        beam_size: int,
        temperature: float,
        top_p: float,
        stop: list[str] | None,
        metrics: str,
    ) -> None:
        """Raise a ValueError naming the first bad option."""
        if projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {list(PROJECTORS)}, got {projector!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be null, float32, bfloat16 or float16, got {dtype!r}")
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize must be null, 4bit or 8bit, got {quantize!r}")
        if max_new_tokens < 1 or beam_size < 1:
            raise ValueError(
                f"max_new_tokens and beam_size must be >= 1, got {max_new_tokens}, {beam_size}"
            )
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        if stop is not None and (
            isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop)
        ):
            raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
        if metrics not in METRICS:
            raise ValueError(f"metrics must be one of {list(METRICS)}, got {metrics!r}")

    def _where(self) -> str:
        """How messages name the LM."""
        return f"model_name_or_path={self.name}" if self.name else "config"

    def _config(self, stored: dict[str, Any], config: dict[str, Any]) -> Any:
        """The transformers config of ``stored`` (a ``config.json``) with ``config``'s keys,
        each checked to be a key of the model type, built as one (derived sizes follow)."""
        import transformers

        where = self._where()
        model_type = stored.get("model_type")
        if config.get("model_type", model_type) != model_type:
            raise ValueError(
                f"{where}: config.model_type={config['model_type']} but the model is a {model_type}"
            )
        if model_type not in transformers.CONFIG_MAPPING:
            raise ValueError(
                f"{where}: model_type must be a transformers model type (llama, qwen2, gpt2, "
                f"...), got {model_type!r}"
            )
        cls = transformers.CONFIG_MAPPING[model_type]
        default = cls()
        unknown = [k for k in config if k not in stored and not hasattr(default, k)]
        if unknown:
            raise ValueError(
                f"{where}: config keys {unknown} are not keys of a {model_type} config"
            )
        return cls.from_dict({**stored, **config})

    def _random_lm(self, config: dict[str, Any], vocab_size: int, dtype: torch.dtype) -> Any:
        """A randomly initialised LM of ``config`` (``model_type`` and sizes)."""
        stored = {"model_type": config.pop("model_type", None), "vocab_size": int(vocab_size)}
        return self._from_config(self._config(stored, config), dtype)

    def _from_config(self, config: Any, dtype: torch.dtype) -> Any:
        """The architecture of ``config``, randomly initialised, in ``dtype``."""
        from transformers import AutoModelForCausalLM

        try:
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False, dtype=dtype)
        except ValueError as err:  # a model type without a causal-LM class
            raise ValueError(f"{self._where()}: not a causal LM ({err})") from None

    def _folder_lm(
        self,
        folder: Path,
        config: dict[str, Any],
        pretrained: bool,
        safetensors: bool,
        dtype: str | None,
        quantize: str | None,
    ) -> Any:
        """The LM of a model folder, with its weights if ``pretrained``."""
        import transformers

        where = self._where()
        path = folder / "config.json"
        if not path.is_file():
            raise ValueError(
                f"{where}: {folder} has no config.json, so it is not a Hugging Face model folder"
            )
        stored = json.loads(path.read_text())
        auto_map = stored.get("auto_map")
        if auto_map:
            raise ValueError(
                f"{where}: {path} asks for trust_remote_code (auto_map: {sorted(auto_map)}); "
                "mmtrain never runs code from a model folder: use a model that transformers "
                "implements itself"
            )
        base = self._config(stored, config)
        torch_dtype = DTYPES[dtype]
        if not pretrained:
            if quantize:
                raise ValueError(f"quantize={quantize} needs the pretrained weights")
            lm = self._from_config(base, torch_dtype)
            if (folder / "generation_config.json").is_file():  # generate as the original
                lm.generation_config = transformers.GenerationConfig.from_pretrained(folder)
            return lm
        if not weight_files(folder, safetensors):
            if weight_files(folder, safetensors=False):
                raise ValueError(
                    f"{where}: {folder} has only pickled weights (pytorch_model.bin); set "
                    "safetensors=false to load them (unpickling can run code from the file: "
                    "only for a source you trust)"
                )
            raise ValueError(
                f"{where}: {folder} has no weights (model.safetensors or pytorch_model.bin); "
                "set pretrained=false for the architecture only"
            )
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if quantize:
            kwargs |= self._quantization(quantize)
        lm = load_checked(
            transformers.AutoModelForCausalLM,
            folder,
            where,
            safetensors,
            config=base,
            trust_remote_code=False,
            **kwargs,
        )
        return lm

    @staticmethod
    def _quantization(quantize: str) -> dict[str, Any]:
        """``from_pretrained``'s quantization keywords (bitsandbytes), on this process's GPU.

        Raises:
            ValueError: without CUDA or without bitsandbytes.
        """
        if not torch.cuda.is_available():
            raise ValueError(
                f"quantize={quantize} needs a CUDA GPU (bitsandbytes) and this machine has "
                "none; set quantize=null"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                f"quantize={quantize} needs the bitsandbytes package, which is not installed "
                "(pip install bitsandbytes); or set quantize=null"
            )
        from transformers import BitsAndBytesConfig

        if quantize == "4bit":
            quantization = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        else:
            quantization = BitsAndBytesConfig(load_in_8bit=True)
        device = int(os.environ.get("LOCAL_RANK", 0))  # this process's GPU (DDP)
        return {"quantization_config": quantization, "device_map": {"": device}}

    @classmethod
    def preprocessing(
        cls,
        model_name_or_path: str | None = None,
        revision: str | None = None,
        model_dir: str | None = None,
        safetensors: bool = True,
        **node: Any,
    ) -> dict[str, Any]:
        """The target's tokenizer: the LM folder (``data.targets.<task>.tokenizer``).

        Args:
            model_name_or_path: the LM (None: a random LM, whose tokenizer the data trains).
            revision: the hub revision.
            model_dir: ``paths.model_dir``.
            safetensors: as the head (the same hub snapshot).
            **node: the head's other keys (unused here).

        Returns:
            ``{"tokenizer": {"name_or_path": folder}}``, or ``{}`` without a model.
        """
        if model_name_or_path is None:
            return {}
        folder = hub.resolve(
            model_name_or_path,
            key="model_name_or_path",
            revision=revision,
            model_dir=model_dir,
            pickled=not safetensors,
        )
        return {"tokenizer": {"name_or_path": str(folder)}}

    # ---- modes --------------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """The LM's decoder layers, input to output (for ``model.layer_decay``)."""
        count = getattr(self.lm.config.get_text_config(), "num_hidden_layers", None)
        for module in self.lm.modules():
            if isinstance(module, nn.ModuleList) and len(module) == count:
                return list(module)
        return []

    def lm_trains(self) -> bool:
        """Whether any weight of the LM trains (fine-tuning, LoRA adapters)."""
        return any(p.requires_grad for p in self.lm.parameters())

    def train(self, mode: bool = True) -> CausalLMHead:
        """Set the training mode; a frozen LM stays in eval mode (see the class docstring)."""
        super().train(mode)
        if not self.lm_trains():
            self.lm.eval()
            if mode and self.gradient_checkpointing:
                for block in self.blocks():
                    block.training = True  # the layer itself only: its dropouts stay off
        return self

    # ---- splicing -----------------------------------------------------------------------------
    def splice(
        self,
        features: Features,
        ids: Tensor,
        mask: Tensor | None = None,
        labels: Tensor | None = None,
        left: bool = False,
    ) -> Spliced:
        """The LM's inputs: ``ids`` embedded, the projected real fused tokens of each row at
        its :data:`FEATURE_TOKEN`, re-padded.

        Args:
            features: the fused tokens ``(B, N, in_dim)`` and their mask.
            ids: ``(B, L)`` token ids, at most one :data:`FEATURE_TOKEN` per row.
            mask: ``(B, L)`` real positions; None: all.
            labels: ``(B, L)`` the ids to predict (aligned with ``ids``), or None.
            left: pad on the left (generation) instead of the right (training).

        Returns:
            The :class:`Spliced` sequences.

        Raises:
            ValueError: for a row with more than one :data:`FEATURE_TOKEN`, or a spliced
                prompt (``left``, or no ``labels``) longer than the LM's
                ``max_position_embeddings``. A longer training sequence is truncated from
                the end instead, with a warning (once).
        """
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        at_features = (ids == FEATURE_TOKEN) & mask
        counts = at_features.sum(dim=1).tolist()
        if max(counts, default=0) > 1:
            row = next(i for i, n in enumerate(counts) if n > 1)
            raise ValueError(
                f"row {row} of the batch has {counts[row]} feature positions (FEATURE_TOKEN); "
                "a sequence takes the fused features at one place"
            )
        pad_id = self.tokenizer.pad_id
        embedding = self.lm.get_input_embeddings()
        text = embedding(ids.masked_fill(~mask | at_features, pad_id))  # (B, L, H)
        projected = self.projector(features.tokens).to(text.dtype)  # (B, N, H)
        real = features.mask
        rows, row_labels = [], []
        for b in range(ids.shape[0]):
            keep = mask[b].nonzero().squeeze(1)
            embeds = text[b, keep]
            targets = labels[b, keep] if labels is not None else None
            if counts[b]:
                at = int(at_features[b, keep].nonzero()[0, 0])
                tokens = projected[b] if real is None else projected[b, real[b].bool()]
                embeds = torch.cat([embeds[:at], tokens, embeds[at + 1 :]])
                if targets is not None:
                    ignored = targets.new_full((tokens.shape[0],), IGNORE_INDEX)
                    targets = torch.cat([targets[:at], ignored, targets[at + 1 :]])
            rows.append(embeds)
            row_labels.append(targets)
        lengths = [len(r) for r in rows]
        size = max(lengths)
        if self.max_positions is not None and size > self.max_positions:
            b = lengths.index(size)
            n = int(mask[b].sum()) - counts[b]
            said = (
                f"{self._where()}: a spliced sequence has {size} positions ({n} ids and "
                f"{size - n} feature tokens) but the LM takes at most "
                f"max_position_embeddings={self.max_positions}"
            )
            if labels is None or left:  # a prompt to answer: cutting it changes the question
                raise ValueError(f"{said}; lower the number of fused tokens or the prompt")
            if not self._warned_truncation:  # training: cut the end, as the target does
                log.warning(
                    "%s: truncated from the end (its last answer tokens are not trained "
                    "on); lower data.targets.<task>.tokenizer.max_length or the number of "
                    "fused tokens (warned once)",
                    said,
                )
                self._warned_truncation = True
            size = self.max_positions
            rows = [r[:size] for r in rows]
            row_labels = [t if t is None else t[:size] for t in row_labels]
            lengths = [len(r) for r in rows]
        pad = embedding(ids.new_full((), pad_id))  # (H,)
        out = pad.expand(len(rows), size, pad.shape[-1]).clone()
        attention = ids.new_zeros(len(rows), size)
        spliced_labels = None if labels is None else ids.new_full((len(rows), size), IGNORE_INDEX)
        for b, (embeds, targets) in enumerate(zip(rows, row_labels)):
            span = slice(size - len(embeds), size) if left else slice(0, len(embeds))
            out[b, span] = embeds
            attention[b, span] = 1
            if spliced_labels is not None:
                spliced_labels[b, span] = targets
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        if sum(lengths) == int(mask.sum()) - sum(counts) and torch.is_grad_enabled():
            out = out + 0.0 * projected.sum()  # no feature token spliced: keep the projector
            # in the graph (DDP expects a gradient for every parameter)
        return Spliced(out, attention, spliced_labels, positions, sum(1 for n in counts if n))

    # ---- training -----------------------------------------------------------------------------
    def forward(
        self,
        features: Features,
        target: Tensor | None = None,
        target_mask: Tensor | None = None,
        labels: Tensor | None = None,
        prompt: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> Any:
        """The LM on the spliced conversation (teacher forcing).

        Args:
            features: the fused tokens.
            target: ``(B, L)`` the conversation's ids, :data:`FEATURE_TOKEN` where the features
                go.
            target_mask: ``(B, L)`` its real positions.
            labels: ``(B, L)`` the ids to predict, :data:`IGNORE_INDEX` elsewhere (the batch's
                ``<task>_labels``); without them the output has no loss.
            prompt: unused here (see :meth:`predict`).
            prompt_mask: unused here.

        Returns:
            The LM's output (``.logits (B, S, V)``; ``.loss`` with labels, 0 when no position
            is labelled).

        Raises:
            ValueError: without a target, or as :meth:`splice`.
        """
        if target is None:
            raise ValueError("the causal-LM head needs its target ids (teacher forcing)")
        spliced = self.splice(features, target, target_mask, labels)
        outputs = self.lm(
            inputs_embeds=spliced.embeds,
            attention_mask=spliced.attention_mask,
            position_ids=spliced.position_ids,
            labels=spliced.labels,
            use_cache=False,
        )
        if spliced.labels is not None and not (spliced.labels[:, 1:] != IGNORE_INDEX).any():
            outputs.loss = outputs.logits.sum() * 0.0  # nothing to predict (HF's mean: nan)
        return outputs

    def loss(self, outputs: Any, target: Tensor, target_mask: Tensor | None = None) -> Tensor:
        """The LM's cross-entropy over the labelled positions (mean).

        Raises:
            ValueError: when :meth:`forward` had no labels.
        """
        if getattr(outputs, "loss", None) is None:
            raise ValueError(
                "the causal-LM head's loss needs the labels (the batch's <task>_labels from a "
                "chat target) passed to forward(labels=...)"
            )
        return outputs.loss

    # ---- generation ---------------------------------------------------------------------------
    def generation_kwargs(self) -> dict[str, Any]:
        """The keywords of ``lm.generate`` (besides the inputs)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.beam_size,
            "do_sample": self.do_sample,
            "repetition_penalty": 1.0,  # not the model's generation config's
            "eos_token_id": list(self.tokenizer.stop_ids),
            "pad_token_id": self.tokenizer.pad_id,
            "use_cache": True,
        }
        if self.beam_size > 1:
            kwargs["length_penalty"] = self.length_penalty
        if self.do_sample:  # top_p alone: no top-k cut (the model's generation config may set one)
            kwargs |= {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        if self.stop:
            kwargs |= {"stop_strings": list(self.stop), "tokenizer": self.tokenizer.hf_tokenizer}
        return kwargs

    @torch.no_grad()
    def generate(
        self, features: Features, prompt: Tensor | None = None, prompt_mask: Tensor | None = None
    ) -> Tensor:
        """Generated ids ``(B, T)`` (the new tokens only; padded after a stop with pad_id).

        Args:
            features: the fused tokens.
            prompt: ``(B, P)`` left-padded prompts with :data:`FEATURE_TOKEN`; None: the
                head's ``prompt`` (``tokenizer.prompt_ids``) for every row.
            prompt_mask: ``(B, P)`` their real positions; None: all.

        Raises:
            ValueError: without any prompt, or for a prompt and ``max_new_tokens`` beyond the
                LM's positions.
        """
        tokens = features.tokens
        if prompt is None:
            if self.prompt is None:
                raise ValueError(
                    "the causal-LM head generates from a prompt: the batch has none (no "
                    "<task>_prompt) and the head was given none (give prompt=...)"
                )
            ids = self.tokenizer.prompt_ids(self.prompt)
            prompt = torch.tensor([ids] * tokens.shape[0], device=tokens.device)
            prompt_mask = None
        spliced = self.splice(features, prompt, prompt_mask, left=True)
        size = spliced.embeds.shape[1]
        if self.max_positions is not None and size + self.max_new_tokens > self.max_positions:
            raise ValueError(
                f"{self._where()}: a prompt of {size} positions (features spliced) and "
                f"max_new_tokens={self.max_new_tokens} exceed the LM's "
                f"max_position_embeddings={self.max_positions}"
            )
        modes = {module: module.training for module in self.lm.modules()}
        self.lm.eval()  # no dropout while generating, even in a training step
        try:
            return self.lm.generate(
                inputs_embeds=spliced.embeds,
                attention_mask=spliced.attention_mask,
                **self.generation_kwargs(),
            )
        finally:
            for module, mode in modes.items():
                module.training = mode

    def decode(self, outputs: Tensor) -> list[str]:
        """Answer strings of generated ids ``(B, T)``: cut at the first stop id, decoded, cut
        before the first stop string, stripped."""
        stops = set(self.tokenizer.stop_ids)
        texts = []
        for row in outputs.tolist():
            end = next((i for i, token in enumerate(row) if token in stops), len(row))
            text = self.tokenizer.decode(row[:end])
            for stop in self.stop:
                text = text.split(stop, 1)[0]
            texts.append(text.strip())
        return texts

    def predict(
        self,
        features: Features,
        outputs: Any = None,
        prompt: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> list[str]:
        """The generated answers (see :meth:`generate`; teacher-forced ``outputs`` are not
        reused)."""
        return self.decode(self.generate(features, prompt, prompt_mask))

    # ---- metrics ------------------------------------------------------------------------------
    def make_metrics(self) -> Any:
        """The metrics of ``metrics``: ``caption`` BLEU-1..4, ROUGE-L, CIDEr-D; ``vqa``
        ``vqa_accuracy``; ``wer`` ``wer`` and ``cer``; ``none`` nothing."""
        if self.metrics == "caption":
            return CaptionMetrics()
        if self.metrics == "vqa":
            return MetricCollection({"vqa_accuracy": VQAAccuracy()})
        if self.metrics == "wer":
            return MetricCollection({"wer": WordErrorRate(), "cer": CharErrorRate()})
        return MetricCollection({})

    def normalize(self, text: str) -> str:
        """``text`` as the ``wer`` metrics compare it: the tokenizer's ``normalize`` when it has
        one, else lower-cased with whitespace collapsed."""
        return getattr(self.tokenizer, "normalize", default_normalize)(text)

    def update_metrics(
        self,
        metrics: Any,
        outputs: Any,
        target: Tensor,
        target_mask: Tensor | None = None,
        predictions: list[Any] | None = None,
        references: list[Any] | None = None,
    ) -> None:
        """Accumulate one batch: the generated answers against the references of each sample
        (all of them for ``caption`` and ``vqa``, the first for ``wer``).

        Raises:
            ValueError: without predictions or references, or when their numbers differ.
        """
        if self.metrics == "none":
            return
        if predictions is None or references is None:
            raise ValueError(
                "causal-LM metrics need the generated answers (predictions=...) and the "
                "references (the batch's <task>_references)"
            )
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        if len(predictions) != len(refs):
            raise ValueError(f"{len(predictions)} predictions for {len(refs)} reference lists")
        if self.metrics == "wer":
            gold = [self.normalize(r[0]) for r in refs]
            metrics.update([self.normalize(p) for p in predictions], gold)
        else:
            metrics.update(list(predictions), refs)
