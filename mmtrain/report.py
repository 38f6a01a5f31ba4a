"""``mmtrain report <run dir | multirun dir> [--out DIR]``: plots and one HTML page of a run.

A run directory (``.hydra/``, ``csv/metrics.csv``, ``metrics.json``, ``predictions/``,
``samples/``) gets its curves from the CSV logger's ``metrics.csv``: per task the train and val
losses against the step, the val metrics of each task against the epoch, the total loss, the
loss weights of a multi-task run and the learning rates. A multirun directory (``multirun.yaml``
and one directory per job) gets, for the optimized metric, its final value against each swept
parameter, the curves of that metric per job and a table of the jobs, failed ones included.

Everything lands in ``<out>/`` (default ``<dir>/report/``): ``index.html``, ``plots/*.png`` and
``samples/*.png`` (thumbnails of the sample images), all referenced relatively so that the
folder can be copied anywhere. Importing this module is cheap: matplotlib and PIL are imported
inside the functions that draw, and nothing here imports torch or Lightning.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmtrain.contracts import REFERENCES
from mmtrain.errors import MMTrainError
from mmtrain.utils.sweep import FAILED, METRICS, Job, objective_of, read_jobs, split_override

MULTIRUN_FILE = "multirun.yaml"
CSV_FILES = ("csv/metrics.csv", "csv/version_*/metrics.csv", "*/version_*/metrics.csv")
MAX_SAMPLES = 8  # rows of each sample table
THUMBNAIL = 192  # pixels, the longest side of a copied sample image
MAX_TEXT = 300  # characters of a table cell
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_FIGSIZE = (6.4, 4.0)
_DPI = 100


# ---- small helpers ------------------------------------------------------------------------------
def _safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (metric keys have slashes)."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "x"


def _to_float(value: Any) -> float | None:
    """``value`` as a float (NaN and inf included), or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _fmt(value: Any) -> str:
    """A metric value for a table: numbers to 4 significant digits, NaN as ``nan``."""
    number = _to_float(value)
    if number is None:
        return "" if value is None else str(value)
    if math.isnan(number):
        return "nan"
    return f"{number:.4g}" if math.isfinite(number) else str(number)


def _text(value: Any) -> str:
    """Any JSON value as a short line of text (not escaped yet)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _read_yaml(path: Path) -> Any:
    """A YAML file's content, or None when it is missing or unreadable."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _read_json(path: Path) -> Any:
    """A JSON file's content (NaN allowed), or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a file; unreadable lines are skipped."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _select(node: Any, dotted: str) -> Any:
    """``node["a"]["b"]`` for ``"a.b"`` in plain nested dicts, or None."""
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# ---- reading metrics.csv ------------------------------------------------------------------------
@dataclass
class Point:
    """One logged value: its global step and epoch (None when not logged) and the value."""

    step: float | None
    epoch: float | None
    value: float


def find_metrics_csv(run_dir: Path) -> Path | None:
    """The CSV logger's ``metrics.csv`` of a run (``csv/metrics.csv`` or a ``version_*``)."""
    for pattern in CSV_FILES:
        found = sorted(run_dir.glob(pattern))
        if found:
            return found[-1]
    return None


def read_metrics_csv(path: Path) -> dict[str, list[Point]]:
    """Read a Lightning ``CSVLogger`` file into one series per logged key.

    Rows are sparse (train keys on per-step rows, val keys on per-epoch rows): a key's series has
    the rows where it has a value. ``nan`` and ``inf`` are kept as floats; text that is not a
    number is skipped.

    Args:
        path: the ``metrics.csv``.

    Returns:
        ``{key: [Point, ...]}`` in file order, without ``epoch`` and ``step``.
    """
    series: dict[str, list[Point]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step, epoch = _to_float(row.get("step")), _to_float(row.get("epoch"))
            for key, raw in row.items():
                if key in ("step", "epoch") or key is None:
                    continue
                value = _to_float(raw)
                if value is not None:
                    series.setdefault(key, []).append(Point(step, epoch, value))
    return series


# ---- plotting -----------------------------------------------------------------------------------
@dataclass
class Plot:
    """A written figure: its file (relative to the report folder) and its caption."""

    file: str
    title: str


def _finite(values: Iterable[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def _xy(points: Sequence[Point], x: str) -> tuple[list[float], list[float]]:
    """The points' ``x`` (``step`` or ``epoch``, falling back to the other, then the index)."""
    xs, ys = [], []
    for i, p in enumerate(points):
        first, second = (p.step, p.epoch) if x == "step" else (p.epoch, p.step)
        value = first if first is not None else second
        xs.append(float(i) if value is None else value)
        ys.append(p.value if math.isfinite(p.value) else math.nan)
    return xs, ys


def _new_figure(nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    """A pyplot-free figure (no display, no global state) and its axes array."""
    from matplotlib.figure import Figure

    width, height = _FIGSIZE
    figure = Figure(figsize=(width * min(ncols, 2) / 1.3 if ncols > 1 else width, height * nrows))
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, axes


def _label_x(ax: Any, x: str) -> None:
    """Name the x axis; epochs and steps get integer ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(x)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(figure: Any, plots_dir: Path, name: str, title: str, taken: set[str]) -> Plot:
    """Save ``figure`` as ``plots/<name>.png`` (a unique name) and describe it."""
    base = _safe_name(name)
    stem, n = base, 1
    while stem in taken:
        n += 1
        stem = f"{base}_{n}"
    taken.add(stem)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(plots_dir / f"{stem}.png", dpi=_DPI)
    return Plot(file=f"plots/{stem}.png", title=title)


def _line_plot(
    series: dict[str, list[Point]],
    keys: Sequence[str],
    x: str | Sequence[str],
    plots_dir: Path,
    name: str,
    title: str,
    taken: set[str],
    log_y: bool = False,
) -> Plot | None:
    """One axes with a line per key (``x`` per key: ``step`` or ``epoch``); None if empty."""
    keys = [k for k in keys if k in series and _finite(p.value for p in series[k])]
    if not keys:
        return None
    xs_of = [x] * len(keys) if isinstance(x, str) else list(x)
    figure, axes = _new_figure()
    ax = axes[0][0]
    for key, x_key in zip(keys, xs_of):
        xs, ys = _xy(series[key], x_key)
        few = len(xs) <= 30 or key.startswith("val/")
        ax.plot(xs, ys, marker="o" if few else None, markersize=3, label=key)
    _label_x(ax, xs_of[0] if len(set(xs_of)) == 1 else "step")
    if log_y and all(p.value > 0 for k in keys for p in series[k] if math.isfinite(p.value)):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(figure, plots_dir, name, title, taken)


def _grid_plot(
    series: dict[str, list[Point]],
    keys: Sequence[str],
    x: str,
    plots_dir: Path,
    name: str,
    title: str,
    taken: set[str],
    prefix: str = "",
) -> Plot | None:
    """One small axes per key (metrics of different scales side by side); None if empty."""
    keys = [k for k in keys if k in series and _finite(p.value for p in series[k])]
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure, axes = _new_figure(nrows, ncols)
    for i, ax in enumerate(ax for row in axes for ax in row):
        if i >= len(keys):
            ax.set_visible(False)
            continue
        xs, ys = _xy(series[keys[i]], x)
        ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_title(keys[i].removeprefix(prefix), fontsize="small")
        _label_x(ax, x)
        ax.grid(True, alpha=0.3)
    return _save(figure, plots_dir, name, title, taken)


def _task_of(key: str, kind: str) -> str | None:
    """``<task>`` of ``train/<kind>/<task>`` or ``val/<kind>/<task>``, else None."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] in ("train", "val") and parts[1] == kind:
        return parts[2]
    return None


def run_plots(series: dict[str, list[Point]], plots_dir: Path) -> list[Plot]:
    """Draw the curves of a run's ``metrics.csv`` series into ``plots_dir``.

    Figures: ``loss_total`` (``train/loss``, ``val/loss``), ``loss_<task>`` per task (train
    and val against the step), ``val_<task>`` per task (one panel per val metric, against the
    epoch), ``loss_weights`` (multi-task runs), ``lr`` (``lr-*``) and ``other_<split>_<task>``
    for the remaining train/val keys. Keys without any finite value are left out.

    Args:
        series: from :func:`read_metrics_csv`.
        plots_dir: where the PNGs go (created).

    Returns:
        The written figures, in reading order.
    """
    plots_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    plots: list[Plot | None] = []
    used = {"train/loss", "val/loss"}
    plots.append(
        _line_plot(
            series, ["train/loss", "val/loss"], "step", plots_dir, "loss_total", "total loss", taken
        )
    )
    tasks = list(
        dict.fromkeys(t for k in series for t in [_task_of(k, "loss"), _task_of(k, "weight")] if t)
    )
    metric_tasks = list(
        dict.fromkeys(
            k.split("/")[1]
            for k in series
            if k.startswith("val/") and len(k.split("/")) >= 3 and k.split("/")[1] != "loss"
        )
    )
    for task in tasks:
        keys = [f"train/loss/{task}", f"val/loss/{task}"]
        used.update(keys)
        plots.append(_line_plot(series, keys, "step", plots_dir, f"loss_{task}", task, taken))
    for task in list(dict.fromkeys([*tasks, *metric_tasks])):
        prefix = f"val/{task}/"
        keys = [k for k in series if k.startswith(prefix)]
        used.update(keys)
        plots.append(
            _grid_plot(
                series,
                keys,
                "epoch",
                plots_dir,
                f"val_{task}",
                f"{task}: val metrics",
                taken,
                prefix=prefix,
            )
        )
    weights = [k for k in series if _task_of(k, "weight") and k.startswith("train/")]
    used.update(weights)
    if len(weights) > 1:
        plots.append(
            _line_plot(series, weights, "step", plots_dir, "loss_weights", "loss weights", taken)
        )
    lrs = [k for k in series if k.startswith("lr-")]
    used.update(lrs)
    plots.append(_line_plot(series, lrs, "step", plots_dir, "lr", "learning rate", taken, True))
    others: dict[str, list[str]] = {}
    for key in series:
        parts = key.split("/")
        if key in used or parts[0] not in ("train", "val") or len(parts) < 2:
            continue
        others.setdefault("/".join(parts[:2]), []).append(key)
    for group, keys in others.items():
        x = "epoch" if group.startswith("val/") else "step"
        plots.append(
            _grid_plot(
                series, keys, x, plots_dir, f"other_{group}", group, taken, prefix=f"{group}/"
            )
        )
    return [p for p in plots if p is not None]


def use_log_x(values: Sequence[float]) -> bool:
    """Whether a numeric swept parameter is shown on a log axis: positive, spanning > 10x."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 10


# ---- sample predictions -------------------------------------------------------------------------
class DataIndex:
    """Best-effort lookup of a sample's image (and reference) in the run's data.

    The data roots are the ``root`` entries under ``data`` in the run's ``.hydra/config.yaml``
    (interpolations resolved where possible; relative roots against the run's working directory,
    from ``.hydra/hydra.yaml``, then the current one). An id is looked up in
    ``<root>/<split>.jsonl`` (its ``image`` field, relative to the root), then by file name:
    ``<root>/images/<id>.*``, ``<root>/images/<split>_<id>.*``, ``<root>/<id>.*``,
    ``<root>/*/<id>.*`` and, for a numeric (COCO) id, ``<root>/*/*<id:012d>.*``.
    """

    def __init__(self, run_dir: Path) -> None:
        self.roots = _data_roots(run_dir)
        self._manifests: dict[tuple[Path, str], dict[str, dict[str, Any]]] = {}

    def _manifest(self, root: Path, split: str) -> dict[str, dict[str, Any]]:
        key = (root, split)
        if key not in self._manifests:
            rows = _read_jsonl(root / f"{split}.jsonl")
            self._manifests[key] = {str(r["id"]): r for r in rows if "id" in r}
        return self._manifests[key]

    def row(self, sample_id: str, split: str) -> tuple[Path, dict[str, Any]] | None:
        """The manifest row of a sample and its root, or None."""
        for root in self.roots:
            row = self._manifest(root, split).get(sample_id)
            if row is not None:
                return root, row
        return None

    def reference(self, sample_id: str, split: str, task: str) -> str | None:
        """The sample's ground truth for ``task`` from the manifest, or None."""
        found = self.row(sample_id, split)
        value = found[1].get(task) if found else None
        return None if value is None else _text(value)

    def image(self, sample_id: str, split: str) -> Path | None:
        """The image file of a sample, or None when it cannot be found."""
        found = self.row(sample_id, split)
        if found is not None and isinstance(found[1].get("image"), str):
            path = Path(found[1]["image"])
            path = path if path.is_absolute() else found[0] / path
            if path.is_file():
                return path
        stem = Path(sample_id).name
        if not stem or stem in (".", ".."):
            return None
        for root in self.roots:
            patterns = [f"images/{stem}.*", f"images/{split}_{stem}.*", f"{stem}.*", f"*/{stem}.*"]
            if sample_id.isdigit():
                patterns.append(f"*/*{int(sample_id):012d}.*")
            for pattern in patterns:
                try:
                    hits = [p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES]
                except (OSError, ValueError):
                    continue
                if hits:
                    return sorted(hits)[0]
        return None


def _data_roots(run_dir: Path) -> list[Path]:
    """The existing data folders named by ``data...root`` in the run's config."""
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    except Exception:  # noqa: BLE001 - a missing or broken config: no data lookup
        return []
    raw = _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                dotted = f"{prefix}.{k}"
                if k == "root" and isinstance(v, str):
                    keys.append(dotted)
                walk(v, dotted)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}[{i}]")

    walk(raw.get("data") if isinstance(raw, dict) else None, "data")
    cwd = _select(_read_yaml(run_dir / ".hydra" / "hydra.yaml"), "hydra.runtime.cwd")
    roots: list[Path] = []
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except Exception:  # noqa: BLE001 - e.g. a ${hydra:...} interpolation
            continue
        if not isinstance(value, str):
            continue
        path = Path(value).expanduser()
        candidates = [path] if path.is_absolute() else [Path(str(cwd or ".")) / path, path]
        for candidate in candidates:
            if candidate.is_dir() and candidate.resolve() not in roots:
                roots.append(candidate.resolve())
                break
    return roots


@dataclass
class SampleTable:
    """A table of samples: its title, columns and rows (``{column: text or image path}``)."""

    title: str
    columns: list[str]
    rows: list[dict[str, str | Path]] = field(default_factory=list)


_PRED_FILE = re.compile(r"^(?P<name>.+)_(?P<split>[^_]+)\.(?P<ext>jsonl|json)$")


def _prediction_files(pred_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """``{split: [file entry]}`` of a run's predictions: ``predictions/index.json``, which each
    target writes (``{"path", "task", "split", "id_key", "value_key", "reference_key"}``); for
    a run written before it, the files named ``<name>_<split>.json[l]``, read by their shape."""
    index = _read_json(pred_dir / "index.json") if (pred_dir / "index.json").is_file() else None
    entries: list[dict[str, Any]] = []
    if isinstance(index, list):
        entries = [e for e in index if isinstance(e, dict) and "path" in e and "split" in e]
    else:
        for path in sorted(pred_dir.glob("*.json*")) if pred_dir.is_dir() else []:
            match = _PRED_FILE.match(path.name)
            if match and path.name != "index.json":
                entries.append({"path": path.name, "task": match["name"], "split": match["split"]})
    by_split: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_split.setdefault(str(entry["split"]), []).append(entry)
    return by_split


def _prediction_rows(path: Path, entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[(sample id, {column: value})]`` of one predictions file, read with the keys of its
    index entry. A file of a run without an index is read by its shape: a results list
    (COCO, VQA) by its ``*_id`` key and the other key, which names the task; JSON lines by
    ``id`` (or ``file``) and ``prediction``, or ``hypothesis`` and ``reference``
    (transcripts)."""
    if path.suffix == ".json":
        data = _read_json(path)
        records = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
    else:
        records = list(_read_jsonl(path))
    rows: list[tuple[str, dict[str, Any]]] = []
    for record in records:
        if "value_key" in entry:  # as the target that wrote the file says
            task, id_key, value_key = entry["task"], entry["id_key"], entry["value_key"]
            reference_key = entry.get("reference_key")
        else:
            task, reference_key = str(entry["task"]), None
            id_key = next((k for k in ("id", "file") if k in record), None)
            if id_key is None:  # a results list: {"image_id": ..., "caption": ...}
                id_key = next((k for k in record if k.endswith("_id")), None)
                value_key = next((k for k in record if k != id_key), None)
                task = value_key or task
            elif "hypothesis" in record:
                value_key, reference_key = "hypothesis", "reference"
                task = task.removesuffix("s")
            else:
                value_key = "prediction"
        if id_key is None or value_key is None:
            continue
        cells: dict[str, Any] = {task: record.get(value_key)}
        if reference_key is not None:
            cells[f"{task} (reference)"] = record.get(reference_key)
        if "source" in record:
            cells["source"] = record["source"]
        rows.append((str(record.get(id_key, "")), cells))
    return rows


def _choose_ids(per_file: Sequence[Sequence[str]], limit: int) -> list[str]:
    """Up to ``limit`` ids, a fair share from each file first (data sets of a multi run)."""
    chosen: list[str] = []
    share = math.ceil(limit / max(1, len(per_file)))
    for ids in per_file:
        added = 0
        for sample_id in ids:
            if added >= share or len(chosen) >= limit:
                break
            if sample_id not in chosen:
                chosen.append(sample_id)
                added += 1
    for ids in per_file:  # fill up
        for sample_id in ids:
            if len(chosen) >= limit:
                return chosen
            if sample_id not in chosen:
                chosen.append(sample_id)
    return chosen


class _ImageCopier:
    """Thumbnails of sample images in ``<out>/samples/`` (one per source file)."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "samples"
        self.done: dict[Path, Path | None] = {}
        self.names: set[str] = set()

    def __call__(self, source: Path) -> Path | None:
        """The thumbnail of ``source`` relative to the report folder, or None if unreadable."""
        if source in self.done:
            return self.done[source]
        from PIL import Image

        try:
            with Image.open(source) as image:
                image.load()
                if image.mode in ("L", "P", "I", "I;16"):
                    image = image.convert("L")
                    top = image.getextrema()[1]
                    if isinstance(top, int) and 0 < top < 32:  # a mask of class ids: visible
                        image = image.point(lambda v, top=top: v * 255 // top)
                else:
                    image = image.convert("RGB")
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                stem = base = _safe_name(source.stem)
                n = 1
                while stem in self.names:
                    n += 1
                    stem = f"{base}_{n}"
                self.names.add(stem)
                self.dir.mkdir(parents=True, exist_ok=True)
                image.save(self.dir / f"{stem}.png")
                relative: Path | None = Path("samples") / f"{stem}.png"
        except (OSError, ValueError, SyntaxError):
            relative = None
        self.done[source] = relative
        return relative


def sample_tables(run_dir: Path, out: Path) -> list[SampleTable]:
    """Tables of a few sample predictions of a run, their images copied into ``out/samples``.

    Sources: ``predictions/<name>_<split>.json[l]`` (COCO captions, VQA answers, transcripts,
    ``{"id", "prediction"}`` lines; one table per split, test first) and the latest
    ``samples/epoch_<n>.json``. At most :data:`MAX_SAMPLES` rows per table; an image is shown
    when it can be found (:class:`DataIndex`), a predicted mask when its PNG exists.

    Args:
        run_dir: the run directory.
        out: the report folder.

    Returns:
        The tables (possibly none).
    """
    index = DataIndex(run_dir)
    copy = _ImageCopier(out)
    tables: list[SampleTable] = []
    pred_dir = run_dir / "predictions"
    by_split = _prediction_files(pred_dir)
    order = sorted(by_split, key=lambda s: (s != "test", s))
    for split in order:
        files = [_prediction_rows(pred_dir / str(e["path"]), e) for e in by_split[split]]
        files = [f for f in files if f]
        if not files:
            continue
        chosen = _choose_ids([[i for i, _ in f] for f in files], MAX_SAMPLES)
        cells: dict[str, dict[str, Any]] = {i: {} for i in chosen}
        for rows in files:
            for sample_id, row in rows:
                if sample_id in cells:
                    cells[sample_id].update(row)
        names = [str(e.get("task", e["path"])) for e in by_split[split]]
        tables.append(
            _table(
                f"Predictions ({split}: {', '.join(names)})", split, cells, index, copy, pred_dir
            )
        )
    epochs = []
    for path in (run_dir / "samples").glob("epoch_*.json"):
        number = path.stem.removeprefix("epoch_")
        if number.isdigit():
            epochs.append((int(number), path))
    if epochs:
        epoch, path = max(epochs)
        record = _read_json(path)
        samples = record.get("samples") if isinstance(record, dict) else None
        if isinstance(samples, list):
            cells = {}
            for sample in samples:
                if isinstance(sample, dict) and len(cells) < MAX_SAMPLES:
                    sample_id = str(sample.get("id", len(cells)))
                    cells[sample_id] = {k: v for k, v in sample.items() if k != "id"}
            title = f"Validation samples (epoch {epoch}, {path.name})"
            tables.append(_table(title, "val", cells, index, copy, pred_dir))
    return [t for t in tables if t.rows]


def _table(
    title: str,
    split: str,
    cells: dict[str, dict[str, Any]],
    index: DataIndex,
    copy: _ImageCopier,
    pred_dir: Path,
) -> SampleTable:
    """A :class:`SampleTable` from ``{id: {column: value}}``: images found, references added."""
    rows: list[dict[str, str | Path]] = []
    columns: list[str] = ["id", "image"]
    for sample_id, values in cells.items():
        row: dict[str, str | Path] = {"id": sample_id}
        image = index.image(sample_id, split)
        if image is None and Path(sample_id).suffix.lower() in IMAGE_SUFFIXES:
            image = Path(sample_id) if Path(sample_id).is_file() else None  # predict.jsonl
        thumb = copy(image) if image is not None else None
        if thumb is not None:
            row["image"] = thumb
        for column, value in values.items():
            if column.endswith(REFERENCES):
                continue
            mask = pred_dir / value if isinstance(value, str) and value.endswith(".png") else None
            if mask is not None and mask.is_file() and (mask_thumb := copy(mask)) is not None:
                row[column] = mask_thumb
            else:
                row[column] = "" if value is None else _text(value)
            if column not in columns:
                columns.append(column)
            if column.isidentifier() and not isinstance(row[column], Path):
                reference = index.reference(sample_id, split, column)
                if reference is not None:
                    row[f"{column} (reference)"] = reference
                    if f"{column} (reference)" not in columns:
                        columns.append(f"{column} (reference)")
        rows.append(row)
    if not any("image" in r for r in rows):
        columns.remove("image")
    return SampleTable(title=title, columns=columns, rows=rows)


# ---- multirun -----------------------------------------------------------------------------------
_SWEEP_SYNTAX = re.compile(r",|^(choice|range|interval|tag|glob|sort|shuffle)\(")


def swept_parameters(jobs: Sequence[Job], task_overrides: Sequence[str] = ()) -> list[str]:
    """The overrides that vary between jobs, else those written as a sweep in ``multirun.yaml``.

    Args:
        jobs: the sweep's jobs.
        task_overrides: ``hydra.overrides.task`` of ``multirun.yaml`` (``optimizer.lr=1e-3,3e-3``).

    Returns:
        The parameter names (override keys) in order of appearance.
    """
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    varying = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    if varying:
        return varying
    declared = [split_override(str(o)) for o in task_overrides]
    return [k for k, v in declared if _SWEEP_SYNTAX.search(v) and k in keys]


def sweep_plots(
    jobs: Sequence[Job],
    params: Sequence[str],
    objective: str,
    maximize: bool,
    plots_dir: Path,
) -> list[Plot]:
    """The optimized metric against each swept parameter, plus its curve per job.

    A numeric parameter is a scatter (log x when its values span more than 10x), any other a
    strip of points per value over a bar of their mean; the best job is starred. Jobs without a
    finite value (failed, unfinished) are not drawn.

    Args:
        jobs: the sweep's jobs.
        params: the swept parameters.
        objective: the optimized metric's key.
        maximize: whether higher is better.
        plots_dir: where the PNGs go (created).

    Returns:
        The written figures.
    """
    plots_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    plots = []
    scored = [(j, v) for j in jobs if (v := objective_of(j.metrics, objective)) is not None]
    if scored:
        best = (max if maximize else min)(scored, key=lambda jv: jv[1])[0]
        for param in params:
            raw = [j.overrides.get(param, "") for j, _ in scored]
            ys = [v for _, v in scored]
            numbers = [_to_float(r) for r in raw]
            figure, axes = _new_figure()
            ax = axes[0][0]
            if all(n is not None and math.isfinite(n) for n in numbers):
                xs = [float(n) for n in numbers if n is not None]
                ax.scatter(xs, ys, zorder=3)
                if use_log_x(xs):
                    ax.set_xscale("log")
                best_x = xs[[j for j, _ in scored].index(best)]
            else:
                labels = list(dict.fromkeys(r or "(none)" for r in raw))
                positions = [labels.index(r or "(none)") for r in raw]
                means = [
                    sum(y for p, y in zip(positions, ys) if p == i) / positions.count(i)
                    for i in range(len(labels))
                ]
                ax.bar(range(len(labels)), means, color="tab:blue", alpha=0.25, label="mean")
                ax.scatter(positions, ys, zorder=3)
                ax.set_xticks(range(len(labels)))
                ax.set_xticklabels(labels, rotation=20 if len(labels) > 4 else 0)
                best_x = positions[[j for j, _ in scored].index(best)]
            best_y = objective_of(best.metrics, objective)
            ax.scatter(
                [best_x],
                [best_y],
                marker="*",
                s=200,
                color="tab:red",
                zorder=4,
                label=f"best (job {best.num})",
            )
            ax.set_xlabel(param)
            ax.set_ylabel(objective)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
            title = f"{objective} vs {param}"
            plots.append(_save(figure, plots_dir, f"sweep_{param}", title, taken))
    curves: dict[str, list[Point]] = {}
    for job in jobs:
        path = find_metrics_csv(job.dir)
        if path is None or job.status == "failed":
            continue
        try:
            points = read_metrics_csv(path).get(objective)
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
        if points:
            label = ", ".join(f"{p}={job.overrides.get(p, '')}" for p in params)
            curves[f"job {job.num}" + (f": {label}" if label else "")] = points
    if curves:
        keys = list(curves)[:12]
        plot = _line_plot(
            curves, keys, "epoch", plots_dir, "sweep_curves", f"{objective} per job", taken
        )
        if plot is not None:
            plots.append(plot)
    return plots


# ---- HTML ---------------------------------------------------------------------------------------
_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-family: monospace; }
tr.best td { background: #fff6d5; } tr.failed td { background: #fde2e2; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; } .plots img { max-width: 640px; border: 1px solid #eee; }
img.sample { width: 128px; image-rendering: pixelated; }
.note { color: #a33; } pre { background: #f7f7f7; padding: .5em; overflow-x: auto; }
code { background: #f3f3f3; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n<p><code>{_e(subtitle)}</code></p>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _plots_html(plots: Sequence[Plot], notes: Sequence[str] = ()) -> str:
    parts = ["<h2>Plots</h2>", *(_note(n) for n in notes)]
    if plots:
        parts.append('<div class="plots">')
        for plot in plots:
            parts.append(
                f'<figure><img src="{_e(plot.file)}" alt="{_e(plot.title)}">'
                f"<figcaption>{_e(plot.title)}</figcaption></figure>"
            )
        parts.append("</div>")
    elif not notes:
        parts.append(_note("No curves to plot."))
    return "\n".join(parts)


def _metrics_html(metrics: Any, objective: str | None) -> str:
    parts = ["<h2>Final metrics</h2>"]
    if not isinstance(metrics, dict) or not metrics:
        parts.append(_note(f"No {METRICS} in this run (unfinished or failed?)."))
        return "\n".join(parts)
    parts.append("<table><tr><th>metric</th><th>value</th></tr>")
    for key in sorted(metrics, key=lambda k: (k != objective, str(k))):
        mark = ' class="best"' if key == objective else ""
        parts.append(
            f'<tr{mark}><td>{_e(key)}</td><td class="num">{_e(_fmt(metrics[key]))}</td></tr>'
        )
    parts.append("</table>")
    if objective:
        parts.append(f"<p>optimized metric: <code>{_e(objective)}</code></p>")
    return "\n".join(parts)


def _overrides_html(overrides: Any, config_file: Path, heading: str = "Config overrides") -> str:
    parts = [f"<h2>{_e(heading)}</h2>"]
    if isinstance(overrides, list) and overrides:
        parts.append("<ul>" + "".join(f"<li><code>{_e(o)}</code></li>" for o in overrides))
        parts.append("</ul>")
    elif isinstance(overrides, list):
        parts.append("<p>None: the defaults.</p>")
    else:
        parts.append(_note("No .hydra/overrides.yaml."))
    try:
        text = config_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = None
    if text is not None:
        parts.append(
            f"<details><summary>Full config (<code>{_e(config_file.name)}</code>)</summary>"
            f"<pre>{_e(text)}</pre></details>"
        )
    return "\n".join(parts)


def _samples_html(tables: Sequence[SampleTable]) -> str:
    parts = ["<h2>Sample predictions</h2>"]
    if not tables:
        parts.append("<p>No predictions or samples in this run.</p>")
    for table in tables:
        parts.append(f"<h3>{_e(table.title)}</h3>")
        parts.append("<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in table.columns))
        parts.append("</tr>")
        for row in table.rows:
            cells = []
            for column in table.columns:
                value = row.get(column, "")
                if isinstance(value, Path):
                    src = value.as_posix()
                    cells.append(f'<td><img class="sample" src="{_e(src)}" alt="{_e(src)}"></td>')
                else:
                    cells.append(f"<td>{_e(value)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _clean(out: Path) -> None:
    """Remove the PNGs of an earlier report in ``out/plots`` and ``out/samples``."""
    for sub in ("plots", "samples"):
        for path in (out / sub).glob("*.png"):
            path.unlink(missing_ok=True)


def _config(run_dir: Path) -> dict[str, Any]:
    data = _read_yaml(run_dir / ".hydra" / "config.yaml")
    return data if isinstance(data, dict) else {}


def _run_report(run_dir: Path, out: Path) -> str:
    """The page of a run directory; writes its plots and sample images under ``out``."""
    notes = []
    plots: list[Plot] = []
    csv_path = find_metrics_csv(run_dir)
    if csv_path is None:
        notes.append("No csv/metrics.csv in this run (CSV logger off?): no curves.")
    else:
        try:
            series = read_metrics_csv(csv_path)
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            series = {}
            notes.append(f"Could not read {csv_path.name}: {err}")
        plots = run_plots(series, out / "plots")
        if not plots and not notes:
            what = "only test values" if series else "no values"
            notes.append(f"{csv_path.relative_to(run_dir)} has {what}: no curves to plot.")
    config = _config(run_dir)
    objective = config.get("optimized_metric")
    sections = [
        _plots_html(plots, notes),
        _metrics_html(_read_json(run_dir / METRICS), objective),
        _overrides_html(
            _read_yaml(run_dir / ".hydra" / "overrides.yaml"), run_dir / ".hydra" / "config.yaml"
        ),
        _samples_html(sample_tables(run_dir, out)),
    ]
    name = config.get("name") or run_dir.name
    return _page(f"mmtrain report: {name}", str(run_dir), sections)


def _multirun_report(sweep_dir: Path, out: Path) -> str:
    """The page of a multirun directory; writes its plots under ``out``."""
    multirun = _read_yaml(sweep_dir / MULTIRUN_FILE)
    task_overrides = _select(multirun, "hydra.overrides.task") or []
    jobs = read_jobs(sweep_dir)
    config = next((c for j in jobs if (c := _config(j.dir))), {}) or (
        multirun if isinstance(multirun, dict) else {}
    )
    objective = config.get("optimized_metric")
    objective = str(objective) if objective else None
    direction = _select(multirun, "hydra.sweeper.direction")
    mode = _select(config, "callbacks.model_checkpoint.mode")
    maximize = str(direction or "").lower() != "minimize" if direction else mode != "min"
    params = swept_parameters(jobs, [str(o) for o in task_overrides])
    notes = []
    if not jobs:
        notes.append("No job directories (with .hydra/overrides.yaml) in this multirun yet.")
    if not objective:
        notes.append("No optimized_metric in the jobs' config: nothing to plot against.")
    elif not any(objective_of(j.metrics, objective) is not None for j in jobs):
        notes.append(f"No job has a finite final {objective}.")
    if jobs and not params:
        notes.append("No swept parameter: the jobs' overrides do not differ.")
    plots = sweep_plots(jobs, params, objective, maximize, out / "plots") if objective else []

    def sort_key(job: Job) -> tuple[int, bool, float, int]:
        """Best first; jobs without a value next, then unfinished, then failed ones."""
        value = objective_of(job.metrics, objective)
        rank = {"ok": 0, "incomplete": 1, "failed": 2}[job.status]
        score = 0.0 if value is None else (-value if maximize else value)
        return (rank, value is None, score, job.num)

    ranked = sorted(jobs, key=sort_key)
    has_value = ranked and objective_of(ranked[0].metrics, objective) is not None
    best = ranked[0] if has_value else None
    columns = ["job", "status", *params, objective or "objective", "error"]
    rows = ["<h2>Jobs</h2>"]
    direction_text = "higher is better" if maximize else "lower is better"
    if objective:
        rows.append(f"<p>optimized metric: <code>{_e(objective)}</code> ({direction_text})</p>")
    rows.append("<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>")
    for job in ranked:
        mark = (
            ' class="best"'
            if job is best
            else (' class="failed"' if job.status == "failed" else "")
        )
        value = job.metrics.get(objective) if objective else None
        cells = [str(job.num), job.status, *(job.overrides.get(p, "") for p in params)]
        rows.append(
            f"<tr{mark}>"
            + "".join(f"<td>{_e(c)}</td>" for c in cells)
            + f'<td class="num">{_e(_fmt(value))}</td><td>{_e(job.error)}</td></tr>'
        )
    rows.append("</table>")
    failed = [j for j in jobs if j.status == "failed"]
    failed_html = ["<h2>Failed jobs</h2>"]
    if failed:
        failed_html.append("<ul>")
        for job in failed:
            where = job.dir.relative_to(sweep_dir).as_posix()
            failed_html.append(
                f"<li>job {_e(job.num)} (<code>{_e(where)}/{FAILED}</code>): {_e(job.error)}</li>"
            )
        failed_html.append("</ul>")
    else:
        failed_html.append("<p>None.</p>")
    sections = [
        _plots_html(plots, notes),
        "\n".join(rows),
        "\n".join(failed_html),
        "<h2>Sweep overrides</h2>"
        + (
            "<ul>" + "".join(f"<li><code>{_e(o)}</code></li>" for o in task_overrides) + "</ul>"
            if task_overrides
            else "<p>None recorded in multirun.yaml.</p>"
        ),
    ]
    name = config.get("name") or sweep_dir.name
    return _page(f"mmtrain sweep report: {name}", str(sweep_dir), sections)


def kind_of(path: Path) -> str:
    """``"multirun"`` or ``"run"``: what a directory holds.

    Raises:
        MMTrainError: if ``path`` does not exist, is not a directory, or is neither a run
            directory (``.hydra/``, ``metrics.json`` or a CSV log) nor a multirun directory
            (``multirun.yaml``, or job directories with ``.hydra/``).
    """
    if not path.exists():
        raise MMTrainError(f"{path} does not exist")
    if not path.is_dir():
        raise MMTrainError(f"{path} is not a directory: give a run or a multirun directory")
    if (path / MULTIRUN_FILE).is_file():
        return "multirun"
    if (
        (path / ".hydra").is_dir()
        or (path / METRICS).is_file()
        or find_metrics_csv(path) is not None
    ):
        return "run"
    if any(p.is_dir() and (p / ".hydra").is_dir() for p in path.iterdir()):
        return "multirun"
    raise MMTrainError(
        f"{path} is neither a run directory (with .hydra/, {METRICS} or csv/metrics.csv) "
        f"nor a multirun directory (with {MULTIRUN_FILE} and job directories)"
    )


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run or multirun directory.

    Args:
        path: a run directory or a multirun (sweep) directory.
        out: the report folder (default ``<path>/report``); ``index.html``, ``plots/`` and
            ``samples/`` go there (PNGs of an earlier report there are replaced).

    Returns:
        The path of ``index.html``.

    Raises:
        MMTrainError: if ``path`` is not a run or multirun directory, or ``out`` cannot be
            written.
    """
    path = Path(path).expanduser()
    kind = kind_of(path)
    out_dir = Path(out).expanduser() if out is not None else path / "report"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MMTrainError(f"cannot create the report folder {out_dir}: {err}") from err
    _clean(out_dir)
    page = _multirun_report(path, out_dir) if kind == "multirun" else _run_report(path, out_dir)
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def main(argv: list[str]) -> int:
    """``mmtrain report <dir> [--out DIR]``: write the report, print where it is.

    Args:
        argv: the arguments after ``report``.

    Returns:
        0 on success, 1 for a bad directory (the message on stderr), 2 for bad arguments.
    """
    parser = argparse.ArgumentParser(
        prog="mmtrain report",
        description="Plots and an HTML page (index.html) of a run or multirun directory.",
    )
    parser.add_argument("path", type=Path, help="a run directory or a multirun directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="the report folder (default: <path>/report)"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        index = write_report(args.path, args.out)
    except MMTrainError as err:
        print(f"mmtrain report: error: {err}", file=sys.stderr)
        return 1
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
