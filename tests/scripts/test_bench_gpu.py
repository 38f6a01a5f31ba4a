"""``scripts/bench_gpu.py``: the GPU benchmark's arithmetic, and its whole pipeline on the CPU.

No GPU is needed: the fast tests feed the summary, MFU and table code records shaped like a GPU
run's (peak memory, a known device name); the slow test runs ``--smoke`` (``mmtrain fit`` twice
on the CPU, eager and compiled, with the timing callback and the FLOP count) end to end.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import SCRIPTS, load_script, positive_number

SCRIPT = SCRIPTS / "bench_gpu.py"
PER_MODE = (  # the keys, pinned here rather than read from the script
    "samples_per_s",
    "step_s_median",
    "data_wait_share",
    "peak_memory_gib",
    "flops_per_step",
    "mfu",
)


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989),  # SXM
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA H200 NVL", 835),
        ("NVIDIA GH200 480GB", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA L40", 181),
        ("NVIDIA L4", 121),
        ("NVIDIA B200", 2250),
    ],
)
def test_peak_flops_by_device_name(name: str, tflops: float) -> None:
    peak = load_script("bench_gpu").peak_flops(name)
    assert peak["flops"] == pytest.approx(tflops * 1e12)
    assert "datasheet" in peak["source"]


def test_peak_flops_unknown_cpu_and_override() -> None:
    bench_gpu = load_script("bench_gpu")
    unknown = bench_gpu.peak_flops("NVIDIA GeForce RTX 4090")
    assert unknown["flops"] is None and "--peak-tflops" in unknown["source"]
    cpu = bench_gpu.peak_flops("cpu (Intel(R) Xeon(R) Processor)")
    assert cpu["flops"] is None and "CPU" in cpu["source"]
    assert bench_gpu.peak_flops(None)["flops"] is None
    mig = bench_gpu.peak_flops("NVIDIA H100 80GB HBM3 MIG 3g.40gb")
    assert mig["flops"] is None and "MIG" in mig["source"]
    forced = bench_gpu.peak_flops("NVIDIA H100 80GB HBM3", 500.0)
    assert forced == {"flops": 500e12, "source": "--peak-tflops"}
    assert bench_gpu.peak_flops("cpu", 0.5)["flops"] == 0.5e12
    with pytest.raises(ValueError, match="positive"):
        bench_gpu.peak_flops("NVIDIA H200", 0.0)


def test_mfu_arithmetic() -> None:
    mfu = load_script("bench_gpu").mfu
    # 100 GFLOP a sample at 4000 samples/s = 400 TFLOP/s of a 1000 TFLOP/s peak
    assert mfu(100e9, 4000.0, 1000e12) == pytest.approx(0.4)
    assert mfu(None, 4000.0, 1000e12) is None
    assert mfu(100e9, 4000.0, None) is None
    assert mfu(100e9, None, 1000e12) is None


def _record(steps: int = 6, batch: int = 128, wait: float = 0.02, step: float = 0.1) -> dict:
    """A GPU-like callback record: every step ``step`` s long, ``wait`` s of it data wait."""
    ends = [1.0 + step * i for i in range(steps)]
    return {
        "starts": [e - step + wait for e in ends],
        "ends": ends,
        "sizes": [batch] * steps,
        "losses": [5.0 - 0.1 * i for i in range(steps)],
        "graphs": [],
        "peak_memory_bytes": 30 * 2**30,
        "peak_reserved_bytes": 32 * 2**30,
        "peak_rss_bytes": 4 * 2**30,
    }


def test_summarise_times_the_steps_after_warmup() -> None:
    s = load_script("bench_gpu").summarise(
        _record(steps=6, batch=128, wait=0.02, step=0.1), warmup=2
    )
    assert s["timed_steps"] == 4
    assert s["samples_per_s"] == pytest.approx(128 / 0.1)
    assert s["step_s_median"] == pytest.approx(0.1)
    assert s["data_wait_share"] == pytest.approx(0.2)
    assert s["compute_step_s_median"] == pytest.approx(0.08)
    assert s["samples_per_s_excluding_data_wait"] == pytest.approx(128 / 0.08)
    assert s["peak_memory_gib"] == pytest.approx(30.0)
    assert s["compiled_graphs"] is None  # nothing compiled
    recompiled = _record() | {"graphs": [3, 5, 5, 5, 6, 6]}
    assert (
        load_script("bench_gpu").summarise(recompiled, warmup=2)["graphs_compiled_in_timed_steps"]
        == 1
    )
    with pytest.raises(ValueError, match="not more than --warmup"):
        load_script("bench_gpu").summarise(_record(steps=2), warmup=2)


def _result(bench_gpu: ModuleType, compile_record: dict | None) -> dict[str, Any]:
    args = bench_gpu.parse_args([])
    eager = bench_gpu.summarise(_record(step=0.1), 2)
    eager.update(
        device="NVIDIA H200",
        torch="2.x",
        cuda="13.0",
        flops_per_step=128 * 100e9,
        flops_per_sample=100e9,
        first_step_s=20.0,
        log="eager.log",
    )
    if compile_record is None:
        comp: dict[str, Any] = {"error": "timed out after 200 s", "log": "compile.log"}
    else:
        comp = bench_gpu.summarise(compile_record, 2)
        comp.update(device="NVIDIA H200", torch="2.x", first_step_s=90.0, log="compile.log")
    fsdp = bench_gpu.summarise(_record(step=0.125), 2)  # FSDP on the one device: slower
    fsdp.update(device="NVIDIA H200", torch="2.x", first_step_s=25.0, log="fsdp.log")
    result = {
        "config": {
            "batch_size": 128,
            "steps": 6,
            "warmup": 2,
            "workers": 12,
            "precision": "bf16-mixed",
            "image_size": 224,
            "smoke": False,
        },
        "torch": "2.x",
        "eager": eager,
        "compile": comp,
        "fsdp": fsdp,
        "wall_s": 200.0,
        "out": "gpu.json",
    }
    bench_gpu.finish(result, args)
    return result


def test_finish_reuses_the_eager_flops_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    bench_gpu = load_script("bench_gpu")
    result = _result(bench_gpu, _record(step=0.08, wait=0.02))
    eager, comp = result["eager"], result["compile"]
    assert result["device"] == "NVIDIA H200" and result["peak_flops"] == 989e12
    assert comp["flops_per_step"] == eager["flops_per_step"] and "eager" in comp["flops_source"]
    # 100 GFLOP a sample x 1280 samples/s over 989 TFLOP/s
    assert eager["mfu"] == pytest.approx(100e9 * 1280 / 989e12)
    assert eager["mfu_excluding_data_wait"] == pytest.approx(100e9 * 1600 / 989e12)
    assert result["compile_speedup"] == pytest.approx(0.1 / 0.08)
    assert result["compile_speedup_excluding_data_wait"] == pytest.approx(0.08 / 0.06)
    assert result["fsdp"]["flops_per_step"] == eager["flops_per_step"]
    assert result["fsdp_speed_ratio"] == pytest.approx(0.1 / 0.125)
    bench_gpu.print_table(result)
    out = capsys.readouterr().out
    assert "NVIDIA H200" in out and "compile speed-up 1.25x" in out and "30.00" in out
    assert "fsdp on one device against plain: 0.80x samples/s" in out


def test_a_failed_compile_run_still_reports_eager(capsys: pytest.CaptureFixture[str]) -> None:
    bench_gpu = load_script("bench_gpu")
    result = _result(bench_gpu, None)
    assert result["compile_speedup"] is None and result["compile"]["mfu"] is None
    assert set(PER_MODE) <= set(result["compile"])  # the same keys, null
    assert (
        result["compile"]["samples_per_s"] is None and "timed out" in result["compile"]["mfu_note"]
    )
    assert positive_number(result["eager"]["mfu"])
    bench_gpu.print_table(result)
    assert "failed: timed out" in capsys.readouterr().out


def test_parse_args_defaults_and_smoke() -> None:
    bench_gpu = load_script("bench_gpu")
    args = bench_gpu.parse_args([])
    assert (args.batch_size, args.steps, args.warmup, args.workers) == (128, 40, 10, 12)
    assert args.images == 40 * 128 // 5 and args.accelerator == "gpu"  # one epoch
    assert args.compile_backend is None and args.threads == 0 and args.budget < 300
    smoke = bench_gpu.parse_args(["--smoke"])
    assert smoke.accelerator == "cpu" and smoke.batch_size == 2 and smoke.steps > smoke.warmup
    assert smoke.compile_backend == "aot_eager" and smoke.threads == 1
    assert (
        bench_gpu.parse_args(["--smoke", "--compile-backend", "inductor"]).compile_backend is None
    )
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--steps", "5", "--warmup", "5"])
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--modes", "jit"])


@pytest.mark.slow  # about a minute on 2 cores: two `mmtrain fit` runs of ViT-B/16 at 32 px
def test_bench_gpu_smoke_writes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--peak-tflops", "0.5", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] and result["torch"]
    assert result["config"]["smoke"] is True and result["peak_flops"] == 0.5e12
    for mode in ("eager", "compile"):
        m = result[mode]
        assert set(PER_MODE) <= set(m), f"{mode}: missing {set(PER_MODE) - set(m)}"
        for key in ("samples_per_s", "step_s_median", "flops_per_step", "mfu", "first_step_s"):
            assert positive_number(m[key]), f"{mode}.{key} = {m[key]!r}"
        assert 0.0 <= m["data_wait_share"] <= 1.0
        assert 0.0 < m["mfu"] < 1.0
        if m["device_type"] == "cpu":
            assert m["peak_memory_gib"] is None and positive_number(m["peak_rss_gib"])
        else:
            assert positive_number(m["peak_memory_gib"])
        assert math.isfinite(m["first_loss"]) and math.isfinite(m["last_loss"])
    assert result["compile"]["flops_per_step"] == result["eager"]["flops_per_step"]
    assert result["compile"]["compiled_graphs"] >= 1  # the compile run did compile
    assert positive_number(result["compile_speedup"])
    assert "compile speed-up" in proc.stdout and "samples/s" in proc.stdout
