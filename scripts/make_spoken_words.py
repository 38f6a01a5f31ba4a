"""Synthesise a small spoken-words speech data set in LibriSpeech's layout, with espeak-ng.

    python scripts/make_spoken_words.py --root /datasets/spoken_words
    mmtrain fit ... data=librispeech data.root=/datasets/spoken_words

Each utterance is 1 to 3 words (``--words``) of a 30-word vocabulary (digits, colours, shapes,
directions, commands), spoken by espeak-ng. A "speaker" is an espeak voice and variant with its
own speed and pitch (``en-us+f2 -s 172 -p 61``), jittered a little per utterance; the train,
dev and test speakers are disjoint, as in LibriSpeech. The files are LibriSpeech's::

    <root>/{train-clean-100,dev-clean,test-clean}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <root>/.../<speaker>/<chapter>/<speaker>-<chapter>.trans.txt    (UPPERCASE transcripts)
    <root>/SPEAKERS.TXT                                              (the voice of each speaker)

as 16 kHz mono 16-bit FLAC (espeak-ng speaks at 22.05 kHz; torchaudio resamples). The output
is deterministic for a ``--seed``. It is written into a scratch folder next to ``root`` and moved
into place at the end; ``root/spoken_words.json`` stamps it, so a rerun with the same settings
does nothing and a folder this script did not write is never overwritten.

Needs espeak-ng (``apt-get install espeak-ng``) and the mmtrain environment (torchaudio,
soundfile). The default 2400 utterances take about a minute and a half on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

VOCABULARY = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    *("red", "green", "blue", "yellow", "black", "white"),
    *("circle", "square", "triangle", "star"),
    *("up", "down", "left", "right"),
    *("yes", "no", "stop", "go", "on", "off"),
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
SUBSETS = {"train": "train-clean-100", "val": "dev-clean", "test": "test-clean"}
CHAPTERS = 2  # chapters per speaker, as LibriSpeech has several books per reader
RATE = 16000
STAMP = "spoken_words.json"
_VERSION = 1


class GenerationError(RuntimeError):
    """A problem to report in one line (missing espeak-ng, a folder in the way...)."""


def speakers(split: str, count: int, rng: random.Random) -> list[dict[str, object]]:
    """``count`` speaker profiles of ``split``: id, voice+variant, base speed and pitch."""
    base = 1000 * (list(SUBSETS).index(split) + 1)  # 1001.. train, 2001.. dev, 3001.. test
    return [
        {
            "id": base + k + 1,
            "voice": f"{rng.choice(VOICES)}+{rng.choice(VARIANTS)}",
            "speed": rng.randint(140, 190),  # words a minute
            "pitch": rng.randint(30, 70),  # espeak's 0-99
        }
        for k in range(count)
    ]


def synthesise(
    espeak: str, text: str, voice: str, speed: int, pitch: int, gap: int
) -> tuple[np.ndarray, int]:
    """espeak-ng's waveform of ``text`` as float32 ``(T,)`` and its rate.

    Raises:
        GenerationError: if espeak-ng fails.
    """
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        cmd = [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap)]
        done = subprocess.run(
            [*cmd, "-w", wav.name, text], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise GenerationError(f"{' '.join(cmd)} {text!r} failed: {done.stderr.strip()}")
        samples, rate = sf.read(wav.name, dtype="float32")
    return samples, int(rate)


def write_split(
    folder: Path,
    profiles: list[dict[str, object]],
    count: int,
    words: tuple[int, int],
    rng: random.Random,
    espeak: str,
) -> None:
    """``count`` utterances spread over ``profiles`` x ``CHAPTERS`` chapters, in ``folder``."""
    import torch  # here, not at the top: --help and argument errors stay instant
    import torchaudio

    resamplers: dict[int, torchaudio.transforms.Resample] = {}
    transcripts: dict[Path, list[str]] = {}
    for n in range(count):
        speaker = profiles[n % len(profiles)]
        chapter_index = (n // len(profiles)) % CHAPTERS
        chapter = int(speaker["id"]) * 10 + chapter_index
        utt = n // (len(profiles) * CHAPTERS)  # numbered from 0 within each chapter
        text = [rng.choice(VOCABULARY) for _ in range(rng.randint(*words))]
        samples, rate = synthesise(
            espeak,
            " ".join(text),
            str(speaker["voice"]),
            int(speaker["speed"]) + rng.randint(-10, 10),  # the reader is never quite constant
            int(speaker["pitch"]) + rng.randint(-5, 5),
            rng.randint(0, 3),  # pause between words, 10 ms units
        )
        if rate not in resamplers:
            resamplers[rate] = torchaudio.transforms.Resample(rate, RATE)
        wav = resamplers[rate](torch.from_numpy(samples)).numpy() * rng.uniform(0.5, 1.0)
        utt_id = f"{speaker['id']}-{chapter}-{utt:04d}"
        chapter_dir = folder / str(speaker["id"]) / str(chapter)
        chapter_dir.mkdir(parents=True, exist_ok=True)
        sf.write(chapter_dir / f"{utt_id}.flac", wav.clip(-1, 1), RATE, subtype="PCM_16")
        transcripts.setdefault(chapter_dir, []).append(f"{utt_id} {' '.join(text).upper()}")
    for chapter_dir, lines in transcripts.items():
        speaker_id, chapter = chapter_dir.parent.name, chapter_dir.name
        (chapter_dir / f"{speaker_id}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def generate(
    root: Path,
    counts: dict[str, int],
    speaker_counts: dict[str, int],
    words: tuple[int, int],
    seed: int,
) -> bool:
    """Write the data set under ``root`` unless the same settings are there already.

    Returns:
        Whether anything was written.

    Raises:
        GenerationError: without espeak-ng, or if ``root`` holds files this script did not write.
    """
    root = root.resolve()  # the scratch folder is its sibling, also for root="."
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise GenerationError("espeak-ng not found: install it: apt-get install espeak-ng")
    stamp = {
        "version": _VERSION,
        "counts": counts,
        "speakers": speaker_counts,
        "words": list(words),
        "seed": seed,
    }
    stamp_file = root / STAMP
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return False
    if root.is_dir() and any(root.iterdir()) and not stamp_file.is_file():
        raise GenerationError(
            f"{root} exists and was not written by this script (no {STAMP}); "
            "choose an empty or new folder"
        )
    rng = random.Random(seed)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        lines = [";ID |SEX| SUBSET           | VOICE"]
        for split, subset in SUBSETS.items():
            profiles = speakers(split, speaker_counts[split], rng)
            for p in profiles:
                sex = str(p["voice"]).split("+")[1][0].upper()  # espeak variants m1.., f1..
                lines.append(
                    f"{p['id']:<4}| {sex} | {subset:<16} | {p['voice']} -s {p['speed']} "
                    f"-p {p['pitch']}"
                )
            print(f"{subset}: {counts[split]} utterances", flush=True)
            write_split(tmp / subset, profiles, counts[split], words, rng, espeak)
        (tmp / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")
        (tmp / STAMP).write_text(json.dumps(stamp))
        if root.exists():
            shutil.rmtree(root)  # ours (stamped), with other settings
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _word_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        pair = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N-M, got {text!r}") from None
    if not 1 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"need 1 <= N <= M, got {text!r}")
    return pair


def main(argv: list[str] | None = None) -> int:
    """Generate the data set; 0 on success, 1 with a one-line error otherwise."""
    parser = argparse.ArgumentParser(
        description="Spoken words in LibriSpeech's layout, synthesised with espeak-ng.",
        epilog="Then: mmtrain fit ... data=librispeech data.root=ROOT",
    )
    parser.add_argument("--root", type=Path, required=True, help="the data set's folder")
    parser.add_argument("--train", type=int, default=2000, help="training utterances")
    parser.add_argument("--val", type=int, default=200, help="dev-clean utterances")
    parser.add_argument("--test", type=int, default=200, help="test-clean utterances")
    parser.add_argument(
        "--speakers",
        type=int,
        nargs=3,
        default=[16, 4, 4],
        metavar=("TRAIN", "VAL", "TEST"),
        help="speakers of each split, disjoint (default: 16 4 4)",
    )
    parser.add_argument(
        "--words", type=_word_range, default=(1, 3), help="words an utterance, N-M (default 1-3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="generation seed")
    args = parser.parse_args(argv)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    speaker_counts = dict(zip(SUBSETS, args.speakers))
    if min(counts.values()) < 1 or min(speaker_counts.values()) < 1:
        parser.error(
            f"need an utterance and a speaker a split at least, got {counts}, {args.speakers}"
        )
    try:
        written = generate(args.root, counts, speaker_counts, args.words, args.seed)
    except GenerationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(("wrote " if written else "already there: ") + f"data.root={args.root.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
