"""The multimodal-LLM benchmark (part of ``make bench``): ratios measured in one run.

1. ``kv_cache``: captions/s of the causal-LM head's generation (``lm.generate`` on the spliced
   ``inputs_embeds``, 576 image tokens + the prompt, 32 new tokens forced), which uses the KV
   cache, against greedy decoding that re-runs the whole prefix at every step.
2. ``gradient_checkpointing``: the time and the peak memory of a training step (forward and
   backward through the LM head) with ``gradient_checkpointing`` on and off, each in a process
   of its own (peak resident memory above the process's memory once the model is built).
3. ``lora``: the trainable share of the parameters under ``peft=lora`` (r=16, all-linear) for
   the shape of Qwen2.5-0.5B (built on the meta device: nothing downloaded, no memory).
4. ``checkpoint_sizes`` (not with ``--quick``): ``last.ckpt`` of ``coco_caption_llm`` (LoRA)
   trimmed against full, on random models of the real shapes (CLIP ViT-B/16, Qwen2.5-0.5B)
   written to a scratch folder next to ``--out`` and deleted after.

The LMs are random Llama-style models built from a config (nothing downloaded), with a
word-level tokenizer trained on a few sentences.

    python scripts/bench_llm.py [--out bench_llm.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

SENTENCES = ["a red circle on the left", "two blue squares", "a green triangle at the top"]
IMAGE_TOKENS, IMAGE_DIM = 576, 64  # LLaVA-1.5's 24 x 24 patch grid
LM = {  # a small Llama: large enough that recomputing the prefix costs what it does
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 1024,
}
QWEN25_05B = {  # Qwen2.5-0.5B's config.json, for the LoRA count
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}


def head(gradient_checkpointing: bool = False) -> Any:
    """A causal-LM head on a random LM, its tokenizer trained on :data:`SENTENCES`."""
    import torch

    from mmtrain.data.transforms import LMTokenizer
    from mmtrain.heads.causal_lm import CausalLMHead

    torch.manual_seed(0)
    tokenizer = LMTokenizer(max_length=1024).fit(SENTENCES)
    return CausalLMHead(
        in_dim=IMAGE_DIM,
        tokenizer=tokenizer,
        config=LM,
        vocab_size=tokenizer.vocab_size,
        pretrained=False,
        prompt="Describe the image.",
        gradient_checkpointing=gradient_checkpointing,
    )


def features(batch: int) -> Any:
    import torch

    from mmtrain.contracts import Features

    return Features(torch.randn(batch, IMAGE_TOKENS, IMAGE_DIM, generator=torch.Generator()))


def generate_without_cache(lm: Any, embeds: Any, mask: Any, new_tokens: int) -> Any:
    """Greedy decoding that re-runs the whole prefix (features, prompt, the tokens so far) at
    every step: what generation costs without a KV cache. (transformers always caches when
    generating from ``inputs_embeds``, so ``use_cache=False`` cannot be the baseline.)"""
    import torch

    table = lm.get_input_embeddings()
    tokens = []
    for _ in range(new_tokens):
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        logits = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        token = logits[:, -1].argmax(dim=-1)  # (B,)
        tokens.append(token)
        embeds = torch.cat([embeds, table(token)[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return torch.stack(tokens, dim=1)


def bench_kv_cache(batch: int, new_tokens: int, rounds: int) -> dict[str, Any]:
    """Captions/s of the head's generation (``lm.generate``, KV cache) against re-running the
    prefix (best of ``rounds``); both greedy, their tokens compared."""
    import torch

    model = head().eval()
    fused = features(batch)
    ids = torch.tensor([model.tokenizer.prompt_ids(model.prompt)] * batch)
    spliced = model.splice(fused, ids, left=True)
    kwargs = model.generation_kwargs()
    kwargs |= {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    runs: dict[str, list[float]] = {"cache": [], "prefix": []}
    outputs = {}
    with torch.no_grad():
        for _ in range(rounds):
            start = time.perf_counter()
            outputs["cache"] = model.lm.generate(
                inputs_embeds=spliced.embeds, attention_mask=spliced.attention_mask, **kwargs
            )
            runs["cache"].append(time.perf_counter() - start)
            start = time.perf_counter()
            outputs["prefix"] = generate_without_cache(
                model.lm, spliced.embeds, spliced.attention_mask, new_tokens
            )
            runs["prefix"].append(time.perf_counter() - start)
    same = float((outputs["cache"] == outputs["prefix"]).float().mean())
    with_cache, without = batch / min(runs["cache"]), batch / min(runs["prefix"])
    return {
        "batch": batch,
        "prefix_positions": int(spliced.embeds.shape[1]),
        "new_tokens": new_tokens,
        "captions_per_s_kv_cache": round(with_cache, 3),
        "captions_per_s_rerun_prefix": round(without, 3),
        "kv_cache_speedup": round(with_cache / without, 2),
        "same_tokens": round(same, 4),
    }


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_worker(checkpointing: bool, batch: int, steps: int) -> dict[str, Any]:
    """One process: training steps of the LM head; its time a step and peak memory."""
    import torch

    model = head(gradient_checkpointing=checkpointing).train()
    text = torch.tensor([[model.tokenizer.prompt_ids(model.prompt)[0]] * 32] * batch)
    text[:, 0] = -200  # FEATURE_TOKEN: the image tokens go first
    labels = text.clone()
    labels[:, 0] = -100
    fused = features(batch)
    before = _maxrss_mib()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = model(fused, text, None, labels=labels)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {
        "step_s": round(min(times[1:] or times), 4),
        "peak_mib_above_model": round(_maxrss_mib() - before, 1),
    }


def bench_checkpointing(batch: int, steps: int) -> dict[str, Any]:
    """:func:`step_worker` with checkpointing off and on, each in a fresh process."""
    out = {}
    for on in (False, True):
        command = [sys.executable, __file__, "--worker", str(int(on)), "--batch", str(batch)]
        command += ["--steps", str(steps)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        out["on" if on else "off"] = json.loads(done.stdout.strip().splitlines()[-1])
    off, on = out["off"], out["on"]
    out["step_time_ratio_on_vs_off"] = round(on["step_s"] / off["step_s"], 2)
    out["peak_memory_ratio_on_vs_off"] = round(
        on["peak_mib_above_model"] / max(off["peak_mib_above_model"], 1e-6), 3
    )
    out["batch"] = batch
    return out


def bench_lora() -> dict[str, Any]:
    """Trainable share under LoRA r=16 all-linear for Qwen2.5-0.5B's shape (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmtrain.adapters import LoRA, is_adapter

    config = AutoConfig.for_model(**QWEN25_05B)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    base = sum(p.numel() for p in lm.parameters())
    model = SimpleNamespace(encoders={}, heads={"caption": SimpleNamespace(lm=lm)})
    LoRA(r=16, alpha=32, target_modules="all-linear").apply(model)
    adapters = sum(p.numel() for n, p in lm.named_parameters() if is_adapter(n))
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    return {
        "model": "Qwen2.5-0.5B shape",
        "base_parameters": base,
        "adapter_parameters": adapters,
        "trainable_parameters": trainable,
        "trainable_fraction": round(trainable / (base + adapters), 5),
    }


CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_model_store(root: Path) -> Path:
    """Random models of the real shapes under the ids ``coco_caption_llm`` names: CLIP
    ViT-B/16's vision tower (with CLIP's 224 px processor) and Qwen2.5-0.5B (with a small
    word-level ChatML tokenizer: the size is the LM's, not the tokenizer's)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    clip = root / "openai" / "clip-vit-base-patch16"
    CLIPVisionModel(CLIPVisionConfig(patch_size=16, image_size=224)).save_pretrained(clip)
    CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(clip)
    lm = root / "Qwen" / "Qwen2.5-0.5B-Instruct"
    words = sorted({w for s in SENTENCES for w in s.split()} | {"describe", "image", "the", "in"})
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + words + ["user", "assistant", ".", "one"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(lm)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**QWEN25_05B)).save_pretrained(lm)
    return root


def bench_checkpoint_sizes(scratch: Path) -> dict[str, Any]:
    """``last.ckpt`` of ``experiment=coco_caption_llm`` (phase=lora, r=16), one step on a tiny
    synthetic COCO, trimmed (the phase's ``save_frozen: null``) and full
    (``model.save_frozen=true``), on random models of the real shapes."""
    from bench_caption import write_synthetic_coco

    store = write_model_store(scratch / "models")
    write_synthetic_coco(scratch / "coco", n_train=4, n_val=2, seed=0)
    sizes = {}
    for name, extra in (("trimmed", []), ("full", ["model.save_frozen=true"])):
        out = scratch / name
        command = [
            str(Path(sys.executable).with_name("mmtrain")),
            "fit",
            "experiment=coco_caption_llm",
            f"data.root={scratch / 'coco'}",
            f"paths.model_dir={store}",
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}",
            *extra,
        ]
        subprocess.run(command, capture_output=True, text=True, check=True)
        sizes[name] = (out / "checkpoints" / "last.ckpt").stat().st_size
    return {
        "models": "CLIP ViT-B/16 vision tower + Qwen2.5-0.5B (random weights, real shapes)",
        "trimmed_bytes": sizes["trimmed"],
        "full_bytes": sizes["full"],
        "trimmed_over_full": round(sizes["trimmed"] / sizes["full"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_llm.json"))
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker is not None:
        print(json.dumps(step_worker(bool(args.worker), args.batch, args.steps)))
        return
    rounds, steps = (1, 2) if args.quick else (3, 4)
    results = {
        "kv_cache": bench_kv_cache(batch=4, new_tokens=32, rounds=rounds),
        "gradient_checkpointing": bench_checkpointing(batch=4, steps=steps),
        "lora": bench_lora(),
    }
    if not args.quick:  # writes a 2 GB model and two checkpoints: a few minutes
        scratch = args.out.resolve().parent / f"{args.out.stem}_runs"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            results["checkpoint_sizes"] = bench_checkpoint_sizes(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
