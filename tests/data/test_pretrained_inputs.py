"""Text and audio inputs driven by a pretrained model's tokenizer or feature extractor.

Tokenizers and feature extractors are built in ``tmp_path`` as their checkpoints ship them (a
WordPiece ``vocab.txt``, a byte-level BPE ``tokenizer.json``, extractors'
``save_pretrained``) and loaded offline. Token ids must be identical to calling the tokenizer
directly; audio features (from WAV and FLAC files written with soundfile) must equal the
extractor called directly on the same file at the same rate within 1e-4. The largest absolute
difference of each is printed (``pytest -s``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers.manifest import write_manifests

from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.inputs import AudioInput, ImageInput, TextInput
from mmtrain.data.io import load_audio
from mmtrain.data.manifest import ManifestDataset
from mmtrain.errors import MMTrainError
from mmtrain.utils.preprocessing import audio_keys_from_hf, text_keys_from_hf

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
WORDPIECE = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "a", "the", "of", "on", "photo", "picture", "cat", "dog", "mat", "red", "sat", "is",
    "##s", "##ting", ",", ".", "!", "zero", "two", "ten",
]  # fmt: skip
TEXTS = [
    "A photo of the cat.",
    "the dogs sat on the red mat, the cat is sitting!",  # truncated at max_length
    "Zebra photos",  # unknown words
    "",
    "  two   cats  ",
]


def named(part: Any, name: str) -> Any:
    """``part`` with its ``name`` set, as the data module sets it."""
    part.name = name
    return part


# ---- tokenizers ---------------------------------------------------------------------------------
@pytest.fixture
def bert(tmp_path: Path) -> Path:
    """A BERT-style WordPiece tokenizer as old checkpoints ship it: vocab.txt and its config."""
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 16}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def bpe(folder: Path, pad: bool, padding_side: str) -> Path:
    """A byte-level BPE tokenizer (GPT-2 style, a tokenizer.json) with ``<s> ... </s>``
    around each text, trained on a few sentences; without a pad token unless ``pad``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<unk>", "<s>", "</s>", *(["<pad>"] if pad else [])]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=120,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([t for t in TEXTS if t] * 3, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", backend.token_to_id("<s>")), ("</s>", backend.token_to_id("</s>"))],
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side=padding_side,
        **({"pad_token": "<pad>"} if pad else {}),
    )
    tokenizer.save_pretrained(folder)
    return folder


def direct(folder: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_a_wordpiece_tokenizer_gives_its_own_ids_and_mask(bert):
    text_input = named(TextInput(max_length=8, tokenizer=str(bert)), "text")
    tokenizer = direct(bert)
    batch = text_input.collate([text_input.encode(t, train=True) for t in TEXTS])
    expected = tokenizer(TEXTS, truncation=True, max_length=8, padding=True, return_tensors="pt")
    assert torch.equal(batch["text"], expected["input_ids"])
    assert torch.equal(batch["text_mask"], expected["attention_mask"].bool())
    assert batch["text"][0, 0] == tokenizer.cls_token_id  # special tokens added
    assert text_input.fitted and text_input.state_dict() == {}
    assert text_input.facts() == {"vocab_size": len(tokenizer), "pad_id": tokenizer.pad_token_id}
    lengths = text_input.lengths(lambda column: [*TEXTS, None], None)
    assert lengths == [float(n) for n in expected["attention_mask"].sum(1).tolist()] + [0.0]
    print(f"token ids identical (WordPiece): {batch['text'].shape}")


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_a_bpe_tokenizer_pads_on_its_side_with_its_pad_id(padding_side, tmp_path):
    folder = bpe(tmp_path / "bpe", pad=True, padding_side=padding_side)
    text_input = named(TextInput(max_length=10, tokenizer=str(folder)), "text")
    tokenizer = direct(folder)
    batch = text_input.collate([text_input.encode(t, train=False) for t in TEXTS])
    expected = tokenizer(TEXTS, truncation=True, max_length=10, padding=True, return_tensors="pt")
    assert torch.equal(batch["text"], expected["input_ids"])
    assert torch.equal(batch["text_mask"], expected["attention_mask"].bool())
    assert text_input.facts()["pad_id"] == tokenizer.pad_token_id


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_of_text(tmp_path):
    folder = bpe(tmp_path / "gpt", pad=False, padding_side="right")
    text_input = named(TextInput(max_length=10, tokenizer=str(folder)), "text")
    tokenizer = direct(folder)
    assert tokenizer.pad_token_id is None
    batch = text_input.collate([text_input.encode(t, train=False) for t in TEXTS])
    assert text_input.facts()["pad_id"] == tokenizer.eos_token_id
    for i, text in enumerate(TEXTS):
        ids = tokenizer(text, truncation=True, max_length=10)["input_ids"]
        assert batch["text"][i, : len(ids)].tolist() == ids
        assert batch["text_mask"][i].sum() == len(ids)
        assert (batch["text"][i, len(ids) :] == tokenizer.eos_token_id).all()


def test_open_clip_tokenizers_are_named_with_a_prefix():
    """``tokenizer: open_clip:<model>``: open_clip's own tokenizer, its padding as open_clip's
    (zeros after the end-of-text token, here only to the longest text of the batch)."""
    open_clip = pytest.importorskip("open_clip")
    pytest.importorskip("mmtrain.data.transforms.open_clip_tokenizer")
    text_input = named(TextInput(max_length=77, tokenizer="open_clip:ViT-B-32"), "text")
    batch = text_input.collate([text_input.encode(t, train=False) for t in TEXTS])
    expected = open_clip.get_tokenizer("ViT-B-32")(TEXTS)  # (B, 77)
    width = batch["text"].shape[1]
    assert torch.equal(batch["text"], expected[:, :width]) and not expected[:, width:].any()
    assert torch.equal(batch["text_mask"], batch["text"] != 0)
    assert text_input.fitted and text_input.facts() == {"vocab_size": 49408, "pad_id": 0}


def test_the_fingerprint_is_the_tokenizers_files_and_settings(bert, tmp_path):
    fingerprint = TextInput(max_length=8, tokenizer=str(bert)).fingerprint()
    moved = shutil.copytree(bert, tmp_path / "elsewhere")  # a checkpoint's copy, elsewhere
    assert TextInput(max_length=8, tokenizer=str(moved)).fingerprint() == fingerprint
    assert TextInput(max_length=9, tokenizer=str(bert)).fingerprint() != fingerprint
    (moved / "vocab.txt").write_text("\n".join([*WORDPIECE, "mouse"]) + "\n")
    assert TextInput(max_length=8, tokenizer=str(moved)).fingerprint() != fingerprint


def test_text_keys_name_the_folder_and_the_models_length(bert, tmp_path):
    assert text_keys_from_hf(bert) == {"tokenizer": str(bert), "max_length": 16}
    folder = bpe(tmp_path / "bpe", pad=True, padding_side="right")  # no model_max_length
    assert text_keys_from_hf(folder) == {"tokenizer": str(folder)}


def test_a_folder_without_a_tokenizer_is_one_error_naming_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    for make in (lambda: TextInput(tokenizer=str(empty)), lambda: text_keys_from_hf(empty)):
        with pytest.raises(MMTrainError, match=f"{empty} holds no tokenizer"):
            make()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(MMTrainError, match=f"cannot load the tokenizer in {broken}"):
        TextInput(tokenizer=str(broken))
    with pytest.raises(MMTrainError, match="is not a folder"):
        TextInput(tokenizer=str(tmp_path / "missing"))


# ---- feature extractors ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Audio files at 16 kHz as data sets hold them: a float WAV, a stereo 16-bit WAV, a FLAC
    longer than 2 s, and a clip shorter than one 25 ms window."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    files = []
    for i, (seconds, channels, fmt) in enumerate(
        [(1.3, 1, "FLOAT"), (0.7, 2, "PCM_16"), (2.05, 1, "PCM_16"), (0.02, 1, "FLOAT")]
    ):
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.05 * rng.standard_normal(t.size)
        samples = np.stack([wave, 0.5 * wave + 0.01][:channels], axis=1).astype(np.float32)
        path = folder / f"clip{i}.{'flac' if i == 2 else 'wav'}"
        sf.write(path, samples, 16000, subtype=fmt)
        files.append(path)
    return files


EXTRACTORS = {  # name: (class, arguments)
    "wav2vec2": ("Wav2Vec2FeatureExtractor", {"do_normalize": True}),
    "wav2vec2-raw": ("Wav2Vec2FeatureExtractor", {"do_normalize": False, "padding_value": 0.5}),
    "whisper": ("WhisperFeatureExtractor", {"feature_size": 80}),
    "whisper-128": ("WhisperFeatureExtractor", {"feature_size": 128}),
    "ast": ("ASTFeatureExtractor", {}),
}


def extractor_folder(name: str, folder: Path) -> Path:
    cls, kwargs = EXTRACTORS[name]
    getattr(transformers, cls)(**kwargs).save_pretrained(folder)
    return folder


def expected_features(extractor: Any, mono: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(features, mask)`` of the extractor called directly, in mmtrain's layout."""
    name = type(extractor).__name__
    if name == "WhisperFeatureExtractor":
        out = extractor(mono, sampling_rate=16000, return_attention_mask=True, return_tensors="np")
        return out["input_features"][0], out["attention_mask"][0].astype(bool)
    out = extractor(mono, sampling_rate=16000, return_tensors="np")
    values = out["input_values"][0]
    if name == "ASTFeatureExtractor":
        import torchaudio.compliance.kaldi as kaldi

        fbank = kaldi.fbank(
            torch.from_numpy(mono)[None], sample_frequency=16000, window_type="hanning"
        )
        return values.T, np.arange(values.shape[0]) < fbank.shape[0]
    return values, np.ones(values.shape[-1], dtype=bool)


@pytest.mark.parametrize("name", list(EXTRACTORS))
def test_features_are_the_extractors_own(name, clips, tmp_path):
    folder = extractor_folder(name, tmp_path)
    keys = audio_keys_from_hf(folder)
    audio_input = named(AudioInput(**keys), "audio")
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    if name == "ast":  # shorter than one fbank window: a bad sample, not torchaudio's assert
        with pytest.raises(MMTrainError, match="shorter than one 25 ms window"):
            audio_input.encode(load_audio(clips[-1]), train=False)
        clips = clips[:-1]
    batch = audio_input.collate([audio_input.encode(load_audio(f), train=False) for f in clips])
    worst = 0.0
    for i, path in enumerate(clips):
        samples, rate = load_audio(path)
        want, mask = expected_features(extractor, samples.mean(axis=0))
        got = batch["audio"][i].numpy()
        length = want.shape[-1]
        assert np.array_equal(batch["audio_mask"][i].numpy()[:length], mask), (name, path)
        assert not batch["audio_mask"][i, length:].any()
        worst = max(worst, float(np.abs(got[..., :length] - want).max()))
        if name.startswith("wav2vec2"):  # padded with the extractor's padding value
            assert (batch["audio"][i, length:] == extractor.padding_value).all()
    print(f"max |diff| {name}: {worst:.2e}")
    assert worst < TOLERANCE
    width = {"whisper": 3000, "ast": 1024}.get(name.split("-")[0])
    if width is None:  # the waveform: (B, T), T the longest clip
        longest = max(load_audio(f)[0].shape[-1] for f in clips)
        assert batch["audio"].shape == batch["audio_mask"].shape == (len(clips), longest)
    else:
        assert batch["audio"].shape == (len(clips), keys["n_mels"], width)
        assert batch["audio_mask"].shape == (len(clips), width)


def test_clips_are_resampled_and_cropped_before_the_extractor(tmp_path):
    """A 44.1 kHz stereo file: mixed to mono, resampled to the extractor's rate, cropped at
    ``max_seconds`` (the start in evaluation)."""
    import torchaudio

    rate = 44100
    t = np.arange(int(1.5 * rate)) / rate
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.cos(2 * np.pi * 500 * t)], 1) * 0.3
    path = tmp_path / "clip.wav"
    sf.write(path, stereo.astype(np.float32), rate, subtype="FLOAT")
    folder = extractor_folder("whisper", tmp_path / "whisper")
    audio_input = named(AudioInput(**audio_keys_from_hf(folder), max_seconds=1.0), "audio")
    batch = audio_input.collate([audio_input.encode(load_audio(path), train=False)])
    samples, _ = load_audio(path)
    mono = torch.from_numpy(samples).mean(0)
    resampled = torchaudio.functional.resample(mono, rate, 16000)[:16000].numpy()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    want, mask = expected_features(extractor, resampled)
    difference = float(np.abs(batch["audio"][0].numpy() - want).max())
    print(f"max |diff| whisper after resampling 44.1 -> 16 kHz: {difference:.2e}")
    assert difference < TOLERANCE
    assert np.array_equal(batch["audio_mask"][0].numpy(), mask) and mask.sum() == 100


def test_the_facts_tell_the_encoder_what_it_gets(tmp_path):
    def facts(name: str) -> dict[str, Any]:
        folder = extractor_folder(name, tmp_path / name)
        return AudioInput(**audio_keys_from_hf(folder)).facts()

    assert facts("wav2vec2") == {"waveform": True, "sample_rate": 16000}
    assert facts("whisper") == {"n_mels": 80, "waveform": False, "frames": 3000}
    assert facts("ast") == {"n_mels": 128, "waveform": False, "frames": 1024}
    assert AudioInput(n_mels=40).facts() == {"n_mels": 40}  # mmtrain's own log-mels


def test_audio_keys_follow_the_extractor(tmp_path):
    wav2vec2 = extractor_folder("wav2vec2", tmp_path / "w")
    assert audio_keys_from_hf(wav2vec2) == {
        "feature_extractor": str(wav2vec2),
        "sample_rate": 16000,
    }
    whisper = tmp_path / "nested"  # a transformers 5 processor_config.json, nested
    whisper.mkdir()
    config = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=24000).to_dict()
    config.pop("mel_filters", None)
    (whisper / "processor_config.json").write_text(json.dumps({"feature_extractor": config}))
    assert audio_keys_from_hf(whisper) == {
        "feature_extractor": str(whisper),
        "sample_rate": 24000,
        "n_mels": 80,
    }
    loaded = transformers.AutoFeatureExtractor.from_pretrained(whisper, local_files_only=True)
    assert loaded.sampling_rate == 24000 and loaded.feature_size == 80  # as transformers reads it


def test_keys_that_contradict_the_extractor_are_errors(tmp_path):
    whisper = str(extractor_folder("whisper", tmp_path / "whisper"))
    wav2vec2 = str(extractor_folder("wav2vec2", tmp_path / "wav2vec2"))
    with pytest.raises(ValueError, match="takes 16000 Hz audio, got sample_rate=22050"):
        AudioInput(feature_extractor=whisper, sample_rate=22050, n_mels=80)
    with pytest.raises(ValueError, match="gives 80 mel bins, got n_mels=64"):
        AudioInput(feature_extractor=whisper)
    with pytest.raises(ValueError, match="SpecAugment"):
        AudioInput(feature_extractor=wav2vec2, freq_mask=4)


def test_spec_augment_masks_the_extractors_log_mels_in_training(clips, tmp_path):
    folder = extractor_folder("whisper", tmp_path)
    audio_input = AudioInput(**audio_keys_from_hf(folder), freq_mask=20, time_mask=50)
    clip = load_audio(clips[0])
    torch.manual_seed(0)
    train, evaluation = audio_input.encode(clip, train=True), audio_input.encode(clip, False)
    assert train.shape == evaluation.shape == (81, 3000)  # log-mels and the frame-mask row
    assert torch.equal(train[-1], evaluation[-1]) and not torch.equal(train, evaluation)


def test_unsupported_or_missing_extractors_are_one_error(tmp_path):
    other = tmp_path / "clap"
    transformers.ClapFeatureExtractor().save_pretrained(other)
    with pytest.raises(MMTrainError, match="ClapFeatureExtractor.*not one mmtrain batches"):
        audio_keys_from_hf(other)
    with pytest.raises(MMTrainError, match="is not a feature extractor mmtrain batches"):
        AudioInput(feature_extractor=str(other), sample_rate=48000)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MMTrainError, match="has no feature extractor config"):
        audio_keys_from_hf(empty)
    with pytest.raises(MMTrainError, match=f"cannot load a feature extractor from {empty}"):
        AudioInput(feature_extractor=str(empty))


def test_the_audio_fingerprint_is_the_extractors_files_not_its_folder(tmp_path):
    folder = extractor_folder("wav2vec2", tmp_path / "a")
    fingerprint = AudioInput(**audio_keys_from_hf(folder)).fingerprint()
    moved = shutil.copytree(folder, tmp_path / "b")
    assert AudioInput(**audio_keys_from_hf(moved)).fingerprint() == fingerprint
    other = extractor_folder("wav2vec2-raw", tmp_path / "c")
    assert AudioInput(**audio_keys_from_hf(other)).fingerprint() != fingerprint


# ---- through the data module, and without transformers -------------------------------------
def test_a_data_module_batches_the_models_preprocessing(bert, tmp_path):
    """Manifest files (22.05 kHz WAVs, small JPEG/PNG images) through the loaders."""
    files = write_manifests(tmp_path / "data")
    vit = tmp_path / "vit"
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    wav2vec2 = extractor_folder("wav2vec2", tmp_path / "wav2vec2")
    from mmtrain.utils.preprocessing import image_keys_from_hf

    dm = MultimodalDataModule(
        dataset=ManifestDataset,
        train=str(files["train"]),
        val=str(files["val"]),
        image=ImageInput(**image_keys_from_hf(vit)),
        text=TextInput(**text_keys_from_hf(bert)),
        audio=AudioInput(**audio_keys_from_hf(wav2vec2)),
        modalities=["image", "text", "audio"],
        tasks=["label"],
        batch_size=3,
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    texts = [row["text"] for row in ManifestDataset(files["val"])]
    expected = direct(bert)(
        texts, truncation=True, max_length=16, padding=True, return_tensors="pt"
    )
    assert torch.equal(batch["text"], expected["input_ids"])
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["audio"].ndim == 2 and batch["audio"].shape == batch["audio_mask"].shape
    assert dm.facts()["inputs"]["audio"] == {"waveform": True, "sample_rate": 16000}


def test_the_default_inputs_never_import_transformers():
    code = (
        "import sys\n"
        "from mmtrain.data.inputs import AudioInput, ImageInput, TextInput\n"
        "TextInput(), AudioInput(), ImageInput()\n"
        "assert 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
