"""``mmtrain shard`` and ``data=webdataset``: shards that decode to the data set's own items,
split exactly over processes and loader workers, resumed mid-pass, and trained from with the
same first-step loss as the folder.

The CLI cases (shard, two fits, bad inputs) run in one subprocess (``run_cases``: torch is
imported once); the streaming unit tests shard the tiny COCO fixture in-process and call the
loaders with explicit ranks, without DDP.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import QUIET, SHAPES_SIZES, TESTS
from helpers.cases import digest, run_cases
from helpers.coco import write_coco
from helpers.resume import popen_fit
from PIL import Image

from mmtrain.data.coco import CaptionDataset
from mmtrain.data.sampling import POSITION
from mmtrain.data.shapes import ShapesDataset
from mmtrain.data.shard import SampleEncoder
from mmtrain.data.shard import main as shard_main
from mmtrain.data.targets import TextTarget
from mmtrain.data.transforms import WordTokenizer
from mmtrain.data.webdataset import (
    INDEX,
    ShardedDataset,
    WebDataModule,
    decode_field,
    loader_order,
    stream_pieces,
    worker_blocks,
)

COCO_TRAIN = 5 + 6 + 7  # (image, caption) pairs of the fixture's training split
# Both runs see the whole training split in their first batch, unaugmented and without dropout:
# only the order of the samples in the batch differs (the loss is a mean over them).
FIT = [
    "experiment=coco_caption",
    "encoder/image=cnn",
    "data.image.size=32",
    "data.image.augment=false",
    "data.batch_size=32",
    "data.num_workers=0",
    "data.targets.caption.tokenizer.min_freq=1",
    "head.caption.dim=16",
    "head.caption.num_heads=2",
    "head.caption.num_layers=1",
    "head.caption.dropout=0.0",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "+callbacks.probe._target_=resume_probe.ResumeProbe",
    "allowed_targets=[resume_probe.]",
    *QUIET,
]


def _same_item(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if isinstance(x, Image.Image):
            assert (x.mode, x.size, x.tobytes()) == (y.mode, y.size, y.tobytes()), key
        elif isinstance(x, tuple):  # audio
            assert x[1] == y[1] and x[0].dtype == y[0].dtype and np.array_equal(x[0], y[0])
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), key
        else:
            assert x == y, key


# ---- shards in-process -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> dict[str, Path]:
    """The tiny COCO layout and its shards (5 training samples a shard: 5, 5, 5, 3)."""
    tmp = tmp_path_factory.mktemp("wds")
    write_coco(tmp / "coco")
    out = tmp / "shards"
    assert (
        shard_main(["coco_caption", f"data.root={tmp / 'coco'}", f"out={out}", "shard.maxcount=5"])
        == 0
    )
    return {"root": tmp / "coco", "shards": out}


def _module(shards: Path, **kwargs: Any) -> WebDataModule:
    tokenizer = WordTokenizer(max_length=22, strip_punctuation=True)
    module = WebDataModule(
        ShardedDataset,
        root=str(shards),
        targets={"caption": TextTarget(tokenizer)},
        tasks=["caption"],
        **kwargs,
    )
    module.setup("fit")
    return module


def _pairs(batches: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(image id, caption) of every sample: unique in the training split."""
    return [(i, refs[0]) for b in batches for i, refs in zip(b["id"], b["caption_references"])]


def test_shards_decode_to_the_data_sets_items(coco):
    """Every split decodes to the items the folder data set gives, pixel for pixel (grayscale
    and CMYK JPEGs included), and the tars hold the original JPEG bytes."""
    index = json.loads((coco["shards"] / "train" / INDEX).read_text())
    assert [s["count"] for s in index["shards"]] == [5, 5, 5, 3] and index["count"] == COCO_TRAIN
    assert index["columns"] == ["caption", "image"] and index["kinds"] == {"image": "image"}
    for split in ("train", "val", "test"):
        folder = CaptionDataset(str(coco["root"]), split)
        shards = ShardedDataset(str(coco["shards"]), split, columns=["image", "caption"])
        items = list(shards)
        assert len(items) == len(folder) == len(shards)
        for k, item in enumerate(items):
            _same_item(item, folder[k])
        assert shards.values("caption") == folder.values("caption")  # the vocabulary's source
    with tarfile.open(coco["shards"] / "train" / "shard-000000.tar") as tar:
        first = tar.extractfile("000000000.image.jpg").read()
    assert first == Path(CaptionDataset(str(coco["root"]), "train").values("image")[0]).read_bytes()


def test_shapes_audio_images_and_labels(tiny_data, tmp_path):
    """The shapes data (JPEG and PNG images, WAV audio, text, labels) decodes exactly too."""
    sizes = [f"data.dataset.num_{split}={n}" for split, n in SHAPES_SIZES.items()]
    out = tmp_path / "shards"
    assert shard_main(["shapes", *sizes, f"out={out}", "shard.splits=[val]"]) == 0
    folder = ShapesDataset(
        str(tiny_data), "val", **{f"num_{s}": n for s, n in SHAPES_SIZES.items()}
    )
    shards = ShardedDataset(str(out), "val")
    assert shards.columns == ["audio", "caption", "image", "label", "text"]
    for k, item in enumerate(shards):
        _same_item(item, folder[k])
    assert shards.values("label") == folder.values("label")
    assert not (out / "train").exists()  # shard.splits=[val]


def test_values_not_read_from_files_are_stored_losslessly():
    """A generated image, mask or clip (no file behind it) is re-encoded losslessly."""
    rng = np.random.default_rng(0)
    item = {
        "id": "x",
        "image": Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)),
        "mask": rng.integers(0, 4, (5, 7), dtype=np.uint8),
        "depth": rng.normal(size=(2, 3)).astype(np.float32),
        "audio": (rng.normal(size=(1, 100)).astype(np.float32), 8000),
        "label": 3,
        "caption_references": ["a", "b"],
    }
    fields, kinds, originals = SampleEncoder([item])[0]
    assert sorted(fields) == [
        "audio.npz",
        "caption_references.json",
        "depth.npy",
        "id.txt",
        "image.png",
        "label.json",
        "mask.png",
    ]
    assert kinds == {"image": "image", "mask": "array", "depth": "array", "audio": "audio"}
    assert originals == [False] * 4
    decoded = {
        field.split(".")[0]: decode_field(
            kinds.get(field.split(".")[0], "value"), field.split(".", 1)[1], data, field
        )
        for field, data in fields.items()
    }
    _same_item(decoded, item)


# ---- splitting, order, resume --------------------------------------------------------------------
def test_each_sample_once_over_two_ranks_and_two_workers(coco):
    """World size 2 and 2 loader workers: every sample of a pass once across ranks and workers,
    both ranks as many batches as their loader's length; another epoch, another order."""
    module = _module(coco["shards"], batch_size=2, num_workers=2, shuffle_buffer=4, seed=3)
    raw = module.datasets["train"]
    seen: dict[int, list[tuple[str, str]]] = {}
    for epoch in (0, 1):
        passes = []
        for rank in (0, 1):
            loader = module._stream_loader(raw, "train", True, rank, 2)
            loader.resume_at = (epoch, 0)
            batches = list(loader)
            assert len(batches) == len(loader) == 5  # 9 samples a rank, batches of 2
            assert [b[POSITION] for b in batches] == [1, 2, 3, 4, 5]
            passes.append(_pairs(batches))
        assert len(passes[0]) == len(passes[1]) == COCO_TRAIN // 2
        seen[epoch] = passes[0] + passes[1]
        assert len(set(seen[epoch])) == COCO_TRAIN  # once each
    assert seen[0] != seen[1] and sorted(seen[0]) == sorted(seen[1])


def test_uneven_world_pads_like_distributed_sampler(coco):
    """4 ranks, 18 samples: 5 a rank, the 2 padding samples repeat the stream's first ones."""
    module = _module(coco["shards"], batch_size=2)
    raw = module.datasets["train"]
    ranks = [_pairs(list(module._stream_loader(raw, "train", True, r, 4))) for r in range(4)]
    assert [len(r) for r in ranks] == [5] * 4
    everything = [p for r in ranks for p in r]
    assert len(set(everything)) == COCO_TRAIN and len(everything) == COCO_TRAIN + 2


def test_resume_continues_the_pass_exactly(coco):
    """Resumed after any number of batches, the loader yields the rest of the uninterrupted
    pass: the same batches, in the same order, at the same positions (2 workers)."""
    module = _module(coco["shards"], batch_size=2, num_workers=2, shuffle_buffer=3, seed=5)
    raw = module.datasets["train"]

    def run(start: int) -> list[tuple[int, list[str]]]:
        loader = module._stream_loader(raw, "train", True, 0, 1)
        loader.resume_at = (2, start)
        return [(b[POSITION], b["id"]) for b in loader]

    full = run(0)
    assert [p for p, _ in full] == list(range(1, 10))
    for start in (1, 4, 8, 9):
        assert run(start) == full[start:], start


def test_validation_is_read_in_order(coco):
    module = _module(coco["shards"], batch_size=2)
    module.setup("validate")
    batches = list(module.val_dataloader())
    assert [i for b in batches for i in b["id"]] == ["139", "285", "632"]
    assert (
        batches[0]["caption_references"][0]
        == CaptionDataset(str(coco["root"]), "val")[0]["caption_references"]
    )


def test_plan_helpers():
    assert worker_blocks(5, 2) == [3, 2] and worker_blocks(1, 3) == [1, 0, 0]
    assert loader_order([3, 2]) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    # shards of 5, 5, 3 read in the order 2, 0, 1; positions 4..14 wrap around to the start
    assert stream_pieces([5, 5, 3], [2, 0, 1], 4, 15) == [(0, 1, 5), (1, 0, 5), (2, 0, 2)]


def test_streaming_refuses_what_needs_random_access(coco):
    for key, value in (("bucket_by", "caption"), ("cache_features", True)):
        with pytest.raises(ValueError, match=f"{key}=.*map-style"):
            _module(coco["shards"], **{key: value})


# ---- the command line ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli(tmp_path_factory, session_dirs) -> dict[str, Any]:
    """``mmtrain shard`` then ``fit`` from the folder and from the shards, and the bad inputs,
    in one process."""
    tmp = tmp_path_factory.mktemp("wds_cli")
    root, shards = tmp / "coco", tmp / "shards"
    write_coco(root)
    (tmp / "full").mkdir()
    (tmp / "full" / "mine.txt").write_text("not shards\n")
    before = digest(tmp / "full")
    (tmp / "empty").mkdir()
    runs = {name: tmp / name for name in ("folder", "webdataset")}
    fits = {
        "folder": [f"data.root={root}"],
        "webdataset": ["data=webdataset", f"data.root={shards}"],
    }
    cases = [
        {
            "name": "shard",
            "argv": [
                "shard",
                "coco_caption",
                f"data.root={root}",
                f"out={shards}",
                "shard.maxcount=5",
            ],
        },
        *(
            {
                "name": name,
                "argv": [
                    "fit",
                    *FIT,
                    *fits[name],
                    f"+callbacks.probe.record={runs[name]}.jsonl",
                    f"hydra.run.dir={runs[name]}",
                ],
            }
            for name in fits
        ),
        {
            "name": "shard_into_non_empty",
            "argv": ["shard", "coco_caption", f"data.root={root}", f"out={tmp / 'full'}"],
            "snapshot": [str(tmp / "full")],
        },
        {
            "name": "overwrite_what_is_not_shards",
            "argv": [
                "shard",
                "coco_caption",
                f"data.root={root}",
                f"out={tmp / 'full'}",
                "shard.overwrite=true",
            ],
            "snapshot": [str(tmp / "full")],
        },
        {
            "name": "fit_without_shards",
            "argv": [
                "fit",
                "data=webdataset",
                f"data.root={tmp / 'empty'}",
                "trainer.accelerator=cpu",
                *QUIET,
            ],
        },
    ]
    with pytest.MonkeyPatch.context() as mp:  # the probe callback lives in tests/
        mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        results, _ = run_cases(cases, tmp, session_dirs["data"], tmp / "outputs")
    return {"results": results, "tmp": tmp, "runs": runs, "shards": shards, "full": before}


def test_cli_shard_writes_every_split(cli):
    result = cli["results"]["shard"]
    assert result["code"] == 0, result
    lines = result["stdout"].strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines[:3]] == ["train", "val", "test"]
    assert "train: 18 samples in 4 shards" in lines[0] and "18 original" in lines[0]
    meta = json.loads((cli["shards"] / "meta.json").read_text())
    assert meta["splits"]["train"] == {"count": COCO_TRAIN, "shards": 4}
    assert not [p for p in cli["shards"].iterdir() if p.name.startswith(".")]  # no leftovers


def test_shards_train_to_the_folders_first_step_loss(cli):
    """Same seed, same samples in the first batch, same vocabulary (from values.json): the
    first training step's loss is the folder's, to float rounding (the batch's order differs)."""
    for name in cli["runs"]:
        assert cli["results"][name]["code"] == 0, cli["results"][name]
    folder, shards = (
        [json.loads(line) for line in Path(f"{cli['runs'][n]}.jsonl").read_text().splitlines()]
        for n in ("folder", "webdataset")
    )
    assert len(folder) == len(shards) == 1  # one step: the whole training split
    assert (
        sorted(folder[0]["ids"]) == sorted(shards[0]["ids"]) and len(shards[0]["ids"]) == COCO_TRAIN
    )
    assert shards[0]["loss"] == pytest.approx(folder[0]["loss"], rel=1e-6, abs=0)
    metrics = {n: json.loads((run / "metrics.json").read_text()) for n, run in cli["runs"].items()}
    assert metrics["webdataset"]["val/loss"] == pytest.approx(
        metrics["folder"]["val/loss"], rel=1e-6
    )
    state = {n: json.loads((run / "data_state.json").read_text()) for n, run in cli["runs"].items()}
    assert state["webdataset"]["targets"] == state["folder"]["targets"]  # the same vocabulary


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("shard_into_non_empty", "is not empty: nothing was written"),
        ("overwrite_what_is_not_shards", "holds no shards written by mmtrain shard"),
        ("fit_without_shards", "no webdataset shards there"),
    ],
)
def test_bad_input_one_line(cli, case, says):
    result = cli["results"][case]
    assert result["code"] == 1, result
    errors = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert len(errors) == 1 and says in errors[0], result["stderr"]
    folder = "empty" if case == "fit_without_shards" else "full"
    assert str(cli["tmp"] / folder) in errors[0]
    assert "Traceback" not in result["stderr"] + result["stdout"]
    for snapshot in result["snapshot"].values():
        assert snapshot == cli["full"]  # nothing written over


# ---- end to end, heavier ------------------------------------------------------------------------
@pytest.mark.slow
def test_runs_stopped_and_resumed_from_shards_repeat_nothing(tmp_path, session_dirs, tiny_data):
    """A run from shards (2 loader workers, shuffle buffer) stopped by SIGTERM after its first
    step and again in its second epoch, resumed each time, trains on the same batches with the
    same losses as the uninterrupted run."""
    sizes = [f"data.dataset.num_{split}={n}" for split, n in SHAPES_SIZES.items()]
    shards = tmp_path / "shards"
    assert shard_main(["shapes", *sizes, f"out={shards}", "shard.maxcount=7"]) == 0
    run = [
        "data=webdataset",
        f"data.root={shards}",
        "data.image.size=64",
        "data.batch_size=4",
        "data.num_workers=2",
        "data.shuffle_buffer=5",
        "data.audio.n_mels=40",
        "data.audio.freq_mask=4",
        "data.targets.caption.tokenizer.min_freq=1",
        "encoder.image.dropout=0.2",
        "trainer.max_epochs=3",
        "+callbacks.probe._target_=resume_probe.ResumeProbe",
        "allowed_targets=[resume_probe.]",
        *QUIET,
    ]

    def fit(run_dir: Path, *extra: str) -> int:
        args = [*run, f"+callbacks.probe.record={run_dir}.jsonl", f"hydra.run.dir={run_dir}"]
        proc = popen_fit([*args, *extra], session_dirs["data"])
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 or "stopped by SIGTERM" in err, err[-3000:]
        return proc.returncode

    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    last = f"ckpt_path={stopped / 'checkpoints' / 'last.ckpt'}"
    assert fit(reference) == 0
    assert fit(stopped, "+callbacks.probe.signal_at=[1]") != 0  # mid-epoch 0
    assert fit(stopped, last, "+callbacks.probe.signal_at=[8]") != 0  # mid-epoch 1
    assert fit(stopped, last) == 0
    want = [json.loads(line) for line in Path(f"{reference}.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in Path(f"{stopped}.jsonl").read_text().splitlines()]
    assert got == want and len(want) == 3 * 6  # 3 epochs of 24 samples in batches of 4


@pytest.mark.slow
def test_ddp_ranks_share_the_shards(tmp_path, session_dirs, tiny_data):
    """Real DDP on CPU, 2 processes with 2 loader workers each, over 5 uneven shards: every
    training step runs on both ranks, and each epoch trains on every sample once."""
    sizes = [f"data.dataset.num_{split}={n}" for split, n in SHAPES_SIZES.items()]
    shards, run_dir = tmp_path / "shards", tmp_path / "ddp"
    assert shard_main(["shapes", *sizes, f"out={shards}", "shard.maxcount=5"]) == 0
    proc = popen_fit(
        [
            "data=webdataset",
            f"data.root={shards}",
            "data.image.size=64",
            "data.batch_size=4",
            "data.num_workers=2",
            "data.audio.n_mels=40",
            "data.targets.caption.tokenizer.min_freq=1",
            "trainer.max_epochs=2",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "+callbacks.probe._target_=resume_probe.ResumeProbe",
            f"+callbacks.probe.record={run_dir}.jsonl",
            "allowed_targets=[resume_probe.]",
            f"hydra.run.dir={run_dir}",
            *QUIET,
        ],
        session_dirs["data"],
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    rows = [json.loads(line) for line in Path(f"{run_dir}.jsonl").read_text().splitlines()]
    steps = sorted(row["step"] for row in rows)
    assert steps == sorted([*range(1, 7)] * 2)  # 3 batches an epoch on each of the 2 ranks
    for epoch in (0, 1):
        ids = [i for row in rows if row["epoch"] == epoch for i in row["ids"]]
        assert sorted(ids) == [f"train_{i:05d}" for i in range(SHAPES_SIZES["train"])]
