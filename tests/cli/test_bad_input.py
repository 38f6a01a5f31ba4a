"""A corpus of bad inputs, run through the real ``mmtrain`` entry point.

Every case must fail with a non-zero exit and one error line that names what is wrong (the key,
the file or the sample), print no traceback (``HYDRA_FULL_ERROR`` unset), and leave every run
directory that was there before byte-for-byte as it was.

The fixtures are written in the on-disk layouts the readers expect: manifests (JSON Lines, media
relative to the manifest), the official COCO layout (``annotations/captions_<split>2017.json``
and ``<split>2017/``) and LibriSpeech (``<subset>/<speaker>/<chapter>/*.flac`` + ``.trans.txt``).
One subprocess runs every case in turn (torch is imported once; ``run_cases``, also used by
``test_cli`` and ``test_security``): a real tiny ``fit`` first, whose checkpoint the checkpoint
cases reuse, then the bad inputs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import QUIET, TINY_DATA
from helpers.cases import digest, run_cases
from PIL import Image


# ---- fixtures in the real on-disk layouts ------------------------------------------------------
def _jpeg_bytes(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _wav_bytes(seed: int, seconds: float = 0.2, rate: int = 16000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.4 * np.sin(2 * np.pi * (300 + 100 * seed) * t)
    buffer = io.BytesIO()
    sf.write(buffer, tone.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body></body></html>\n"
TRAIN_SIZE = 6  # a manifest's training split: one batch (data.batch_size=8) holds it all
BAD_LINE = 3  # the line of the bad sample in a bad manifest


def write_manifest_project(root: Path) -> dict[str, Path]:
    """Manifests (``train.jsonl``, ``val.jsonl``) over real JPEGs and WAVs, and bad variants.

    Each bad variant ``train_<case>.jsonl`` is the good training manifest with line
    ``BAD_LINE`` (sample ``bad``) replaced by a bad sample.

    Returns:
        ``{case: manifest}`` plus ``val``, and ``{case}_file`` for the bad file of a case.
    """
    (root / "images").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = []
    for i in range(TRAIN_SIZE + 2):
        (root / "images" / f"{i}.jpg").write_bytes(_jpeg_bytes(i))
        (root / "audio" / f"{i}.wav").write_bytes(_wav_bytes(i))
        rows.append(
            {
                "id": f"s{i}",
                "image": f"images/{i}.jpg",
                "audio": f"audio/{i}.wav",
                "label": "ab"[i % 2],
            }
        )
    jpeg, wav = _jpeg_bytes(99, (64, 48)), _wav_bytes(99)
    (root / "images" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "images" / "page.jpg").write_bytes(HTML)
    (root / "audio" / "empty.wav").write_bytes(b"")
    (root / "audio" / "truncated.wav").write_bytes(wav[: 44 + (len(wav) - 44) // 3])

    def write(name: str, rows: list[dict[str, Any]]) -> Path:
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    files: dict[str, Path] = {
        "train": write("train", rows[:TRAIN_SIZE]),
        "val": write("val", rows[TRAIN_SIZE:]),
    }
    bad = {
        "missing_image": {"image": "images/lost.jpg"},
        "truncated_jpeg": {"image": "images/truncated.jpg"},
        "html_as_jpeg": {"image": "images/page.jpg"},
        "empty_wav": {"audio": "audio/empty.wav"},
        "truncated_wav": {"audio": "audio/truncated.wav"},
    }
    for case, change in bad.items():
        variant = [dict(r) for r in rows[:TRAIN_SIZE]]
        variant[BAD_LINE - 1] |= {"id": "bad", **change}
        files[case] = write(f"train_{case}", variant)
        files[f"{case}_file"] = root / next(iter(change.values()))
    variant = [dict(r) for r in rows[:TRAIN_SIZE]]
    variant[BAD_LINE - 1] = {k: v for k, v in variant[BAD_LINE - 1].items() if k != "image"}
    files["missing_column"] = write("train_missing_column", variant)
    variant = [dict(r) for r in rows[:TRAIN_SIZE]]
    variant[BAD_LINE - 1]["label"] = "  "
    files["blank_label"] = write("train_blank_label", variant)
    header = "id,image,audio,label\n"  # a CSV manifest whose line 3 has one field too many
    csv_rows = [f"{r['id']},{r['image']},{r['audio']},{r['label']}\n" for r in rows[TRAIN_SIZE:]]
    files["csv_extra_field"] = root / "val_extra_field.csv"
    files["csv_extra_field"].write_text(header + csv_rows[0] + csv_rows[1].rstrip() + ",x\n")
    return files


def write_coco(root: Path, change: str | None = None) -> Path:
    """A tiny COCO 2017 in the official layout; ``change`` breaks the training captions file.

    ``change``: ``no_caption`` (an annotation without ``caption``), ``no_file_name`` (an image
    without ``file_name``), ``empty_caption`` (an annotation whose caption is blank) or
    ``missing_image`` (an image listed whose file is not there).
    """
    for split, ids in (("train", (11, 12, 13)), ("val", (21, 22))):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True)
        images, annotations = [], []
        for image_id in ids:
            name = f"{image_id:012d}.jpg"
            (folder / name).write_bytes(_jpeg_bytes(image_id))
            images.append({"id": image_id, "file_name": name, "height": 20, "width": 24})
            for k in range(2):
                caption = f"a photo of thing {image_id} number {k}"
                annotations.append(
                    {"id": 100 * image_id + k, "image_id": image_id, "caption": caption}
                )
        if split == "train" and change == "no_caption":
            del annotations[3]["caption"]  # annotation 1201
        elif split == "train" and change == "no_file_name":
            del images[1]["file_name"]  # image 12
        elif split == "train" and change == "empty_caption":
            annotations[3]["caption"] = "  "  # annotation 1201 of image 12
        elif split == "train" and change == "missing_image":
            (folder / images[1]["file_name"]).unlink()  # image 12
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"info": {"year": 2017}, "images": images, "annotations": annotations})
        )
    return root


def write_librispeech(root: Path) -> dict[str, Path]:
    """LibriSpeech ``train-clean-100`` and ``dev-clean`` (one chapter each), as extracted.

    The second training utterance's FLAC is cut in half.

    Returns:
        ``{"root", "transcripts", "flac"}``: the data root, the training ``.trans.txt`` and the
        truncated FLAC.
    """
    found: dict[str, Path] = {"root": root}
    for subset, speaker, chapter, count in (
        ("train-clean-100", 19, 198, 3),
        ("dev-clean", 84, 121123, 1),
    ):
        folder = root / subset / str(speaker) / str(chapter)
        folder.mkdir(parents=True)
        lines = []
        for utt in range(count):
            utt_id = f"{speaker}-{chapter}-{utt:04d}"
            rng = np.random.default_rng(utt)
            signal = 0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * (200 + 50 * utt))
            signal = signal + rng.normal(0, 0.02, signal.shape)
            flac = folder / f"{utt_id}.flac"
            sf.write(flac, signal.astype(np.float32), 16000, format="FLAC", subtype="PCM_16")
            lines.append(f"{utt_id} A DOOR IS ONE\n")
            if subset.startswith("train") and utt == 1:
                flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
                found["flac"] = flac
        transcripts = folder / f"{speaker}-{chapter}.trans.txt"
        transcripts.write_text("".join(lines))
        if subset.startswith("train"):
            found["transcripts"] = transcripts
    return found


def write_sentinel(run_dir: Path) -> None:
    """A finished run directory: a checkpoint, its config and metrics (as ``fit`` leaves it)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(bytes(range(256)) * 8)
    (run_dir / ".hydra" / "config.yaml").write_text("name: sentinel\nseed: 1\n")
    (run_dir / "metrics.json").write_text('{"val/label/accuracy": 0.5}\n')


# ---- the corpus --------------------------------------------------------------------------------
CPU = ["trainer.accelerator=cpu", *QUIET]
MANIFEST = [
    "experiment=manifest_label",
    "~encoder/text",
    "data.image.size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "debug=fdr",
    *CPU,
]
COCO = [
    "experiment=coco_caption",
    "encoder/image=cnn",
    "data.image.size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.targets.caption.tokenizer.min_freq=1",
    "head.caption.dim=16",
    "head.caption.num_heads=2",
    "head.caption.num_layers=1",
    "debug=fdr",
    *CPU,
]
LIBRISPEECH = [
    "experiment=librispeech_ctc",
    "data.batch_size=4",
    "data.num_workers=0",
    "encoder.audio.dim=16",
    "encoder.audio.layers=1",
    "fusion.dim=16",
    "debug=fdr",
    *CPU,
]
# Sentinel run directories: one per experiment name the cases use, where their runs would go.
SENTINEL_NAMES = ("shapes", "manifest_label", "coco_caption", "librispeech_ctc")
RESUME_SENTINEL = "resume_sentinel"  # the experiment of `fit ckpt_path=last`: its newest run
SENTINEL_TIME = "2001-02-03/04-05-06"


def corpus(tmp: Path, out: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Write the fixtures; return the cases to run (in order) and what each must print.

    Returns:
        The cases (``{"name", "argv", "snapshot"?}``) and, for each bad input, its expected
        failure: ``stage`` (None: a Hydra composition error), ``names`` (what the error line
        must contain: the key, file or sample) and ``says`` (the gist of the message).
    """
    man = write_manifest_project(tmp / "mydata")
    coco = {
        c: write_coco(tmp / f"coco_{c}", c)
        for c in ("no_caption", "no_file_name", "empty_caption", "missing_image")
    }
    libri = write_librispeech(tmp / "librispeech")
    real_run = tmp / "real_run"
    ckpt = real_run / "checkpoints" / "last.ckpt"
    corrupt = tmp / "corrupt.ckpt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp / "truncated.ckpt"  # the first half of the real fit's checkpoint
    nope = tmp / "nope"
    val = [f"data.val={man['val']}"]

    def manifest(case: str, *extra: str) -> list[str]:
        return ["fit", *MANIFEST, f"data.train={man[case]}", *val, *extra]

    image_only, audio_only = ["~encoder/audio"], ["~encoder/image"]

    def bad_line(case: str) -> str:  # the bad sample of a manifest: <manifest>:<line>
        return f"{man[case]}:{BAD_LINE}"

    expected: dict[str, dict[str, Any]] = {
        # config composition: Hydra's own error, plus mmtrain's did-you-mean
        "typo_key": {
            "stage": None,
            "argv": ["fit", "trainer.max_epochz=3"],
            "names": ["trainer.max_epochz"],
            "says": "did you mean 'trainer.max_epochs'?",
        },
        "typo_nested_key": {
            "stage": None,
            "argv": ["fit", "optimizer.lrr=1e-3"],
            "names": ["optimizer.lrr"],
            "says": "did you mean 'optimizer.lr'?",
        },
        "typo_deep_key": {
            "stage": None,
            "argv": ["fit", "data.image.sizee=32"],
            "names": ["data.image.sizee"],
            "says": "did you mean 'data.image.size'?",
        },
        "unknown_group_option": {
            "stage": None,
            "argv": ["fit", "fusion=nope"],
            "names": ["fusion/nope"],
            "says": "Could not find",
        },
        # config values: mmtrain's check before anything is built
        "wrong_type": {
            "stage": "fit",
            "argv": ["fit", "trainer.max_epochs=abc", *TINY_DATA, *CPU],
            "names": ["trainer.max_epochs='abc'"],
            "says": "expected int",
        },
        "wrong_type_nested": {
            "stage": "fit",
            "argv": ["fit", "optimizer.lr=fast", *TINY_DATA, *CPU],
            "names": ["optimizer.lr='fast'"],
            "says": "expected float",
        },
        # data roots and files
        "missing_data_root": {
            "stage": "fit",
            "argv": ["fit", *COCO, f"data.root={nope}"],
            "names": [f"data.root={nope}"],
            "says": "not a folder",
        },
        "missing_manifest": {
            "stage": "fit",
            "argv": ["fit", *MANIFEST, *image_only, f"data.train={nope}.jsonl", *val],
            "names": ["data.train", f"{nope}.jsonl"],
            "says": "manifest not found",
        },
        "missing_image": {
            "stage": "fit",
            "argv": manifest("missing_image", *image_only),
            "names": [bad_line("missing_image"), str(man["missing_image_file"])],
            "says": "image file not found",
        },
        "truncated_jpeg": {
            "stage": "fit",
            "argv": manifest("truncated_jpeg", *image_only),
            "names": [bad_line("truncated_jpeg"), str(man["truncated_jpeg_file"])],
            "says": "truncated",
        },
        "html_as_jpeg": {
            "stage": "fit",
            "argv": manifest("html_as_jpeg", *image_only),
            "names": [bad_line("html_as_jpeg"), str(man["html_as_jpeg_file"])],
            "says": "an HTML page?",
        },
        "empty_wav": {
            "stage": "fit",
            "argv": manifest("empty_wav", *audio_only),
            "names": [bad_line("empty_wav"), str(man["empty_wav_file"])],
            "says": "cannot decode audio",
        },
        "truncated_wav": {
            "stage": "fit",
            "argv": manifest("truncated_wav", *audio_only),
            "names": [bad_line("truncated_wav"), str(man["truncated_wav_file"])],
            "says": "truncated",
        },
        "missing_column": {
            "stage": "fit",
            "argv": manifest("missing_column", *image_only),
            "names": [bad_line("missing_column")],
            "says": "missing column 'image'",
        },
        "blank_label": {
            "stage": "fit",
            "argv": manifest("blank_label", *image_only),
            "names": [bad_line("blank_label"), "label"],
            "says": "blank",
        },
        "csv_extra_field": {
            "stage": "fit",
            "argv": [
                "fit",
                *MANIFEST,
                *image_only,
                f"data.train={man['train']}",
                f"data.val={man['csv_extra_field']}",
            ],
            "names": [f"{man['csv_extra_field']}:3"],
            "says": "more field(s) than the header",
        },
        "coco_no_caption": {
            "stage": "fit",
            "argv": ["fit", *COCO, f"data.root={coco['no_caption']}"],
            "names": [
                str(coco["no_caption"] / "annotations/captions_train2017.json"),
                "annotations[3]",
                "'caption'",
            ],
            "says": "no",
        },
        "coco_no_file_name": {
            "stage": "fit",
            "argv": ["fit", *COCO, f"data.root={coco['no_file_name']}"],
            "names": [
                str(coco["no_file_name"] / "annotations/captions_train2017.json"),
                "images[1]",
                "'file_name'",
            ],
            "says": "no",
        },
        "coco_empty_caption": {
            "stage": "fit",
            "argv": ["fit", *COCO, f"data.root={coco['empty_caption']}"],
            "names": ["captions_train2017.json", "image 12", "annotation 1201"],
            "says": "empty caption",
        },
        "coco_missing_image": {
            "stage": "fit",
            "argv": ["fit", *COCO, f"data.root={coco['missing_image']}"],
            "names": [
                "captions_train2017.json",
                "image 12",
                str(coco["missing_image"] / "train2017/000000000012.jpg"),
            ],
            "says": "image file not found",
        },
        "librispeech_truncated_flac": {
            "stage": "fit",
            "argv": ["fit", *LIBRISPEECH, f"data.root={libri['root']}"],
            "names": [f"{libri['transcripts']}:2", str(libri["flac"])],
            "says": "cannot decode audio",
        },
        # data.on_error=skip over its budget
        "skip_over_budget": {
            "stage": "fit",
            "argv": manifest(
                "truncated_jpeg", *image_only, "data.on_error=skip", "data.max_skipped=0"
            ),
            "names": ["data.max_skipped=0", bad_line("truncated_jpeg")],
            "says": "over the budget",
        },
        # checkpoints
        "missing_ckpt": {
            "stage": "test",
            "argv": ["test", f"ckpt_path={tmp / 'nope.ckpt'}", *CPU],
            "names": ["ckpt_path", str(tmp / "nope.ckpt")],
            "says": "checkpoint not found",
        },
        "corrupt_ckpt": {
            "stage": "test",
            "argv": ["test", f"ckpt_path={corrupt}", *CPU],
            "names": ["ckpt_path", str(corrupt)],
            "says": "cannot load checkpoint",
        },
        "truncated_ckpt": {
            "stage": "test",
            "argv": ["test", f"ckpt_path={truncated}", *CPU],
            "names": ["ckpt_path", str(truncated)],
            "says": "cannot load checkpoint",
        },
        "ckpt_of_another_fusion": {
            "stage": "test",
            "argv": ["test", f"ckpt_path={ckpt}", "fusion=attention", *CPU],
            "names": ["ckpt_path", str(ckpt)],
            "says": "does not fit the configured model",
        },
        "resume_with_another_encoder": {
            "stage": "fit",
            "argv": [
                "fit",
                f"ckpt_path={ckpt}",
                "encoder/image=resnet18",
                "~head/caption",
                *TINY_DATA,
                "debug=fdr",
                *CPU,
            ],
            "names": ["ckpt_path", str(ckpt)],
            "says": "does not fit the configured model",
        },
        # ckpt_path=last: the newest run of the experiment (a sentinel) has a corrupt last.ckpt
        "resume_last_corrupt": {
            "stage": "fit",
            "argv": ["fit", "ckpt_path=last", f"name={RESUME_SENTINEL}", *TINY_DATA, *CPU],
            "names": [
                "ckpt_path",
                str(out / RESUME_SENTINEL / SENTINEL_TIME / "checkpoints/last.ckpt"),
            ],
            "says": "cannot load checkpoint",
        },
    }
    cases: list[dict[str, Any]] = [
        {
            "name": "real_fit",
            "argv": [
                "fit",
                *TINY_DATA,
                "~head/caption",
                "debug=limit",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
                *CPU,
                f"hydra.run.dir={real_run}",
            ],
            "snapshot": [str(real_run)],
        },
        {"name": "truncate_ckpt", "truncate": [str(ckpt), str(truncated)]},
        {
            "name": "skip_trains",
            "argv": manifest(
                "truncated_jpeg",
                *image_only,
                "data.on_error=skip",
                "data.max_skipped=1",
                f"hydra.run.dir={tmp / 'skip_run'}",
            ),
        },
    ]
    cases += [{"name": name, "argv": case["argv"]} for name, case in expected.items()]
    return cases, expected


@pytest.fixture(scope="module")
def bad(
    tmp_path_factory: pytest.TempPathFactory, session_dirs: dict[str, Path], tiny_data: Path
) -> dict[str, Any]:
    """Run the corpus: ``{"results", "expected", "escaped", "sentinels", "tmp"}``."""
    tmp = tmp_path_factory.mktemp("bad_input")
    out = tmp / "outputs"
    sentinels = {}
    for name in (*SENTINEL_NAMES, RESUME_SENTINEL):
        run_dir = out / name / SENTINEL_TIME
        write_sentinel(run_dir)
        sentinels[run_dir] = digest(run_dir)
    cases, expected = corpus(tmp, out)
    results, escaped = run_cases(cases, tmp, session_dirs["data"], out)
    return {
        "results": results,
        "expected": expected,
        "escaped": escaped,
        "sentinels": sentinels,
        "tmp": tmp,
    }


CASES = [
    "typo_key",
    "typo_nested_key",
    "typo_deep_key",
    "unknown_group_option",
    "wrong_type",
    "wrong_type_nested",
    "missing_data_root",
    "missing_manifest",
    "missing_image",
    "truncated_jpeg",
    "html_as_jpeg",
    "empty_wav",
    "truncated_wav",
    "missing_column",
    "blank_label",
    "csv_extra_field",
    "coco_no_caption",
    "coco_no_file_name",
    "coco_empty_caption",
    "coco_missing_image",
    "librispeech_truncated_flac",
    "skip_over_budget",
    "missing_ckpt",
    "corrupt_ckpt",
    "truncated_ckpt",
    "ckpt_of_another_fusion",
    "resume_with_another_encoder",
    "resume_last_corrupt",
]
# Hydra's composition errors end with this hint; everything above it is Hydra's one message.
HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."


def error_lines(stderr: str, stage: str | None) -> list[str]:
    """The lines of ``stderr`` that report an error.

    ``mmtrain <stage>: error: ...`` lines for errors of a run; for a composition error (``stage``
    None), Hydra's message (its first line, which names the override) and mmtrain's
    did-you-mean lines.
    """
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if stage is not None:
        return [ln for ln in lines if "error" in ln.lower()]
    return [ln for ln in lines[:1]] + [ln for ln in lines[1:] if ln.startswith("mmtrain")]


def test_the_corpus_is_complete(bad):
    assert sorted(bad["expected"]) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_with_one_line_naming_it(bad, case):
    result, want = bad["results"][case], bad["expected"][case]
    everything = result["stdout"] + result["stderr"]
    assert result["code"] not in (0, None), result
    assert "Traceback" not in everything, everything[-3000:]
    lines = error_lines(result["stderr"], want["stage"])
    if want["stage"] is None:  # Hydra: its error, its hint, and at most one did-you-mean
        assert HYDRA_HINT in result["stderr"], result["stderr"]
        named = [ln for ln in lines if all(n in ln for n in want["names"])]
        assert named, result["stderr"]
        assert want["says"] in result["stderr"], result["stderr"]
        assert len([ln for ln in lines if "did you mean" in ln]) <= 1, result["stderr"]
        return
    assert len(lines) == 1, result["stderr"]
    (line,) = lines
    assert line.startswith(f"mmtrain {want['stage']}: error: "), line
    for name in want["names"]:
        assert name in line, f"{name!r} not in {line!r}"
    assert want["says"] in line, line


def test_nothing_escapes_the_cases(bad):
    """What no case captured (C libraries, exit-time warnings) has no traceback either."""
    assert "Traceback" not in bad["escaped"], bad["escaped"][-3000:]


def test_run_directories_are_left_as_they_were(bad):
    for run_dir, before in bad["sentinels"].items():
        if run_dir.parts[-3] != RESUME_SENTINEL:
            assert digest(run_dir) == before, run_dir
    real = bad["tmp"] / "real_run"
    before = bad["results"]["real_fit"]["snapshot"][str(real)]
    assert "checkpoints/last.ckpt" in before and ".hydra/config.yaml" in before, sorted(before)
    assert digest(real) == before


def test_skip_trains_and_counts_the_bad_sample(bad):
    result = bad["results"]["skip_trains"]
    assert result["code"] in (0, None), result["stderr"][-3000:]
    everything = result["stdout"] + result["stderr"]
    assert f"skipped 1 of {TRAIN_SIZE} samples of the train split (budget 1)" in everything
    assert f"train_truncated_jpeg.jsonl:{BAD_LINE}: cannot decode image" in everything
    metrics = json.loads((bad["tmp"] / "skip_run" / "metrics.json").read_text())
    assert metrics["train/skipped"] == 1.0, metrics


def test_resuming_from_a_corrupt_last_checkpoint_leaves_its_run_as_it_was(bad):
    (run_dir,) = [d for d in bad["sentinels"] if d.parts[-3] == RESUME_SENTINEL]
    assert digest(run_dir) == bad["sentinels"][run_dir]
