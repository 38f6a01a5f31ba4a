"""Multimodal LLM runs (issue 19), in process on tiny data and tiny models: what each
``phase`` trains (exact parameter counts, computed here independently), what a LoRA step
changes, trimmed checkpoints (``model.save_frozen=false``: no frozen base weights, base
fingerprints instead) through test, resume and ``init_from``, LoRA merging, the LLaVA recipe
in its two commands, and ``mmtrain predict ... prompt=`` from the command line.

The LMs: a small random Llama that the run builds (``experiment=shapes_llm`` with a shrunk
``head.caption.config``), and the tiny pretrained Llama-style LM and CLIP tower of the model
store (tests/helpers/model_store.py) under the ids that ``coco_caption_llm`` and
``llava_instruct`` name, found through ``paths.model_dir``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QUIET, TINY_DATA, compose_cfg
from helpers.cli import explain_run, mmtrain, run_dirs
from helpers.coco import write_coco
from helpers.llava import write_llava
from helpers.tiny_lm import SMALL_LM
from PIL import Image

import mmtrain.run as run_module
from mmtrain.adapters import is_adapter, merge
from mmtrain.contracts import CHECKPOINT_KEY, FEATURE_TOKEN, Features
from mmtrain.errors import MMTrainError
from mmtrain.phase import format_table, parameter_table
from mmtrain.run import run
from mmtrain.utils.base_weights import canonical

LM_ID = "Qwen/Qwen2.5-0.5B-Instruct"  # the tiny Llama-style LM of the model store
CLIP_ID = "openai/clip-vit-base-patch16"
CPU = ["trainer.accelerator=cpu", "data.num_workers=0"]

# ---- experiment=shapes_llm with a small random LM ---------------------------------------------
LORA_R = 4
SHAPES_LLM = [
    "experiment=shapes_llm",
    *TINY_DATA,
    *QUIET,
    *CPU,
    *(f"head.caption.config.{k}={v}" for k, v in SMALL_LM.items()),
    "trainer.max_steps=2",
    "trainer.limit_val_batches=0",
    "callbacks=none",
]
PHASES = [None, "align", "lora", "finetune", "full"]
# what trains in each phase, of (encoder, projector, lm, adapters)
TRAINS = {
    None: {"encoder", "projector", "lm"},  # the parts as their presets say: everything
    "align": {"projector"},
    "lora": {"projector", "adapters"},
    "finetune": {"projector", "lm"},
    "full": {"encoder", "projector", "lm"},
}


def _phase(phase: str | None) -> list[str]:
    if phase is None:
        return ["~phase"]
    return [f"phase={phase}"] + ([f"peft.r={LORA_R}"] if phase == "lora" else [])


# ---- a run's model, as built, after init_from, and its logs -----------------------------------
@dataclass
class Seen:
    """What :func:`watch` saw of one in-process run."""

    model: Any = None
    built: dict[str, torch.Tensor] = field(default_factory=dict)  # right after build_module
    # after init_from, or after loading ckpt_path (before Lightning restores it once more)
    initialised: dict[str, torch.Tensor] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)  # mmtrain.build's INFO messages
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    out: Path | None = None  # the run directory


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class _Records(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextlib.contextmanager
def watch() -> Iterator[Seen]:
    """Keep the model that ``run`` builds (and its state as built and after ``init_from`` or
    loading ``ckpt_path``) and the build's log messages."""
    seen = Seen()
    build, init = run_module.build_module, run_module.init_from_checkpoint
    load_weights = run_module.load_weights

    def building(*args: Any, **kwargs: Any) -> Any:
        seen.model = build(*args, **kwargs)
        seen.built = _clone(seen.model.state_dict())
        return seen.model

    def initialising(model: Any, *args: Any, **kwargs: Any) -> int:
        count = init(model, *args, **kwargs)
        seen.initialised = _clone(model.state_dict())
        return count

    def loading(model: Any, *args: Any, **kwargs: Any) -> None:
        load_weights(model, *args, **kwargs)
        seen.initialised = _clone(model.state_dict())

    logger = logging.getLogger("mmtrain.build")
    handler, level = _Records(seen.logs), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(run_module, "build_module", building)
            mp.setattr(run_module, "init_from_checkpoint", initialising)
            mp.setattr(run_module, "load_weights", loading)
            yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def fit(*overrides: str, output_dir: Path) -> Seen:
    """``mmtrain fit overrides`` in process, watched."""
    start = time.perf_counter()
    with watch() as seen:
        seen.metrics = run("fit", compose_cfg(*overrides, output_dir=output_dir))
    seen.seconds, seen.out = time.perf_counter() - start, output_dir
    return seen


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def phases(tiny_data, tmp_path_factory) -> dict[str | None, Seen]:
    """experiment=shapes_llm with the small LM, two steps in each phase."""
    out = tmp_path_factory.mktemp("phases")
    return {p: fit(*SHAPES_LLM, *_phase(p), output_dir=out / str(p)) for p in PHASES}


# ---- 1. parameter counts ----------------------------------------------------------------------
def _expected_counts(phase: str | None, vocab_size: int) -> dict[str, tuple[int, int]]:
    """``{part: (trainable, total)}`` from the configs alone: the CNN by its layers, the
    projector by its formula, the LM built here from the same transformers config, the LoRA
    adapters as ``r * (in + out)`` per adapted Linear (every one but the output layer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    channels = [16, 32, 64, 64]  # encoder/image=cnn: 3x3 conv (no bias) + batch norm per block
    encoder = sum(9 * c_in * c_out + 2 * c_out for c_in, c_out in zip([3, *channels], channels))
    in_dim, hidden = channels[-1], SMALL_LM["hidden_size"]
    projector = (in_dim * hidden + hidden) + (hidden * hidden + hidden)  # mlp2x_gelu
    config = {k: v for k, v in SMALL_LM.items() if k != "model_type"}
    lm = sum(
        p.numel()
        for p in LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **config)).parameters()
    )
    head_dim = hidden // SMALL_LM["num_attention_heads"]
    q, kv = SMALL_LM["num_attention_heads"] * head_dim, SMALL_LM["num_key_value_heads"] * head_dim
    inter = SMALL_LM["intermediate_size"]
    linears = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden)]  # q, k, v, o
    linears += [(hidden, inter), (hidden, inter), (inter, hidden)]  # gate, up, down
    per_layer = sum(LORA_R * (a + b) for a, b in linears)
    adapters = per_layer * SMALL_LM["num_hidden_layers"] if phase == "lora" else 0
    trains = TRAINS[phase]

    def row(kind: str, n: int) -> tuple[int, int]:
        return (n if kind in trains else 0, n)

    rows = {
        "encoders.image": row("encoder", encoder),
        "fusion": (0, 0),  # fusion=tokens: no weights
        "heads.caption.projector": row("projector", projector),
        "heads.caption.lm": row("lm", lm),
        "heads.caption.lm (adapters)": row("adapters", adapters),
        "loss_weighting": (0, 0),
    }
    head = [rows[k] for k in rows if k.startswith("heads.caption.")]
    rows["heads.caption"] = (sum(t for t, _ in head), sum(n for _, n in head))
    parts = [rows[k] for k in ("encoders.image", "heads.caption")]
    rows["total"] = (sum(t for t, _ in parts), sum(n for _, n in parts))
    return rows


@pytest.mark.parametrize("phase", PHASES, ids=[f"phase={p}" for p in PHASES])
def test_parameter_counts_of_each_phase_are_exact_and_logged(phases, phase):
    seen = phases[phase]
    vocab_size = seen.model.heads.caption.tokenizer.vocab_size  # trained on the captions
    expected = _expected_counts(phase, vocab_size)
    table = parameter_table(seen.model)
    assert {part: (t, n) for part, t, n in table} == expected
    assert [part for part, _, _ in table] == [
        "encoders.image",
        "fusion",
        "heads.caption",
        "heads.caption.projector",
        "heads.caption.lm",
        "heads.caption.lm (adapters)",
        "loss_weighting",
        "total",
    ]
    # the run logs the same table, with thousands separators
    logged = [m for m in seen.logs if m.startswith("parameters:\n")]
    assert logged == [f"parameters:\n{format_table(table)}"]
    total_trainable, total = expected["total"]
    assert f"{total_trainable:,}" in logged[0] and f"{total:,}" in logged[0]
    if phase == "lora":
        adapters = expected["heads.caption.lm (adapters)"][1]
        assert f"peft: LoRA adapters in heads.caption ({adapters:,})" in seen.logs
    # the LM of a head whose LM does not train stays in eval mode (no dropout)
    lm_trains = "lm" in TRAINS[phase] or "adapters" in TRAINS[phase]
    assert seen.model.heads.caption.lm_trains() is lm_trains
    # what checkpoints keep (model.save_frozen: null): align and lora trim, the others do not
    assert seen.model.save_frozen is (phase not in ("align", "lora"))


# ---- 2. what a LoRA step changes --------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_perceiver(tiny_data, tmp_path_factory) -> Seen:
    """phase=lora with a token compressor (fusion=perceiver, which has weights)."""
    out = tmp_path_factory.mktemp("lora_perceiver")
    compressor = [
        "fusion=perceiver",
        "fusion.dim=32",
        "fusion.num_queries=4",
        "fusion.num_layers=1",
    ]
    return fit(*SHAPES_LLM, *_phase("lora"), *compressor, output_dir=out)


def test_a_lora_step_changes_only_the_adapters_the_projector_and_the_compressor(lora_perceiver):
    model = lora_perceiver.model
    after = model.state_dict()
    trains = ("heads.caption.projector.", "fusion.")
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == {n for n in params if is_adapter(n) or n.startswith(trains)}
    assert any(n.startswith("fusion.") for n in trainable)
    assert any(is_adapter(n) for n in trainable)
    for name, before in lora_perceiver.built.items():
        if name.startswith("loss_weighting."):  # its step count (no weights)
            continue
        if name in trainable:
            grad = params[name].grad
            assert grad is not None and torch.isfinite(grad).all(), name
            assert not torch.equal(after[name], before), f"{name} did not change"
        else:  # the LM's base weights, the encoder (batch-norm statistics too)
            assert params.get(name) is None or params[name].grad is None, name
            assert torch.equal(after[name], before), f"{name} changed"
    assert any(n.startswith("heads.caption.lm.") and not is_adapter(n) for n in after)
    assert any(n.startswith("encoders.image.") and "running_mean" in n for n in after)


# ---- 6. LoRA merge ----------------------------------------------------------------------------
def test_merging_the_adapters_keeps_the_logits(phases):
    head = copy.deepcopy(phases["lora"].model.heads.caption).eval()
    b_weights = [p for n, p in head.named_parameters() if "lora_B" in n]
    assert b_weights and all(p.abs().sum() > 0 for p in b_weights)  # trained: B is not zero
    generator = torch.Generator().manual_seed(0)
    in_dim = 64  # the CNN's width (fusion=tokens)
    features = Features(torch.randn(2, 16, in_dim, generator=generator), None)
    ids = torch.randint(4, head.tokenizer.vocab_size, (2, 9), generator=generator)
    ids[:, 1] = FEATURE_TOKEN
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 6:] = False

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return head(features, ids, mask).logits

    from peft.tuners.lora import LoraLayer

    adapted = logits()
    layers = [m for m in head.lm.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    base = logits()
    for layer in layers:
        layer.enable_adapters(True)
    print(f"\nlogits with and without the adapters: {(adapted - base).abs().max():.2e} apart")
    assert (adapted - base).abs().max() > 1e-3  # the adapters matter
    assert merge(head) == len(layers) == 7 * SMALL_LM["num_hidden_layers"]
    assert all(layer.merged for layer in layers)
    torch.testing.assert_close(logits(), adapted, atol=1e-5, rtol=0)
    assert merge(head) == 0  # merged once


# ---- 3, 4, 7, 8. trimmed checkpoints with pretrained bases -------------------------------------
@pytest.fixture(scope="module")
def coco_lora(model_store_folder, tmp_path_factory) -> dict[str, Any]:
    """experiment=coco_caption_llm (the model store's tiny CLIP tower and LM, phase=lora) on a
    tiny COCO, one epoch of three steps, with save_frozen null (so false: trimmed) and true."""
    tmp = tmp_path_factory.mktemp("coco_lora")
    write_coco(tmp / "coco")
    common = [
        "experiment=coco_caption_llm",
        f"data.root={tmp / 'coco'}",
        "data.batch_size=2",
        f"paths.model_dir={model_store_folder}",
        "peft.r=2",  # few adapters next to the tiny LM, as LoRA on a real one
        "peft.target_modules=[q_proj,v_proj]",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        *QUIET,
        *CPU,
    ]
    runs = {
        "trimmed": fit(*common, output_dir=tmp / "trimmed"),
        "full": fit(*common, "model.save_frozen=true", output_dir=tmp / "full"),
    }
    return {"tmp": tmp, "common": common, "store": model_store_folder, **runs}


def _last(seen: Seen) -> Path:
    return seen.out / "checkpoints" / "last.ckpt"


def test_lora_checkpoints_leave_out_the_frozen_bases_and_record_their_fingerprints(coco_lora):
    trimmed, full = coco_lora["trimmed"], coco_lora["full"]
    assert trimmed.model.save_frozen is False and full.model.save_frozen is True
    assert trimmed.model.strict_loading is False and full.model.strict_loading is True
    small, large = load(_last(trimmed)), load(_last(full))
    state = small["state_dict"]
    # only what trained: the projector and the adapters (and the loss weighting's step count)
    assert state and all(
        k.startswith(("heads.caption.projector.", "loss_weighting.")) or is_adapter(k)
        for k in state
    )
    assert any(k.startswith("heads.caption.projector.") for k in state)
    bases = small[CHECKPOINT_KEY]["base"]
    assert set(bases) == {"encoder.image", "head.caption"}
    lm = bases["head.caption"]
    assert lm["model"] == LM_ID and lm["module"] == "heads.caption.lm"
    assert len(lm["fingerprint"]) == 16 and int(lm["fingerprint"], 16) >= 0
    assert bases["encoder.image"]["model"] == CLIP_ID
    assert "heads.caption.lm.lm_head.weight" in lm["keys"]
    assert "heads.caption.lm.model.layers.0.self_attn.q_proj.base_layer.weight" in lm["keys"]
    # the full checkpoint: every weight, no base records; the same training (same seed)
    assert "base" not in large[CHECKPOINT_KEY]
    recorded = {k for record in bases.values() for k in record["keys"]}
    assert set(large["state_dict"]) == set(state) | recorded
    for key, value in state.items():
        assert torch.equal(value, large["state_dict"][key]), key
    sizes = {name: _last(coco_lora[name]).stat().st_size for name in ("trimmed", "full")}
    frozen = sum(large["state_dict"][k].numel() * 4 for k in recorded)  # float32 bytes
    print(
        f"\nlast.ckpt: trimmed {sizes['trimmed']:,} bytes, full {sizes['full']:,} bytes "
        f"(frozen weights {frozen:,} bytes)"
    )
    assert sizes["full"] - sizes["trimmed"] >= 0.9 * frozen
    assert sizes["trimmed"] < 0.5 * sizes["full"]


def test_lora_in_the_vision_tower_too(coco_lora, tmp_path):
    """peft.apply_to=[heads.caption,encoders.image]: adapters in the CLIP tower's linear layers
    train next to the LM's, the tower's own weights stay frozen and out of the checkpoint,
    and `test` rebuilds both adapted parts from it."""
    seen = fit(
        *coco_lora["common"],
        "peft.apply_to=[heads.caption,encoders.image]",
        "data.cache_features=false",  # the tower trains (its adapters): nothing to cache
        output_dir=tmp_path / "fit",
    )
    encoder = seen.model.encoders["image"]
    named = dict(encoder.named_parameters())
    adapters = [n for n in named if is_adapter(n)]
    assert adapters and all(named[n].requires_grad for n in adapters)
    assert not any(p.requires_grad for n, p in named.items() if not is_adapter(n))
    state = load(_last(seen))["state_dict"]
    assert any(k.startswith("encoders.image.") and is_adapter(k) for k in state)
    assert not any(k.startswith("encoders.image.") and not is_adapter(k) for k in state)
    cfg = compose_cfg(
        *coco_lora["common"],
        f"ckpt_path={_last(seen)}",
        "data.cache_features=false",
        output_dir=tmp_path / "test",
    )
    assert math.isfinite(run("test", cfg)["test/caption/cider"])


def test_test_from_a_trimmed_checkpoint_equals_test_from_the_full_one(coco_lora, tmp_path):
    results = {}
    for name in ("trimmed", "full"):
        out = tmp_path / name
        cfg = compose_cfg(
            f"ckpt_path={_last(coco_lora[name])}",
            f"paths.model_dir={coco_lora['store']}",
            *QUIET,
            *CPU,
            stage="test",
            output_dir=out,
        )
        metrics = run("test", cfg)
        predictions = json.loads((out / "predictions" / "captions_test.json").read_text())
        results[name] = (metrics, predictions)
    (metrics, predictions), (full_metrics, full_predictions) = results["trimmed"], results["full"]
    assert "test/caption/cider" in metrics and all(math.isfinite(v) for v in metrics.values())
    assert metrics == full_metrics
    assert predictions == full_predictions and predictions


def _rewrite_with_other_weights(folder: Path) -> None:
    """The same LM architecture with other (seed 1) weights, saved over ``folder``'s."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)


def test_a_base_with_other_weights_is_refused_naming_the_part(coco_lora, tmp_path):
    store = tmp_path / "store"
    for model_id in (LM_ID, CLIP_ID):
        shutil.copytree(coco_lora["store"] / model_id, store / model_id)
    _rewrite_with_other_weights(store / LM_ID)
    ckpt = _last(coco_lora["trimmed"])
    cfg = compose_cfg(
        f"ckpt_path={ckpt}",
        f"paths.model_dir={store}",
        *QUIET,
        *CPU,
        stage="test",
        output_dir=tmp_path / "run",
    )
    with pytest.raises(MMTrainError, match="fingerprint") as err:
        run("test", cfg)
    message = str(err.value)
    assert "head.caption" in message and LM_ID in message and str(ckpt) in message
    assert "encoder.image" not in message  # the CLIP tower is the same
    assert not (tmp_path / "run" / "predictions").exists()


def test_resuming_from_a_trimmed_checkpoint_continues(coco_lora, tmp_path):
    ckpt = _last(coco_lora["trimmed"])
    before = load(ckpt)
    overrides = [o for o in coco_lora["common"] if not o.startswith("trainer.max_epochs")]
    resumed = fit(*overrides, "trainer.max_epochs=2", f"ckpt_path={ckpt}", output_dir=tmp_path)
    after = load(tmp_path / "checkpoints" / "last.ckpt")
    assert before["global_step"] == 3 and after["global_step"] == 6
    assert before["epoch"] == 0 and after["epoch"] == 1
    assert "val/caption/cider" in resumed.metrics
    # the run started from the checkpoint's trained weights, over the bases from their folders
    assert resumed.model.strict_loading is False
    for key, value in before["state_dict"].items():
        assert torch.equal(resumed.initialised[key], value), key
    lm = folder_weights(coco_lora["store"] / LM_ID)
    for state in (resumed.initialised, resumed.model.state_dict()):  # loaded; after training
        by_canonical = {canonical(k): v for k, v in state.items()}
        for key, value in lm.items():
            assert torch.equal(by_canonical[f"heads.caption.lm.{key}"], value), key
    # still trimmed, the same bases; the trained weights moved on
    assert after[CHECKPOINT_KEY]["base"] == before[CHECKPOINT_KEY]["base"]
    assert set(after["state_dict"]) == set(before["state_dict"])
    assert any(not torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())


def test_cli_predict_answers_a_prompt_about_one_image(coco_lora, scratch):
    image = scratch["cwd"] / "photo.png"
    pixels = torch.randint(0, 256, (20, 24, 3), generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(image)
    proc = mmtrain(
        scratch,
        "predict",
        f"ckpt_path={_last(coco_lora['trimmed'])}",
        f"input={image}",
        'prompt="What is in the picture?"',
        f"paths.model_dir={coco_lora['store']}",
        *QUIET,
    )
    assert proc.returncode == 0, explain_run(proc)
    (run_dir,) = run_dirs(scratch["out"], "predictions/predict.jsonl")
    rows = [
        json.loads(line)
        for line in (run_dir / "predictions/predict.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 1 and rows[0]["file"] == str(image)
    assert set(rows[0]) == {"file", "caption"} and isinstance(rows[0]["caption"], str)
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert printed == rows


def test_cli_phase_lora_without_peft_is_one_line(scratch, tiny_data):
    proc = mmtrain(
        scratch, "fit", "experiment=shapes_llm", *TINY_DATA, "phase=lora", "peft=none", *QUIET
    )
    assert proc.returncode != 0, explain_run(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, explain_run(proc)
    (line,) = proc.stderr.strip().splitlines()  # one line, nothing else
    assert line.startswith("mmtrain fit: error: phase=lora "), line
    assert "peft=none" in line, line


# ---- 5, 9. the LLaVA recipe: align, then LoRA from its projector -------------------------------
@pytest.fixture(scope="module")
def llava(model_store_folder, tmp_path_factory) -> dict[str, Any]:
    """The two commands of configs/experiment/llava_instruct.yaml on a tiny LLaVA JSON."""
    tmp = tmp_path_factory.mktemp("llava")
    files = write_llava(tmp / "llava")
    data = [
        f"data.train={files['train']}",
        f"data.val={files['val']}",
        f"data.dataset.image_folder={files['images']}",
        "data.batch_size=2",
        f"paths.model_dir={model_store_folder}",
        *QUIET,
        *CPU,
    ]
    first = fit("experiment=llava_instruct", *data, output_dir=tmp / "align")
    start = tmp / "align" / "checkpoints" / "last.ckpt"
    second = fit(
        "experiment=llava_instruct",
        "phase=lora",
        *data,
        f"init_from={start}",
        "init_parts=[heads.chat]",
        output_dir=tmp / "lora",
    )
    return {"align": first, "lora": second, "start": start, "store": model_store_folder}


def test_the_llava_recipe_runs_both_phases(llava):
    for phase in ("align", "lora"):
        metrics = llava[phase].metrics
        for name in ("bleu4", "cider", "rougeL"):
            assert f"val/chat/{name}" in metrics, (phase, metrics)
        assert math.isfinite(metrics["val/loss"])
    print(f"\nllava: align {llava['align'].seconds:.1f} s, lora {llava['lora'].seconds:.1f} s")


def test_init_from_an_aligned_projector_into_a_lora_model(llava):
    stored = load(llava["start"])
    state = stored["state_dict"]
    # phase=align: the checkpoint holds the projector only (and the weighting's step count)
    projector = {k: v for k, v in state.items() if k.startswith("heads.chat.projector.")}
    assert projector and set(state) - set(projector) == {"loss_weighting.step"}
    assert set(stored[CHECKPOINT_KEY]["base"]) == {"encoder.image", "head.chat"}
    seen = llava["lora"]
    built, loaded = seen.built, seen.initialised
    assert any(".base_layer." in k for k in loaded)  # peft's wrapped names
    for key, value in projector.items():
        assert torch.equal(loaded[key], value), key
        assert not torch.equal(built[key], value), key  # it was loaded, not as built
    lm = folder_weights(llava["store"] / LM_ID)
    by_canonical = {canonical(k): v for k, v in loaded.items()}
    for key, value in lm.items():
        assert torch.equal(by_canonical[f"heads.chat.lm.{key}"], value), key
    adapters = [k for k in loaded if is_adapter(k)]
    assert adapters
    for key in adapters:
        assert torch.equal(loaded[key], built[key]), key
    assert all(not loaded[k].any() for k in adapters if "lora_B" in k)  # B starts at zero
    # the encoder is the model folder's too, as built
    for key in (k for k in loaded if k.startswith("encoders.")):
        assert torch.equal(loaded[key], built[key]), key


# ---- 10. the shapes LLM learns ----------------------------------------------------------------
def test_a_qformer_started_from_bert_tests_from_its_checkpoint_alone(tiny_data, tmp_path):
    """fusion=qformer from a BERT folder: the checkpoint stores its config files, so `test`
    rebuilds the Q-Former (and its sizes' check) with the folder gone."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    bert = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    BertModel(BertConfig(**{**bert.to_dict(), "intermediate_size": 64})).save_pretrained(folder)
    qformer = [
        "fusion=qformer",
        f"fusion.model_name_or_path={folder}",
        "fusion.dim=32",
        "fusion.num_heads=2",
        "fusion.ff_mult=2",
        "fusion.num_queries=4",
        f"fusion.layer_norm_eps={bert.layer_norm_eps}",
    ]
    common = ["experiment=shapes", *TINY_DATA, *QUIET, *CPU]
    trained = fit(*common, *qformer, "trainer.max_steps=2", output_dir=tmp_path / "fit")
    ckpt = load(_last(trained))
    assert "config.json" in ckpt[CHECKPOINT_KEY]["models"]["fusion"]
    shutil.rmtree(folder)
    cfg = compose_cfg(*common, f"ckpt_path={_last(trained)}", output_dir=tmp_path / "test")
    metrics = run("test", cfg)
    assert math.isfinite(metrics["test/label/accuracy"])


def test_speech_to_text_through_an_llm(model_store_folder, tmp_path):
    """head/transcript=causal_lm on LibriSpeech: wav2vec2's frames -> a Perceiver resampler
    (32 queries) -> the LM with LoRA, the transcript its answer; scored by WER."""
    from helpers.speech import write_librispeech

    overrides = [
        "experiment=librispeech_wav2vec2_ctc",
        f"data.root={write_librispeech(tmp_path / 'librispeech')}",
        "data.batch_size=2",
        f"paths.model_dir={model_store_folder}",
        "head/transcript=causal_lm",
        f"head.transcript.model_name_or_path={LM_ID}",
        "head.transcript.max_new_tokens=8",
        "fusion=perceiver",
        "fusion.num_queries=8",
        "phase=lora",
        "debug=fdr",
        *QUIET,
        *CPU,
    ]
    seen = fit(*overrides, output_dir=tmp_path / "fit")
    assert seen.model.heads["transcript"].metrics == "wer"
    assert math.isfinite(seen.metrics["train/loss/transcript"])
    assert seen.metrics["val/transcript/wer"] >= 0.0 and "val/transcript/cer" in seen.metrics


@pytest.mark.slow  # about a minute on CPU: experiment=shapes_llm at its default sizes
def test_shapes_llm_learns_to_caption(tmp_path):
    cfg = compose_cfg(
        "experiment=shapes_llm",
        f"data.root={tmp_path / 'shapes'}",  # the full-size data set, not the session's tiny one
        *QUIET,
        "trainer.accelerator=cpu",
        output_dir=tmp_path / "run",
    )
    start = time.perf_counter()
    metrics = run("fit", cfg)
    print(f"\nshapes_llm: {time.perf_counter() - start:.0f} s, {metrics}")
    assert metrics["val/caption/cider"] >= 5.0, metrics
