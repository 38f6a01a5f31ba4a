"""Generated from the config tree: every experiment preset runs ``fast_dev_run`` on tiny data.

A new file in ``configs/experiment/`` is picked up with no new test. Its data set must have a
tiny version in ``TINY_DATA`` (keyed by the data set's ``_target_``): overrides, written for a
folder where a fixture in the data set's real on-disk layout can be put; a new data set without
one fails with a message saying so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import QUIET
from helpers.coco import write_coco
from helpers.hf import write_hf
from helpers.llava import write_llava
from helpers.manifest import write_manifests
from helpers.speech import write_librispeech
from helpers.vqa import write_vqa
from omegaconf import OmegaConf

from mmtrain.cli import config_dir
from mmtrain.run import run

# The pretrained experiments build on tiny models under their ids (tests/helpers/model_store.py).
pytestmark = pytest.mark.usefixtures("model_store")
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def _tiny_coco(folder: Path) -> list[str]:
    write_coco(folder / "coco")
    return [
        f"data.root={folder / 'coco'}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.image.size=64",
        "data.targets.caption.tokenizer.min_freq=1",
    ]


def _tiny_llava(folder: Path) -> list[str]:
    files = write_llava(folder / "llava")
    return [
        f"data.train={files['train']}",
        f"data.val={files['val']}",
        f"data.dataset.image_folder={files['images']}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.image.size=32",
    ]


def _tiny_manifest(folder: Path) -> list[str]:
    files = write_manifests(folder / "manifest")
    return [
        f"data.train={files['train']}",
        f"data.val={files['val']}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.image.size=32",
    ]


# data.dataset._target_ -> (folder -> overrides that make it tiny). The shapes data is
# generated once per session by the `tiny_data` fixture with exactly these sizes.
TINY_DATA: dict[str, Callable[[Path], list[str]]] = {
    "mmtrain.data.shapes.ShapesDataset": lambda folder: [
        "data.dataset.num_train=24",
        "data.dataset.num_val=8",
        "data.dataset.num_test=8",
        "data.batch_size=4",
    ],
    "mmtrain.data.coco.CaptionDataset": _tiny_coco,
    "mmtrain.data.manifest.ManifestDataset": _tiny_manifest,
    "mmtrain.data.llava.LlavaDataset": _tiny_llava,
    "mmtrain.data.hf.HFDataset": lambda folder: [
        f"data.root={write_hf(folder / 'hf')}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.image.size=32",
    ],
    "mmtrain.data.refshapes.RefShapesDataset": lambda folder: [
        "data.dataset.num_train=12",
        "data.dataset.num_val=4",
        "data.dataset.num_test=4",
        "data.batch_size=4",
    ],
    "mmtrain.data.vqa.VQADataset": lambda folder: [
        f"data.root={write_vqa(folder / 'vqa')}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.image.size=64",
    ],
    "mmtrain.data.librispeech.LibriSpeechDataset": lambda folder: [
        f"data.root={write_librispeech(folder / 'librispeech')}",
        "data.batch_size=2",
        "data.num_workers=0",
    ],
    # data=multi: each shapes source tiny (the captions source is the session's tiny data)
    "mmtrain.data.multi.MultiDataModule": lambda folder: (
        [
            f"data.sources.{source}.dataset.{key}={n}"
            for source in ("captions", "labels")
            for key, n in (("num_train", 24), ("num_val", 8), ("num_test", 8))
        ]
        + ["data.batch_size=4"]
    ),
}


def test_there_are_experiments():
    assert EXPERIMENTS, "configs/experiment/ is empty: no experiment is tested"


@pytest.mark.parametrize("name", EXPERIMENTS, ids=[f"experiment={n}" for n in EXPERIMENTS])
def test_experiment_fast_dev_run(name, compose_config, tiny_data, tmp_path):
    composed = compose_config(f"experiment={name}")
    # the data set's class, or the data module's for data=multi (several data sets)
    dataset = OmegaConf.select(composed, "data.dataset._target_") or composed.data._target_
    if dataset not in TINY_DATA:
        pytest.fail(
            f"experiment={name} uses the data set {dataset!r}: add tiny overrides for it "
            f"to TINY_DATA in tests/test_experiments.py",
            pytrace=False,
        )
    tiny = TINY_DATA[dataset](tmp_path / "data")
    # A pretrained tower sets its input's preprocessing (a size set here would contradict it).
    pretrained = [m for m, node in composed.encoder.items() if "model_name_or_path" in node]
    tiny = [o for o in tiny if not o.startswith(tuple(f"data.{m}." for m in pretrained))]
    out = tmp_path / "run"
    cfg = compose_config(f"experiment={name}", "debug=fdr", *tiny, *QUIET, output_dir=out)
    assert cfg.paths.output_dir == str(out)

    metrics = run("fit", cfg)

    written = json.loads((out / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    assert "train/loss" in written and any(k.startswith("val/") for k in written), written
    assert all(math.isfinite(v) for v in written.values())
    assert cfg.optimized_metric in written, f"optimized_metric {cfg.optimized_metric} not logged"
