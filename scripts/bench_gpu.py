"""GPU benchmark of the coco_caption model with ViT-B/16 (or, ``--model llm``, of the
coco_caption_llm model in its shape: ViT-B/16 -> mlp2x_gelu -> a random 1.1B Llama with LoRA):
eager vs ``model.compile=true`` vs ``trainer=fsdp`` on the same one device (the cost of FSDP's
wrapping, one unit per block, against plain training; ``fsdp_speed_ratio`` and
``fsdp_memory_ratio``).

One prepared script for a machine with a GPU (written for an H100/H200 with 16 CPU cores and no
internet; meant to take under 5 minutes: ``--budget``, 275 s, is a hard limit: a run that
would exceed it is stopped and reported as failed): ``experiment=coco_caption
encoder/image=vit_b16`` at 224 px, ``data.batch_size=128``, ``trainer=gpu
trainer.precision=bf16-mixed``, ``--steps`` optimizer steps through the real ``mmtrain fit``
command (a subprocess; no logger, ``callbacks=none``, no progress bar, model summary, sanity
check or validation; the preset's ``trainer.gradient_clip_val=1.0`` and AdamW stay), twice:
without and with ``model.compile=true``. Per mode it reports:

- ``samples_per_s``: (image, caption) pairs of the timed steps (``--warmup + 1`` to
  ``--steps``) over their wall time: from the end of step ``warmup`` to the end of the last
  step. The first steps hold CUDA and worker start-up and, with compile, the compilation
  (``first_step_s``: from just before the ``Popen`` of ``mmtrain fit`` to the end of step 1).
- ``step_s_median`` (and ``step_s_max``, which shows a recompilation in the timed steps): the
  time between the ends of consecutive steps. ``graphs_compiled_in_timed_steps`` counts the
  graphs dynamo compiled during the timed steps (0 unless something recompiled: the table
  warns; the compile run's log has ``TORCH_LOGS=recompiles``, which says why).
- ``data_wait_share``: the summed data waits of the timed steps over their wall time. A step's
  data wait is the time from the end of the previous step's ``on_train_batch_end`` to this
  step's ``on_train_batch_start``. That is Lightning's ``next()`` on its prefetching data
  fetcher (the main process blocking until a loader worker has the next batch decoded,
  augmented and collated), the host-to-device copy of the batch (issued
  non-blocking from pinned memory; the ``torch.cuda.synchronize()`` at the stamp waits for
  it), and Lightning's bookkeeping between two steps (logger connector, progress, the
  module's ``on_train_batch_end``; well under a millisecond). A share near 0: the GPU is the
  bottleneck; near 1: the loader (``--workers``) is.
- ``peak_memory_gib``: ``torch.cuda.max_memory_allocated()`` over the timed steps: the peak
  statistics are reset at the end of step ``warmup``, so the steady state is measured
  (weights, AdamW state, gradients, activations; the first step's and compilation's one-off
  allocations are out). ``peak_memory_reserved_gib``: the caching allocator's peak.
  ``peak_rss_gib``: the training process's peak host memory.
- ``flops_per_step``: the FLOPs of one training step's forward and backward, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on the last batch of the eager run, after the
  last time stamp and the memory reading: ``training_step`` (encoders, fusion, caption head,
  loss) under the trainer's precision context (bf16 autocast) and the module's ``backward``.
  Only matrix multiplications, convolutions and attention are counted (the usual "model
  FLOPs"; no elementwise ops, no optimizer step, no recomputation). The compiled model does
  the same mathematics, so the compile run reuses the eager count.
- ``mfu``: the model FLOPs utilisation estimate: ``flops_per_step / batch x samples_per_s``
  over the device's peak dense bf16 FLOP/s (:data:`PEAK_BF16_FLOPS`, keyed by
  ``torch.cuda.get_device_name()``; ``--peak-tflops`` overrides it); null, with
  ``mfu_note`` saying why, on a CPU or an unknown device. ``mfu_excluding_data_wait`` divides
  by the step time less the data wait: what the model alone reaches.

Timing: a Lightning callback (:func:`gpu_timer`) is injected through the CLI
(``+callbacks.timer._target_=bench_gpu.gpu_timer allowed_targets=[bench_gpu.]`` with this
folder on ``PYTHONPATH``, as ``scripts/bench.py`` does). It stamps ``time.perf_counter()`` in
``on_train_batch_start`` and ``on_train_batch_end``, each after ``torch.cuda.synchronize()``
on CUDA (so a step's GPU work is inside its own step; on the CPU there is nothing to wait
for). The synchronisation costs the overlap of one step's CPU launch with the previous step's
GPU tail, a few milliseconds at most; the module's non-finite gradient check synchronises in
every step anyway.

Data: a synthetic COCO 2017 set in the official layout (``bench_caption.write_synthetic_coco``:
640x480 JPEGs of ~130 kB, 5 captions an image), with enough images that the run stays inside
one epoch (``ceil(steps x batch / 5)``; the train split has one item per caption), so no epoch
boundary (worker restart, a short last batch and, with compile, a recompilation) falls into
the timed steps. The JPEGs are rendered in parallel processes; the set is written once under
``<out folder>/data/gpu_coco_<images>/`` and reused while its stamp holds. Loading is the
real coco_caption pipeline (decode, RandomResizedCrop to 224, ColorJitter, tokenisation,
collate) in ``--workers`` processes.

``--smoke``: the same pipeline on the CPU in about a minute (``trainer=cpu``, ViT-B/16 at 32
px, batch 2, 5 steps of which 2 warm-up, 1 loader worker, 1 torch thread; the compile run with
the ``aot_eager`` backend, since inductor's C++ code generation for ViT-B/16 takes minutes on
2 cores: ``--compile-backend inductor`` forces it); its numbers mean nothing, it checks that
everything but the CUDA calls works (``--peak-tflops`` gives it an MFU too).

Prints a table and writes JSON (default ``outputs/bench/gpu.json``); run directories and logs
go to ``<name>_runs/`` next to it. Exits non-zero (after writing both) when a run failed.

    .venv/bin/python scripts/bench_gpu.py [--out PATH] [--batch-size 128] [--steps 40]
        [--warmup 10] [--images N] [--workers 12] [--precision bf16-mixed]
        [--peak-tflops X] [--budget 275] [--modes eager,compile,fsdp] [--smoke] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import TRAINING_ONLY  # scripts/ is on the path: this script's folder

SCRIPTS = Path(__file__).resolve().parent
MODES = ("eager", "compile", "fsdp")
# What each mode adds to the plain (eager) run. fsdp: trainer=fsdp on this one device (one unit
# per block, sharded over one process: the cost of the wrapping itself, against plain training);
# on a CPU (--smoke) Lightning refuses FSDP, so the smoke run checks trainer=fsdp2 instead.
MODE_SHARE = {"eager": 0.3, "compile": 0.4, "fsdp": 0.3}  # of --budget, at most
CAPTIONS_PER_IMAGE = 5  # write_synthetic_coco; the train split has an item per caption
GIB = 2**30
# Peak dense (no sparsity) BF16 tensor-core FLOP/s from the vendor datasheets (NVIDIA H100,
# H200, GH200, A100, L40S, L40, L4, A10, B200 datasheets: the "BF16 Tensor Core" row, whose
# headline figure is with 2:4 sparsity, halved). Matched in order against
# torch.cuda.get_device_name() (case-insensitive): the first pattern found wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    (r"GH200", 989e12),
    (r"H200 NVL", 835e12),
    (r"H200", 989e12),  # H200 SXM ("NVIDIA H200")
    (r"H100 NVL", 835e12),
    (r"H100 PCIe", 756e12),
    (r"H100", 989e12),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    (r"B200", 2250e12),
    (r"A100", 312e12),  # SXM4 and PCIe, 40 and 80 GB
    (r"L40S", 362e12),
    (r"L40\b", 181e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
)
# The overrides of every run: coco_caption with ViT-B/16, nothing but training.
FIT_OVERRIDES = (
    "experiment=coco_caption",
    "encoder/image=vit_b16",
    *TRAINING_ONLY,
    "trainer.max_epochs=-1",  # max_steps ends the run
)
# --model llm: the coco_caption_llm model in its shape only (nothing downloaded): ViT-B/16's 197
# tokens -> mlp2x_gelu -> a random Llama of TinyLlama-1.1B's shape with LoRA (phase=lora), its
# word-level tokenizer trained on the captions; LM weights in bf16.
LLM_1B = (
    "{model_type:llama,hidden_size:2048,intermediate_size:5632,num_hidden_layers:22,"
    "num_attention_heads:32,num_key_value_heads:4,max_position_embeddings:2048}"
)
LLM_OVERRIDES = (
    "experiment=coco_caption",
    "encoder/image=vit_b16",
    "head/caption=causal_lm",
    "fusion=tokens",
    "phase=lora",
    "head.caption.model_name_or_path=null",
    "head.caption.pretrained=false",
    f"head.caption.config={LLM_1B}",
    "head.caption.dtype=bfloat16",
    "+data.targets.caption.prompt='Describe the image in one sentence.'",
    *TRAINING_ONLY,
    "trainer.max_epochs=-1",
)
SMOKE_OVERRIDES = ("encoder.image.image_size=32", "data.image.size=32")
LLM_SMOKE_OVERRIDES = (  # a small Llama, float32 (the CPU)
    "head.caption.config={model_type:llama,hidden_size:64,intermediate_size:128,"
    "num_hidden_layers:2,num_attention_heads:4,num_key_value_heads:4,max_position_embeddings:512}",
    "head.caption.dtype=null",
)
PER_MODE_KEYS = (  # in the JSON for each mode (null where it failed or was not run)
    "samples_per_s",
    "step_s_median",
    "data_wait_share",
    "peak_memory_gib",
    "flops_per_step",
    "mfu",
    "mfu_excluding_data_wait",
    "samples_per_s_excluding_data_wait",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- peak FLOP/s and MFU -------------------------------------------------------------------------
def peak_flops(device_name: str | None, override_tflops: float | None = None) -> dict[str, Any]:
    """The peak dense bf16 FLOP/s of a device: ``{"flops": float | None, "source": str}``.

    ``override_tflops`` (``--peak-tflops``) wins; else the first :data:`PEAK_BF16_FLOPS`
    pattern found in ``device_name``; else None, with the reason as ``source``.
    """
    if override_tflops is not None:
        if not override_tflops > 0:
            raise ValueError(f"--peak-tflops must be positive, got {override_tflops}")
        return {"flops": override_tflops * 1e12, "source": "--peak-tflops"}
    if not device_name or device_name.startswith("cpu"):
        return {"flops": None, "source": "no peak FLOP/s for a CPU (pass --peak-tflops)"}
    if "MIG" in device_name:  # a slice of the GPU: a share of its peak
        return {"flops": None, "source": f"MIG slice {device_name!r}: pass --peak-tflops"}
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return {"flops": flops, "source": f"datasheet dense bf16 ({pattern})"}
    return {
        "flops": None,
        "source": f"unknown device {device_name!r}: pass --peak-tflops (dense bf16)",
    }


def mfu(
    flops_per_sample: float | None, samples_per_s: float | None, peak: float | None
) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s (FLOPs a sample x samples/s) over ``peak``;
    None when any of them is unknown."""
    if not flops_per_sample or not samples_per_s or not peak:
        return None
    return flops_per_sample * samples_per_s / peak


# ---- the probe: a Lightning callback inside `mmtrain fit` ----------------------------------------
def _attention_flop_formulas() -> dict[Any, Any]:
    """FLOP formulas for the CPU's fused attention kernels, which ``FlopCounterMode`` does not
    count (torch registers the CUDA ones: flash, memory-efficient, cuDNN). The same formula:
    two matmuls forward (``QK^T``, ``PV``), four backward."""
    import torch

    def forward(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        b, h, s_q, d_q = q
        return 2 * b * h * s_q * k[-2] * (d_q + v[-1])

    def backward(
        g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any
    ) -> int:
        return 2 * forward(q, k, v)

    aten, out = torch.ops.aten, {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", backward),
    ):
        if hasattr(aten, name):
            out[getattr(aten, name)] = formula
    return out


def count_step_flops(trainer: Any, module: Any, batch: Any) -> int:
    """The FLOPs of one training step's forward and backward on ``batch`` (matmuls,
    convolutions, attention; see the module docstring). Leaves no gradients behind."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_attention_flop_formulas()) as counter:
        with trainer.precision_plugin.train_step_context():
            loss = module.training_step(batch, 0)
        module.backward(loss)
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in cpuinfo.read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    return f"cpu ({cpu})" if cpu else "cpu"


class GpuRecorder:
    """Stamps every training step's start and end, the peak memory and one step's FLOPs;
    writes them as JSON when training ends.

    Args:
        out: the JSON file to write.
        steps: the run's ``trainer.max_steps``.
        warmup: the untimed first steps; the peak-memory statistics are reset at the end of
            the last of them.
        flops: count one step's FLOPs after the last step (:func:`count_step_flops`).
    """

    def __init__(self, out: str, steps: int, warmup: int, flops: bool = True) -> None:
        self.out, self.steps, self.warmup, self.flops = Path(out), steps, warmup, flops
        self.starts: list[float] = []  # perf_counter() at on_train_batch_start
        self.ends: list[float] = []  # ... and at on_train_batch_end
        self.sizes: list[int] = []
        self.losses: list[float] = []
        self.graphs: list[int] = []  # with torch.compile: graphs compiled by each step's end
        self.text_tokens: list[int] = []  # caption tokens a step (the LM's text positions)
        self.record: dict[str, Any] = {}
        self.cuda = False

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def train_start(self, module: Any) -> None:
        import torch

        self.cuda = module.device.type == "cuda"
        self.record.update(
            device=_device_name(module.device),
            device_type=module.device.type,
            torch=torch.__version__,
            cuda=torch.version.cuda,
            train_start_unix=time.time(),
        )
        if self.cuda:
            props = torch.cuda.get_device_properties(module.device)
            self.record["device_memory_gib"] = props.total_memory / GIB
            self.record["capability"] = list(torch.cuda.get_device_capability(module.device))

    def batch_start(self) -> None:
        self._sync()
        self.starts.append(time.perf_counter())

    def batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any) -> None:
        import torch

        self._sync()
        self.ends.append(time.perf_counter())
        dynamo = sys.modules.get("torch._dynamo.utils")  # loaded once anything compiles
        if dynamo is not None:
            self.graphs.append(int(dynamo.counters["stats"]["unique_graphs"]))
        if len(self.ends) == 1:
            self.record["first_step_end_unix"] = time.time()
        self.sizes.append(len(batch["id"]) if isinstance(batch, Mapping) and "id" in batch else 0)
        if isinstance(batch, Mapping) and "caption_mask" in batch:  # the LM's text positions
            self.text_tokens.append(int(batch["caption_mask"].sum()))
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self.losses.append(float(loss) if loss is not None else math.nan)
        if len(self.ends) == self.warmup and self.cuda:
            torch.cuda.reset_peak_memory_stats(module.device)
        if len(self.ends) == self.steps:  # the last step: memory, then (untimed) the FLOPs
            if self.cuda:
                self.record["peak_memory_bytes"] = torch.cuda.max_memory_allocated(module.device)
                self.record["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(module.device)
            if self.flops:  # a failure here costs the MFU, not the run's timings
                start = time.perf_counter()
                try:
                    self.record["flops_per_step"] = count_step_flops(trainer, module, batch)
                except Exception as error:
                    import traceback

                    traceback.print_exc()
                    self.record["flops_error"] = f"{type(error).__name__}: {error}"
                    module.zero_grad(set_to_none=True)
                self.record["flops_batch_size"] = self.sizes[-1]
                self.record["flops_count_s"] = time.perf_counter() - start
            with torch.no_grad():  # untimed: the fused tokens a sample brings to the head
                fused = module(batch)
            self.record["fused_tokens_per_sample"] = (
                fused.tokens.shape[1]
                if fused.mask is None
                else float(fused.mask.sum()) / fused.tokens.shape[0]
            )

    def finish(self) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.record.update(
            starts=self.starts,
            ends=self.ends,
            sizes=self.sizes,
            text_tokens=self.text_tokens,
            losses=self.losses,
            graphs=self.graphs,
            peak_rss_bytes=peak * (1 if sys.platform == "darwin" else 1024),
        )
        dynamo = sys.modules.get("torch._dynamo.utils")
        if dynamo is not None:  # graph breaks seen while compiling (dynamo's counter)
            self.record["graph_breaks"] = sum(dynamo.counters["graph_break"].values())
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.record))


def gpu_timer(
    out: str, steps: int, warmup: int, flops: bool = True, compile_backend: str | None = None
) -> Any:
    """The Lightning callback that ``mmtrain fit`` instantiates from
    ``+callbacks.timer._target_=bench_gpu.gpu_timer`` (with ``scripts/`` on ``PYTHONPATH``
    and ``allowed_targets=[bench_gpu.]``); ``out``, ``steps``, ``warmup`` and ``flops`` as
    :class:`GpuRecorder`'s. Lightning is imported here, not at the top: this module's own
    process stays light.

    ``compile_backend`` (``--compile-backend``; ``--smoke`` uses ``aot_eager``): with
    ``model.compile=true``, compile the same parts as ``MultimodalModule.configure_model``
    (encoders, fusion, heads) with this ``torch.compile`` backend instead of the default
    (inductor), in the ``setup`` hook, which Lightning calls just before ``configure_model``.
    """
    import pytorch_lightning as pl

    recorder = GpuRecorder(out, steps, warmup, flops)

    class GpuTimer(pl.Callback):
        """Forwards Lightning's training hooks to a :class:`GpuRecorder`."""

        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            if compile_backend and getattr(pl_module, "compile_parts", False):
                pl_module.compile_parts = False  # configure_model leaves them alone
                parts = [*pl_module.encoders.values(), pl_module.fusion, *pl_module.heads.values()]
                for part in parts:
                    part.compile(backend=compile_backend)
                recorder.record["compile_backend"] = compile_backend

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            recorder.train_start(pl_module)

        def on_train_batch_start(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            recorder.batch_start()

        def on_train_batch_end(
            self,
            trainer: pl.Trainer,
            pl_module: pl.LightningModule,
            outputs: Any,
            batch: Any,
            batch_idx: int,
        ) -> None:
            recorder.batch_end(trainer, pl_module, outputs, batch)

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            recorder.finish()

    return GpuTimer()


# ---- the data ------------------------------------------------------------------------------------
def _render_jpeg(job: tuple[str, int, int]) -> int:
    """One synthetic COCO JPEG (``bench_caption._write_jpeg``), seeded by ``(seed, index)``."""
    import numpy as np
    from bench_caption import _write_jpeg

    path, seed, index = job
    return _write_jpeg(Path(path), np.random.default_rng([seed, index]))


def coco_fixture(
    data_dir: Path, images: int, seed: int, processes: int
) -> tuple[Path, dict[str, Any]]:
    """The COCO 2017 layout with ``images`` training images (and 8 validation images) under
    ``data_dir/gpu_coco_<images>``, written once (``write_once``: atomic, reused while its
    stamp holds). ``bench_caption.write_synthetic_coco`` writes the annotations and names the
    files; the JPEGs are rendered afterwards by ``processes`` processes."""
    import concurrent.futures
    import multiprocessing
    from unittest import mock

    import bench_caption

    from mmtrain.data.shapes import write_once

    root = data_dir / f"gpu_coco_{images}"
    stamp = {"train": images, "val": 8, "seed": seed, "writer": "bench_gpu"}
    info: dict[str, Any] = {"root": str(root), "images": images, "generated": False}

    def write(folder: Path) -> None:
        log(f"writing {images} + 8 synthetic 640x480 COCO images to {root} ({processes} processes)")
        start = time.perf_counter()
        paths: list[str] = []
        with mock.patch.object(
            bench_caption, "_write_jpeg", lambda p, rng: paths.append(str(p)) or 0
        ):
            bench_caption.write_synthetic_coco(folder, images, 8, seed)
        jobs = [(p, seed, i) for i, p in enumerate(paths)]
        # fork: nothing in this process has touched CUDA
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
            sizes = list(pool.map(_render_jpeg, jobs, chunksize=8))
        info.update(generated=True, generate_s=time.perf_counter() - start)
        info["mean_jpeg_bytes"] = int(statistics.mean(sizes))

    write_once(root, stamp, "bench_coco.json", write)
    return root, info


# ---- the runs ------------------------------------------------------------------------------------
def _run_child(
    command: list[str], env: dict[str, str], log_file: Path, timeout: float
) -> dict[str, Any]:
    """Run ``command`` (output to ``log_file``) in a session of its own; after ``timeout``
    seconds its process group (loader workers, compile workers) is terminated.

    Returns:
        ``started`` (``time.time()`` before the Popen), ``wall_s``, ``returncode`` and
        ``timed_out``.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as out:
        started, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
    return {
        "started": started,
        "wall_s": time.perf_counter() - start,
        "returncode": proc.returncode,
        "timed_out": timed_out,
    }


def _tokens_per_s(
    record: dict[str, Any], timed: range, window: float, samples: int
) -> dict[str, Any]:
    """With a text target (the caption tokens recorded): its tokens/s and, where the fused
    tokens a sample brings are known, the LM head's positions/s (text + fused tokens)."""
    text = record.get("text_tokens") or []
    if len(text) < len(record["ends"]):
        return {}
    text_per_s = sum(text[i] for i in timed) / window
    out = {"text_tokens_per_s": text_per_s}
    fused = record.get("fused_tokens_per_sample")
    if fused is not None:
        out["fused_tokens_per_sample"] = fused
        out["tokens_per_s"] = text_per_s + samples * fused / window
    return out


def summarise(record: dict[str, Any], warmup: int) -> dict[str, Any]:
    """The timed steps (``warmup + 1`` to the last) of one run's record."""
    starts, ends, sizes = record["starts"], record["ends"], record["sizes"]
    if len(ends) <= warmup:
        raise ValueError(f"the run ended after {len(ends)} steps, not more than --warmup {warmup}")
    timed = range(warmup, len(ends))  # 0-based indices of the timed steps
    steps = [ends[i] - ends[i - 1] for i in timed]
    waits = [starts[i] - ends[i - 1] for i in timed]
    window = ends[-1] - ends[warmup - 1]
    samples = sum(sizes[i] for i in timed)
    gib = {k: record.get(f"{k}_bytes") for k in ("peak_memory", "peak_reserved", "peak_rss")}
    return {
        "timed_steps": len(steps),
        "samples_per_s": samples / window,
        "step_s_median": statistics.median(steps),
        "step_s_mean": window / len(steps),
        "step_s_max": max(steps),
        "data_wait_share": sum(waits) / window,
        "data_wait_s_median": statistics.median(waits),
        "compute_step_s_median": statistics.median(s - w for s, w in zip(steps, waits)),
        "samples_per_s_excluding_data_wait": samples / (window - sum(waits)),
        "peak_memory_gib": gib["peak_memory"] / GIB if gib["peak_memory"] is not None else None,
        "peak_memory_reserved_gib": gib["peak_reserved"] / GIB
        if gib["peak_reserved"] is not None
        else None,
        "peak_rss_gib": gib["peak_rss"] / GIB if gib["peak_rss"] is not None else None,
        # with compile: graphs compiled in all, and in the timed steps (a recompilation there
        # puts compile time into the numbers: raise --warmup)
        "compiled_graphs": record["graphs"][-1] if record.get("graphs") else None,
        "graphs_compiled_in_timed_steps": (
            record["graphs"][-1] - record["graphs"][warmup - 1] if record.get("graphs") else None
        ),
        "graph_breaks": record.get("graph_breaks"),
        **_tokens_per_s(record, timed, window, samples),
        "first_loss": record["losses"][0],
        "last_loss": record["losses"][-1],
    }


def _trainer(mode: str, accelerator: str) -> list[str]:
    """The trainer overrides of ``mode``: plain on one device, or sharded over one process."""
    if mode != "fsdp":
        return [f"trainer={accelerator}"]
    if accelerator == "gpu":
        return ["trainer=fsdp", "trainer.devices=1"]
    return ["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=1"]


def run_mode(
    mode: str, args: argparse.Namespace, root: Path, env: dict[str, str], runs: Path, timeout: float
) -> dict[str, Any]:
    """One ``mmtrain fit`` (``model.compile=true`` for ``compile``): its record, summarised;
    ``error`` instead of numbers when it failed or ran out of time."""
    from bench import _mmtrain_command

    out = runs / f"{mode}.json"
    llm = args.model == "llm"
    overrides = [
        *(LLM_OVERRIDES if llm else FIT_OVERRIDES),
        f"data.root={json.dumps(str(root))}",
        *_trainer(mode, args.accelerator),
        f"trainer.precision={args.precision}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"trainer.max_steps={args.steps}",
        f"seed={args.seed}",
        f"model.compile={'true' if mode == 'compile' else 'false'}",
        *(SMOKE_OVERRIDES if args.smoke else ()),
        *(LLM_SMOKE_OVERRIDES if args.smoke and llm else ()),
        "+callbacks.timer._target_=bench_gpu.gpu_timer",
        f"+callbacks.timer.out={json.dumps(str(out))}",
        f"+callbacks.timer.steps={args.steps}",
        f"+callbacks.timer.warmup={args.warmup}",
        f"+callbacks.timer.flops={'true' if mode == 'eager' else 'false'}",
        *(
            [f"+callbacks.timer.compile_backend={args.compile_backend}"]
            if mode == "compile" and args.compile_backend
            else []
        ),
        "allowed_targets=[bench_gpu.]",
        f"hydra.run.dir={json.dumps(str(runs / mode))}",
        *args.extra,
    ]
    log_file = runs / f"{mode}.log"
    log(f"{mode}: mmtrain fit ... (at most {timeout:.0f} s; log {log_file})")
    if mode == "compile":  # the log says why anything recompiles
        env = {**env, "TORCH_LOGS": env.get("TORCH_LOGS") or "recompiles"}
    child = _run_child([*_mmtrain_command(), "fit", *overrides], env, log_file, timeout)
    result: dict[str, Any] = {
        "run_s": child["wall_s"],
        "log": str(log_file),
        "overrides": overrides,
    }
    if child["timed_out"] or child["returncode"] != 0 or not out.is_file():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-25:])
        why = (
            f"timed out after {timeout:.0f} s"
            if child["timed_out"]
            else f"exit code {child['returncode']}"
        )
        log(f"{mode}: failed ({why}); the end of {log_file}:\n{tail}")
        result["error"] = why
        return result
    record = json.loads(out.read_text())
    try:
        result.update(summarise(record, args.warmup))
        result["first_step_s"] = record["first_step_end_unix"] - child["started"]
    except (ValueError, KeyError, IndexError) as error:
        result["error"] = f"unusable record {out}: {type(error).__name__}: {error}"
        log(f"{mode}: {result['error']}")
        return result
    for key in ("device", "device_type", "torch", "cuda", "device_memory_gib", "capability"):
        result[key] = record.get(key)
    if "flops_error" in record:
        result["flops_error"] = record["flops_error"]
    if "flops_per_step" in record:
        result.update(
            flops_per_step=record["flops_per_step"],
            flops_per_sample=record["flops_per_step"] / max(record["flops_batch_size"], 1),
            flops_source="measured: FlopCounterMode, forward + backward of the last batch",
            flops_count_s=record["flops_count_s"],
        )
    return result


def finish(result: dict[str, Any], args: argparse.Namespace) -> None:
    """FLOPs of the compile run (the eager count), MFU, the speed-up."""
    eager, comp, fsdp = (result[m] for m in MODES)
    device = next((result[m]["device"] for m in MODES if result[m].get("device")), None)
    peak = peak_flops(device, args.peak_tflops)
    result.update(device=device, peak_flops=peak["flops"], peak_flops_source=peak["source"])
    runs = [result[m] for m in MODES]
    result["torch"] = next((m["torch"] for m in runs if m.get("torch")), result["torch"])
    result["cuda"] = next((m["cuda"] for m in runs if m.get("cuda")), None)
    for other in (comp, fsdp):
        if "flops_per_step" in eager and "error" not in other and "flops_per_step" not in other:
            other.update(
                flops_per_step=eager["flops_per_step"],
                flops_per_sample=eager["flops_per_sample"],
                flops_source="the eager run's count (the same computation)",
            )
    for mode in (result[m] for m in MODES):
        if "error" in mode:  # the same keys, null
            for key in PER_MODE_KEYS:
                mode.setdefault(key, None)
            mode["mfu_note"] = f"no run: {mode['error']}"
            continue
        mode.setdefault("flops_per_step", None)
        mode["mfu"] = mfu(mode.get("flops_per_sample"), mode["samples_per_s"], peak["flops"])
        mode["mfu_excluding_data_wait"] = mfu(
            mode.get("flops_per_sample"), mode["samples_per_s_excluding_data_wait"], peak["flops"]
        )
        if mode["mfu"] is None:
            no_count = (
                f"no FLOP count ({eager.get('flops_error') or 'the eager run did not count'})"
            )
            mode["mfu_note"] = peak["source"] if peak["flops"] is None else no_count
    ok = eager.get("samples_per_s") and comp.get("samples_per_s")
    result["compile_speedup"] = comp["samples_per_s"] / eager["samples_per_s"] if ok else None
    result["compile_speedup_excluding_data_wait"] = (
        comp["samples_per_s_excluding_data_wait"] / eager["samples_per_s_excluding_data_wait"]
        if ok
        else None
    )
    ok = eager.get("samples_per_s") and fsdp.get("samples_per_s")
    result["fsdp_speed_ratio"] = fsdp["samples_per_s"] / eager["samples_per_s"] if ok else None
    ok = ok and eager.get("peak_memory_gib") and fsdp.get("peak_memory_gib")
    result["fsdp_memory_ratio"] = fsdp["peak_memory_gib"] / eager["peak_memory_gib"] if ok else None


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def print_table(result: dict[str, Any]) -> None:
    """The summary on stdout."""
    a = result["config"]
    peak = result["peak_flops"]
    peak_text = (
        f"peak {peak / 1e12:.4g} TFLOP/s ({result['peak_flops_source']})"
        if peak
        else result["peak_flops_source"]
    )
    print(
        f"\ndevice: {result['device']}; torch {result['torch']}, CUDA {result['cuda']}; {peak_text}"
    )
    llm = a.get("model") == "llm"
    model = "coco_caption_llm shape (1.1B Llama, LoRA)" if llm else "coco_caption"
    print(
        f"{model}, ViT-B/16 at {a['image_size']} px, batch {a['batch_size']}, "
        f"{a['precision']}, {a['workers']} loader workers; "
        f"steps {a['warmup'] + 1}-{a['steps']} timed"
        + (" (--smoke: the numbers mean nothing)" if a["smoke"] else "")
    )
    print(
        f"{'mode':<8}{'samples/s':>10}{'step ms':>9}{'max ms':>8}{'data wait':>10}"
        f"{'compute ms':>11}{'peak GiB':>9}{'GFLOP/step':>11}{'MFU':>7}{'MFU*':>7}"
        f"{'1st step s':>11}"
    )
    for name in MODES:
        m = result[name]
        if "error" in m:
            failed = f"failed: {m['error']} (log: {m['log']})" if m["log"] else m["error"]
            print(f"{name:<8}{failed}")
            continue
        print(
            f"{name:<8}{m['samples_per_s']:>10.1f}{m['step_s_median'] * 1e3:>9.1f}"
            f"{m['step_s_max'] * 1e3:>8.1f}{m['data_wait_share']:>10.1%}"
            f"{m['compute_step_s_median'] * 1e3:>11.1f}{_fmt(m['peak_memory_gib'], '.2f'):>9}"
            f"{_fmt(m['flops_per_step'], '.1f', 1e-9):>11}{_fmt(m['mfu'], '.1%'):>7}"
            f"{_fmt(m['mfu_excluding_data_wait'], '.1%'):>7}{m['first_step_s']:>11.1f}"
        )
    print("step ms: between step ends; compute ms: step less data wait; MFU*: without the waits")
    for name in MODES:
        m = result[name]
        if m.get("tokens_per_s") is not None:
            print(
                f"{name}: {m['tokens_per_s']:.0f} LM tokens/s ({m['fused_tokens_per_sample']:.0f} "
                f"fused tokens a sample + {m['text_tokens_per_s']:.0f} text tokens/s)"
            )
    for name in MODES:
        m = result[name]
        if m.get("graphs_compiled_in_timed_steps"):
            print(
                f"warning: {name}: {m['graphs_compiled_in_timed_steps']} graph(s) compiled in the "
                f"timed steps (see 'recompiles' in {m['log']}): raise --warmup"
            )
        if m.get("mfu_note") and "error" not in m:
            print(f"{name}: MFU not computed: {m['mfu_note']}")
    if result["compile_speedup"] is not None:
        print(
            f"compile speed-up {result['compile_speedup']:.2f}x "
            f"(excluding data wait: {result['compile_speedup_excluding_data_wait']:.2f}x)"
        )
    if result.get("fsdp_speed_ratio") is not None:
        memory = result.get("fsdp_memory_ratio")
        print(
            f"fsdp on one device against plain: {result['fsdp_speed_ratio']:.2f}x samples/s"
            + (f", {memory:.2f}x peak memory" if memory is not None else "")
        )
    print(f"wall time {result['wall_s']:.0f} s; JSON: {result['out']}")


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/bench/gpu.json", help="the JSON to write")
    p.add_argument("--data-dir", help="generated data sets (default: <out folder>/data)")
    p.add_argument(
        "--model",
        choices=("caption", "llm"),
        default="caption",
        help="caption: coco_caption ViT-B/16; llm: coco_caption_llm's shape, a 1.1B Llama + LoRA",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 128; --model llm: 32")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps (compilation)")
    p.add_argument("--images", type=int, help="training images (default: one epoch of --steps)")
    p.add_argument("--workers", type=int, default=12, help="data-loader processes")
    p.add_argument("--precision", default="bf16-mixed", help="trainer.precision")
    p.add_argument("--peak-tflops", type=float, help="peak dense FLOP/s of the device, in TFLOP/s")
    p.add_argument("--modes", default=",".join(MODES), help="eager,compile,fsdp or some of them")
    p.add_argument(
        "--budget",
        type=float,
        help="wall seconds for everything (default 275; smoke 170); a run past it is stopped",
    )
    p.add_argument("--accelerator", choices=("gpu", "cpu"), help="default: gpu; cpu with --smoke")
    p.add_argument(
        "--compile-backend",
        help="torch.compile backend of the compile run (default: inductor, as model.compile; "
        "--smoke: aot_eager, since inductor needs minutes on a small CPU; 'inductor' forces it)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads of the training process (OMP_NUM_THREADS; default: torch's own; "
        "--smoke: 1, as a shared small CPU slows down badly with spinning threads)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run: checks the pipeline only")
    p.add_argument("extra", nargs="*", help="more mmtrain fit overrides (key=value)")
    args = p.parse_args(argv)
    args.batch_size = args.batch_size or (32 if args.model == "llm" else 128)
    if args.smoke:
        args.batch_size, args.steps, args.warmup, args.workers = 2, 5, 2, 1
        args.accelerator = args.accelerator or "cpu"
        args.compile_backend = args.compile_backend or "aot_eager"
        args.threads = 1 if args.threads is None else args.threads
    args.threads = args.threads or 0  # 0: torch's default
    if args.compile_backend == "inductor":  # model.compile's own default: nothing to inject
        args.compile_backend = None
    args.accelerator = args.accelerator or "gpu"
    args.budget = args.budget or (170.0 if args.smoke else 275.0)
    if not 1 <= args.warmup < args.steps:
        p.error(f"need 1 <= --warmup < --steps, got {args.warmup} and {args.steps}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        p.error(f"--modes: some of {MODES}, got {args.modes}")
    need = math.ceil(args.steps * args.batch_size / CAPTIONS_PER_IMAGE)
    args.images = args.images or need
    if args.images < need:
        log(
            f"warning: {args.images} images ({CAPTIONS_PER_IMAGE} items each) are fewer than "
            f"{args.steps} steps x {args.batch_size} need: epoch ends fall into the run"
        )
    out = Path(args.out).resolve()
    args.out = out
    args.data_dir = Path(args.data_dir).resolve() if args.data_dir else out.parent / "data"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what is written to ``--out``."""
    wall = time.perf_counter()
    args = parse_args(argv)
    sys.path.insert(0, str(SCRIPTS))  # bench, bench_caption (as when run as a script)
    import torch
    from bench import _child_env, scratch_folder

    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_gpu: no CUDA device here; run it on a GPU machine, or --smoke on the CPU"
        )
    runs = scratch_folder(args.out)
    processes = max(1, min(os.cpu_count() or 1, 32))
    root, fixture = coco_fixture(args.data_dir, args.images, args.seed, processes)
    # scripts/ on PYTHONPATH; OMP_NUM_THREADS with --threads
    env = _child_env(argparse.Namespace(threads=args.threads), args.data_dir, runs)
    result: dict[str, Any] = {
        "config": {
            "model": args.model,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "workers": args.workers,
            "precision": args.precision,
            "accelerator": args.accelerator,
            "image_size": 32 if args.smoke else 224,
            "images": args.images,
            "smoke": args.smoke,
            "compile_backend": args.compile_backend or "inductor",
            "budget_s": args.budget,
            "extra_overrides": args.extra,
            "cpu_count": os.cpu_count(),
            "threads": args.threads or "torch default",
        },
        "fixture": fixture,
        "torch": torch.__version__,
    }
    deadline = wall + args.budget
    for mode in MODES:
        if mode not in args.modes:
            result[mode] = {"error": "not run (--modes)", "log": None}
            continue
        left = deadline - time.perf_counter()
        if left < 20:
            result[mode] = {"error": f"no time left in --budget {args.budget:.0f} s", "log": None}
            continue
        later = [m for m in MODES[MODES.index(mode) + 1 :] if m in args.modes]
        timeout = left if not later else min(left, max(20.0, MODE_SHARE[mode] * args.budget))
        result[mode] = run_mode(mode, args, root, env, runs, timeout)
    finish(result, args)
    result.update(wall_s=time.perf_counter() - wall, out=str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    failed = [m for m in args.modes if "error" in result[m]]
    if failed:
        raise SystemExit(
            f"bench_gpu: {', '.join(failed)} failed (see the logs above); JSON: {args.out}"
        )
    return result


if __name__ == "__main__":
    main()
