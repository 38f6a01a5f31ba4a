"""LibriSpeech and Clotho in their official layouts, written for tests."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import soundfile as sf

# ---- fixture writers --------------------------------------------------------------------------
# subset -> (speaker, [chapters]); "19" sorts after "103" as a string, as in the release.
LIBRISPEECH_SPEAKERS = {
    "train-clean-100": [(103, [1240, 1241]), (19, [198, 227])],
    "train-clean-360": [(100, [121669, 121674]), (1001, [134707, 134708])],
    "dev-clean": [(84, [121123, 121550]), (174, [50561, 84280])],
    "dev-other": [(116, [288045, 288046]), (1255, [138279, 74899])],
    "test-clean": [(61, [70968, 70970]), (121, [121726, 123852])],
    "test-other": [(367, [130732, 293981]), (533, [1066, 131556])],
}
WORDS = ("CHAPTER", "ONE", "MISSUS", "RACHEL", "LYNDE", "IS", "SURPRISED", "HE'S", "A", "DOOR")


def librispeech_transcript(utt_id: str) -> str:
    """The transcript that :func:`write_librispeech` writes for ``utt_id`` (2 to 4 words)."""
    seed = int(hashlib.md5(utt_id.encode()).hexdigest()[:8], 16)
    return " ".join(WORDS[(seed >> (4 * k)) % len(WORDS)] for k in range(2 + seed % 3))


def _signal(seed: int, rate: int, length: int | None = None) -> np.ndarray:
    """A tone in noise, float32 (T,): ``length`` samples, else 0.2-0.5 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(length or int(rate * rng.uniform(0.2, 0.5))) / rate
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 600) * t)
    return (tone + rng.normal(0, 0.02, t.shape)).clip(-1, 1).astype(np.float32)


def write_librispeech(
    root: Path, subsets: dict[str, int] | None = None, archive_folder: bool = False
) -> Path:
    """Write LibriSpeech subsets: 2 speakers x 2 chapters x ``subsets[name]`` utterances each.

    Each utterance is a 16 kHz mono FLAC tone in noise, 75 ms per transcript character
    (0.3-3 s), with the transcript :func:`librispeech_transcript` of its id.

    Args:
        root: the data root.
        subsets: ``{subset: utterances per chapter}`` of the subsets in
            ``LIBRISPEECH_SPEAKERS`` (default: train-clean-100: 2, dev-clean and test-clean: 1).
        archive_folder: write under ``root/LibriSpeech/`` (as the tarballs extract), with the
            corpus notes (``README.TXT``, ``SPEAKERS.TXT``...).

    Returns:
        The folder holding the subset folders.
    """
    subsets = subsets or {"train-clean-100": 2, "dev-clean": 1, "test-clean": 1}
    base = root / "LibriSpeech" if archive_folder else root
    for subset, per_chapter in subsets.items():
        for speaker, chapters in LIBRISPEECH_SPEAKERS[subset]:
            for chapter in chapters:
                folder = base / subset / str(speaker) / str(chapter)
                folder.mkdir(parents=True, exist_ok=True)
                lines = []
                for utt in range(per_chapter):
                    utt_id = f"{speaker}-{chapter}-{utt:04d}"
                    # As long as read speech of the transcript (~13 characters a second), so
                    # that a CTC model with 40 ms frames can align it (frames >= characters).
                    length = 1200 * len(librispeech_transcript(utt_id))  # 75 ms at 16 kHz
                    sf.write(
                        folder / f"{utt_id}.flac",
                        _signal(chapter + utt, 16000, length),
                        16000,
                        format="FLAC",
                        subtype="PCM_16",
                    )
                    lines.append(f"{utt_id} {librispeech_transcript(utt_id)}\n")
                (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    if archive_folder:
        for note in ("README.TXT", "CHAPTERS.TXT", "SPEAKERS.TXT", "BOOKS.TXT", "LICENSE.TXT"):
            (base / note).write_text(f";{note} of the LibriSpeech ASR corpus\n")
    return base


def librispeech_ids(subset: str, per_chapter: int) -> list[str]:
    return sorted(
        f"{speaker}-{chapter}-{utt:04d}"
        for speaker, chapters in LIBRISPEECH_SPEAKERS[subset]
        for chapter in chapters
        for utt in range(per_chapter)
    )


# subset -> [(file name, captions)]: spaces and a comma in names, quoted commas, an empty cell,
# a file whose captions are all empty (skipped), rows out of name order.
CLOTHO = {
    "development": [
        ("Waves on a beach, Portugal.wav", ["Waves crash, then recede.", "The sea roars."]),
        ("00294 footsteps.wav", ["Someone walks on gravel", "", "Feet crunch, slowly, on stones"]),
        ("Rain 01.wav", ["Rain falls on a tin roof.", "Heavy rain drums, loudly"]),
    ],
    "validation": [
        ("birds_morning.wav", ["Birds chirp at dawn.", "A bird sings, another answers."]),
        ("Car Passing.wav", ["A car drives by fast.", "", "An engine hums, then fades"]),
        ("silence.wav", ["", ""]),
    ],
    "evaluation": [("Kettle.wav", ["A kettle whistles.", "Water boils, then a whistle"])],
}


def write_clotho(
    root: Path, subsets: tuple[str, ...] = tuple(CLOTHO), audio_prefix: str = ""
) -> Path:
    """Write Clotho v2 subsets: captions CSV (5 caption columns), metadata CSV, 44.1 kHz WAVs.

    Args:
        root: the data root.
        subsets: the subsets of ``CLOTHO`` to write.
        audio_prefix: ``"clotho_audio_"`` names the audio folders as the archives do.

    Returns:
        ``root``.
    """
    for subset in subsets:
        folder = root / f"{audio_prefix}{subset}"
        folder.mkdir(parents=True, exist_ok=True)
        captions, metadata = io.StringIO(), io.StringIO()
        writer = csv.writer(captions, lineterminator="\r\n")
        writer.writerow(["file_name", *(f"caption_{k}" for k in range(1, 6))])
        meta = csv.writer(metadata, lineterminator="\r\n")
        meta.writerow(["file_name", "keywords", "sound_id", "sound_link", "start_end_samples"])
        for k, (name, caps) in enumerate(CLOTHO[subset]):
            sf.write(folder / name, _signal(100 + k, 44100), 44100, subtype="PCM_16")
            writer.writerow([name, *caps, *[""] * (5 - len(caps))])
            meta.writerow([name, "sea;waves", 1000 + k, f"https://freesound.org/s/{k}", "[]"])
        # The release's CSVs start with a byte-order mark.
        (root / f"clotho_captions_{subset}.csv").write_text(
            "\ufeff" + captions.getvalue(), encoding="utf-8", newline=""
        )
        (root / f"clotho_metadata_{subset}.csv").write_text(metadata.getvalue(), newline="")
    return root


def clotho_captions(name: str) -> list[str]:
    caps = {n: c for rows in CLOTHO.values() for n, c in rows}[name]
    return [c for c in caps if c]
