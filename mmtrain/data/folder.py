"""Images from a folder (or one file), for ``mmtrain predict ... input=<file or folder>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.data.io import load_image
from mmtrain.errors import MMTrainError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolderDataset(Dataset):
    """Every image file under ``root`` (searched recursively, sorted), or ``root`` itself.

    Items are ``{"id": <file path>, "image": PIL RGB image}``; there are no targets.

    Args:
        root: an image file or a folder of images.
        split: ignored (a folder has no splits); accepted for the data module's call.
        columns: ignored: only ``image`` exists.

    Raises:
        MMTrainError: if ``root`` does not exist or holds no image file.
    """

    columns = ["image"]

    def __init__(self, root: str, split: str = "predict", columns: list[str] | None = None):
        path = Path(root)
        if path.is_file():
            self.files = [path]
        elif path.is_dir():
            self.files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            raise MMTrainError(f"input: no such file or folder: {path}")
        if not self.files:
            raise MMTrainError(f"input: no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")

    def __len__(self) -> int:
        return len(self.files)

    def values(self, column: str) -> list[Any]:
        """The file paths (``id``); there is no other column with values."""
        return [str(f) for f in self.files] if column == "id" else [None] * len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": str(self.files[index]), "image": load_image(self.files[index])}
