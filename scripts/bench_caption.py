"""Benchmark the coco_caption model on this machine: training, data loading and decoding.

Every number is a ratio against a baseline measured in the same run (nothing is hard-coded):

1. training images/s of ``experiment=coco_caption`` (224 px) with each image encoder
   (``encoder/image=cnn`` and ``resnet18``, never pretrained): ``module.training_step`` +
   backward + gradient clipping (as ``trainer.gradient_clip_val``) + AdamW step on pre-collated
   batches from the mmtrain train dataloader (model time only; the loader is part 2), without
   Lightning's Trainer. Baseline: the first encoder (``cnn``).
2. data-loading images/s of the data module's train dataloader (JPEG decode, RandomResizedCrop,
   ColorJitter, caption tokenisation, collate), also with ``data.image.augment=false``, for each
   worker count. Baseline: a plain torchvision loop over the same files (PIL open, v2
   Resize/ToImage/ToDtype/Normalize, default collate, same batch size, workers and shuffling).
3. decoding captions/s of ``TransformerCaptionHead.generate`` with ``beam_size`` 1 (greedy), 3
   and 5 on one batch of real fused features of a freshly initialised model (its head rarely
   emits ``<eos>``, so every beam size runs all ``max_length`` steps of the tokenizer: equal
   work). Baseline: greedy.

Data: a synthetic COCO 2017 set in the official layout (``annotations/captions_train2017.json``,
``train2017/``, ``val2017/``) of 640x480 JPEGs and 5 captions an image, written into a temporary
folder, or into ``--data-root`` (a folder that already holds the layout, real COCO included, is
used as it is). Prints a table and writes JSON (default ``outputs/bench/caption.json``).

    .venv/bin/python scripts/bench_caption.py [--out PATH] [--data-root DIR] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from omegaconf import DictConfig, open_dict
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mmtrain.build import build_datamodule, build_module
from mmtrain.config import task_config
from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.transforms.image import IMAGENET_MEAN, IMAGENET_STD
from mmtrain.module import MultimodalModule
from mmtrain.utils.config_check import check_config

# Without a Trainer, LightningModule.log is a no-op that warns; Lightning's own noise too.
warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

IMAGE_SIZE = (640, 480)  # width, height: the typical COCO image
FUNCTION_WORDS = ("on", "with", "in", "of", "and", "near", "next to", "under", "behind")
SECTIONS = ("train", "data_loading", "decoding")
BUSY = 0.1  # warn when other processes used more than this share of the CPUs in a section
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- the synthetic data set ------------------------------------------------------------------
def _word(i: int) -> str:
    """The i-th pseudo-word: 2 or more syllables, distinct for distinct i."""
    out, n = [], i + len(SYLLABLES)  # at least two syllables
    while n:
        n, r = divmod(n, len(SYLLABLES))
        out.append(SYLLABLES[r])
    return "".join(out)


def _captions(count: int, min_freq: int, rng: random.Random) -> list[str]:
    """COCO-like raw captions (~11 words) whose content words each occur >= ``min_freq`` times.

    The vocabulary grows with the data, as large as ``min_freq`` allows: a bigger output layer
    and beam top-k than a few repeated words would give.
    """
    n_content = [rng.randint(4, 8) for _ in range(count)]
    vocab = max(1, sum(n_content) // (min_freq + 1))
    stream = [i % vocab for i in range(sum(n_content))]
    rng.shuffle(stream)
    words = iter(stream)
    captions = []
    for n in n_content:
        parts = ["A", _word(next(words)), _word(next(words))]
        for _ in range(n - 2):
            parts += [rng.choice(FUNCTION_WORDS), rng.choice(("a", "the")), _word(next(words))]
        captions.append(" ".join(parts) + ".")
    return captions


def _write_jpeg(path: Path, rng: np.random.Generator) -> int:
    """A smooth random colour field plus sensor-like noise: ~130 kB, like a COCO photo."""
    w, h = IMAGE_SIZE
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    pixels = np.asarray(base.resize((w, h), Image.BICUBIC), dtype=np.float32)
    pixels += rng.standard_normal((h, w, 3), dtype=np.float32) * 14.0
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def write_synthetic_coco(root: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    """Write the official COCO 2017 captions layout under ``root`` (5 captions an image)."""
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    ids = rng.sample(range(1, 600_000), n_train + n_val)  # sparse image ids, as in COCO
    ann_ids = iter(rng.sample(range(1, 900_000), 5 * (n_train + n_val)))
    captions = iter(_captions(5 * (n_train + n_val), min_freq=5, rng=rng))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    sizes = []
    for split, split_ids in (("train", ids[:n_train]), ("val", ids[n_train:])):
        folder = root / f"{split}2017"
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for image_id in split_ids:
            name = f"{image_id:012d}.jpg"
            sizes.append(_write_jpeg(folder / name, np_rng))
            w, h = IMAGE_SIZE
            images.append({"id": image_id, "file_name": name, "width": w, "height": h})
            annotations += [
                {"id": next(ann_ids), "image_id": image_id, "caption": next(captions)}
                for _ in range(5)
            ]
        rng.shuffle(annotations)  # the release does not group annotations by image
        (root / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"info": {"year": 2017}, "images": images, "annotations": annotations})
        )
    return {"mean_jpeg_bytes": int(statistics.mean(sizes)), "image_size": list(IMAGE_SIZE)}


@contextmanager
def data_root(path: str | None, n_train: int, n_val: int, seed: int) -> Iterator[dict[str, Any]]:
    """The data folder: ``path`` (written unless it holds the layout) or a temporary one."""
    with tempfile.TemporaryDirectory(prefix="bench_caption_") as tmp:
        root = Path(path) if path else Path(tmp) / "coco"
        info: dict[str, Any] = {"root": str(root), "temporary": path is None}
        if (root / "annotations" / "captions_train2017.json").is_file():
            info["generated"] = False
        else:
            log(f"writing {n_train}+{n_val} synthetic COCO images to {root}")
            start = time.perf_counter()
            info.update(generated=True, **write_synthetic_coco(root, n_train, n_val, seed))
            info["generate_s"] = round(time.perf_counter() - start, 2)
        yield info


# ---- configs and parts -----------------------------------------------------------------------
def compose_fit(root: str, *overrides: str) -> DictConfig:
    """``mmtrain fit experiment=coco_caption data.root=<root> overrides``, composed in-process."""
    args = ["experiment=coco_caption", f"data.root={json.dumps(root)}", *overrides]
    cfg = task_config("fit", args, tempfile.gettempdir())
    with open_dict(cfg):
        if "pretrained" in cfg.encoder.image:  # never download weights
            cfg.encoder.image.pretrained = False
    check_config(cfg, list(cfg.get("allowed_targets") or []))
    return cfg


def datamodule(cfg: DictConfig) -> MultimodalDataModule:
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ---- 1. training -----------------------------------------------------------------------------
def train_rate(
    module: MultimodalModule, batches: list[dict[str, Any]], warmup: int, steps: int, clip: float
) -> dict[str, Any]:
    """images/s of training_step + backward (+ clipping) + AdamW step, after ``warmup`` steps."""
    module.train()
    optimizer = module.optimizer_factory(module.parameters())
    times, losses = [], []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = module.training_step(batch, i)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    batch_size = len(batches[0]["id"])
    return {  # the median step: robust to a stray process on a shared machine
        "images_per_s": batch_size / statistics.median(times),
        "images_per_s_mean": batch_size * len(times) / sum(times),
        "step_s_median": statistics.median(times),
        "params": sum(p.numel() for p in module.parameters()),
        "loss_first_last": [losses[0], losses[-1]],
    }


def bench_training(
    root: str, args: argparse.Namespace, data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Train each encoder on the same pre-collated batches; return the section, the data facts
    and the first batch (for decoding)."""
    overrides = [f"data.batch_size={args.batch_size}", "data.num_workers=0"]
    seed_all(args.seed)
    dm = datamodule(compose_fit(root, *overrides))
    data["train_items"] = len(dm.datasets["train"])
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.train_batches)]
    del loader
    rows = []
    for encoder in args.encoders:
        cfg = compose_fit(root, *overrides, f"encoder/image={encoder}")
        seed_all(args.seed)
        module = build_module(cfg, dm.facts())
        clip = float(cfg.trainer.get("gradient_clip_val") or 0.0)
        row = {
            "encoder": encoder,
            **train_rate(module, batches, args.warmup_steps, args.steps, clip),
        }
        log(f"  training, {encoder}: {row}")
        rows.append(row)
    for row in rows:
        row["ratio"] = row["images_per_s"] / rows[0]["images_per_s"]
    section = {
        "baseline": args.encoders[0],
        "batches": "pre-collated from the mmtrain train dataloader (model time only)",
        "image_size": dm.inputs["image"].size,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "distinct_batches": len(batches),
        "gradient_clip_val": clip,
        "optimizer": "AdamW (the experiment's optimizer config)",
        "results": rows,
    }
    return section, dm.facts(), batches[0]


# ---- 2. data loading -------------------------------------------------------------------------
class PlainImages(Dataset):
    """The baseline: PIL open + torchvision v2 resize and normalise, nothing else."""

    def __init__(self, paths: list[str], size: int) -> None:
        self.paths = paths
        self.transform = v2.Compose(
            [
                v2.Resize((size, size), antialias=True),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as img:
            return self.transform(img.convert("RGB"))


def loader_rate(loader: DataLoader, warmup: int, batches: int, repeats: int) -> float:
    """images/s: the best of ``repeats`` runs of ``batches`` batches, after ``warmup`` batches
    (worker start-up excluded), all from one epoch."""
    if warmup + batches * repeats > len(loader):
        raise ValueError(
            f"need warm-up + timed batches <= {len(loader)} batches an epoch, got "
            f"{warmup} + {repeats} x {batches}: lower --load-batches or raise --images"
        )
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    rates = []
    for _ in range(repeats):
        images, start = 0, time.perf_counter()
        for _ in range(batches):
            batch = next(it)
            images += len(batch["image"] if isinstance(batch, dict) else batch)
        rates.append(images / (time.perf_counter() - start))
    del it  # shuts the workers down before the next measurement
    gc.collect()
    return max(rates)


def bench_loading(root: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for workers in args.workers:
        row: dict[str, Any] = {"num_workers": workers}
        for name, extra in (("mmtrain", []), ("mmtrain_noaug", ["data.image.augment=false"])):
            overrides = [f"data.batch_size={args.batch_size}", f"data.num_workers={workers}"]
            dm = datamodule(compose_fit(root, *overrides, *extra))
            seed_all(args.seed)
            row[f"{name}_images_per_s"] = loader_rate(
                dm.train_dataloader(), args.load_warmup, args.load_batches, args.load_repeats
            )
            if name == "mmtrain":
                plain = DataLoader(
                    PlainImages(dm.datasets["train"].values("image"), dm.inputs["image"].size),
                    batch_size=args.batch_size,
                    shuffle=True,
                    num_workers=workers,
                    pin_memory=dm.pin_memory,
                    persistent_workers=workers > 0,
                    generator=torch.Generator().manual_seed(args.seed),
                )
                row["plain_images_per_s"] = loader_rate(
                    plain, args.load_warmup, args.load_batches, args.load_repeats
                )
                del plain
        for name in ("mmtrain", "mmtrain_noaug"):
            row[f"{name}_ratio"] = row[f"{name}_images_per_s"] / row["plain_images_per_s"]
        log(f"  loading, {workers} workers: {row}")
        rows.append(row)
    return rows


# ---- 3. decoding -----------------------------------------------------------------------------
def decode_rates(
    module: MultimodalModule, images: torch.Tensor, beams: list[int], iters: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """captions/s (median call) of the caption head's beam search for each beam size, on the
    same features; ``mean_length`` counts the words before ``<eos>``."""
    module.eval()
    head = module.heads["caption"]
    eos = head.tokenizer.eos_id
    saved = head.beam_size
    rows = []
    with torch.inference_mode():
        fused = module({"image": images, "id": [str(i) for i in range(len(images))]})
        for k in beams:
            head.beam_size = k
            out = head.generate(fused)  # warm-up
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                out = head.generate(fused)
                times.append(time.perf_counter() - start)
            ended = out == eos
            lengths = torch.where(ended.any(1), ended.int().argmax(1), out.shape[1])
            rows.append(
                {
                    "beam_size": k,
                    "captions_per_s": len(images) / statistics.median(times),
                    "mean_length": float(lengths.float().mean()),
                }
            )
    head.beam_size = saved
    info = {
        "fused_tokens": list(fused.tokens.shape),
        "max_length": head.max_length,
        "vocab_size": head.tokenizer.vocab_size,
    }
    return rows, info


# ---- the run -----------------------------------------------------------------------------------
class OtherLoad:
    """The share of all CPU time that other processes used while the block ran (Linux only).

    Busy CPU time of the whole machine (``/proc/stat``, steal included) minus this process's own
    and its reaped children's (the data-loader workers); ``share`` stays None elsewhere.
    """

    def __enter__(self) -> OtherLoad:
        self.share: float | None = None
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        if self.start is not None and end is not None:
            busy, total, own = (b - a for a, b in zip(self.start, end))
            self.share = round(max(0.0, busy - own) / max(total, 1e-9), 3)

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        stat = Path("/proc/stat")
        if not stat.is_file():
            return None
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        ticks = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz, own


def machine() -> dict[str, Any]:
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu_model = names[0] if names else ""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "cuda_available": torch.cuda.is_available(),
    }


def print_tables(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"\nmachine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"torch {m['torch']} with {m['torch_threads']} threads"
    )
    t = result["train"]
    print(
        f"\n1. training, experiment=coco_caption, {t['image_size']} px, batch {t['batch_size']}, "
        f"median of {t['steps']} steps after {t['warmup_steps']} (pre-collated batches, model "
        "time only)"
    )
    print(f"{'encoder':<12}{'params':>12}{'step s':>10}{'images/s':>11}{'vs ' + t['baseline']:>10}")
    for r in t["results"]:
        print(
            f"{r['encoder']:<12}{r['params']:>12,}{r['step_s_median']:>10.3f}"
            f"{r['images_per_s']:>11.1f}{r['ratio']:>10.2f}"
        )
    d = result["data_loading"]
    print(
        f"\n2. data loading, train dataloader, batch {d['batch_size']}, best of {d['repeats']} x "
        f"{d['batches']} batches after {d['warmup_batches']} (images/s; ratio = mmtrain / plain "
        "torchvision)"
    )
    print(f"{'workers':<9}{'plain':>9}{'mmtrain':>9}{'ratio':>7}{'no-aug':>9}{'ratio':>7}")
    for r in d["results"]:
        print(
            f"{r['num_workers']:<9}{r['plain_images_per_s']:>9.1f}"
            f"{r['mmtrain_images_per_s']:>9.1f}{r['mmtrain_ratio']:>7.2f}"
            f"{r['mmtrain_noaug_images_per_s']:>9.1f}{r['mmtrain_noaug_ratio']:>7.2f}"
        )
    g = result["decoding"]
    print(
        f"\n3. decoding, TransformerCaptionHead.generate, median of {g['iters']} calls, batch "
        f"{g['batch_size']}, fused "
        f"{g['fused_tokens']} ({g['encoder']}), max_length {g['max_length']}, "
        f"vocabulary {g['vocab_size']}"
    )
    print(f"{'beam':<6}{'captions/s':>12}{'vs greedy':>11}{'mean len':>10}")
    for r in g["results"]:
        print(
            f"{r['beam_size']:<6}{r['captions_per_s']:>12.1f}{r['ratio']:>11.2f}"
            f"{r['mean_length']:>10.1f}"
        )
    if any(r["mean_length"] < g["max_length"] - 1.5 for r in g["results"]):
        print("warning: some captions ended early; beam sizes did unequal work")
    shares = {k: result[k]["other_processes_cpu_share"] for k in SECTIONS}
    busy = {k: v for k, v in shares.items() if v is not None and v > BUSY}
    if busy:
        print(
            "warning: other processes used "
            + ", ".join(f"{v:.0%} of the CPUs during {k}" for k, v in busy.items())
            + "; they skew the numbers, multi-threaded torch most (rerun on an idle machine)"
        )
    print(f"\nwall time {result['wall_s']:.0f} s; JSON: {result['out']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/bench/caption.json", help="the JSON to write")
    p.add_argument("--data-root", help="write the data set here (or use the COCO layout in it)")
    p.add_argument("--images", type=int, default=256, help="synthetic training images")
    p.add_argument("--val-images", type=int, default=16, help="synthetic validation images")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--encoders", default="cnn,resnet18", help="encoder/image presets")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per encoder")
    p.add_argument("--train-batches", type=int, default=4, help="distinct pre-collated batches")
    p.add_argument("--workers", default="0,1,2", help="data-loader worker counts")
    p.add_argument("--load-warmup", type=int, default=3, help="untimed batches per loader")
    p.add_argument("--load-batches", type=int, default=15, help="timed batches per repeat")
    p.add_argument("--load-repeats", type=int, default=3, help="timed runs per loader (best)")
    p.add_argument("--beams", default="1,3,5", help="beam sizes; the first is the baseline")
    p.add_argument("--decode-iters", type=int, default=10, help="timed generate calls per beam")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny counts")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.val_images, args.steps, args.warmup_steps = 24, 4, 2, 1
        args.train_batches, args.load_warmup, args.load_batches, args.decode_iters = 1, 1, 2, 2
        args.load_repeats = 1
    args.encoders = args.encoders.split(",")
    args.workers = [int(w) for w in args.workers.split(",")]
    args.beams = [int(k) for k in args.beams.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seed_all(args.seed)
    result: dict[str, Any] = {"args": vars(args), "machine": machine()}
    with data_root(args.data_root, args.images, args.val_images, args.seed) as data:
        root = data["root"]
        log("data loading")
        with OtherLoad() as load:
            rows = bench_loading(root, args)
        result["data_loading"] = {
            "baseline": "plain torchvision loop over the same files",
            "batch_size": args.batch_size,
            "warmup_batches": args.load_warmup,
            "batches": args.load_batches,
            "repeats": args.load_repeats,
            "rate": "best of the repeats",
            "results": rows,
            "other_processes_cpu_share": load.share,
        }

        log("training")
        with OtherLoad() as load:
            result["train"], facts, batch = bench_training(root, args, data)
        result["train"]["other_processes_cpu_share"] = load.share

        log("decoding")
        cfg = compose_fit(root, f"encoder/image={args.encoders[-1]}")
        seed_all(args.seed)
        module = build_module(cfg, facts)  # untrained: no early <eos>, every beam runs max_length
        with OtherLoad() as load:
            rows, info = decode_rates(module, batch["image"], args.beams, args.decode_iters)
        for row in rows:
            row["ratio"] = row["captions_per_s"] / rows[0]["captions_per_s"]
        result["decoding"] = {
            "baseline": f"beam_size={args.beams[0]}",
            "encoder": args.encoders[-1],
            "features": f"real fused features of a freshly initialised {args.encoders[-1]} model",
            "note": "an untrained head rarely emits <eos>: each beam size runs all steps",
            "batch_size": len(batch["image"]),
            "iters": args.decode_iters,
            **info,
            "results": rows,
            "other_processes_cpu_share": load.share,
        }
        result["data"] = data
    result["wall_s"] = time.perf_counter() - wall
    result["out"] = str(out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)
    return result


if __name__ == "__main__":
    main()
