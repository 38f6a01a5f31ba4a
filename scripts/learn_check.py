"""Do the defaults learn on real data? ``experiment=manifest_label`` against logistic regression.

    python scripts/learn_check.py --out /tmp/learn_check [--sets digits32,patches,photos,...]

Each data set is written as mmtrain manifests (``train.jsonl``, ``val.jsonl`` and PNG, JPEG or
WAV files) into ``--out/<set>/``, trained with::

    mmtrain fit experiment=manifest_label data.train=... data.val=... ~encoder/<absent>
        trainer.max_epochs=N

and no preprocessing override (only ``data.image.size=<n>`` with ``--pass-size``, see below),
and compared with a logistic regression (scikit-learn) on simple features of the same split:
the raw pixels of the image at 32x32 (images), each clip's log-mel mean and std per mel bin
(audio). The table gives the data set, its size, mmtrain's last ``val/label/accuracy``, the
baseline's validation accuracy, the epochs and the seconds of the mmtrain run.

The data sets are real data that ships inside PyPI packages (nothing is fetched at run time):

* ``digits32``: scikit-learn's ``load_digits`` (1797 real handwritten digits, 8x8, 16 grey
  levels), rendered to 32x32 PNGs (bilinear); 10 classes.
* ``patches``: crops of 40-72 px (any aspect 0.8-1.25) of nine photos (scikit-image's
  ``skimage.data`` astronaut, coffee, chelsea, rocket, hubble_deep_field,
  immunohistochemistry, retina; scikit-learn's ``load_sample_images`` china and flower);
  the class is the photo. Training crops come from the left 55 % of each photo, validation
  crops from the right 45 %, so no pixel is in both.
* ``photos``: the same with crops of 160-288 px (a size ``auto`` resolves to 224).
* ``recordings`` (with ``--pocketsphinx-sdist``): real recorded English speech from the test
  data of PocketSphinx's source distribution (``pip download --no-deps --no-binary :all:
  pocketsphinx==5.1.1``; LibriVox, AN4 and other recordings), cut into 1.5 s clips; the class
  is the recording group (a speaker or session). Training clips come from the first 70 % of
  each group, validation clips from the rest.
* ``cancer``, ``wine``: scikit-learn's breast cancer Wisconsin (569 x 30 numbers, 2 classes) and
  wine (178 x 13, 3 classes) tables as CSV manifests with 5% of the cells left empty, trained
  with ``+encoder/tabular=mlp data.tabular.columns=[...]`` (the tabular input: standardised,
  missing values filled with the training mean and flagged); the baseline imputes the same way.
* ``spoken_words`` (when ``espeak-ng`` is on the PATH): SYNTHETIC speech, not real: the ten
  digits "zero".."nine" spoken by espeak-ng voices with random speed and pitch, padded with
  silence to 1-2 s and mixed with white noise at 10-20 dB SNR, as in issue 17.

``--pass-size`` passes the size that ``data.image.size=auto`` resolves to
(``ImageTransform.fit_size`` on the training images' sizes) explicitly, for a data module that
does not fit it itself (an older one); by default ``auto`` is left to the data module. The
table's ``px`` column is that size either way.
``--override KEY=VALUE`` (repeatable) adds overrides, e.g. to compare settings.

Runs take a few minutes per data set on 2 CPU cores (``--threads``, default 2).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

RATE = 16000  # the rate of the written speech clips
SETS = ("digits32", "patches", "photos", "recordings", "spoken_words", "cancer", "wine")
EPOCHS = {"digits32": 10, "patches": 10, "photos": 8, "recordings": 15, "spoken_words": 15}
EPOCHS |= {"cancer": 15, "wine": 30}
BLANK = 0.05  # the share of tabular cells left empty (missing values: mean fill and a flag)
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
VARIANTS = ("m1", "m3", "m5", "m7", "f1", "f2", "f3", "f4")


@dataclass
class DataSet:
    """A written data set: its folder, the modality, and the baseline's features and labels."""

    name: str
    folder: Path
    modality: str  # image, audio or tabular
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    sizes: list[tuple[int, int]]  # (width, height) of training images (images only)
    columns: tuple[str, ...] = ()  # the numeric columns (tabular only)

    @property
    def size(self) -> str:
        return f"{len(self.y_train)}/{len(self.y_val)}, {len(set(self.y_train.tolist()))} cl."


def write_manifest(path: Path, rows: list[dict]) -> None:
    """One JSON object a line."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def pixels(image: Image.Image) -> np.ndarray:
    """The baseline's image features: RGB pixels at 32x32, in [0, 1]."""
    return np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255


def write_images(
    name: str, out: Path, samples: dict[str, list[tuple[Image.Image, int]]], suffix: str
) -> DataSet:
    """Write ``{split: [(image, label)]}`` as files and manifests; the baseline's features."""
    folder = out / name
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, items in samples.items():
        (folder / split).mkdir(parents=True)
        rows = []
        for i, (image, label) in enumerate(items):
            file = f"{split}/{i:05d}{suffix}"
            image.save(folder / file, quality=92) if suffix == ".jpg" else image.save(folder / file)
            rows.append({"id": f"{split}{i}", "image": file, "label": str(label)})
        write_manifest(folder / f"{split}.jsonl", rows)
        x = np.stack([pixels(image).ravel() for image, _ in items])
        arrays[split] = x, np.array([label for _, label in items])
    sizes = [image.size for image, _ in samples["train"]]
    return DataSet(name, folder, "image", *arrays["train"], *arrays["val"], sizes)


def digits32(out: Path) -> DataSet:
    """scikit-learn's 8x8 handwritten digits as 32x32 grey PNGs; a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = [
        Image.fromarray((d * 255 / 16).astype(np.uint8), "L").resize((32, 32), Image.BILINEAR)
        for d in digits.images
    ]
    train, val = train_test_split(
        list(zip(images, digits.target.tolist())),
        test_size=0.25,
        stratify=digits.target,
        random_state=0,
    )
    return write_images("digits32", out, {"train": train, "val": val}, ".png")


def photos() -> list[np.ndarray]:
    """Nine real photos (RGB uint8) from scikit-image and scikit-learn."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
    names += ("immunohistochemistry", "retina")
    return [getattr(skimage.data, n)() for n in names] + list(load_sample_images().images)


def photo_crops(name: str, out: Path, sides: tuple[int, int], train: int, val: int) -> DataSet:
    """Crops of ``sides`` px (aspect 0.8-1.25) of each photo; the class is the photo."""
    rng = random.Random(0)
    samples: dict[str, list[tuple[Image.Image, int]]] = {"train": [], "val": []}
    for label, photo in enumerate(photos()):
        height, width = photo.shape[:2]
        cut = int(width * 0.55)  # training crops left of it, validation crops right of it
        for split, count, (x0, x1) in (("train", train, (0, cut)), ("val", val, (cut, width))):
            for _ in range(count):
                side = rng.randint(*sides)
                aspect = rng.uniform(0.8, 1.25)
                w = min(int(side * aspect**0.5), x1 - x0)
                h = min(int(side / aspect**0.5), height)
                x, y = rng.randint(x0, x1 - w), rng.randint(0, height - h)
                crop = Image.fromarray(photo[y : y + h, x : x + w])
                samples[split].append((crop, label))
    return write_images(name, out, samples, ".jpg")


def log_mel_stats(wav: np.ndarray) -> np.ndarray:
    """The baseline's audio features: the mean and std of each of 64 log-mels (16 kHz)."""
    import torch
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(RATE, n_fft=400, hop_length=160, n_mels=64)
    feats = torch.log(mel(torch.as_tensor(wav, dtype=torch.float32)) + 1e-6)
    return torch.cat([feats.mean(dim=1), feats.std(dim=1)]).numpy()


def write_clips(name: str, out: Path, samples: dict[str, list[tuple[np.ndarray, str]]]) -> DataSet:
    """Write ``{split: [(16 kHz waveform, label)]}`` as WAVs and manifests; the features."""
    folder = out / name
    arrays = {}
    for split, items in samples.items():
        (folder / split).mkdir(parents=True)
        rows = []
        for i, (wav, label) in enumerate(items):
            file = f"{split}/{i:05d}.wav"
            sf.write(folder / file, wav, RATE, subtype="PCM_16")
            rows.append({"id": f"{split}{i}", "audio": file, "label": label})
        write_manifest(folder / f"{split}.jsonl", rows)
        x = np.stack([log_mel_stats(wav) for wav, _ in items])
        arrays[split] = x, np.array([label for _, label in items])
    return DataSet(name, folder, "audio", *arrays["train"], *arrays["val"], [])


def resampled(wav: np.ndarray, rate: int) -> np.ndarray:
    """``wav`` at 16 kHz (torchaudio's resampler)."""
    import torch
    import torchaudio

    if rate == RATE:
        return wav.astype(np.float32)
    tensor = torch.as_tensor(wav, dtype=torch.float32)
    return torchaudio.functional.resample(tensor, rate, RATE).numpy()


RECORDINGS = {  # group -> files in the pocketsphinx source distribution (under test/)
    "librivox": [f"data/librivox/sense_and_sensibility_01_austen_64kb-0{n}.wav" for n in
                 (870, 880, 890, 920, 930)],
    "cards": [f"data/cards/00{n}.wav" for n in range(1, 6)],
    "chan3": ["regression/chan3.wav"],
    "forever": ["data/forever/input_2_16k.wav", "data/forever/input_4_16k.wav"],
    "vad": ["data/vad/leak-test.wav"],
    "an4": ["data/goforward.raw", "data/numbers.raw", "data/something.raw"],
}  # fmt: skip


def recordings(out: Path, sdist: Path) -> DataSet:
    """1.5 s clips of the real recordings in PocketSphinx's sdist; the class is the group."""
    samples: dict[str, list[tuple[np.ndarray, str]]] = {"train": [], "val": []}
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        for group, files in RECORDINGS.items():
            parts = []
            for file in files:
                data = tar.extractfile(f"{root}/test/{file}").read()  # type: ignore[union-attr]
                if file.endswith(".raw"):  # 16 kHz 16-bit mono, headerless
                    parts.append(np.frombuffer(data, "<i2").astype(np.float32) / 32768)
                else:
                    wav, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
                    parts.append(resampled(wav.mean(axis=1), rate))
            audio = np.concatenate(parts)
            cut = int(len(audio) * 0.7)
            clip = int(1.5 * RATE)
            for split, (a, b), hop in (("train", (0, cut), 0.25), ("val", (cut, len(audio)), 0.5)):
                for start in range(a, b - clip + 1, int(hop * RATE)):
                    samples[split].append((audio[start : start + clip], group))
    return write_clips("recordings", out, samples)


def spoken_words(out: Path, espeak: str, train: int = 30, val: int = 10) -> DataSet:
    """espeak-ng's digits with random voices, speed, pitch, silence and noise (synthetic)."""
    rng = np.random.default_rng(0)
    samples: dict[str, list[tuple[np.ndarray, str]]] = {"train": [], "val": []}
    for split, count in (("train", train), ("val", val)):
        for word in WORDS:
            for _ in range(count):
                voice = f"{rng.choice(VOICES)}+{rng.choice(VARIANTS)}"
                cmd = [espeak, "-v", voice, "-s", str(rng.integers(130, 200))]
                cmd += ["-p", str(rng.integers(25, 75)), "--stdout", word]
                wav, rate = sf.read(
                    io.BytesIO(subprocess.run(cmd, capture_output=True, check=True).stdout)
                )
                wav = resampled(wav, rate)
                total = int(rng.uniform(1.0, 2.0) * RATE)
                pad = max(total - len(wav), 0)
                lead = int(rng.integers(0, pad + 1))
                wav = np.pad(wav, (lead, pad - lead))
                snr = rng.uniform(10, 20)
                noise = rng.standard_normal(len(wav)).astype(np.float32)
                noise *= np.sqrt(np.mean(wav**2) / 10 ** (snr / 10))
                samples[split].append((np.clip(wav + noise, -1, 1), word))
    return write_clips("spoken_words", out, samples)


def tabular(name: str, out: Path) -> DataSet:
    """A scikit-learn table (``cancer``: breast cancer Wisconsin, 569 x 30, 2 classes;
    ``wine``: 178 x 13, 3 classes) as CSV manifests, 5% of the cells left empty; a stratified
    75/25 split."""
    from sklearn.datasets import load_breast_cancer, load_wine
    from sklearn.model_selection import train_test_split

    table = (load_breast_cancer if name == "cancer" else load_wine)()
    columns = tuple(f"f{i}" for i in range(table.data.shape[1]))
    x = table.data.astype(np.float64)
    x[np.random.default_rng(0).random(x.shape) < BLANK] = np.nan
    index = np.arange(len(x))
    train, val = train_test_split(index, test_size=0.25, stratify=table.target, random_state=0)
    folder = out / name
    folder.mkdir(parents=True)
    for split, rows in (("train", train), ("val", val)):
        with (folder / f"{split}.csv").open("w") as f:
            f.write(",".join(("id", *columns, "label")) + "\n")
            for i in rows:
                cells = ["" if np.isnan(v) else repr(float(v)) for v in x[i]]
                f.write(",".join((f"{split}{i}", *cells, str(table.target[i]))) + "\n")
    y = table.target
    return DataSet(name, folder, "tabular", x[train], y[train], x[val], y[val], [], columns)


def baseline(data: DataSet) -> float:
    """Validation accuracy of a standardised logistic regression on the features."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [SimpleImputer(add_indicator=True)] if data.modality == "tabular" else []
    model = make_pipeline(*steps, StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(data.x_train, data.y_train)
    return float(model.score(data.x_val, data.y_val))


def auto_size(data: DataSet) -> int:
    """What ``data.image.size=auto`` resolves to on up to 64 training images."""
    from mmtrain.data.transforms.image import ImageTransform

    step = max(len(data.sizes) // 64, 1)
    return ImageTransform(size="auto").fit_size(data.sizes[::step][:64])


def fit(data: DataSet, epochs: int, out: Path, args: argparse.Namespace) -> dict:
    """Run ``mmtrain fit`` on the data set; its metrics.json, the seconds and the size."""
    absent = [m for m in ("image", "text", "audio") if m != data.modality]
    run_dir = out / "runs" / data.name
    command = [str(Path(sys.executable).parent / "mmtrain"), "fit", "experiment=manifest_label"]
    suffix = ".csv" if data.modality == "tabular" else ".jsonl"
    command += [
        f"data.train={data.folder / ('train' + suffix)}",
        f"data.val={data.folder / ('val' + suffix)}",
    ]
    command += [f"~encoder/{m}" for m in absent] + [f"trainer.max_epochs={epochs}"]
    if data.modality == "tabular":
        command += ["+encoder/tabular=mlp", f"data.tabular.columns=[{','.join(data.columns)}]"]
    command += [f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
    size = None
    if data.modality == "image":
        size = auto_size(data)
        if args.pass_size:
            command.append(f"data.image.size={size}")
    command += args.override
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    with (out / f"{data.name}.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"mmtrain fit failed on {data.name}: see {out / f'{data.name}.log'}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"metrics": metrics, "seconds": seconds, "size": size}


def main(argv: list[str] | None = None) -> int:
    """Write the data sets, train, fit the baselines, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--epochs", type=int, default=None, help="default: per data set")
    parser.add_argument("--pocketsphinx-sdist", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pass-size", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE, repeatable")
    args = parser.parse_args(argv)
    names = [n for n in args.sets.split(",") if n]
    if unknown := sorted(set(names) - set(SETS)):
        parser.error(f"unknown data sets {unknown}; choose from {list(SETS)}")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    args.out.mkdir(parents=True, exist_ok=True)
    makers = {
        "digits32": lambda: digits32(args.out),
        "patches": lambda: photo_crops("patches", args.out, (40, 72), 60, 20),
        "photos": lambda: photo_crops("photos", args.out, (160, 288), 40, 15),
        "cancer": lambda: tabular("cancer", args.out),
        "wine": lambda: tabular("wine", args.out),
    }
    if args.pocketsphinx_sdist is not None:
        makers["recordings"] = lambda: recordings(args.out, args.pocketsphinx_sdist)
    if espeak := shutil.which("espeak-ng"):
        makers["spoken_words"] = lambda: spoken_words(args.out, espeak)
    rows = []
    for name in names:
        if name not in makers:
            why = "--pocketsphinx-sdist" if name == "recordings" else "espeak-ng on the PATH"
            print(f"{name}: skipped (needs {why})", flush=True)
            continue
        data = makers[name]()
        epochs = args.epochs or EPOCHS[name]
        result = fit(data, epochs, args.out, args)
        accuracy = result["metrics"].get("val/label/accuracy", float("nan"))
        rows.append((name, data.size, result["size"], accuracy, baseline(data), epochs,
                     result["seconds"]))  # fmt: skip
        print(f"{name}: mmtrain {accuracy:.3f}, baseline {rows[-1][4]:.3f}", flush=True)
    header = ("data set", "train/val, classes", "px", "mmtrain val acc", "logreg val acc",
              "epochs", "seconds")  # fmt: skip
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, size, px, acc, base, epochs, seconds in rows:
        print(f"| {name} | {size} | {px or '-'} | {acc:.3f} | {base:.3f} | {epochs} | "
              f"{seconds:.0f} |")  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
