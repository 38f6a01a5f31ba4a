"""run(stage, cfg): check -> seed -> build -> trainer.<stage>() -> write outputs."""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf, open_dict

from mmtrain.adapters import is_adapter
from mmtrain.build import build_datamodule, build_module, build_trainer, task_targets
from mmtrain.callbacks.resume import requeued_checkpoint
from mmtrain.contracts import CHECKPOINT_KEY, REFERENCES, STAGES
from mmtrain.data.targets import Target
from mmtrain.errors import MMTrainError
from mmtrain.failures import FailurePoint, explain
from mmtrain.strategies import is_sharded, read_sharded, sharding
from mmtrain.utils.base_weights import canonical, check_bases
from mmtrain.utils.config_check import check_config
from mmtrain.utils.hub import materialize

log = logging.getLogger(__name__)
# Raised inside Lightning on every run with torch >= 2.10; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# Frozen encoders stay in eval mode on purpose (FreezableEncoder): Lightning's notice is noise.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")

# What a checkpoint defines: the model and the data it was trained on (vocabulary, classes),
# its adapters (peft: their weights are in the state_dict) and what trained (phase).
MODEL_KEYS = (
    "data",
    "encoder",
    "fusion",
    "head",
    "loss_weighting",
    "optimizer",
    "scheduler",
    "model",
    "peft",
    "phase",
)
ROBUSTNESS = (None, "missing")
# What fit's init_from may load: the model's top-level parts.
INIT_PARTS = ("encoders", "fusion", "heads", "loss_weighting")
INPUT_DATASET = "mmtrain.data.folder.InputFolderDataset"  # predict ... input=<file or folder>
SINGLE_DATAMODULE = "mmtrain.data.datamodule.MultimodalDataModule"  # predict input= on data=multi


def _load_failure(err: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` failed; torch's own first line advises
    loading with ``weights_only=False``, which is exactly what must not be done with a file from
    elsewhere."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        skip = ("Check the documentation", "Please file an issue", "In PyTorch", "(1)", "(2)")
        detail = [ln for ln in lines[1:] if not ln.startswith(skip) and "weights_only" not in ln]
        reason = detail[0].removeprefix("WeightsUnpickler error:").strip() if detail else ""
        return "refused by the safe loader (weights_only=True)" + (f": {reason}" if reason else "")
    return lines[0] if lines else type(err).__name__


def load_checkpoint(
    path: str | Path, mmap: bool = False, key: str = "ckpt_path", weights: bool = True
) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check it is one of ours.

    Args:
        path: the file, or the directory of a sharded checkpoint (``trainer=fsdp|fsdp2``), read
            whole into the same dictionary (:func:`mmtrain.strategies.read_sharded`).
        mmap: map the file instead of reading it (a cheap check before the real load).
        key: the config key that named the file, for the messages.
        weights: false: a sharded directory's weights are not read (its files are checked;
            ``state_dict`` is empty); a file is read as usual.

    Raises:
        MMTrainError: if the file is missing, unreadable, or carries no mmtrain config.
    """
    path = Path(path)
    if is_sharded(path):  # trainer=fsdp|fsdp2: a directory of shards, read whole
        ckpt = read_sharded(path, key, weights=weights and not mmap)
    elif not path.is_file():
        raise MMTrainError(f"{key}: checkpoint not found: {path}")
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as err:  # corrupt zip, foreign pickle: never unpickle arbitrary objects
            reason = _load_failure(err)
            raise MMTrainError(f"{key}: cannot load checkpoint {path}: {reason}") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise MMTrainError(f"{key}: {path} is not an mmtrain checkpoint (no stored config)")
    return ckpt


def _in_parts(name: str, parts: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in parts)


def _init_parts(cfg: DictConfig) -> list[str]:
    """``init_parts``: names of the model's parts (``encoders``, ``encoders.text``, ``fusion``,
    ``heads.caption``...), checked for their form."""
    parts = cfg.get("init_parts")
    parts = [parts] if isinstance(parts, str) else list(parts or [])
    if not parts or not all(
        isinstance(p, str) and p and p.split(".")[0] in INIT_PARTS for p in parts
    ):
        raise MMTrainError(
            f"init_parts={parts!r}: list parts of the model, each under one of "
            f"{', '.join(INIT_PARTS)} (e.g. [encoders] or [encoders.image, fusion])"
        )
    return parts


def init_from_checkpoint(
    model: pl.LightningModule,
    stored: dict[str, Any],
    parts: list[str],
    path: str,
    bases: dict[str, Any] | None = None,
) -> int:
    """Load the weights of ``parts`` of ``model`` (fit's ``init_from``) from a checkpoint's
    ``state_dict``; the other weights keep their initialisation.

    Every weight of the named parts must be in the checkpoint with the same shape: a partial
    load would train from a silently mixed start. Two exceptions: the frozen weights of a
    trimmed checkpoint's ``bases`` (``model.save_frozen=false``) come from the model's own
    base once its fingerprint is checked, and LoRA adapters the checkpoint lacks keep their
    initialisation (which adds nothing). Keys match with and without peft's wrapping
    (``q_proj.base_layer.weight`` is ``q_proj.weight``).

    Returns:
        The number of tensors loaded.

    Raises:
        MMTrainError: naming the part or the first weights that do not fit, or a base whose
            fingerprint differs.
    """
    own = model.state_dict()
    for part in parts:
        if not any(_in_parts(k, [part]) for k in own):
            have = sorted({".".join(k.split(".")[:2]) for k in own if _in_parts(k, INIT_PARTS)})
            raise MMTrainError(
                f"init_parts: {part!r} is not a part of the configured model "
                f"(it has {', '.join(have)})"
            )
    chosen = {k: v for k, v in own.items() if _in_parts(k, parts)}
    touched = {  # the trimmed bases inside (or around) the chosen parts
        name: record
        for name, record in (bases or {}).items()
        if _in_parts(record["module"], parts)
        or any(_in_parts(p, [record["module"]]) for p in parts)
    }
    provided = check_bases(model, touched, "init_from", path) if touched else set()
    by_canonical = {canonical(k): v for k, v in stored.items()}
    picked = {k: by_canonical[canonical(k)] for k in chosen if canonical(k) in by_canonical}
    needed = {k: v for k, v in chosen.items() if k not in provided and not is_adapter(k)}
    fits = all(k in picked for k in needed) and all(
        tuple(picked[k].shape) == tuple(v.shape) for k, v in chosen.items() if k in picked
    )
    if not fits:
        wanted = {canonical(k): v for k, v in needed.items()}
        found = {canonical(k): v for k, v in picked.items()}
        raise MMTrainError(
            f"init_from: {path} does not fit init_parts={parts} of the configured model: "
            f"{_state_mismatch(wanted, found)}"
            + ("; list in init_parts only parts it has" if len(found) < len(wanted) else "")
        )
    model.load_state_dict(picked, strict=False)
    return len(picked)


def _state_mismatch(model: dict[str, Any], stored: dict[str, Any]) -> str:
    """The first differences between the model's weights and a checkpoint's, in one line."""
    missing = [k for k in model if k not in stored]
    unexpected = [k for k in stored if k not in model]
    shapes = [
        f"{k} {tuple(stored[k].shape)} vs {tuple(v.shape)}"
        for k, v in model.items()
        if k in stored and hasattr(v, "shape") and tuple(stored[k].shape) != tuple(v.shape)
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" (+{len(keys) - 2} more)" if len(keys) > 2 else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:2])}{more}")
    return "; ".join(parts) or "the weights do not load"


def load_weights(model: pl.LightningModule, ckpt: dict[str, Any], path: str) -> None:
    """Load a checkpoint's weights into ``model``; a trimmed checkpoint's (``base`` recorded)
    over the model's bases, once their fingerprints are checked.

    Raises:
        MMTrainError: naming the checkpoint, when it does not fit the model or was trained on
            other bases.
    """
    state = ckpt["state_dict"]
    bases = ckpt[CHECKPOINT_KEY].get("base") or {}
    provided = check_bases(model, bases, "ckpt_path", path) if bases else set()
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in provided]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        wanted = {k: v for k, v in own.items() if k not in provided}
        raise MMTrainError(
            f"ckpt_path: {path} does not fit the configured model: {_state_mismatch(wanted, state)}"
        )
    model.load_state_dict(state, strict=False)


def predict_on_inputs(cfg: DictConfig, root: str) -> None:
    """``cfg.data`` reading the files at ``root`` (``predict ... input=<path>``) in place of
    the data set; the vocabularies and the rest stay the checkpoint's."""
    with open_dict(cfg):
        if "sources" in cfg.data:  # data=multi: one data set of inputs instead
            cfg.data._target_ = SINGLE_DATAMODULE
            for key in ("sources", "sampling", "temperature", "seed"):
                cfg.data.pop(key, None)
        cfg.data.root = root
        cfg.data.dataset = {"_target_": INPUT_DATASET, "_partial_": True}
        for key in ("train", "val", "test"):  # a manifest's split files are not read
            if key in cfg.data:
                cfg.data[key] = None


def _set_prompts(cfg: DictConfig, prompt: str) -> None:
    """``mmtrain predict prompt=...``: the prompt of every task whose target takes one (the
    causal-LM tasks), in place of the trained one.

    Raises:
        MMTrainError: when no task of the model takes a prompt.
    """
    targets = (cfg.get("data") or {}).get("targets") or {}
    tasks = [t for t, node in targets.items() if node is not None and "prompt" in node]
    if not tasks:
        raise MMTrainError(
            "prompt: no task of this model takes a prompt (only causal-LM heads do, "
            "head/<task>=causal_lm)"
        )
    with open_dict(cfg):
        for task in tasks:
            cfg.data.targets[task].prompt = prompt


def _user_overrides() -> list[Any]:
    if not HydraConfig.initialized():
        return []
    return OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))


def config_from_checkpoint(stored_yaml: str, cfg: DictConfig) -> DictConfig:
    """The model and data config of a checkpoint, with the rest and the user's overrides of now.

    The stored config provides ``MODEL_KEYS``; trainer, paths, loggers and the like come from
    the current composition; a key the user overrode on this command line (``data.batch_size=8``,
    ``data=manifest``) is taken from the current composition too.
    """
    stored = OmegaConf.create(stored_yaml)
    merged = cfg.copy()
    with open_dict(merged):
        for key in MODEL_KEYS:
            if key in stored:
                merged[key] = stored[key]
            elif key in merged:
                del merged[key]
        for override in _user_overrides():
            key = override.key_or_group.replace("/", ".")
            if key.split(".")[0] in MODEL_KEYS and not override.is_delete():
                OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    return merged


def use_stored_models(
    cfg: DictConfig,
    models: dict[str, dict[str, bytes]],
    folder: Path,
    bases: dict[str, Any] | None = None,
) -> None:
    """Point each pretrained part of ``cfg`` at the model files its checkpoint stores (config,
    tokenizer, processor), written under ``folder``, and build it without weights (the
    checkpoint's state_dict has them): ``mmtrain test|predict`` never read the original
    ``model_name_or_path``, so a checkpoint works on a machine without that model.

    Args:
        cfg: the composed config (changed in place).
        models: ``{"encoder.image": {file name: content}}`` from the checkpoint.
        folder: where the files are written, one folder per part.
        bases: the parts a trimmed checkpoint left out (``model.save_frozen=false``): they
            are built from their ``model_name_or_path`` with weights, as in training.
    """
    bases = bases or {}
    for path, files in models.items():
        node = OmegaConf.select(cfg, path)
        if node is None or path in bases:  # removed (~encoder/audio); or a trimmed base
            continue
        no_weights = getattr(get_object(node._target_), "NO_WEIGHTS", False)
        with open_dict(node):
            if files:  # a plain timm name needs no files: the name rebuilds it
                node.model_name_or_path = str(materialize(files, folder / path).resolve())
            node.pretrained = no_weights


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


PREDICTIONS_INDEX = "index.json"  # predictions/index.json: how to read each file back


def _target_of(datamodule: Any, task: str) -> Any:
    """The data module's target of ``task``; a plain one (JSONL) for a task without a target
    (an unfused head such as retrieval)."""
    target = getattr(datamodule, "targets", {}).get(task)
    if target is None:
        target = Target()
        target.name = task
    return target


def _write_predictions(
    out_dir: Path,
    split: str,
    rows: list[dict[str, Any]],
    datamodule: Any,
    normalizers: dict[str, Callable[[str], str]] | None = None,
) -> list[Path]:
    """Predictions per task, each in its official format as its target writes it
    (:meth:`mmtrain.contracts.Target.write`), and ``predictions/index.json``: how to read
    each file back (``mmtrain report``). With several data sets (data=multi) the rows also
    name the ``source``.
    """
    normalizers = normalizers or {}
    folder = out_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    tasks = dict.fromkeys(  # data=multi: rows of several data sets, each with its tasks
        k for r in rows for k in r if k not in ("id", "source") and not k.endswith(REFERENCES)
    )
    index_path = folder / PREDICTIONS_INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else []
    written = []
    for task in tasks:
        with_task = [r for r in rows if task in r]
        file = _target_of(datamodule, task).write(with_task, folder, split, normalizers.get(task))
        entry = {**vars(file), "path": file.path.name}
        index = [e for e in index if e.get("path") != entry["path"]] + [entry]
        written.append(file.path)
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return written


def _normalizers(model: Any) -> dict[str, Callable[[str], str]]:
    """``{task: its head's normalize}``: how the heads that score text compare it."""
    return {
        task: head.normalize for task, head in model.heads.items() if hasattr(head, "normalize")
    }


def _write_input_predictions(out_dir: Path, rows: list[dict[str, Any]], datamodule: Any) -> Path:
    """``predictions/predict.jsonl``: ``{"file": ..., "<task>": ...}`` per input, also printed
    (a predicted mask as the path of its PNG)."""
    folder = out_dir / "predictions"
    path = folder / "predict.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in rows:
        cells = {
            k: _target_of(datamodule, k).plain(v, folder / f"{k}s_predict", r["id"])
            if not k.endswith(REFERENCES) and k != "source"
            else v
            for k, v in r.items()
            if k != "id"
        }
        lines.append(json.dumps({"file": r["id"], **cells}))
    path.write_text("".join(line + "\n" for line in lines))
    print("\n".join(lines), flush=True)
    return path


def _metrics(trainer: pl.Trainer, prefixes: tuple[str, ...]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in sorted(trainer.callback_metrics.items())
        if k.startswith(prefixes) and math.isfinite(float(v))
    }


def _without_each_modality(
    cfg: DictConfig, trainer: pl.Trainer, model: Any, datamodule: Any, split: str
) -> dict[str, float]:
    """With ``robustness=missing``: evaluate again with each modality removed in turn.

    Returns ``{"<split>/<task>/<metric>/without_<modality>": value}``.
    """
    if cfg.get("robustness") != "missing" or len(model.encoders) < 2:
        return {}
    evaluate = trainer.test if split == "test" else trainer.validate
    out: dict[str, float] = {}
    for modality in list(model.encoders):
        model.without = frozenset({modality})
        evaluate(model, datamodule)
        out |= {f"{k}/without_{modality}": v for k, v in _metrics(trainer, (f"{split}/",)).items()}
    model.without = frozenset()
    return out


def _run_stage(
    stage: str, cfg: DictConfig, trainer: pl.Trainer, model: Any, datamodule: Any, ckpt: Any
) -> tuple[dict[str, float], list[Any]]:
    """``trainer.<stage>()``: the metrics, and the predicted batches (``predict``)."""
    batches: list[Any] = []
    if stage == "fit":
        trainer.fit(model, datamodule, ckpt_path=ckpt, weights_only=True)
        metrics = _metrics(trainer, ("val/", "train/"))
    elif stage == "validate":
        trainer.validate(model, datamodule)
        metrics = _metrics(trainer, ("val/",))
        metrics |= _without_each_modality(cfg, trainer, model, datamodule, "val")
    elif stage == "test":
        trainer.test(model, datamodule)
        metrics = _metrics(trainer, ("test/",))
        predictions = model.predictions
        metrics |= _without_each_modality(cfg, trainer, model, datamodule, "test")
        model.predictions = predictions  # the predictions of the full model
    else:
        batches = trainer.predict(model, datamodule) or []
        metrics = {}
    return metrics, batches


def run(stage: str, cfg: DictConfig) -> dict[str, float]:
    """Run one stage and write its outputs into ``paths.output_dir``.

    Args:
        stage: ``fit``, ``validate``, ``test`` or ``predict``.
        cfg: the composed config.

    Returns:
        The final metrics of the stage (also written to ``metrics.json``).

    Raises:
        MMTrainError: for a bad config or checkpoint.
    """
    if stage not in STAGES:
        raise MMTrainError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if cfg.get("robustness") not in ROBUSTNESS:
        raise MMTrainError(f"robustness={cfg.robustness!r}: choose null or missing")
    ckpt_path = cfg.get("ckpt_path")
    if stage == "fit" and not ckpt_path:  # a requeued SLURM job continues from its checkpoint
        ckpt_path = requeued_checkpoint(cfg.paths.output_dir)
        if ckpt_path is not None:
            log.warning("requeued SLURM job: resuming from %s", ckpt_path)
    # a sharded resume: the strategy reads each rank's shards itself, so only the rest is read
    sharded_resume = stage == "fit" and bool(ckpt_path) and is_sharded(ckpt_path)
    ckpt = load_checkpoint(ckpt_path, weights=not sharded_resume) if ckpt_path else None
    if stage != "fit" and ckpt is None:
        raise MMTrainError(f"mmtrain {stage} needs ckpt_path=<file> (a checkpoint of mmtrain fit)")
    cfg = task_targets(cfg)  # a causal-LM head's task gets its ChatTarget
    config_yaml = OmegaConf.to_yaml(cfg)
    if ckpt is not None and stage != "fit":
        cfg = task_targets(config_from_checkpoint(ckpt[CHECKPOINT_KEY]["config"], cfg))
        config_yaml = OmegaConf.to_yaml(cfg)
        models = ckpt[CHECKPOINT_KEY].get("models") or {}
        bases = ckpt[CHECKPOINT_KEY].get("base") or {}
        use_stored_models(cfg, models, Path(cfg.paths.output_dir) / "models", bases)
    if stage == "predict" and cfg.get("prompt") is not None:
        _set_prompts(cfg, str(cfg.prompt))
    if stage == "predict" and cfg.get("input"):
        predict_on_inputs(cfg, str(cfg.input))
    check_config(cfg, list(cfg.get("allowed_targets") or []))
    init, init_parts = None, []
    if stage == "fit" and cfg.get("init_from"):
        init_parts = _init_parts(cfg)
        if ckpt is not None:  # resuming restores every weight: the start point is not read
            log.info("resuming from %s: init_from=%s is not read", ckpt_path, cfg.init_from)
        else:
            init = load_checkpoint(cfg.init_from, key="init_from")

    pl.seed_everything(cfg.get("seed", 0), workers=True)
    out_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    if ckpt is not None:
        datamodule.load_state_dict(ckpt[CHECKPOINT_KEY].get("data") or {})
    elif init is not None:
        # An input must mean to a loaded encoder what it meant in training: the vocabulary
        # of its token ids, the statistics of its numbers.
        inputs = (init[CHECKPOINT_KEY].get("data") or {}).get("inputs") or {}
        loaded = {
            m: state
            for m, state in inputs.items()
            if any(p == "encoders" or _in_parts(p, [f"encoders.{m}"]) for p in init_parts)
        }
        datamodule.load_state_dict({"inputs": loaded})
    datamodule.prepare_data()
    datamodule.setup(stage)
    trainer = build_trainer(cfg)
    # trainer=fsdp2 with load_on_rank0: the other ranks build on the meta device and receive
    # their shards of rank 0's weights once the model is sharded (so they read none here)
    empty = getattr(trainer.strategy, "builds_empty", lambda: False)()
    model = build_module(cfg, datamodule.facts(), config_yaml, empty=empty)
    if stage == "predict":  # predict reads no targets: a generating head needs its own prompt
        for task, head in model.heads.items():
            if "prompt" in getattr(head, "batch_keys", ()) and head.prompt is None:
                raise MMTrainError(
                    f"head.{task}: its prompt comes from each sample ({task}'s target), and "
                    f'predict reads none: give one, prompt="..."'
                )
    if ckpt is not None and not empty and not sharded_resume:  # resuming too: a clear
        load_weights(model, ckpt, str(ckpt_path))  # error before Lightning's traceback
    if init is not None and not empty:
        bases = init[CHECKPOINT_KEY].get("base") or {}
        count = init_from_checkpoint(model, init["state_dict"], init_parts, cfg.init_from, bases)
        log.info("init_from: %d tensors of %s from %s", count, ", ".join(init_parts), cfg.init_from)
    if sharded_resume and not sharding(trainer):
        raise MMTrainError(
            f"ckpt_path: {ckpt_path} is a sharded checkpoint (a directory): resume it with a "
            "sharded trainer (trainer=fsdp2 or trainer=fsdp), or make it one file first: "
            f"mmtrain export format=checkpoint ckpt_path={ckpt_path} out=<folder>"
        )
    try:
        metrics, batches = _run_stage(stage, cfg, trainer, model, datamodule, ckpt_path)
    except MMTrainError:
        raise
    except Exception as err:  # out of memory, a killed worker...: one line; a bug: traceback
        last = out_dir / "checkpoints" / "last.ckpt" if stage == "fit" else None
        where = next((c for c in trainer.callbacks if isinstance(c, FailurePoint)), None)
        failure = explain(err, where, cfg, last)
        if failure is None:
            raise
        raise failure from err
    if getattr(datamodule, "on_error", "raise") == "skip":  # data.on_error=skip: bad samples
        stage_splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for key, count in datamodule.skipped.items():  # "train", or "train/<data set>"
            split, _, source = key.partition("/")
            if split in stage_splits.get(stage, ()):
                metrics[f"{split}/skipped" + (f"/{source}" if source else "")] = float(count)
    if trainer.is_global_zero:
        _write_json(out_dir / "metrics.json", metrics)
        if stage == "fit":  # the vocabulary and class names, readable without torch
            _write_json(out_dir / "data_state.json", datamodule.state_dict())
        if stage == "test":
            _write_predictions(out_dir, "test", model.predictions, datamodule, _normalizers(model))
        elif stage == "predict":
            if batches and batches[0] and isinstance(batches[0][0], list):
                batches = [batch for loader in batches for batch in loader]  # several loaders
            rows = [row for batch in batches for row in batch]
            if cfg.get("input"):
                _write_input_predictions(out_dir, rows, datamodule)
            else:
                _write_predictions(
                    out_dir, datamodule.predict_split, rows, datamodule, _normalizers(model)
                )
        print(f"run directory: {out_dir.resolve()}", flush=True)
    return metrics
