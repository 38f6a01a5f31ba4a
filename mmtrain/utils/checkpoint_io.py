"""Checkpoint files written atomically: a kill during a save never leaves a truncated file.

Lightning's own writer stages the file in the system's temporary folder and moves it into
place; when that folder is on another file system (``/tmp`` as tmpfs, a cluster's scratch
disk), the move is a copy, and a kill during the copy leaves a truncated ``last.ckpt``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from mmtrain.failures import no_space


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, ``fsync``, then ``os.replace``.

    The final name always holds a complete checkpoint: the previous one until the rename, the
    new one after it (the rename is atomic on POSIX file systems). A save killed before the
    rename leaves the previous file and a hidden ``.<name>.tmp-<pid>`` file, removed by the
    next save of that name. Remote paths (``s3://...``) go to Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed save
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise no_space(path) from err
            raise
        _fsync_dir(path.parent)
