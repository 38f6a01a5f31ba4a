"""``mmtrain report``: plots and an HTML page from synthetic run and multirun directories.

The directories are written by hand in the layouts that runs produce (CSVLogger's sparse
``csv/metrics.csv``, ``metrics.json``, ``.hydra/``, ``predictions/``, ``samples/``,
``multirun.yaml``, ``failed.txt``); nothing is trained here.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from mmtrain.errors import MMTrainError
from mmtrain.report import (
    main,
    read_metrics_csv,
    swept_parameters,
    use_log_x,
    write_report,
)
from mmtrain.utils.sweep import Job

EVIL = "a <script>alert('x')</script> & more"
TASKS = ("caption", "label")
RUN_PLOTS = {
    "loss_total.png",
    "loss_caption.png",
    "loss_label.png",
    "val_caption.png",
    "val_label.png",
    "loss_weights.png",
    "lr.png",
}


class _Links(HTMLParser):
    """The ``src`` of every ``<img>`` and the ``<script>`` tags of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        elif tag == "script":
            self.scripts += 1


def _links(index: Path) -> _Links:
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def _write_csv(path: Path, tasks: tuple[str, ...], epochs: int = 2, steps: int = 4) -> None:
    """A metrics.csv as Lightning's CSVLogger writes it: sparse per-step and per-epoch rows."""
    keys = ["lr-AdamW", "train/loss"]
    keys += [f"train/loss/{t}" for t in tasks] + [f"train/weight/{t}" for t in tasks]
    keys += ["val/caption/bleu4", "val/caption/cider"] if "caption" in tasks else []
    keys += ["val/label/accuracy", "val/label/f1"] if "label" in tasks else []
    keys += ["val/loss"] + [f"val/loss/{t}" for t in tasks]
    header = ["epoch", "step", *sorted(keys)]
    rows: list[dict[str, Any]] = []
    step = 0
    for epoch in range(epochs):
        for _ in range(steps):
            rows.append({"step": step, "lr-AdamW": 1e-3 * (0.9**step)})  # LearningRateMonitor
            train = {"epoch": epoch, "step": step, "train/loss": 2.0 / (step + 1)}
            for i, task in enumerate(tasks):
                train[f"train/loss/{task}"] = 1.0 / (step + 1 + i)
                train[f"train/weight/{task}"] = 1.0 + 0.1 * i * step
            rows.append(train)
            step += 1
        val: dict[str, Any] = {"epoch": epoch, "step": step - 1, "val/loss": 1.5 - epoch}
        for task in tasks:
            val[f"val/loss/{task}"] = 0.7 - 0.1 * epoch
        if "caption" in tasks:
            val |= {"val/caption/bleu4": 0.2 + 0.1 * epoch, "val/caption/cider": 1.0 + epoch}
        if "label" in tasks:  # a NaN in the log: a gap, not a crash
            val |= {"val/label/accuracy": 0.5 + 0.2 * epoch, "val/label/f1": "nan"}
        rows.append(val)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _write_image(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path)


def _write_hydra(
    run_dir: Path, overrides: list[str], data_dir: Path | None = None, num: int | None = None
) -> None:
    """``.hydra/config.yaml`` (unresolved interpolations, as Hydra stores them) and friends."""
    config = {
        "data": {"root": "${paths.data_dir}/shapes", "batch_size": 4},
        "optimizer": {"lr": 0.001},
        "fusion": {"_target_": "mmtrain.fusions.concat.ConcatFusion"},
        "callbacks": {"model_checkpoint": {"mode": "max"}},
        "paths": {
            "data_dir": str(data_dir) if data_dir else "/nonexistent",
            "output_dir": "${hydra:runtime.output_dir}",  # cannot be resolved outside Hydra
        },
        "name": "shapes",
        "optimized_metric": "val/label/accuracy",
    }
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    job = {"name": "mmtrain"} | ({"num": num} if num is not None else {})
    hydra = {"hydra": {"job": job, "runtime": {"cwd": str(run_dir.parent)}}}
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(hydra))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A tiny shapes-like data folder: a test manifest, images, one only findable by name."""
    root = tmp_path / "data" / "shapes"
    _write_image(root / "images" / "test_00000.jpg", (200, 30, 30))
    _write_image(root / "images" / "test_00001.jpg", (30, 200, 30))
    _write_image(root / "images" / "val_00000.jpg", (30, 30, 200))
    _write_image(root / "images" / "test_7.png", (120, 120, 0))  # by name: images/<split>_<id>
    manifest = [
        {"id": "test_00000", "image": "images/test_00000.jpg", "caption": "a red square"},
        {"id": "test_00001", "image": "images/test_00001.jpg", "caption": "a green circle"},
    ]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
    return tmp_path / "data"


@pytest.fixture
def run_dir(tmp_path: Path, data_dir: Path) -> Path:
    """A finished multi-task run with predictions and validation samples."""
    run = tmp_path / "outputs" / "shapes" / "2026-01-01" / "12-00-00"
    _write_hydra(run, ["trainer.max_epochs=2", f"note={EVIL}"], data_dir)
    _write_csv(run / "csv" / "metrics.csv", TASKS)
    metrics = {"val/label/accuracy": 0.9, "val/label/f1": math.nan, "val/caption/bleu4": 0.3}
    (run / "metrics.json").write_text(json.dumps(metrics))  # NaN as JSON writes it
    predictions = run / "predictions"
    predictions.mkdir()
    captions = [
        {"image_id": "test_00000", "caption": EVIL},
        {"image_id": "test_00001", "caption": "a green circle"},
        {"image_id": 7, "caption": "a yellow thing"},
        {"image_id": "missing_1", "caption": "no image anywhere"},
    ] + [{"image_id": f"extra_{i}", "caption": "more"} for i in range(20)]
    (predictions / "captions_test.json").write_text(json.dumps(captions))
    labels = [{"id": "test_00000", "prediction": "square"}, {"id": "7", "prediction": "circle"}]
    (predictions / "label_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    transcripts = [{"id": "test_00001", "reference": "one two", "hypothesis": "one <b>too</b>"}]
    (predictions / "transcripts_test.jsonl").write_text(json.dumps(transcripts[0]) + "\n")
    samples = run / "samples"
    samples.mkdir()
    for epoch in (0, 1):
        record = {
            "epoch": epoch,
            "step": 4 * (epoch + 1),
            "samples": [{"id": "val_00000", "label": f"circle_{epoch}", "caption": "a blue one"}],
        }
        (samples / f"epoch_{epoch}.json").write_text(json.dumps(record))
    return run


def _check_pngs(folder: Path) -> list[Path]:
    pngs = sorted(folder.glob("*.png"))
    for png in pngs:
        with Image.open(png) as image:
            image.load()
            assert image.width >= 100 and image.height >= 100, png
        assert png.stat().st_size > 3000, png  # a drawn figure, not an empty canvas
    return pngs


def _check_links(index: Path) -> list[str]:
    """Every ``<img>`` is relative, inside the report folder, and exists."""
    sources = _links(index).images
    for src in sources:
        assert not src.startswith(("/", "http:", "https:", "file:")) and ".." not in src, src
        assert (index.parent / src).is_file(), src
    return sources


def test_run_report(run_dir: Path, tmp_path: Path) -> None:
    index = write_report(run_dir)
    out = run_dir / "report"
    assert index == out / "index.html" and index.is_file()
    pngs = _check_pngs(out / "plots")
    assert {p.name for p in pngs} == RUN_PLOTS
    sources = _check_links(index)
    assert {f"plots/{name}" for name in RUN_PLOTS} <= set(sources)
    sample_images = sorted(p.relative_to(out).as_posix() for p in (out / "samples").glob("*"))
    assert sample_images and set(sample_images) <= set(sources)
    # the manifest's image of test_00000, images/test_7.png found by name, val_00000's image
    assert {"samples/test_00000.png", "samples/test_7.png", "samples/val_00000.png"} <= set(
        sample_images
    )
    for image in sample_images:
        with Image.open(out / image) as thumb:
            thumb.load()

    page = index.read_text()
    links = _links(index)
    assert links.scripts == 0 and "<script>" not in page and "<b>too" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "no image anywhere" in page and "a red square" in page  # the reference caption
    assert "one &lt;b&gt;too&lt;/b&gt;" in page and "one two" in page  # transcript hyp vs ref
    assert "circle_1" in page and "circle_0" not in page  # the latest samples/epoch_*.json
    assert "extra_19" not in page  # a few samples, not all
    assert page.count('<img class="sample"') <= 2 * 8
    assert "val/label/accuracy" in page and "nan" in page  # metrics table, NaN shown
    assert "trainer.max_epochs=2" in page  # overrides


def test_predictions_are_read_as_their_targets_wrote_them(tmp_path: Path) -> None:
    """A run's predictions/index.json says how each file reads: any task name, any format."""
    from types import SimpleNamespace

    from mmtrain.data.targets import LabelTarget, TextTarget
    from mmtrain.data.transforms import CharTokenizer
    from mmtrain.run import _write_predictions

    run = tmp_path / "run"
    _write_hydra(run, [])
    targets = {"spoken": TextTarget(CharTokenizer(), results="transcripts"), "kind": LabelTarget()}
    for name, target in targets.items():
        target.name = name
    rows = [
        {"id": "a", "spoken": "one two", "spoken_references": ["one too"], "kind": "cat"},
        {"id": "b", "spoken": "three", "spoken_references": ["three"], "kind": "dog"},
    ]
    written = _write_predictions(run, "test", rows, SimpleNamespace(targets=targets))
    assert sorted(p.name for p in written) == ["kind_test.jsonl", "spokens_test.jsonl"]
    page = write_report(run).read_text()
    for text in ("spoken (reference)", "one too", "one two", "kind", "cat", "dog"):
        assert text in page, text


def test_single_task_run_has_no_weight_plot(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_hydra(run, [])
    _write_csv(run / "csv" / "metrics.csv", ("label",))
    index = write_report(run, out=tmp_path / "elsewhere")
    names = {p.name for p in _check_pngs(tmp_path / "elsewhere" / "plots")}
    assert "loss_weights.png" not in names and {"loss_label.png", "val_label.png"} <= names
    _check_links(index)
    assert "No predictions or samples" in index.read_text()  # no data: no sample images


def test_run_without_csv_or_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_hydra(run, ["optimizer.lr=0.1"])
    index = write_report(run)
    page = index.read_text()
    assert "No csv/metrics.csv" in page and "No metrics.json" in page
    assert _links(index).images == []


def test_read_metrics_csv_is_sparse_and_keeps_nan(run_dir: Path) -> None:
    series = read_metrics_csv(run_dir / "csv" / "metrics.csv")
    assert len(series["train/loss"]) == 8 and len(series["val/loss"]) == 2
    assert [p.epoch for p in series["val/loss"]] == [0.0, 1.0]
    assert series["lr-AdamW"][0].epoch is None  # LearningRateMonitor rows have no epoch
    assert all(math.isnan(p.value) for p in series["val/label/f1"])
    assert "epoch" not in series and "step" not in series


def _write_multirun(tmp_path: Path) -> Path:
    """A sweep over a numeric (log-spaced) and a categorical parameter; job 4 failed."""
    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    grid = [("1e-4", "concat"), ("1e-3", "concat"), ("1e-2", "attention"), ("1e-3", "attention")]
    accuracy = [0.5, 0.8, 0.6, math.nan]
    task = ["optimizer.lr=1e-4,1e-3,1e-2", "fusion=concat,attention", "trainer.max_epochs=2"]
    (sweep).mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    for num, ((lr, fusion), acc) in enumerate(zip(grid, accuracy)):
        job = sweep / str(num)
        _write_hydra(
            job, [f"optimizer.lr={lr}", f"fusion={fusion}", "trainer.max_epochs=2"], num=num
        )
        _write_csv(job / "csv" / "metrics.csv", ("label",))
        (job / "metrics.json").write_text(json.dumps({"val/label/accuracy": acc}))
    failed = sweep / "4"
    _write_hydra(failed, ["optimizer.lr=1.0", "fusion=concat", "trainer.max_epochs=2"], num=4)
    (failed / "failed.txt").write_text(f"RuntimeError: loss is NaN {EVIL}\n\nTraceback ...\n")
    return sweep


def test_multirun_report(tmp_path: Path) -> None:
    sweep = _write_multirun(tmp_path)
    index = write_report(sweep)
    out = sweep / "report"
    names = {p.name for p in _check_pngs(out / "plots")}
    assert {"sweep_optimizer.lr.png", "sweep_fusion.png", "sweep_curves.png"} <= names
    sources = _check_links(index)
    assert {f"plots/{name}" for name in names} == set(sources)
    page = index.read_text()
    assert "<h2>Failed jobs</h2>" in page and "RuntimeError: loss is NaN" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    failed_section = page.split("<h2>Failed jobs</h2>")[1].split("<h2>")[0]
    assert "job 4" in failed_section and "job 0" not in failed_section
    # best first: job 1 (0.8), marked; the NaN job has no value and is not the best
    jobs_section = page.split("<h2>Jobs</h2>")[1].split("<h2>")[0]
    assert jobs_section.index("<td>1</td>") < jobs_section.index("<td>2</td>")
    assert '<tr class="best"><td>1</td>' in jobs_section
    assert '<tr class="failed"><td>4</td>' in jobs_section


def test_multirun_without_objective_values(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    _write_hydra(sweep / "0", ["optimizer.lr=0.1"], num=0)
    (sweep / "0" / "failed.txt").write_text("MMTrainError: bad\n")
    page = write_report(sweep).read_text()
    assert "No job has a finite final val/label/accuracy" in page and "MMTrainError: bad" in page


def test_swept_parameters_and_log_axis() -> None:
    jobs = [
        Job(0, Path("0"), "ok", {"optimizer.lr": "1e-3", "seed": "1", "fusion": "concat"}),
        Job(1, Path("1"), "ok", {"optimizer.lr": "1e-2", "seed": "1", "fusion": "concat"}),
    ]
    assert swept_parameters(jobs) == ["optimizer.lr"]
    # one job only: the sweep syntax in multirun.yaml says what was swept
    assert swept_parameters(jobs[:1], ["seed=1", "optimizer.lr=1e-3,1e-2"]) == ["optimizer.lr"]
    assert use_log_x([1e-4, 1e-3, 1e-2]) and not use_log_x([1.0, 5.0]) and not use_log_x([0, 100])


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "unrelated"])
def test_bad_paths(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("hello")
    elif kind == "unrelated":
        (path / "stuff").mkdir(parents=True)
        (path / "notes.txt").write_text("hi")
    with pytest.raises(MMTrainError, match="x"):
        write_report(path)
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmtrain report: error: ") and str(path) in err
    assert not (path / "report").exists() or kind == "unrelated"


def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    _write_hydra(run, [])
    assert main([str(run), "--out", str(out)]) == 0
    assert (out / "index.html").is_file() and str(out / "index.html") in capsys.readouterr().out
    assert main(["--help"]) == 0 and main([]) == 2


def test_import_is_light() -> None:
    code = (
        "import sys, mmtrain.report; "
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
