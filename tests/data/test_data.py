"""Data: collation, preprocessing, the shapes data set, manifests and the data module."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_DATA
from PIL import Image

from mmtrain.build import build_datamodule
from mmtrain.data.collate import collate
from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.inputs import ImageInput
from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.shapes import ShapesDataset, generate_shapes
from mmtrain.data.transforms import AudioTransform, ImageTransform, WordTokenizer
from mmtrain.errors import MMTrainError


# ---- collate -----------------------------------------------------------------------------------
def _items() -> list[dict]:
    return [
        {
            "id": "a",
            "image": torch.ones(3, 4, 4),
            "text": torch.tensor([5, 6, 7]),
            "audio": torch.ones(2, 5),
            "label": torch.tensor(1),
            "raw": "first",
        },
        {
            "id": "b",
            "image": torch.zeros(3, 4, 4),
            "text": torch.tensor([8]),
            "audio": torch.full((2, 3), 2.0),
            "label": torch.tensor(0),
            "raw": "second",
        },
    ]


def test_collate_pads_sequences_and_stacks_the_rest():
    batch = collate(_items())
    assert batch["id"] == ["a", "b"] and batch["raw"] == ["first", "second"]
    assert batch["image"].shape == (2, 3, 4, 4) and batch["image"][0].eq(1).all()
    assert batch["label"].tolist() == [1, 0] and batch["label"].dtype == torch.long
    # Token ids (L,) long: padded with 0, mask True on real tokens.
    assert batch["text"].tolist() == [[5, 6, 7], [8, 0, 0]] and batch["text"].dtype == torch.long
    assert batch["text_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert batch["text_mask"].dtype == torch.bool
    # Features (D, T) float: padded along T.
    assert batch["audio"].shape == (2, 2, 5)
    assert batch["audio"][1, :, :3].eq(2).all() and batch["audio"][1, :, 3:].eq(0).all()
    assert batch["audio_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert "image_mask" not in batch and "label_mask" not in batch


def test_collate_names_the_key_it_cannot_stack():
    items = _items()
    items[1]["image"] = torch.zeros(3, 5, 4)
    with pytest.raises(ValueError, match=r"cannot stack 'image'.*\(3, 4, 4\).*\(3, 5, 4\)"):
        collate(items)


# ---- text --------------------------------------------------------------------------------------
TEXTS = ["the red circle", "a red square", "the blue circle, red!"]


def test_tokenizer_vocabulary_is_deterministic():
    tok = WordTokenizer().fit(TEXTS)
    # specials first, then by decreasing count (red 3, circle 2, the 2), ties alphabetically
    assert tok.vocab == [
        "<pad>",
        "<unk>",
        "<bos>",
        "<eos>",
        "red",
        "circle",
        "the",
        "!",
        ",",
        "a",
        "blue",
        "square",
    ]
    assert WordTokenizer().fit(list(reversed(TEXTS))).vocab == tok.vocab
    assert tok.vocab_size == 12 and tok.fitted and not WordTokenizer().fitted
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)


def test_tokenizer_encode_decode():
    tok = WordTokenizer().fit(TEXTS)
    ids = tok.encode("The RED triangle")
    assert ids.dtype == torch.long and ids.tolist() == [6, 4, tok.unk_id]  # unknown word -> <unk>
    assert tok.decode(ids.tolist()) == "the red"  # <unk> is a special: skipped
    assert tok.encode("red circle", add_special=True).tolist() == [2, 4, 5, 3]
    assert tok.decode([2, 4, 5, 3, 6, 6]) == "red circle"  # stops at <eos>, skips specials
    assert WordTokenizer(lowercase=False).fit(["Red red"]).vocab[4:] == ["Red", "red"]


def test_tokenizer_truncation_and_limits():
    tok = WordTokenizer(max_length=3).fit(TEXTS)
    assert tok.encode("the red circle the red").tolist() == [6, 4, 5]
    assert tok.encode("the red circle the red", add_special=True).tolist() == [2, 6, 3]
    assert tok.encode("").tolist() == []
    assert WordTokenizer(min_freq=2).fit(TEXTS).vocab[4:] == ["red", "circle", "the"]
    assert WordTokenizer(max_vocab=1).fit(TEXTS).vocab[4:] == ["red"]
    with pytest.raises(ValueError, match="max_length and min_freq must be positive"):
        WordTokenizer(max_length=0)


def test_tokenizer_set_vocab():
    tok = WordTokenizer()
    tok.set_vocab(["<pad>", "<unk>", "<bos>", "<eos>", "zebra"])
    assert tok.encode("zebra horse").tolist() == [4, 1]
    with pytest.raises(ValueError, match="must start with"):
        tok.set_vocab(["zebra"])


# ---- audio -------------------------------------------------------------------------------------
def _tone(n: int, rate: int = 22050, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


@pytest.mark.parametrize("n", [22050, 11025, 10000])
def test_audio_resampling_and_frame_count(n):
    transform = AudioTransform(sample_rate=16000, n_mels=40, hop_length=160)
    feats = transform(_tone(n)[None], 22050)
    resampled = math.ceil(n * 16000 / 22050)  # 22050 Hz -> 16000 Hz
    assert transform.waveform(_tone(n)[None], 22050).shape == (resampled,)
    assert feats.shape == (40, resampled // 160 + 1)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()


def test_audio_mono_mix_and_crop():
    transform = AudioTransform(sample_rate=16000, n_mels=40, max_seconds=0.25)
    left, right = _tone(16000, 16000, 440.0), _tone(16000, 16000, 1000.0)
    mono = transform.waveform(np.stack([left, right]), 16000)  # same rate: no resampling
    assert mono.shape == (4000,)  # cropped to 0.25 s, from the start outside training
    torch.testing.assert_close(mono, torch.from_numpy((left + right)[:4000] / 2))
    assert transform(np.stack([left, right]), 16000, train=True).shape == (40, 4000 // 160 + 1)
    with pytest.raises(ValueError, match="sizes must be positive"):
        AudioTransform(n_mels=0)


# ---- image -------------------------------------------------------------------------------------
def test_image_transform_shapes_and_normalisation():
    mean = (0.485, 0.456, 0.406)
    grey = Image.new("RGB", (100, 80), tuple(round(255 * m) for m in mean))
    transform = ImageTransform(size=32)
    out = transform(grey)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.abs().max() < 0.01  # the ImageNet mean colour normalises to ~0
    torch.manual_seed(0)
    assert transform(grey, train=True).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="crop_scale"):
        ImageTransform(crop_scale=[0.9, 0.5])
    with pytest.raises(ValueError, match="size must be positive"):
        ImageTransform(size=0)


# ---- the shapes data set -----------------------------------------------------------------------
SMALL = {"train": 4, "val": 2, "test": 2}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_shapes_generation_is_deterministic(tmp_path):
    a = _tree(generate_shapes(tmp_path / "a", SMALL, seed=0))
    b = _tree(generate_shapes(tmp_path / "b", SMALL, seed=0))
    assert a.keys() == b.keys() and {"train.jsonl", "val.jsonl", "test.jsonl"} <= a.keys()
    assert a == b  # manifests, images and audio byte for byte
    c = _tree(generate_shapes(tmp_path / "c", SMALL, seed=1))
    assert c["train.jsonl"] != a["train.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp dirs left


def test_shapes_generation_is_skipped_when_done(tmp_path):
    root = generate_shapes(tmp_path / "s", SMALL, seed=0)
    manifest = root / "train.jsonl"
    stamp = manifest.stat().st_mtime_ns
    generate_shapes(root, SMALL, seed=0)
    assert manifest.stat().st_mtime_ns == stamp
    generate_shapes(root, {**SMALL, "train": 3}, seed=0)  # other sizes: written again
    assert len(manifest.read_text().splitlines()) == 3


def test_shapes_generation_never_deletes_a_foreign_folder(tmp_path):
    mine = tmp_path / "my_dataset"
    mine.mkdir()
    (mine / "precious.txt").write_text("not generated by mmtrain")
    with contextlib.suppress(MMTrainError):  # refusing with a clear error is fine
        generate_shapes(mine, SMALL, seed=0)
    assert (mine / "precious.txt").is_file()


def test_shapes_files_are_real_images_and_audio(tiny_data):
    rows = [json.loads(line) for line in (tiny_data / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert {r["image"].rsplit(".", 1)[1] for r in rows} == {"jpg", "png"}
    for row in rows[:8]:
        with Image.open(tiny_data / row["image"]) as img:
            assert img.format == ("PNG" if row["image"].endswith(".png") else "JPEG")
            assert img.size == (64, 64) and img.mode == "RGB"
        info = sf.info(str(tiny_data / row["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert 0.3 <= info.duration <= 0.6
        shape, tone = row["label"].split("_")
        assert shape in ("circle", "square", "triangle") and tone in ("low", "high")
        assert isinstance(row["text"], str) and row["text"].startswith("a ")


def test_shapes_dataset_items(tiny_data):
    ds = ShapesDataset(
        str(tiny_data),
        "val",
        columns=["image", "audio", "text", "label"],
        num_train=24,
        num_val=8,
        num_test=8,
    )
    item = ds[0]
    assert item["id"] == "val_00000" and isinstance(item["image"], Image.Image)
    samples, rate = item["audio"]
    assert rate == 22050 and samples.ndim == 2 and samples.shape[0] == 1
    assert ds.columns == ["audio", "caption", "image", "label", "text"]
    with pytest.raises(ValueError, match="split must be one of"):
        ShapesDataset(str(tiny_data), "dev")


# ---- manifests ---------------------------------------------------------------------------------
def _write_image(path: Path) -> None:
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_manifest_missing_image_names_file_and_line(tmp_path):
    _write_image(tmp_path / "ok.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"image": "ok.png", "label": "a"}\n\n{"image": "gone.png", "label": "b"}\n'
    )
    ds = ManifestDataset(manifest)
    assert len(ds) == 2 and ds.columns == ["image", "label"] and ds[0]["id"] == "0"
    with pytest.raises(MMTrainError) as info:
        ds[1]
    message = str(info.value)
    assert f"{manifest}:3:" in message and "gone.png" in message and "not found" in message


def test_manifest_corrupt_image_names_file_and_line(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "x", "image": "bad.jpg"}\n')
    with pytest.raises(MMTrainError, match=rf"{manifest}:1: cannot decode image .*bad.jpg"):
        ManifestDataset(manifest)[0]


def test_manifest_bad_json_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"label": "a"}\n{"label": "b"\n')
    with pytest.raises(MMTrainError, match=rf"^{manifest}:2: not valid JSON"):
        ManifestDataset(manifest)
    manifest.write_text('{"label": "a"}\n["b"]\n')
    with pytest.raises(MMTrainError, match=rf"^{manifest}:2: expected a JSON object"):
        ManifestDataset(manifest)
    with pytest.raises(MMTrainError, match="manifest not found"):
        ManifestDataset(tmp_path / "nope.jsonl")


def test_manifest_csv_and_missing_column(tmp_path):
    buf = io.StringIO()
    buf.write("id,text,label\ns1,hello there,a\ns2,,b\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text(buf.getvalue())
    ds = ManifestDataset(manifest, columns=["text", "label"])
    assert ds[0] == {"id": "s1", "text": "hello there", "label": "a"}
    assert ds.values("text") == ["hello there", None]
    with pytest.raises(MMTrainError, match=rf"^{manifest}:3: missing column 'text'"):
        ds[1]


def test_manifest_missing_audio(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav"}\n')
    with pytest.raises(MMTrainError, match=rf"{manifest}:1: audio file not found: .*a.wav"):
        ManifestDataset(manifest)[0]


# ---- the data module ---------------------------------------------------------------------------
def _datamodule(tiny_data: Path, **kwargs) -> MultimodalDataModule:
    dataset = functools.partial(
        ShapesDataset, root=str(tiny_data), num_train=24, num_val=8, num_test=8
    )
    return MultimodalDataModule(dataset=dataset, image=ImageInput(), batch_size=4, **kwargs)


def test_missing_target_column_names_the_head(tiny_data):
    dm = _datamodule(tiny_data, modalities=["image"], tasks=["label", "answer"])
    with pytest.raises(MMTrainError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "head/answer" in message and "'answer' column" in message
    assert "['audio', 'caption', 'image', 'label', 'text']" in message  # the data's columns
    assert "~head/answer" in message


def test_modality_without_preprocessing_is_refused(tiny_data):
    with pytest.raises(
        ValueError, match=r"modalities \['audio'\] have an encoder but no data.audio"
    ):
        _datamodule(tiny_data, modalities=["image", "audio"], tasks=["label"])


def test_batches_follow_the_contract(compose_config, tiny_data):
    cfg = compose_config(*TINY_DATA)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["id"] == [f"val_{i:05d}" for i in range(4)]  # evaluation order is fixed
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["text"].dtype == torch.long and batch["text_mask"].dtype == torch.bool
    assert batch["text"].shape == batch["text_mask"].shape and batch["text"].shape[0] == 4
    assert batch["audio"].shape[:2] == (4, 40) and batch["audio_mask"].dtype == torch.bool
    assert batch["audio"].shape[2] == batch["audio_mask"].shape[1]
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.long
    facts = dm.facts()
    assert facts["inputs"] == {
        "image": {"image_size": 64},
        "text": {"vocab_size": len(dm.inputs["text"].tokenizer.vocab), "pad_id": 0},
        "audio": {"n_mels": 40},
    }
    caption = dm.targets["caption"].tokenizer
    assert facts["targets"] == {
        "label": {
            "class_names": dm.class_names["label"],
            "num_classes": len(dm.class_names["label"]),
        },
        "caption": {"tokenizer": caption, "vocab_size": caption.vocab_size, "pad_id": 0},
    }
    assert batch["caption"].dtype == torch.long and batch["caption_mask"].dtype == torch.bool
    assert batch["caption"][:, 0].eq(2).all()  # every caption starts with <bos>
    refs = batch["caption_references"]  # shapes has one caption an image: the raw string
    assert len(refs) == 4 and all(len(r) == 1 and r[0].startswith("a ") for r in refs), refs

    cfg = compose_config(*TINY_DATA, "~encoder/audio")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert "audio" not in batch and "audio_mask" not in batch and "image" in batch


def test_state_dict_round_trip(compose_config, tiny_data, tmp_path):
    cfg = compose_config(*TINY_DATA)
    fitted = build_datamodule(cfg)
    fitted.setup("fit")
    state = fitted.state_dict()
    vocab = state["inputs"]["text"]["vocab"]
    assert vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and len(vocab) > 4
    assert state["targets"]["label"]["classes"] == sorted(state["targets"]["label"]["classes"])
    # Plain types: loadable with weights_only=True (in a checkpoint) and as JSON.
    torch.save(state, tmp_path / "state.pt")
    assert torch.load(tmp_path / "state.pt", weights_only=True) == state
    assert json.loads(json.dumps(state)) == state

    restored = build_datamodule(cfg)
    restored.load_state_dict(state)
    assert restored.state_dict() == state  # before setup
    restored.setup("test")
    assert restored.state_dict() == state
    restored_facts, fitted_facts = restored.facts(), fitted.facts()
    vocabs = [
        f["targets"]["caption"].pop("tokenizer").vocab for f in (restored_facts, fitted_facts)
    ]
    assert restored_facts == fitted_facts and vocabs[0] == vocabs[1] and vocabs[0]

    # A restored state is used as is, not rebuilt from the data.
    caption_vocab = state["targets"]["caption"]["tokenizer"]["vocab"]
    shuffled = {
        "inputs": {
            "image": {"size": 64},
            "text": {"vocab": vocab[:4] + vocab[4:][::-1]},
            "audio": {},
        },
        "targets": {
            "label": {"classes": state["targets"]["label"]["classes"][::-1]},
            "caption": {"tokenizer": {"vocab": caption_vocab[:4] + ["x"]}},
        },
    }
    other = build_datamodule(cfg)
    other.load_state_dict(shuffled)
    other.setup("fit")
    assert other.state_dict() == shuffled


def test_unknown_class_at_test_time_names_the_sample(tiny_data):
    dm = _datamodule(tiny_data, modalities=["image"], tasks=["label"])
    dm.load_state_dict({"targets": {"label": {"classes": ["circle_low", "zzz"]}}})
    dm.setup("test")
    with pytest.raises(MMTrainError, match=r"sample test_0000\d: label='\w+' is not a class"):
        for _ in dm.test_dataloader():
            pass


def test_inputs_and_targets_follow_their_protocols():
    """build_datamodule checks every input and target against contracts.py, as it checks heads:
    a part of one's own that lacks a member fails at build time, naming it."""
    from mmtrain.build import follows
    from mmtrain.contracts import Input, Target
    from mmtrain.data import inputs, targets

    for part in (
        inputs.ImageInput(size=32),
        inputs.TextInput(),
        inputs.AudioInput(),
        inputs.TabularInput(["age"]),
    ):
        assert follows(part, Input, "data.x") is part and isinstance(part, Input)
    for part in (
        targets.LabelTarget(),
        targets.TextTarget(WordTokenizer()),
        targets.AnswersTarget(),
        targets.MaskTarget(),
    ):
        assert follows(part, Target, "data.targets.x") is part and isinstance(part, Target)

    class Depth(inputs.Input):  # the base class gives all but encode, which it requires
        def encode(self, value, train):
            return torch.as_tensor(value, dtype=torch.float32)

    follows(Depth(), Input, "data.depth")
    with pytest.raises(TypeError, match="abstract method encode"):
        type("NoEncode", (inputs.Input,), {})()

    class Bare:
        name = "depth"

        def encode(self, value, train):
            return value

    with pytest.raises(MMTrainError, match=r"data.depth: Bare lacks bucketable, collate, columns"):
        follows(Bare(), Input, "data.depth")
