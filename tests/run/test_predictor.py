"""The Python inference API: ``mmtrain.load(checkpoint)`` predicts what ``mmtrain predict``
writes, from raw values (images, arrays, paths, strings), batched, with the model's own
preprocessing; bad input is one clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import QUIET, TINY_DATA, compose_cfg
from PIL import Image

import mmtrain
from mmtrain.errors import MMTrainError
from mmtrain.run import run

COMMON = ["experiment=shapes", *TINY_DATA, *QUIET, "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple:
    """A shapes model (label and caption heads, image, text and audio encoders) trained two
    steps, and a folder of three images."""
    tmp = tmp_path_factory.mktemp("predictor")
    run("fit", compose_cfg(*COMMON, "trainer.max_steps=2", output_dir=tmp / "fit"))
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    return tmp / "fit" / "checkpoints" / "last.ckpt", images, tmp


def test_load_predicts_what_mmtrain_predict_writes(checkpoint):
    ckpt, images, tmp = checkpoint
    run(
        "predict",
        compose_cfg(
            *COMMON,
            f"ckpt_path={ckpt}",
            f"input={images}",
            stage="predict",
            output_dir=tmp / "predict",
        ),
    )
    lines = (tmp / "predict" / "predictions" / "predict.jsonl").read_text().splitlines()
    written = {row.pop("file"): row for row in map(json.loads, lines)}
    files = sorted(written)

    predictor = mmtrain.load(ckpt)
    by_path = predictor(image=files, batch_size=2)  # two batches
    assert by_path == [written[f] for f in files]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    assert predictor(image=arrays) == by_path  # arrays, one batch
    assert predictor(image=Image.open(files[0])) == written[files[0]]  # one value: one dict
    both = predictor(image=files[0], text="a red circle on the left")
    assert set(both) == {"label", "caption"} and isinstance(both["caption"], str)


def test_load_keeps_import_mmtrain_light():
    assert callable(mmtrain.load)
    code = "import mmtrain, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_input_is_one_clear_error(checkpoint, tmp_path):
    ckpt, images, _ = checkpoint
    predictor = mmtrain.load(ckpt)
    with pytest.raises(MMTrainError, match="this model takes image, text, audio; got video"):
        predictor(video=[1])
    with pytest.raises(MMTrainError, match=r"lists differ in length: \{'image': 2, 'text': 1\}"):
        predictor(image=[images / "0.png", images / "1.png"], text=["a"])
    with pytest.raises(MMTrainError, match="image: no such file"):
        predictor(image=str(tmp_path / "absent.png"))
    other = tmp_path / "notes.ckpt"
    other.write_bytes(b"not a checkpoint")
    with pytest.raises(MMTrainError, match=r"mmtrain.load: cannot load checkpoint .*notes.ckpt"):
        mmtrain.load(other)
