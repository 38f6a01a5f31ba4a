"""Images or audio files from a folder (or one file), for ``mmtrain predict ... input=<path>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.data.io import load_audio, load_image
from mmtrain.errors import MMTrainError

SUFFIXES = {
    "image": (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".ogg", ".mp3"),  # what libsndfile reads (mp3 since 1.1)
}
LOADERS = {"image": load_image, "audio": load_audio}


class InputFolderDataset(Dataset):
    """Every image or audio file under ``root`` (searched recursively, sorted), or ``root`` itself.

    The files are those of the modality the model takes (``columns``, set by the data module
    from the encoders): images for a model with an image encoder, else audio. Items are
    ``{"id": <file path>, <modality>: <image or (samples, rate)>}``; there are no targets.

    Args:
        root: a file or a folder of files.
        split: ignored (a folder has no splits); accepted for the data module's call.
        columns: the modalities the model takes; None: images.

    Raises:
        MMTrainError: if ``root`` does not exist or holds no file of the modality, or the
            model takes neither images nor audio.
    """

    def __init__(self, root: str, split: str = "predict", columns: list[str] | None = None):
        wanted = [m for m in SUFFIXES if columns is None or m in columns]
        if not wanted:
            raise MMTrainError(
                f"input= reads image or audio files, but the model takes {columns}: give the "
                "inputs as a manifest instead (data=manifest data.test=<file>)"
            )
        self.modality = wanted[0]
        self.columns = [self.modality]
        suffixes = SUFFIXES[self.modality]
        path = Path(root)
        if path.is_file():
            self.files = [path]
        elif path.is_dir():
            self.files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
            )
        else:
            raise MMTrainError(f"input: no such file or folder: {path}")
        if not self.files:
            raise MMTrainError(f"input: no {self.modality} files ({', '.join(suffixes)}) in {path}")

    def __len__(self) -> int:
        return len(self.files)

    def values(self, column: str) -> list[Any]:
        """The file paths (``id``); there is no other column with values."""
        return [str(f) for f in self.files] if column == "id" else [None] * len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        file = self.files[index]
        return {"id": str(file), self.modality: LOADERS[self.modality](file)}
