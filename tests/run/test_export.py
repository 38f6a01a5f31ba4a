"""``mmtrain export``: safetensors (no pickle; ``mmtrain.load`` predicts what the checkpoint
predicts), one consolidated checkpoint, ONNX and torch.export checked against eager PyTorch,
the model card, and one clear line for what cannot be exported or loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUIET, TINY_DATA, compose_cfg
from helpers.cli import explain_run, mmtrain
from PIL import Image

import mmtrain as mmtrain_api
from mmtrain.contracts import CHECKPOINT_KEY
from mmtrain.errors import MMTrainError
from mmtrain.export import export
from mmtrain.run import run

# data.text.max_length: the exported GRU is unrolled over it (shorter: faster tests)
COMMON = ["experiment=shapes", *TINY_DATA, *QUIET, "trainer.accelerator=cpu"]
MAX_LENGTH = 8
FAST = "export.optimize=false"  # the ONNX optimizer takes seconds; parity is checked either way
PICKLES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def export_cfg(ckpt: Path, out: Path, *overrides: str) -> object:
    """The config of ``mmtrain export ckpt_path=<ckpt> out=<out> overrides``."""
    return compose_cfg(
        *COMMON, f"ckpt_path={ckpt}", f"out={out}", *overrides, stage="export",
        output_dir=out.parent / f"{out.name}_run",
    )  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """The shapes model (label and caption heads; image, text and audio) trained two steps,
    and a folder of three images."""
    tmp = tmp_path_factory.mktemp("export")
    short = f"data.text.max_length={MAX_LENGTH}"
    run("fit", compose_cfg(*COMMON, short, "trainer.max_steps=2", output_dir=tmp / "fit"))
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return tmp / "fit" / "checkpoints" / "last.ckpt", images


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_safetensors_export_has_every_weight_no_pickle_and_loads_as_the_checkpoint(
    checkpoint, tmp_path
):
    from safetensors.torch import load_file, safe_open

    from mmtrain.export.weights import read_safetensors_export

    ckpt, images = checkpoint
    out = tmp_path / "st"
    info = export(export_cfg(ckpt, out))
    files = _files(out)
    assert {"model.safetensors", "mmtrain.json", "export.json", "README.md"} <= files
    assert not [f for f in files if f.endswith(PICKLES)]
    assert not list(tmp_path.glob(".st.*"))  # the temporary folder was renamed into place

    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    weights = read_safetensors_export(out)["state_dict"]
    assert set(weights) == set(stored["state_dict"])
    with safe_open(out / "model.safetensors", framework="pt") as reader:  # tied weights once
        aliases = json.loads(reader.metadata()["aliases"])
    assert set(load_file(out / "model.safetensors")) == set(weights) - set(aliases)
    assert aliases == {"heads.caption.out.weight": "heads.caption.embed.weight"}
    for key, tensor in stored["state_dict"].items():
        assert torch.equal(weights[key], tensor), key
    manifest = json.loads((out / "mmtrain.json").read_text())
    assert manifest["config"] == stored[CHECKPOINT_KEY]["config"]
    assert (
        manifest["data"]["targets"]["label"]["classes"]
        == (stored[CHECKPOINT_KEY]["data"]["targets"]["label"]["classes"])
    )
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(info))
    assert info["files"]["model.safetensors"] == (out / "model.safetensors").stat().st_size
    card = (out / "README.md").read_text()
    for part in ("mmtrain.load(", "## Command", "## Data", "## Metrics", "```yaml", "classes, 6"):
        assert part in card, part

    files_in = sorted(str(p) for p in images.iterdir())
    texts = ["a red circle", "a small blue square", "a large shape"]
    loaded = mmtrain_api.load(ckpt)
    from_export = mmtrain_api.load(out)
    assert from_export(image=files_in, text=texts) == loaded(image=files_in, text=texts)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(from_export.model.state_dict()[name], tensor), name
    by_file = mmtrain_api.load(out / "model.safetensors")  # the weights file: its folder
    assert by_file(image=files_in[0]) == loaded(image=files_in[0])


def test_checkpoint_format_is_one_file_that_test_and_load_read(checkpoint, tmp_path):
    ckpt, images = checkpoint
    out = tmp_path / "ckpt"
    export(export_cfg(ckpt, out, "format=checkpoint"))
    assert _files(out) == {"model.ckpt", "export.json", "README.md"}
    original = torch.load(ckpt, map_location="cpu", weights_only=True)
    copy = torch.load(out / "model.ckpt", map_location="cpu", weights_only=True)
    assert copy[CHECKPOINT_KEY] == original[CHECKPOINT_KEY]
    assert all(torch.equal(copy["state_dict"][k], v) for k, v in original["state_dict"].items())

    def test(path: Path, name: str) -> dict[str, float]:
        cfg = compose_cfg(*COMMON, f"ckpt_path={path}", stage="test", output_dir=tmp_path / name)
        return run("test", cfg)

    assert test(out / "model.ckpt", "from_export") == test(ckpt, "from_checkpoint")
    image = str(images / "0.png")
    assert mmtrain_api.load(out)(image=image) == mmtrain_api.load(ckpt)(image=image)


def _batch(predictor, images: Path) -> dict[str, torch.Tensor]:
    """A preprocessed batch of three images and texts, as the model's data makes it."""
    from mmtrain.data.collate import collate

    texts = ["a red circle", "a small square", "a large blue triangle"]
    items = [
        predictor.datamodule.encode(
            {"id": str(i), "image": Image.open(p).convert("RGB"), "text": t}, train=False
        )
        for i, (p, t) in enumerate(zip(sorted(images.iterdir()), texts))
    ]
    return collate(items, predictor.datamodule.parts)


def test_onnx_of_the_classification_head_matches_eager(checkpoint, tmp_path):
    import onnxruntime

    ckpt, images = checkpoint
    out = tmp_path / "onnx"
    info = export(export_cfg(ckpt, out, "format=onnx", "export.tasks=[label]", FAST))
    assert info["parity"]["max_abs_diff"]["label"] < 1e-4
    assert info["parity"]["batch_sizes"] == [4, 2]  # the dynamic batch axis, checked
    assert info["inputs"] == ["image", "text", "text_mask", "audio", "audio_mask"]
    assert "## Parity with eager PyTorch" in (out / "README.md").read_text()
    with pytest.raises(MMTrainError, match=r"is an ONNX export: run .*model.onnx with onnxrun"):
        mmtrain_api.load(out)

    # independently of the export's own check: three new samples without audio
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named, dynamic batch axis
    predictor = mmtrain_api.load(ckpt)
    batch = _batch(predictor, images)
    model = predictor.model
    shapes = {i.name: i.shape for i in session.get_inputs()}
    # the GRU is unrolled over the texts' max_length: a fixed length, texts padded to it
    assert shapes["text"][1] == shapes["text_mask"][1] == MAX_LENGTH
    assert info["input_shapes"]["text"] == ["batch", MAX_LENGTH]
    pad = predictor.datamodule.inputs["text"].facts()["pad_id"]
    extra = MAX_LENGTH - batch["text"].shape[1]
    text = torch.nn.functional.pad(batch["text"], (0, extra), value=pad)
    text_mask = torch.nn.functional.pad(batch["text_mask"], (0, extra), value=False)
    frames = shapes["audio_mask"][1] if isinstance(shapes["audio_mask"][1], int) else 50
    audio = torch.zeros(3, shapes["audio"][1], frames)  # absent: fully masked
    feeds = {"image": batch["image"], "text": text, "text_mask": text_mask}
    feeds |= {"audio": audio, "audio_mask": torch.zeros(3, frames, dtype=torch.bool)}
    (got,) = session.run(["label"], {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        masked = {**batch, "audio": audio, "audio_mask": feeds["audio_mask"]}  # text unpadded
        expected = model.heads["label"](model(masked)).numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_onnx_encoder_side_of_a_caption_model_and_the_refusal_line(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    refused = tmp_path / "refused"
    with pytest.raises(MMTrainError) as err:
        export(export_cfg(ckpt, refused, "format=onnx"))
    assert str(err.value).startswith("head.caption: autoregressive generation is not exported;")
    assert "export.part=encoders" in str(err.value) and "\n" not in str(err.value)
    assert not refused.exists() and not list(tmp_path.glob(".refused*"))

    out = tmp_path / "encoders"
    info = export(export_cfg(ckpt, out, "format=onnx", "export.part=encoders", FAST))
    assert info["outputs"] == ["features", "features_mask"] and info["part"] == "encoders"
    assert info["parity"]["max_abs_diff"]["features"] < 1e-4
    assert info["parity"]["max_abs_diff"]["features_mask"] == 0


def test_torch_export_matches_eager_and_loads_back(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    out = tmp_path / "pt2"
    info = export(export_cfg(ckpt, out, "format=torch_export", "export.tasks=[label]"))
    assert info["parity"]["max_abs_diff"]["label"] < 1e-4
    program = torch.export.load(str(out / "model.pt2")).module()
    assert not any(name.startswith("heads.caption") for name, _ in program.named_parameters())
    with pytest.raises(MMTrainError, match=r"mmtrain.load: .*pt2 is a torch.export program"):
        mmtrain_api.load(out)


def test_a_non_empty_out_is_refused_before_anything_is_read(checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    missing = tmp_path / "absent.ckpt"
    with pytest.raises(MMTrainError, match=r"out=.*taken is not empty: nothing was written"):
        export(export_cfg(missing, out))  # out is checked before the checkpoint is read
    assert _files(out) == {"notes.txt"} and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_missing_ckpt_path_bad_format_and_bad_load_are_one_line(checkpoint, tmp_path):
    cfg = compose_cfg(*COMMON, f"out={tmp_path / 'x'}", stage="export", output_dir=tmp_path / "r")
    with pytest.raises(MMTrainError, match=r"^mmtrain export needs ckpt_path=<checkpoint>"):
        export(cfg)
    with pytest.raises(MMTrainError, match=r"^format=tflite: choose one of safetensors"):
        export(export_cfg(checkpoint[0], tmp_path / "y", "format=tflite"))
    with pytest.raises(MMTrainError, match=r"export.tasks=\['colour'\]: the model's tasks are"):
        export(export_cfg(checkpoint[0], tmp_path / "z", "format=onnx", "export.tasks=[colour]"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(MMTrainError, match=r"photos is not an mmtrain checkpoint or export"):
        mmtrain_api.load(folder)
    with pytest.raises(MMTrainError, match=r"no such file or folder: .*nowhere"):
        mmtrain_api.load(tmp_path / "nowhere")


def test_cli_export(checkpoint, scratch):
    ckpt, _ = checkpoint
    out = scratch["cwd"] / "exported"
    proc = mmtrain(scratch, "export", f"ckpt_path={ckpt}", "format=safetensors", f"out={out}")
    assert proc.returncode == 0, explain_run(proc)
    assert f"mmtrain export: {out / 'model.safetensors'} (" in proc.stdout
    assert json.loads((out / "export.json").read_text())["command"] == (
        f"mmtrain export ckpt_path={ckpt} format=safetensors out={out}"
    )
    again = mmtrain(scratch, "export", f"ckpt_path={ckpt}", f"out={out}")
    assert again.returncode == 1
    assert (
        again.stderr.strip()
        .splitlines()[-1]
        .startswith(f"mmtrain export: error: out={out} is not empty")
    )
    helped = mmtrain(scratch, "export", "--help")
    assert helped.returncode == 0 and "parity_atol" in helped.stdout


def test_a_trimmed_checkpoint_exports_its_frozen_base_too(
    model_store, tiny_data, tmp_path, monkeypatch
):
    """``model.save_frozen=false`` leaves a frozen pretrained tower out of the checkpoint; its
    safetensors export holds every weight and loads without the model store."""
    from safetensors.torch import load_file

    trimmed = [
        *COMMON,
        "encoder/image=hf",
        "encoder.image.freeze=true",
        "model.save_frozen=false",
        "~encoder/text",
        "~encoder/audio",
        "~head/caption",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
    ]
    run("fit", compose_cfg(*trimmed, output_dir=tmp_path / "fit"))
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored[CHECKPOINT_KEY]["base"]  # trimmed: the tower is recorded, not stored
    out = tmp_path / "st"
    export(export_cfg(ckpt, out))
    weights = load_file(out / "model.safetensors")
    tower = [k for k in weights if k.startswith("encoders.image.")]
    assert tower and not any(k in stored["state_dict"] for k in tower)
    assert set(stored["state_dict"]) < set(weights)
    assert "encoder.image" in json.loads((out / "mmtrain.json").read_text())["models"]

    image = Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8))
    expected = mmtrain_api.load(ckpt)(image=image)
    monkeypatch.delenv("MMTRAIN_MODEL_DIR")  # the tower's id no longer resolves
    assert mmtrain_api.load(out)(image=image) == expected


@pytest.mark.parametrize("rnn", [torch.nn.GRU, torch.nn.LSTM])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_the_traceable_rnn_path_equals_the_packed_one(rnn, bidirectional):
    """What a packed RNN text encoder computes, without packing (what torch.export traces):
    the same outputs for texts of every length, empty ones included."""
    from mmtrain.encoders.text import run_aligned, run_packed

    torch.manual_seed(0)
    net = rnn(8, 16, batch_first=True, bidirectional=bidirectional).eval()
    emb = torch.randn(5, 7, 8)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 1, 0, 5])[:, None]
    with torch.no_grad():
        packed, aligned = run_packed(net, emb, mask), run_aligned(net, emb, mask)
    torch.testing.assert_close(aligned, packed, atol=1e-6, rtol=0)
    assert packed.abs().sum() > 0 and not aligned[1, 3:].any()  # padding: zeros

    deep = rnn(8, 16, num_layers=2, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional .* of 2 layers is not traceable"):
        run_aligned(deep, emb, mask)


@pytest.mark.slow
def test_a_sharded_checkpoint_consolidates_into_one_file(scratch, tiny_data):
    """A ``trainer=fsdp2`` checkpoint (a directory of shards, two CPU processes) exports as
    one regular file that tests, resumes and predicts as the shards do; safetensors too."""
    sharded = ["trainer=fsdp2", "trainer.precision=32-true", "trainer.devices=2"]
    cpu = ["trainer.accelerator=cpu", "data.num_workers=0", *TINY_DATA, *QUIET]
    fit = mmtrain(scratch, "fit", *sharded, *cpu, "trainer.max_steps=2",
                  f"hydra.run.dir={scratch['cwd'] / 'fit'}", timeout=300)  # fmt: skip
    assert fit.returncode == 0, explain_run(fit)
    shards = scratch["cwd"] / "fit" / "checkpoints" / "last.ckpt"
    assert shards.is_dir()
    one, st = scratch["cwd"] / "one", scratch["cwd"] / "st"
    for fmt, out in (("checkpoint", one), ("safetensors", st)):
        proc = mmtrain(scratch, "export", f"ckpt_path={shards}", f"format={fmt}", f"out={out}")
        assert proc.returncode == 0, explain_run(proc)
    assert (one / "model.ckpt").is_file()

    metrics = {}
    for name, ckpt in (("shards", shards), ("one", one / "model.ckpt")):
        run_dir = scratch["cwd"] / f"test_{name}"
        proc = mmtrain(scratch, "test", f"ckpt_path={ckpt}", *cpu, f"hydra.run.dir={run_dir}")
        assert proc.returncode == 0, explain_run(proc)
        metrics[name] = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["one"] == metrics["shards"]
    resumed_dir = f"hydra.run.dir={scratch['cwd'] / 'resumed'}"
    resumed = mmtrain(
        scratch, "fit", f"ckpt_path={one / 'model.ckpt'}", *cpu, "trainer.max_steps=3", resumed_dir
    )
    assert resumed.returncode == 0, explain_run(resumed)
    image = np.full((40, 40, 3), 90, dtype=np.uint8)
    expected = mmtrain_api.load(shards)(image=image, text="a circle")
    assert mmtrain_api.load(one)(image=image, text="a circle") == expected
    assert mmtrain_api.load(st)(image=image, text="a circle") == expected
