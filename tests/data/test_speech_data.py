"""Speech and audio-caption data sets: LibriSpeech, Clotho, and the LibriSpeech download script.

Every fixture is written by the test in the on-disk layout of the real release:
``<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with ``.trans.txt`` transcripts
(16 kHz FLAC, speakers whose ids sort differently as strings and as numbers, apostrophes), and
Clotho's ``clotho_captions_<subset>.csv`` with a byte-order mark, file names with spaces and
commas, captions with quoted commas and an empty caption cell (44.1 kHz WAV). The writers are
plain functions, importable by other tests.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import SCRIPTS
from helpers.speech import (
    CLOTHO,
    clotho_captions,
    librispeech_ids,
    librispeech_transcript,
    write_clotho,
    write_librispeech,
)

from mmtrain.data.clotho import ClothoDataset
from mmtrain.data.inputs import AudioInput
from mmtrain.data.librispeech import LibriSpeechDataset
from mmtrain.data.targets import TextTarget
from mmtrain.errors import MMTrainError


@pytest.fixture
def libri(tmp_path: Path) -> Path:
    return write_librispeech(tmp_path)


# ---- LibriSpeech ------------------------------------------------------------------------------
def test_librispeech_items_and_ids(libri):
    train = LibriSpeechDataset(str(libri), "train")
    ids = librispeech_ids("train-clean-100", 2)
    assert len(train) == 8 and [train[k]["id"] for k in range(8)] == ids
    assert ids[:2] == ["103-1240-0000", "103-1240-0001"]  # string order: "103" < "19"
    assert train.columns == ["audio", "transcript"]
    item = train[0]
    assert set(item) == {"id", "audio", "transcript"}
    samples, rate = item["audio"]
    assert rate == 16000 and samples.dtype == np.float32 and samples.shape[0] == 1
    assert samples.shape[1] == 1200 * len(item["transcript"])  # 75 ms a character
    assert item["transcript"] == librispeech_transcript("103-1240-0000")
    assert item["transcript"].isupper()
    for split, subset in (("val", "dev-clean"), ("test", "test-clean")):
        ds = LibriSpeechDataset(str(libri), split)
        assert [ds[k]["id"] for k in range(len(ds))] == librispeech_ids(subset, 1)


def test_librispeech_columns_values_and_where(libri):
    val = LibriSpeechDataset(str(libri), "val", columns=["transcript"])
    ids = librispeech_ids("dev-clean", 1)
    assert val.values("transcript") == [librispeech_transcript(i) for i in ids]
    assert val.values("id") == ids
    spk, ch, _ = ids[0].split("-")
    flac = libri / "dev-clean" / spk / ch / f"{ids[0]}.flac"
    assert val.values("audio")[0] == str(flac)
    assert val.where(0) == f"{libri / 'dev-clean' / spk / ch / f'{spk}-{ch}.trans.txt'}:1"
    flac.unlink()  # a transcript-only item reads no audio
    assert set(val[0]) == {"id", "transcript"}
    assert set(LibriSpeechDataset(str(libri), "val", columns=[])[1]) == {"id"}
    with pytest.raises(MMTrainError, match=r"no column 'label'.*\['audio', 'transcript'\]"):
        val.values("label")
    with pytest.raises(MMTrainError, match=r"trans.txt:1: no column 'label'"):
        LibriSpeechDataset(str(libri), "val", columns=["label"])[1]


def test_librispeech_multi_subset_splits(tmp_path):
    root = write_librispeech(
        tmp_path, {"train-clean-100": 1, "train-clean-360": 1, "dev-clean": 1, "dev-other": 1}
    )
    train = LibriSpeechDataset(str(root), "train", train="train-clean-100+train-clean-360")
    expected = sorted(librispeech_ids("train-clean-100", 1) + librispeech_ids("train-clean-360", 1))
    assert train.values("id") == expected
    assert train.subsets == ["train-clean-100", "train-clean-360"]
    val = LibriSpeechDataset(str(root), "val", val=" dev-clean, dev-other ,dev-clean")
    assert len(val) == 8 and val.subsets == ["dev-clean", "dev-other"]  # a repeat is read once
    assert "dev-other" in val.where(val.values("id").index("116-288045-0000"))


def test_librispeech_archive_folder_root(tmp_path):
    base = write_librispeech(tmp_path, {"dev-clean": 1}, archive_folder=True)
    assert base == tmp_path / "LibriSpeech" and (base / "SPEAKERS.TXT").is_file()
    for root in (tmp_path, base):  # the folder holding LibriSpeech/, or LibriSpeech/ itself
        val = LibriSpeechDataset(str(root), "val")
        assert val.values("id") == librispeech_ids("dev-clean", 1)
        assert val[0]["audio"][1] == 16000


def test_librispeech_matches_torchaudio(tmp_path):
    from torchaudio.datasets import LIBRISPEECH

    write_librispeech(tmp_path, {"train-clean-100": 2}, archive_folder=True)
    reference = LIBRISPEECH(str(tmp_path), url="train-clean-100")
    ours = LibriSpeechDataset(str(tmp_path), "train")
    assert len(ours) == len(reference)
    for k in range(len(ours)):
        path, rate, transcript, speaker, chapter, utt = reference.get_metadata(k)
        assert ours.values("id")[k] == f"{speaker}-{chapter}-{utt:04d}"
        assert ours.values("transcript")[k] == transcript and rate == 16000
        assert ours.values("audio")[k] == str(tmp_path / "LibriSpeech" / path)


def _libri_error(**kwargs: Any) -> str:
    with pytest.raises(MMTrainError) as info:
        LibriSpeechDataset(**kwargs)
    return str(info.value)


def test_librispeech_errors(libri, tmp_path):
    message = _libri_error(root=str(tmp_path / "nowhere"), split="train")
    assert str(tmp_path / "nowhere") in message and "download_librispeech.py" in message
    message = _libri_error(root=str(libri), split="train", train="train-clean-360")
    assert str(libri / "train-clean-360") in message and "LibriSpeech/train-clean-360" in message
    assert "data.root has dev-clean, test-clean, train-clean-100" in message
    assert "data.train=" in message
    (libri / "train-other-500").mkdir()
    message = _libri_error(root=str(libri), split="train", train="train-other-500")
    assert message.startswith(f"{libri / 'train-other-500'}: no transcripts")
    with pytest.raises(ValueError, match="split must be one of .* got 'dev'"):
        LibriSpeechDataset(str(libri), "dev")
    with pytest.raises(ValueError, match="no LibriSpeech subset in ' \\+ '"):
        LibriSpeechDataset(str(libri), "val", val=" + ")


def test_librispeech_bad_transcripts(libri):
    trans = libri / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    trans.write_text("84-121123-0000 HELLO\n84-121123-0001\n")
    assert _libri_error(root=str(libri), split="val").startswith(
        f"{trans}:2: expected '<speaker>-<chapter>-<utterance> TRANSCRIPT', got '84-121123-0001'"
    )
    trans.write_text("84-121123-0000 HELLO\n\n84-121123-0000 AGAIN\n")
    message = _libri_error(root=str(libri), split="val")
    assert message == f"utterance 84-121123-0000 is listed twice: {trans}:1 and {trans}:3"


def test_librispeech_missing_flac_fails_at_load_and_can_be_skipped(libri):
    from mmtrain.data.datamodule import MultimodalDataModule
    from mmtrain.data.transforms import WordTokenizer

    gone = libri / "dev-clean" / "174" / "50561" / "174-50561-0000.flac"
    gone.unlink()
    val = LibriSpeechDataset(str(libri), "val")  # opening reads no audio
    index = val.values("id").index("174-50561-0000")
    with pytest.raises(MMTrainError) as info:
        val[index]
    trans = gone.parent / "174-50561.trans.txt"
    assert str(info.value) == f"{trans}:1: audio file not found: {gone}"

    dm = MultimodalDataModule(
        dataset=functools.partial(LibriSpeechDataset, root=str(libri)),
        audio=AudioInput(n_mels=40),
        targets={"transcript": TextTarget(WordTokenizer())},
        modalities=["audio"],
        tasks=["transcript"],
        batch_size=8,
        pin_memory=False,
        on_error="skip",
        max_skipped=1,
    )
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    assert len(batches) == 1 and len(batches[0]["id"]) == 3 and dm.skipped["val"] == 1


def _audio_datamodule(dataset: Any, task: str, tokenizer: Any) -> Any:
    from mmtrain.data.datamodule import MultimodalDataModule

    return MultimodalDataModule(
        dataset=dataset,
        audio=AudioInput(sample_rate=16000, n_mels=40, max_seconds=1.0),
        modalities=["audio"],
        tasks=[task],
        targets={task: TextTarget(tokenizer)},
        batch_size=4,
        pin_memory=False,
    )


def test_librispeech_with_the_data_module(libri):
    import torch

    from mmtrain.data.transforms import WordTokenizer

    dm = _audio_datamodule(
        functools.partial(LibriSpeechDataset, root=str(libri)),
        "transcript",
        WordTokenizer(max_length=16),
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    audio, mask = batch["audio"], batch["audio_mask"]
    assert audio.dtype == torch.float32 and audio.shape[:2] == (4, 40)
    assert mask.shape == (4, audio.shape[2]) and mask.dtype == torch.bool
    # frames = samples // hop + 1, of at most max_seconds=1.0 (16000 samples)
    assert mask.sum(1).tolist() == [min(s, 16000) // 160 + 1 for s in _val_lengths(libri)]
    tokens, tokens_mask = batch["transcript"], batch["transcript_mask"]
    assert tokens.dtype == torch.long and tokens.shape == tokens_mask.shape and tokens.shape[0] == 4
    ids = librispeech_ids("dev-clean", 1)
    assert batch["id"] == ids
    assert batch["transcript_references"] == [[librispeech_transcript(i)] for i in ids]
    tok = dm.targets["transcript"].tokenizer
    assert tok.decode(tokens[0, 1:].tolist()) == " ".join(tok.split(librispeech_transcript(ids[0])))


def _val_lengths(root: Path) -> list[int]:
    return [sf.info(p).frames for p in LibriSpeechDataset(str(root), "val").values("audio")]


def test_librispeech_preset_composes_and_loads(libri, compose_config, tmp_path):
    from mmtrain.build import build_datamodule
    from mmtrain.data.transforms import CharTokenizer
    from mmtrain.utils.config_check import check_config

    cfg = compose_config(
        "data=librispeech",
        f"data.root={libri}",
        "data.num_workers=0",
        "data.batch_size=2",
        "~encoder/image",
        "~encoder/text",
        "~head/label",
        "~head/caption",
        "+head/transcript=ctc",
        output_dir=tmp_path,
    )
    check_config(cfg)
    assert cfg.data.train == "train-clean-100" and cfg.data.val == "dev-clean"
    assert cfg.data.audio.n_mels == 80 and cfg.data.audio.max_seconds == 35.0
    assert list(cfg.encoder) == ["audio"] and list(cfg.head) == ["transcript"]
    dm = build_datamodule(cfg)
    assert dm.modalities == ["audio"] and dm.tasks == ["transcript"]
    dm.setup("fit")
    tok = dm.targets["transcript"].tokenizer
    assert isinstance(tok, CharTokenizer) and tok.fitted and len(dm.datasets["train"]) == 8
    assert set(tok.vocab[4:]) == set("".join(dm.datasets["train"].values("transcript")).lower())
    batch = next(iter(dm.val_dataloader()))
    assert batch["audio"].shape[:2] == (2, 80) and batch["audio_mask"].shape[0] == 2
    assert batch["transcript"].shape == batch["transcript_mask"].shape
    ids = librispeech_ids("dev-clean", 1)[:2]
    assert batch["id"] == ids
    assert batch["transcript_references"] == [[librispeech_transcript(i)] for i in ids]
    assert tok.decode(batch["transcript"][0, 1:].tolist()) == tok.normalize(
        librispeech_transcript(ids[0])
    )


# ---- Clotho -----------------------------------------------------------------------------------
def test_clotho_train_pairs_and_val_references(tmp_path):
    root = write_clotho(tmp_path)
    train = ClothoDataset(str(root), "train")
    names = sorted(name for name, _ in CLOTHO["development"])
    pairs = [(n, c) for n in names for c in clotho_captions(n)]
    assert len(train) == 6 and [(train[k]["id"], train[k]["caption"]) for k in range(6)] == pairs
    assert set(train[0]) == {"id", "audio", "caption"}  # no references in training
    samples, rate = train[0]["audio"]
    assert rate == 44100 and samples.dtype == np.float32 and samples.shape[0] == 1
    assert train.values("caption") == [c for _, c in pairs]
    assert train.columns == ["audio", "caption"]

    val = ClothoDataset(str(root), "val")  # "silence.wav" has no captions: skipped
    assert [val[k]["id"] for k in range(len(val))] == ["Car Passing.wav", "birds_morning.wav"]
    for k in range(len(val)):
        refs = clotho_captions(val[k]["id"])
        assert val[k]["caption_references"] == refs and val[k]["caption"] == refs[0]
    assert val.values("caption_references") == [clotho_captions(n) for n in val.values("id")]
    assert val.values("audio") == [str(root / "validation" / n) for n in val.values("id")]
    assert val.where(0) == f"{root / 'clotho_captions_validation.csv'}:3"
    test = ClothoDataset(str(root), "test", columns=["caption"])
    assert set(test[0]) == {"id", "caption", "caption_references"}


def test_clotho_quoted_commas_and_bom(tmp_path):
    root = write_clotho(tmp_path, ("development",))
    assert (root / "clotho_captions_development.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert (
        b'"Waves on a beach, Portugal.wav"'
        in (root / "clotho_captions_development.csv").read_bytes()
    )
    train = ClothoDataset(str(root), "train", columns=["caption"])
    assert "Waves on a beach, Portugal.wav" in train.values("id")
    assert "Feet crunch, slowly, on stones" in train.values("caption")
    beach = train.values("id").index("Waves on a beach, Portugal.wav")
    assert train[beach]["caption"] == "Waves crash, then recede."


def test_clotho_archive_audio_folders_and_joined_subsets(tmp_path):
    root = write_clotho(tmp_path, ("development", "validation"), audio_prefix="clotho_audio_")
    train = ClothoDataset(str(root), "train", train="development+validation")
    assert len(train) == 6 + 4 and train.subsets == ["development", "validation"]
    car = train.values("id").index("Car Passing.wav")
    assert train.values("audio")[car] == str(root / "clotho_audio_validation" / "Car Passing.wav")
    assert train[car]["audio"][1] == 44100
    with (root / "clotho_captions_validation.csv").open("a", newline="") as f:
        f.write("Rain 01.wav,Rain again.,,,,\r\n")  # a development file, listed again
    with pytest.raises(MMTrainError, match=r"'Rain 01.wav' is listed twice: .*development.csv:4 "):
        ClothoDataset(str(root), "train", train="development+validation")


def _clotho_error(**kwargs: Any) -> str:
    with pytest.raises(MMTrainError) as info:
        ClothoDataset(**kwargs)
    return str(info.value)


def test_clotho_errors(tmp_path):
    message = _clotho_error(root=str(tmp_path / "nowhere"), split="train")
    assert str(tmp_path / "nowhere") in message and "data.root=" in message
    root = write_clotho(tmp_path, ("development",))
    message = _clotho_error(root=str(root), split="val")
    assert str(root / "clotho_captions_validation.csv") in message
    assert "data.root has clotho_captions_development.csv" in message and "data.val=" in message
    shutil.rmtree(root / "development")
    message = _clotho_error(root=str(root), split="train")
    assert str(root / "development") in message and "clotho_audio_development.7z" in message
    with pytest.raises(ValueError, match="split must be one of .* got 'eval'"):
        ClothoDataset(str(root), "eval")


def test_clotho_bad_csv_and_missing_audio(tmp_path):
    root = write_clotho(tmp_path, ("validation",))
    (root / "validation" / "birds_morning.wav").unlink()
    val = ClothoDataset(str(root), "val")
    with pytest.raises(MMTrainError) as info:
        val[val.values("id").index("birds_morning.wav")]
    csv_file = root / "clotho_captions_validation.csv"
    assert str(info.value).startswith(f"{csv_file}:2: audio file not found: ")
    csv_file.write_text("name,caption_1\nx.wav,a cat\n")
    assert _clotho_error(root=str(root), split="val").startswith(f"{csv_file}: no file_name column")
    csv_file.write_text("file_name,caption_1\nx.wav,a cat,extra\n")
    assert _clotho_error(root=str(root), split="val") == (
        f"{csv_file}:2: 1 more field(s) than the header's 2 columns"
    )


def test_clotho_with_the_data_module(tmp_path):
    from mmtrain.data.transforms import WordTokenizer

    root = write_clotho(tmp_path)
    dm = _audio_datamodule(
        functools.partial(ClothoDataset, root=str(root)),
        "caption",
        WordTokenizer(max_length=24, strip_punctuation=True),
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["id"] == ["Car Passing.wav", "birds_morning.wav"]
    assert batch["audio"].shape[:2] == (2, 40) and batch["caption"].shape[0] == 2
    assert batch["caption_references"] == [clotho_captions(n) for n in batch["id"]]


# ---- scripts/download_librispeech.py ----------------------------------------------------------
SCRIPT = SCRIPTS / "download_librispeech.py"


def _download_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("download_librispeech", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"x", **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def test_download_script_help():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    )
    assert "--subsets" in done.stdout and "--mirror" in done.stdout and "--root" in done.stdout


@pytest.mark.parametrize(
    ("name", "fields", "reason"),
    [
        ("../evil.txt", {}, "leaves"),
        ("LibriSpeech/../../evil.txt", {}, "leaves"),
        ("{tmp}/evil.txt", {}, "absolute path"),
        ("LibriSpeech/link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "plain file"),
        ("LibriSpeech/hard", {"type": tarfile.LNKTYPE, "linkname": "../x"}, "plain file"),
    ],
)
def test_download_script_rejects_unsafe_members(tmp_path, name, fields, reason):
    script = _download_script()
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "LibriSpeech/README.TXT")
        _add(tar, name.format(tmp=tmp_path), **fields)
    dest = tmp_path / "out" / "scratch"
    with pytest.raises(script.DownloadError, match=reason):
        script.extract(archive, dest)
    # Stopped at the unsafe member: the member before it is in the scratch folder, nothing else.
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    scratch = [
        "out",
        "out/scratch",
        "out/scratch/LibriSpeech",
        "out/scratch/LibriSpeech/README.TXT",
    ]
    assert written == ["evil.tar.gz", *scratch]


def test_download_script_fetches_verifies_and_skips(tmp_path, capsys):
    script = _download_script()
    source = write_librispeech(tmp_path / "source", {"dev-clean": 1}, archive_folder=True)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "dev-clean.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="LibriSpeech")
    md5 = hashlib.md5((mirror / "dev-clean.tar.gz").read_bytes()).hexdigest()
    root = tmp_path / "data"
    args = ["--root", str(root), "--subsets", "dev-clean", "--mirror", mirror.as_uri()]

    assert script.main([*args, "--md5", "dev-clean=" + "0" * 32]) == 1  # a corrupt download
    assert "is not OpenSLR's" in capsys.readouterr().err
    assert not (root / "dev-clean.tar.gz").exists() and not (root / "LibriSpeech").exists()

    assert script.main([*args, "--md5", f"dev-clean={md5}"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["LibriSpeech"]  # no scratch, no archive
    assert (root / "LibriSpeech" / "SPEAKERS.TXT").is_file()
    val = LibriSpeechDataset(str(root), "val")
    assert val.values("id") == librispeech_ids("dev-clean", 1)

    (mirror / "dev-clean.tar.gz").unlink()  # a subset already there is not fetched again
    assert script.main(args) == 0 and "have " in capsys.readouterr().out
