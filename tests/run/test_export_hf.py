"""``format=hf`` (mmtrain/export/hf.py) on tiny models, offline.

Each model is trained for a step in process (``experiment=coco_caption_llm`` on a tiny COCO with
the model store's tiny CLIP tower and Llama-style LM, or ``experiment=shapes_llm``), rebuilt
from its checkpoint as ``mmtrain predict`` rebuilds one, and given trained-looking LoRA
adapters (seeded, non-zero ``lora_B``), so that merging them matters. ``export_hf`` is called
directly (the ``mmtrain export`` stage is tested with the other formats).

The llava layout is checked here independently of the export's own parity check: the folder
is loaded with transformers' ``LlavaForConditionalGeneration`` and ``AutoProcessor`` (its
image processor preprocesses the image), and its logits and its greedy answer (from the saved
generation config alone) are compared with the mmtrain model's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QUIET, TINY_DATA, compose_cfg, fresh_synth_facts
from helpers.coco import write_coco
from helpers.tiny_hf import tiny_siglip
from helpers.tiny_lm import SMALL_LM
from safetensors import safe_open

from mmtrain.contracts import CHECKPOINT_KEY, FEATURE_TOKEN
from mmtrain.errors import MMTrainError
from mmtrain.export.hf import (
    NO_LM,
    export_hf,
    load_hf_export,
    rebuild_hf_export,
    sample_image,
)
from mmtrain.predictor import Predictor
from mmtrain.run import run

CPU = ["trainer.accelerator=cpu", "data.num_workers=0"]
ONE_STEP = ["trainer.max_steps=1", "trainer.limit_val_batches=0", "model.save_frozen=true"]
LORA_STD = 0.05  # the seeded lora_B weights: the adapters change the logits, as trained ones do
ATOL = 1e-4  # float32 logits


# ---- models: fit one step, rebuild from the checkpoint ------------------------------------------
def rebuilt(ckpt_path: Path, scratch: Path) -> tuple[Any, Any, Any]:
    """``(model, config, data module)`` of a checkpoint, rebuilt as ``mmtrain predict`` does
    (its config, data state and model files), the model in eval mode."""
    from mmtrain.build import build_datamodule, build_module, task_targets
    from mmtrain.run import (
        config_from_checkpoint,
        load_checkpoint,
        load_weights,
        use_stored_models,
    )

    ckpt = load_checkpoint(ckpt_path)
    stored = ckpt[CHECKPOINT_KEY]
    base = compose_cfg(stage="predict", output_dir=scratch)
    cfg = task_targets(config_from_checkpoint(stored["config"], base))
    use_stored_models(cfg, stored.get("models") or {}, scratch / "models", stored.get("base"))
    datamodule = build_datamodule(cfg)
    datamodule.load_state_dict(stored.get("data") or {})
    model = build_module(cfg, datamodule.facts(), stored["config"])
    load_weights(model, ckpt, str(ckpt_path))
    return model.eval(), cfg, datamodule


def with_adapters(model: Any) -> int:
    """Give the LoRA adapters seeded ``lora_B`` weights (a fresh one's are zero); returns how
    many adapted layers there are."""
    generator = torch.Generator().manual_seed(0)
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_STD)
                count += 1
    return count


def trained(tmp: Path, *overrides: str) -> dict[str, Any]:
    """Fit one step with ``overrides``, rebuild the checkpoint, give it adapters."""
    run("fit", compose_cfg(*overrides, *ONE_STEP, *QUIET, *CPU, output_dir=tmp / "fit"))
    model, cfg, datamodule = rebuilt(tmp / "fit" / "checkpoints" / "last.ckpt", tmp / "scratch")
    adapters = with_adapters(model)
    return {"model": model, "cfg": cfg, "datamodule": datamodule, "adapters": adapters}


@pytest.fixture(scope="module")
def coco(model_store_folder, tmp_path_factory) -> list[str]:
    """experiment=coco_caption_llm on a tiny COCO with the model store's models, LoRA r=2
    (the frozen tower's features cached, as the experiment does)."""
    root = tmp_path_factory.mktemp("coco")
    write_coco(root)
    return [
        "experiment=coco_caption_llm",
        f"data.root={root}",
        "data.batch_size=2",
        f"paths.model_dir={model_store_folder}",
        "peft.r=2",
    ]


LLAVA_VARIANTS = {  # name -> overrides; the LlavaConfig fields they must give
    "clip": ([], {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"}),
    "clip_lora_in_tower": (  # adapters in the CLIP tower too: merged into the vision weights
        ["peft.apply_to=[heads.caption,encoders.image]", "data.cache_features=false"],
        {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"},
    ),
    "clip_cls_last": (
        ["encoder.image.keep_cls=true", "encoder.image.layer=-1"],
        {"vision_feature_layer": -1, "vision_feature_select_strategy": "full"},
    ),
    "siglip": (
        ["encoder.image.model_name_or_path={siglip}"],
        {"vision_feature_layer": -2, "vision_feature_select_strategy": "full"},
    ),
}


@pytest.fixture(scope="module", params=list(LLAVA_VARIANTS))
def llava_model(request, coco, tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp(request.param)
    siglip = tiny_siglip(tmp / "siglip")
    overrides, fields = LLAVA_VARIANTS[request.param]
    model = trained(tmp, *coco, *(o.format(siglip=siglip) for o in overrides))
    return {**model, "variant": request.param, "fields": fields}


# ---- helpers of the checks ----------------------------------------------------------------------
def state_copy(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("parity", "greedy_identical", "bytes") if k in result}


def file_keys(folder: Path) -> list[str]:
    keys = []
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as weights:
            keys += list(weights.keys())
    return keys


def mmtrain_side(
    model: Any, pixels: torch.Tensor, suppress: list[int] | None = None
) -> tuple[Any, list[int], list[int]]:
    """The caption head's features, prompt ids and greedy answer (up to its first stop id) on
    ``pixels``, without stop strings (a saved generation config cannot hold them), never
    generating the ids ``suppress``; the head is left as it was."""
    head = model.heads["caption"]
    stop, head.stop = head.stop, []
    if suppress:
        kwargs = head.generation_kwargs
        head.generation_kwargs = lambda: {**kwargs(), "suppress_tokens": suppress}
    prompt = head.tokenizer.prompt_ids(head.prompt)
    try:
        with torch.no_grad():
            features = model.fusion(model.encode({"image": pixels}))
            generated = head.generate(features, prompt=torch.tensor([prompt]))[0].tolist()
    finally:
        head.stop = stop
        vars(head).pop("generation_kwargs", None)
    stops = head.tokenizer.stop_ids
    end = next((i for i, t in enumerate(generated) if t in stops), len(generated) - 1)
    return features, prompt, generated[: end + 1]


def check_llava_folder(model: Any, datamodule: Any, out: Path) -> dict[str, Any]:
    """The folder loaded by transformers against the mmtrain model: ``{"diff": max abs diff of
    the logits over the answer positions, "mmtrain": answer ids, "llava": answer ids}``."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    image = sample_image(70, 50)
    pixels = datamodule.inputs["image"].encode(image, train=False)[None]
    made = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(made, pixels, atol=1e-5, rtol=0)  # the same preprocessing
    suppress = llava.generation_config.suppress_tokens
    features, prompt, answer = mmtrain_side(model, pixels, suppress)
    head = model.heads["caption"]
    image_id, count = llava.config.image_token_id, llava.config.image_seq_length
    assert count == features.tokens.shape[1]

    def expanded(ids: list[int]) -> torch.Tensor:
        return torch.tensor([[t for i in ids for t in ([image_id] * count if i < 0 else [i])]])

    assert FEATURE_TOKEN in prompt
    with torch.no_grad():
        expected = head(features, target=torch.tensor([prompt + answer])).logits[0]
        got = llava(input_ids=expanded(prompt + answer), pixel_values=made).logits[0]
        ids = expanded(prompt)
        generated = llava.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=made
        )
    span = len(answer) + 1
    diff = (got[-span:, : expected.shape[-1]] - expected[-span:]).abs().max().item()
    new = generated[0, ids.shape[1] :].tolist()
    stops = head.tokenizer.stop_ids
    end = next((i for i, t in enumerate(new) if t in stops), len(new) - 1)
    return {"diff": diff, "mmtrain": answer, "llava": new[: end + 1], "llava_model": llava}


# ---- the llava layout ---------------------------------------------------------------------------
def test_llava_layout_loads_in_transformers_and_matches_the_model(llava_model, tmp_path):
    model, cfg, datamodule = llava_model["model"], llava_model["cfg"], llava_model["datamodule"]
    assert llava_model["adapters"] > 0
    before = state_copy(model)
    out = tmp_path / "out"
    out.mkdir()
    # the clip variant preprocesses from the tower's files (no data module given)
    given = None if llava_model["variant"] == "clip" else datamodule
    result = export_hf(model, cfg, out, datamodule=given)
    print(f"\n{llava_model['variant']}: {json.dumps(summary(result))}")
    assert result["layout"] == "llava" and result["why_not_llava"] is None
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(result["files"])
    assert "processor_config.json" in result["files"] and "tokenizer.json" in result["files"]
    assert result["parity"]["caption/logits"] < ATOL
    assert result["parity"]["caption/conversion"] < 1e-5  # the same computation
    assert result["checked"] == ["caption/conversion", "caption/logits"]
    assert result["greedy_identical"] == {"caption": True}
    # the model itself is as it was: adapters in place and unmerged
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert any("lora_A" in k for k in after)
    # no adapter in the files; the LM's weights are the merged ones
    keys = file_keys(out)
    assert keys and not any("lora_" in k or "base_layer" in k for k in keys)
    # transformers loads it; it computes what the mmtrain model computes
    checked = check_llava_folder(model, datamodule, out)
    llava = checked["llava_model"]
    exported = llava.model.language_model.layers[0].self_attn.q_proj.weight
    base = after["heads.caption.lm.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert exported.shape == base.shape and (exported - base).abs().max() > 1e-4  # merged
    if llava_model["variant"] == "clip_lora_in_tower":
        name = "layers.0.self_attn.q_proj"
        (tower,) = [p for n, p in llava.model.vision_tower.named_parameters() if f"{name}.w" in n]
        (key,) = [k for k in after if k.startswith("encoders.") and f"{name}.base_layer.w" in k]
        assert (tower - after[key]).abs().max() > 1e-4
    config = llava.config
    for key, value in llava_model["fields"].items():
        assert getattr(config, key) == value, key
    print(f"independent check: logits {checked['diff']:.2e} apart, answers {checked['llava']}")
    assert checked["diff"] < ATOL
    assert checked["llava"] == checked["mmtrain"]
    with pytest.raises(MMTrainError, match="llava layout"):
        load_hf_export(out)


@pytest.fixture(scope="module")
def full_vocabulary_lm(tmp_path_factory) -> Path:
    """A tiny Llama-style LM whose embeddings have exactly the tokenizer's rows (tied), so that
    an added ``<image>`` token needs a new row."""
    from helpers.tiny_lm import HIDDEN, INIT, LAYERS, _save, llama_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = llama_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=INIT,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save(LlamaForCausalLM, config, tokenizer, tmp_path_factory.mktemp("lm") / "full")


def test_an_added_image_token_grows_the_tied_embeddings(coco, full_vocabulary_lm, tmp_path):
    model = trained(tmp_path, *coco, f"head.caption.model_name_or_path={full_vocabulary_lm}")
    model, cfg, datamodule = model["model"], model["cfg"], model["datamodule"]
    rows = model.heads["caption"].lm.get_input_embeddings().num_embeddings
    assert rows == model.heads["caption"].tokenizer.vocab_size  # no spare row
    out = tmp_path / "out"
    out.mkdir()
    result = export_hf(model, cfg, out, datamodule=datamodule)
    print(f"\nresized: {json.dumps(summary(result))}")
    assert result["layout"] == "llava" and result["embeddings_resized"] is True
    assert result["image_token_id"] == rows
    checked = check_llava_folder(model, datamodule, out)
    config = checked["llava_model"].config
    assert config.text_config.vocab_size == rows + 1 and config.tie_word_embeddings
    generation = checked["llava_model"].generation_config
    assert generation.suppress_tokens == [rows]
    assert checked["diff"] < ATOL and checked["llava"] == checked["mmtrain"]
    assert model.heads["caption"].lm.get_input_embeddings().num_embeddings == rows  # untouched


def test_a_wrong_conversion_is_caught_by_the_export_s_own_check(coco, tmp_path, monkeypatch):
    """The self-check is not vacuous: a LlavaConfig that reads another hidden state than
    mmtrain's encoder does fails it, naming the tolerance."""
    import mmtrain.export.hf as hf

    model = trained(tmp_path, *coco)
    build = hf._llava_config

    def wrong_layer(*args: Any) -> Any:
        config = build(*args)
        config.vision_feature_layer = -1  # mmtrain's encoder reads layer -2
        return config

    monkeypatch.setattr(hf, "_llava_config", wrong_layer)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MMTrainError, match="differs from the model above the tolerance"):
        export_hf(model["model"], model["cfg"], out, datamodule=model["datamodule"])


# ---- the mmtrain layout -------------------------------------------------------------------------
MMTRAIN_VARIANTS = {  # name -> (overrides, what why_not_llava names)
    "linear_projector": (["head.caption.projector=linear"], "projector is not mlp2x_gelu"),
    "cnn_perceiver_random_lm": (  # a trained word-level tokenizer; a fusion with weights
        [
            "experiment=shapes_llm",
            *TINY_DATA,
            *(f"head.caption.config.{k}={v}" for k, v in SMALL_LM.items()),
            "phase=lora",
            "peft.r=4",
            "fusion=perceiver",
            "fusion.dim=32",
            "fusion.num_queries=4",
            "fusion.num_layers=1",
        ],
        "SmallCNNEncoder",
    ),
}


@pytest.mark.parametrize("variant", list(MMTRAIN_VARIANTS))
def test_mmtrain_layout_round_trips(variant, coco, tiny_data, tmp_path):
    overrides, reason = MMTRAIN_VARIANTS[variant]
    common = coco if variant == "linear_projector" else []
    model = trained(tmp_path, *common, *overrides)
    model, cfg, datamodule = model["model"], model["cfg"], model["datamodule"]
    out = tmp_path / "out"
    out.mkdir()
    result = export_hf(model, cfg, out, datamodule=datamodule)
    print(f"\n{variant}: {json.dumps(summary(result))}")
    assert result["layout"] == "mmtrain" and reason in result["why_not_llava"]
    assert result["parity"]["caption/logits"] < ATOL
    assert result["greedy_identical"] == {"caption": True}
    files = set(result["files"])
    assert {"mmtrain_hf.json", "projector.safetensors", "fusion.safetensors"} <= files
    assert {"language_model/config.json", "language_model/model.safetensors"} <= files
    assert "language_model/tokenizer.json" in files
    assert not any("lora_" in k or "base_layer" in k for k in file_keys(out))
    info = json.loads((out / "mmtrain_hf.json").read_text())
    assert info["parts"]["heads.caption"]["kind"] == "causal_lm"
    tower = "hf" if variant == "linear_projector" else "state"  # CLIP: save_pretrained
    assert info["parts"]["encoders.image"]["kind"] == tower
    fusion = {k: v for k, v in model.state_dict().items() if k.startswith("fusion.")}
    assert bool(fusion) is (variant != "linear_projector")  # tokens: no weights
    # the loader rebuilds a model without adapters that computes what the original does
    loaded = load_hf_export(out)
    assert not any("lora_" in k for k in loaded.state_dict())
    pixels = datamodule.inputs["image"].encode(sample_image(70, 50), train=False)[None]
    features, prompt, answer = mmtrain_side(model, pixels)
    theirs, _, exported = mmtrain_side(loaded, pixels)
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        expected = model.heads["caption"](features, target=ids).logits[0]
        got = loaded.heads["caption"](theirs, target=ids).logits[0]
    span = len(answer) + 1
    diff = (got[-span:] - expected[-span:]).abs().max().item()
    print(f"independent check: logits {diff:.2e} apart")
    assert diff < ATOL and exported == answer
    # what mmtrain.load does with the folder: a predictor on raw inputs, answering as the model
    with tempfile.TemporaryDirectory(prefix="mmtrain_load_") as scratch:
        base = compose_cfg(stage="predict", output_dir=Path(scratch))
        _, data, rebuilt_model = rebuild_hf_export(out, base, Path(scratch), inputs=scratch)
    image = sample_image(48, 40)
    said = Predictor(rebuilt_model, data)(image=image)
    assert said == Predictor(model, datamodule)(image=image) and said["caption"]


# ---- refusals -----------------------------------------------------------------------------------
def test_a_model_without_a_causal_lm_head_is_refused_in_one_line(tmp_path):
    from mmtrain.build import build_module

    cfg = compose_cfg("experiment=shapes", output_dir=tmp_path / "run")
    model = build_module(cfg, fresh_synth_facts())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MMTrainError) as err:
        export_hf(model, cfg, out)
    assert str(err.value) == NO_LM and "\n" not in str(err.value)
    assert NO_LM.startswith("format=hf: the model has no causal-LM head (head/<task>=causal_lm)")
    assert list(out.iterdir()) == []


def test_a_quantized_lm_is_refused_in_one_line(coco, tmp_path):
    model = trained(tmp_path, *coco)
    lm = model["model"].heads["caption"].lm
    lm.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MMTrainError) as err:
        export_hf(model["model"], model["cfg"], out)
    message = str(err.value)
    assert "\n" not in message and "head.caption's LM is quantized (4bit)" in message
    assert "head.caption.quantize=null" in message
    assert list(out.iterdir()) == []


@pytest.mark.slow  # bfloat16 on CPU: 2 to 15 s here, with the answer's length
def test_a_bfloat16_lm_exports_in_its_dtype_with_an_exact_conversion(coco, tmp_path):
    """head.caption.dtype=bfloat16: the export is all bfloat16 (transformers loads one dtype),
    its logits equal those of the merged model computing in bfloat16; the difference from the
    float32-tower model is reported, not held to the float32 tolerance."""
    model = trained(tmp_path, *coco, "head.caption.dtype=bfloat16")
    out = tmp_path / "out"
    out.mkdir()
    result = export_hf(model["model"], model["cfg"], out, datamodule=model["datamodule"])
    print(f"\nbfloat16: {json.dumps(summary(result))}")
    assert result["layout"] == "llava" and result["dtype"] == "bfloat16"
    assert result["checked"] == ["caption/conversion"]
    assert result["parity"]["caption/conversion"] == 0.0
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
