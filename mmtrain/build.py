"""Config -> objects. The only place where sizes are wired between parts.

Order (ARCHITECTURE.md, data flow step 2): the data module first; then each encoder (reporting
``out_dim``); the fusion with ``in_dims``; each head with ``in_dim = fusion.out_dim`` and what the
data knows; the loss weighting with the task names. A constructor argument named like a data
fact and not set in YAML is filled from the data: an encoder gets the facts of its modality's
input (``vocab_size``, ``pad_id``, ``n_mels``, ``num_features``...), a head those of its task's
target (``num_classes``, ``class_names``, ``tokenizer``, ``vocab_size``, ``pad_id``).
"""

from __future__ import annotations

import inspect
import logging
import sys
from contextlib import nullcontext
from importlib.util import find_spec
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import get_object
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict

from mmtrain.contracts import Head, Input, LossWeighting, Target
from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.errors import MMTrainError
from mmtrain.module import MultimodalModule
from mmtrain.utils.instantiate import safe_instantiate

log = logging.getLogger(__name__)


def _allowed(cfg: DictConfig) -> list[str]:
    return list(cfg.get("allowed_targets") or [])


def _wired(node: DictConfig, facts: dict[str, Any]) -> dict[str, Any]:
    """The facts that ``node``'s constructor takes and YAML leaves unset."""
    params = inspect.signature(get_object(node._target_)).parameters
    return {k: v for k, v in facts.items() if k in params and k not in node}


def _command_line(prefix: str) -> dict[str, Any]:
    """``{key: value}`` of the overrides under ``prefix`` given on this command line."""
    if not HydraConfig.initialized():
        return {}
    parsed = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    return {
        o.key_or_group: o.value()
        for o in parsed
        if o.key_or_group.startswith(prefix) and not o.is_delete()
    }


def _same(given: Any, model: Any) -> bool:
    """Whether a command-line value says what the model's preprocessing says."""
    if isinstance(given, (list, tuple)) and isinstance(model, (list, tuple)):
        return len(given) == len(model) and all(_same(g, m) for g, m in zip(given, model))
    if isinstance(given, (int, float)) and isinstance(model, (int, float)):
        return abs(float(given) - float(model)) <= 1e-6 * max(1.0, abs(float(model)))
    return str(given) == str(model)


# Preprocessing keys where the model's value is a maximum: a smaller one on the command line is
# kept (texts truncated at 128 tokens for a model that reads 512).
UPPER_BOUNDS = ("max_length",)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"tokenizer": {"name_or_path": x}}`` -> ``{"tokenizer.name_or_path": x}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def follow_models(cfg: DictConfig) -> DictConfig:
    """``cfg.data`` with the preprocessing of each pretrained part's model: an encoder's image
    size, resize, crop and mean/std, its tokenizer, its feature extractor, into
    ``data.<modality>``; a causal-LM head's tokenizer into ``data.targets.<task>`` (each part
    class's ``preprocessing``; see :class:`mmtrain.encoders.pretrained.PretrainedEncoder`).

    Raises:
        MMTrainError: when a ``data.*`` value set on the command line contradicts the model's,
            naming both (a ``max_length`` below the model's is kept).
    """
    data = cfg.data.copy()
    given = _command_line("data.")
    parts = [(f"encoder.{m}", m, node) for m, node in (cfg.get("encoder") or {}).items()]
    parts += [(f"head.{t}", f"targets.{t}", node) for t, node in (cfg.get("head") or {}).items()]
    for key, section, node in parts:
        preprocessing = getattr(get_object(node._target_), "preprocessing", None)
        if preprocessing is None or not OmegaConf.is_dict(OmegaConf.select(data, section)):
            continue
        keys = dict(OmegaConf.to_container(node, resolve=True))
        keys.pop("_target_", None)
        keys.setdefault("model_dir", cfg.get("paths", {}).get("model_dir"))
        name = node.get("model_name_or_path")
        try:
            wanted = _flat(preprocessing(**keys))
        except ValueError as err:  # an unknown model name (with a did-you-mean), a bad folder
            said = str(err)
            raise MMTrainError(said if said.startswith(key) else f"{key}: {said}") from None
        for field, value in wanted.items():
            path = f"data.{section}.{field}"
            last = field.rsplit(".", 1)[-1]
            bounded = last in UPPER_BOUNDS and isinstance(given.get(path), int)
            if bounded and given[path] <= value:
                continue  # a shorter max_length than the model's is a choice, not a contradiction
            if path in given and not _same(given[path], value):
                raise MMTrainError(
                    f"{path}={given[path]} contradicts {key}.model_name_or_path="
                    f"{name}, whose preprocessing has {last}={value}; drop the override (the "
                    "model's preprocessing is used) or use another model"
                )
            with open_dict(data):
                OmegaConf.update(data, f"{section}.{field}", value, merge=True)
    return data


def _takes(target: str) -> set[str] | None:
    """The keyword arguments of the class ``target`` names (None: it takes any)."""
    params = inspect.signature(get_object(target)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _retarget(node: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """``node`` as the class of ``spec["_target_"]``: the keys that class takes; a nested node
    of ``spec`` (the tokenizer) is ``spec``'s own unless ``node``'s is of its class already
    (a word-level tokenizer's ``max_length`` counts words, not the LM's tokens)."""
    old = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_dict(node) else {}
    takes = _takes(spec["_target_"])
    out = {k: v for k, v in old.items() if k != "_target_" and (takes is None or k in takes)}
    out["_target_"] = spec["_target_"]
    for key, inner in spec.items():
        if isinstance(inner, dict):
            kept = old.get(key) if _matches(OmegaConf.create(old.get(key) or {}), inner) else None
            out[key] = kept or dict(inner)
    return out


def _matches(node: Any, spec: dict[str, Any]) -> bool:
    """Whether ``node`` and its nested nodes are of the classes ``spec`` names."""
    if not OmegaConf.is_dict(node) or node.get("_target_") != spec["_target_"]:
        return False
    return all(_matches(node.get(k), v) for k, v in spec.items() if isinstance(v, dict))


def task_targets(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the target each head needs of its task, where its head class names one
    (``TARGET``: a causal-LM head needs a ``ChatTarget`` with the LM's tokenizer).

    A data preset's target for the task of another class (COCO's word-level caption target,
    VQA's answer classes) becomes that class, keeping the keys it takes (``results``, a
    ``prompt``) and dropping the others (``top_k``); its tokenizer becomes the LM's (the keys
    of a word-level tokenizer mean other things), though ``data.targets.<task>.*`` given on
    this command line still hold. So ``head/caption=causal_lm`` works on any caption data.
    Run before the config is checked.
    """
    heads = cfg.get("head") or {}
    for task, node in heads.items():
        spec = getattr(get_object(node._target_), "TARGET", None) if node else None
        if spec is None:
            continue
        current = OmegaConf.select(cfg, f"data.targets.{task}")
        if _matches(current, spec):
            continue
        with open_dict(cfg):
            if "targets" not in cfg.data or cfg.data.targets is None:
                cfg.data.targets = {}
            cfg.data.targets[task] = _retarget(current, spec)
            prefix = f"data.targets.{task}."
            for key, value in _command_line(prefix).items():  # this command line's still hold
                OmegaConf.update(cfg, key, value, merge=True, force_add=True)
    return cfg


def build_datamodule(cfg: DictConfig) -> MultimodalDataModule:
    """The data module, loading the modalities with an encoder and the targets with a head;
    its ``seed`` (training order, augmentation) is the run's unless its YAML sets one. A
    pretrained encoder's model sets its input's preprocessing (:func:`follow_models`). Its
    inputs and targets are checked against the Protocols of contracts.py.

    Raises:
        MMTrainError: naming the key, for an input or target that lacks a member, or a
            command-line value that contradicts a model's preprocessing.
    """
    datamodule = safe_instantiate(
        follow_models(cfg),
        "data",
        _allowed(cfg),
        modalities=list(cfg.get("encoder") or {}),
        tasks=[task for task, node in (cfg.get("head") or {}).items() if not _unfused(node)],
        **_wired(cfg.data, {"seed": int(cfg.get("seed") or 0)}),
    )
    for modality, part in datamodule.inputs.items():
        follows(part, Input, f"data.{modality}")
    for task, part in datamodule.targets.items():
        follows(part, Target, f"data.targets.{task}")
    return datamodule


def follows(part: Any, protocol: type, path: str) -> Any:
    """``part``, once checked to have every member of its ``protocol`` in contracts.py: a part
    of one's own (``--config-dir``) that lacks one fails here, naming it, not at first use.

    Raises:
        MMTrainError: naming the key, the class and the missing members.
    """
    members = set(getattr(protocol, "__annotations__", {})) | {
        name
        for name, value in vars(protocol).items()
        if (callable(value) or isinstance(value, property))
        and (name == "__call__" or not name.startswith("_"))
    }
    missing = sorted(name for name in members if not hasattr(part, name))
    if missing:
        raise MMTrainError(
            f"{path}: {type(part).__name__} lacks {', '.join(missing)} of "
            f"mmtrain.contracts.{protocol.__name__}"
        )
    return part


def _unfused(node: DictConfig) -> bool:
    """Whether the head reads the encoders' features and needs no target column (retrieval)."""
    return bool(get_object(node._target_).unfused)


def head_facts(facts: dict[str, Any], task: str) -> dict[str, Any]:
    """Data facts for the head of ``task``: those of its target (classes, or a tokenizer and
    its vocabulary)."""
    return dict(facts.get("targets", {}).get(task) or {})


def encoder_facts(facts: dict[str, Any], modality: str) -> dict[str, Any]:
    """Data facts for the encoder of ``modality``: those of its input (vocabulary, mel bins)."""
    return dict(facts.get("inputs", {}).get(modality) or {})


def _pretrained_logits(encoders: dict[str, Any], params: Any) -> dict[str, float]:
    """``{"logit_scale": value, "logit_bias": value}`` of the pretrained towers (CLIP and
    SigLIP with ``output: projected``), each when the towers that report it agree on one and
    the head takes it."""
    wired = {}
    for name in ("logit_scale", "logit_bias"):
        found = [getattr(e, name, None) for e in encoders.values()]
        # on the meta device (an empty build) there is no value: rank 0's comes later
        values = {float(v) for v in found if v is not None and not getattr(v, "is_meta", False)}
        if name in params and len(values) == 1:
            wired[name] = values.pop()
    return wired


def _without_weights(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every pretrained part set to build its architecture only
    (``pretrained`` = the part's ``NO_WEIGHTS``)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        nodes = [*(cfg.get("encoder") or {}).values(), *(cfg.get("head") or {}).values()]
        for node in [*nodes, cfg.get("fusion")]:
            if node is None or "_target_" not in node:
                continue
            part = get_object(node._target_)
            if node.get("model_name_or_path") and hasattr(part, "NO_WEIGHTS"):
                node.pretrained = part.NO_WEIGHTS
    return cfg


def build_module(
    cfg: DictConfig, facts: dict[str, Any], config_yaml: str | None = None, empty: bool = False
) -> MultimodalModule:
    """Encoders -> fusion -> heads -> loss weighting, wired from ``facts`` (data module).

    Args:
        cfg: the composed config.
        facts: what the data knows (vocabularies, classes...).
        config_yaml: the config stored in checkpoints.
        empty: build the parts on the meta device, their architecture only (no weights read):
            ``trainer=fsdp2`` with ``load_on_rank0`` on the ranks other than 0, which receive
            their shards from rank 0 (:func:`mmtrain.strategies.spread_from_rank0`).

    Raises:
        MMTrainError: if the config has no encoder or no head, or a part rejects its arguments.
    """
    if not cfg.get("encoder"):
        raise MMTrainError("no encoder configured: add one, e.g. encoder/image=cnn")
    if not cfg.get("head"):
        raise MMTrainError("no head configured: add one, e.g. head/label=classification")
    if not empty:
        return _finish_module(_build_module(cfg, facts, config_yaml, nullcontext()), cfg)
    import torch

    parts = _build_module(_without_weights(cfg), facts, config_yaml, torch.device("meta"))
    log.info("model built on the meta device, without weights: rank 0's arrive once sharded")
    return _finish_module(parts, cfg)  # the bases of the config as given: as on rank 0


def _build_module(
    cfg: DictConfig, facts: dict[str, Any], config_yaml: str | None, where: Any
) -> MultimodalModule:
    """The module; its parts built inside ``where`` (a device context)."""
    with where:
        parts = _build_parts(cfg, facts)
    extra = _allowed(cfg)
    optimizer = safe_instantiate(cfg.optimizer, "optimizer", extra)
    scheduler = (
        safe_instantiate(cfg.scheduler, "scheduler", extra) if cfg.get("scheduler") else None
    )
    # The module's own options (modality dropout...) come from the `model` node when present.
    module = safe_instantiate(cfg.model, "model", extra) if cfg.get("model") else MultimodalModule
    try:
        model = module(*parts, optimizer, scheduler, config_yaml)
    except ValueError as err:  # the module's own options, e.g. model.modality_dropout
        raise MMTrainError(f"model: {err}") from None
    return model


def _build_parts(cfg: DictConfig, facts: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """``(encoders, fusion, heads, loss weighting)``."""
    extra = _allowed(cfg)
    model_dir = (cfg.get("paths") or {}).get("model_dir")  # searched first for model ids
    encoders = {
        m: safe_instantiate(
            node,
            f"encoder.{m}",
            extra,
            **_wired(node, {**encoder_facts(facts, m), "model_dir": model_dir}),
        )
        for m, node in cfg.encoder.items()
    }
    in_dims = {m: int(e.out_dim) for m, e in encoders.items()}
    fusion = safe_instantiate(
        cfg.fusion, "fusion", extra, in_dims=in_dims, **_wired(cfg.fusion, {"model_dir": model_dir})
    )
    heads = {}
    for task, node in cfg.head.items():
        wired = _wired(node, head_facts(facts, task))
        params = inspect.signature(get_object(node._target_)).parameters
        if "tokenizer" in params and "tokenizer" not in wired and "tokenizer" not in node:
            raise MMTrainError(
                f"head/{task} generates text and needs a tokenizer for its target: set "
                f"data.targets.{task} (e.g. +data.targets.{task}._target_="
                f"mmtrain.data.targets.TextTarget +data.targets.{task}.tokenizer._target_="
                "mmtrain.data.transforms.WordTokenizer)"
            )
        needs_classes = "num_classes" in params and params["num_classes"].default is inspect._empty
        if needs_classes and "num_classes" not in wired and "num_classes" not in node:
            raise MMTrainError(
                f"head/{task} needs num_classes and the data has no classes for {task!r}: set "
                f"head.{task}.num_classes=N (or the classes of data.targets.{task})"
            )
        # A head reading the encoders' own features (retrieval) gets their widths instead.
        width = {"in_dims": in_dims} if "in_dims" in params else {"in_dim": int(fusion.out_dim)}
        # pretrained CLIP/SigLIP towers: the head starts from their logit scale (and bias)
        wired |= {k: v for k, v in _pretrained_logits(encoders, params).items() if k not in node}
        wired |= _wired(node, {"model_dir": model_dir})  # an LM head's model id lookup
        head = safe_instantiate(node, f"head.{task}", extra, **width, **wired)
        heads[task] = follows(head, Head, f"head.{task}")
    weighting = safe_instantiate(cfg.loss_weighting, "loss_weighting", extra, names=list(heads))
    follows(weighting, LossWeighting, "loss_weighting")
    return encoders, fusion, heads, weighting


def _bases(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """``{config path: {"model", "revision", "module"}}`` of the pretrained parts loaded with
    their weights: encoders with a ``model_name_or_path``, and causal-LM heads' LMs."""
    bases = {}
    groups = (("encoder", "encoders", ""), ("head", "heads", ".lm"))
    for group, attr, inner in groups:
        for name, node in (cfg.get(group) or {}).items():
            no_weights = getattr(get_object(node._target_), "NO_WEIGHTS", None)
            if not node.get("model_name_or_path") or node.get("pretrained") == no_weights:
                continue
            bases[f"{group}.{name}"] = {
                "model": str(node.model_name_or_path),
                "revision": node.get("revision"),
                "module": f"{attr}.{name}{inner}",
            }
    return bases


def _finish_module(model: MultimodalModule, cfg: DictConfig) -> MultimodalModule:
    """Adapters (``peft``), then what trains (``phase``), then what checkpoints keep
    (``model.save_frozen``); logs the trainable and total parameters of each part."""
    from mmtrain.phase import format_table, parameter_table

    extra = _allowed(cfg)
    if cfg.get("peft"):
        adapters = safe_instantiate(cfg.peft, "peft", extra)
        counts = adapters.apply(model)
        log.info("peft: LoRA adapters in %s", ", ".join(f"{p} ({n:,})" for p, n in counts.items()))
    phase = safe_instantiate(cfg.phase, "phase", extra) if cfg.get("phase") else None
    if phase is not None:
        phase.apply(model)
    if model.save_frozen is None:
        model.save_frozen = phase.save_frozen if phase is not None else True
    model.bases = _bases(cfg)
    # a trimmed checkpoint lacks the bases' weights: resuming loads it over the built bases
    model.strict_loading = bool(model.save_frozen or not model.bases)
    log.info("parameters:\n%s", format_table(parameter_table(model)))
    return model


def _progress_bar() -> pl.callbacks.ProgressBar:
    """Rich's bar on a terminal; on a pipe or file (CI logs), tqdm updating every 50 batches."""
    if sys.stdout.isatty():
        try:
            return pl.callbacks.RichProgressBar()
        except ModuleNotFoundError:  # rich is optional
            pass
    return pl.callbacks.TQDMProgressBar(refresh_rate=1 if sys.stdout.isatty() else 50)


# What a trainer preset needs installed: (config key, value prefix, module, how to install).
NEEDS = (
    (
        "accelerator",
        "tpu",
        "torch_xla",
        "pip install 'torch_xla[tpu]' (matching torch), on a TPU VM",
    ),
    ("strategy", "deepspeed", "deepspeed", "pip install deepspeed (CUDA and a compiler needed)"),
)


def _on_cpu(node: DictConfig) -> bool:
    """Whether the trainer runs on CPU processes: ``accelerator: cpu``, or ``auto`` without a
    GPU."""
    import torch

    accelerator = str(node.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def _check_hardware(node: DictConfig) -> None:
    """Fail at once, in one line, when the trainer asks for a package that is not installed,
    or for FSDP on CPU processes.

    Raises:
        MMTrainError: naming the key, the package and how to install it, or what to use.
    """
    strategy = node.get("strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    if (target == "fsdp" or target.endswith(("BlockFSDP", "FSDPStrategy"))) and _on_cpu(node):
        raise MMTrainError(
            f"trainer.strategy={target} runs on GPUs only (torch's FullyShardedDataParallel "
            "needs an accelerator device); on CPU processes shard with trainer=fsdp2 "
            "trainer.accelerator=cpu"
        )
    for key, prefix, module, install in NEEDS:
        value = node.get(key)
        if isinstance(value, str) and value.startswith(prefix) and not find_spec(module):
            raise MMTrainError(
                f"trainer.{key}={value} needs {module}, which is not installed: {install}"
            )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Lightning Trainer with the configured callbacks and loggers.

    Each logger gets what :func:`mmtrain.utils.loggers.prepare_logger_node` adds (the wandb run
    id of the run directory); once the trainer exists, the flat config and the git commit are
    logged to its loggers as hyperparameters (:func:`mmtrain.utils.loggers.log_run_info`).
    """
    from mmtrain.callbacks.feature_cache import FeatureCache
    from mmtrain.callbacks.resume import ResumeState
    from mmtrain.failures import FailurePoint
    from mmtrain.utils.checkpoint_io import AtomicCheckpointIO
    from mmtrain.utils.loggers import log_run_info, prepare_logger_node

    extra = _allowed(cfg)
    callbacks = [
        safe_instantiate(node, f"callbacks.{name}", extra)
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None and "_target_" in node
    ]
    # ResumeState stops a run on a signal at the end of a step: every other callback sees the
    # step first (Lightning puts the checkpoint callbacks after all of them).
    callbacks.sort(key=lambda c: isinstance(c, ResumeState))
    callbacks.append(FailurePoint())  # where a failure happened, for its one line
    if cfg.data.get("cache_features"):  # frozen encoders' features, computed once
        callbacks.append(FeatureCache())
    output_dir = cfg.paths.output_dir
    loggers = [
        safe_instantiate(
            node, f"logger.{name}", extra, **prepare_logger_node(name, node, output_dir, extra)
        )
        for name, node in (cfg.get("logger") or {}).items()
        if node is not None and "_target_" in node
    ]
    if not loggers:  # ~logger: Lightning refuses a learning-rate monitor without a logger
        monitors = [c for c in callbacks if isinstance(c, pl.callbacks.LearningRateMonitor)]
        if monitors:
            log.info("no logger: the learning-rate monitor is left out (it logs to loggers)")
            callbacks = [c for c in callbacks if c not in monitors]
    if cfg.trainer.get("enable_progress_bar", True) and not any(
        isinstance(c, pl.callbacks.ProgressBar) for c in callbacks
    ):
        callbacks.append(_progress_bar())
    kwargs: dict[str, Any] = {}
    if "enable_checkpointing" not in cfg.trainer and not any(
        isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks
    ):
        kwargs["enable_checkpointing"] = False  # callbacks=none: no checkpoints at all
    if not cfg.trainer.get("plugins"):  # checkpoints written atomically (kill -9 safe)
        kwargs["plugins"] = [AtomicCheckpointIO()]
    if cfg.trainer.get("sync_batchnorm") and _on_cpu(cfg.trainer):
        # torch's DDP refuses SyncBatchNorm on CPU processes (trainer=ddp_cpu, a laptop)
        log.info("trainer.sync_batchnorm: off on CPU (torch syncs batch norm on GPUs only)")
        kwargs["sync_batchnorm"] = False
    _check_hardware(cfg.trainer)
    try:
        trainer = safe_instantiate(
            cfg.trainer, "trainer", extra, callbacks=callbacks, logger=loggers or False, **kwargs
        )
    except InstantiationException as err:  # Lightning: no such accelerator here...
        if not isinstance(err.__cause__, MisconfigurationException):
            raise
        node = cfg.trainer
        raise MMTrainError(
            f"trainer: {str(err.__cause__).splitlines()[0]} (trainer.accelerator="
            f"{node.get('accelerator')}, trainer.devices={node.get('devices')}, "
            f"trainer.strategy={node.get('strategy')}; on this machine: trainer=cpu)"
        ) from None
    log_run_info(trainer.loggers, cfg)  # fast_dev_run: Lightning's dummy logger ignores it
    return trainer
