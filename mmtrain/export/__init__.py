"""``mmtrain export ckpt_path=<checkpoint> format=<format> out=<dir>``: a trained model in a
format for serving or sharing, with a model card.

Formats (``configs/export.yaml``):

- ``safetensors``: every weight (``model.safetensors``), the config and data state
  (``mmtrain.json``) and the pretrained parts' files (``models/``); no pickle.
  ``mmtrain.load(<dir>)`` rebuilds the model from it (:mod:`mmtrain.export.weights`).
- ``checkpoint``: the checkpoint (a sharded one consolidated) as one regular file,
  ``model.ckpt``.
- ``onnx`` / ``torch_export``: the forward as a graph (``model.onnx`` / ``model.pt2``), checked
  against eager PyTorch on the model's own data (:mod:`mmtrain.export.graph`).
- ``hf``: a causal-LM model as a Hugging Face transformers model (:mod:`mmtrain.export.hf`).

Every export carries ``README.md`` (the model card, :mod:`mmtrain.export.card`) and
``export.json`` (format, files, parity numbers). ``out`` must be new or empty: the files are
written into a sibling folder that is renamed into place at the end, so a failed export leaves
nothing behind. Importing this package does not import torch.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from mmtrain.errors import MMTrainError

FORMATS = ("safetensors", "checkpoint", "onnx", "torch_export", "hf")
EXPORT_VERSION = 1


def check_out(cfg: Any) -> Path:
    """``out``: a new folder, or an empty one (as ``mmtrain shard`` wants it).

    Raises:
        MMTrainError: when ``out`` is not set, is a file, or is a folder with files in it.
    """
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "out") or not cfg.get("out"):
        raise MMTrainError("out=<dir> is required: the new (or empty) folder to export into")
    out = Path(str(cfg.out)).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise MMTrainError(f"out={out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise MMTrainError(
            f"out={out} is not empty: nothing was written; choose an empty or new folder"
        )
    return out


def _command() -> str:
    """The command that made the export: the Hydra overrides of this run, else ``sys.argv``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
    else:
        overrides = sys.argv[1:]
    return shlex.join(["mmtrain", "export", *overrides])


def _created_parents(out: Path) -> list[Path]:
    """The folders above ``out`` that do not exist yet (created now, removed on failure)."""
    missing = [p for p in out.parents if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    return missing


def export(cfg: Any) -> dict[str, Any]:
    """Export the model of ``cfg.ckpt_path`` in ``cfg.format`` into ``cfg.out``.

    Args:
        cfg: the composed ``mmtrain export`` config (``configs/export.yaml``).

    Returns:
        What ``out/export.json`` holds: format, source, command, files and their sizes, parity
        numbers (graph formats), inputs and outputs.

    Raises:
        MMTrainError: for a bad ``format``, ``out`` or ``ckpt_path``, a model the format cannot
            take (one line saying why), or a failed parity check; ``out`` is left as it was.
    """
    fmt = str(cfg.get("format"))
    if fmt not in FORMATS:
        raise MMTrainError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    out = check_out(cfg)  # before anything is loaded: a wrong out= fails fast
    if not cfg.get("ckpt_path"):
        raise MMTrainError(
            "mmtrain export needs ckpt_path=<checkpoint> (a checkpoint of mmtrain fit)"
        )
    from mmtrain.run import load_checkpoint

    ckpt_path = Path(str(cfg.ckpt_path))
    ckpt = load_checkpoint(ckpt_path)
    created = _created_parents(out)
    tmp = out.parent / f".{out.name}.mmtrain-export-{os.getpid()}"  # a rename away from out
    try:
        tmp.mkdir()
        info = _write(fmt, cfg, ckpt, ckpt_path, tmp, out)
        if out.is_dir():
            out.rmdir()  # empty (checked above): the export takes its place
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    _report(out, info)
    return info


def _write(
    fmt: str, cfg: Any, ckpt: dict[str, Any], ckpt_path: Path, folder: Path, out: Path
) -> dict[str, Any]:
    """Write the export's files, ``export.json`` and ``README.md`` into ``folder``."""
    from mmtrain.contracts import CHECKPOINT_KEY
    from mmtrain.export.card import run_metrics, write_card
    from mmtrain.export.weights import EXPORT_INFO, write_checkpoint

    result: dict[str, Any]
    if fmt == "checkpoint":  # no rebuild: the consolidated dict as it is
        result = {"files": write_checkpoint(ckpt, folder)}
    else:
        from mmtrain.predictor import rebuild

        with tempfile.TemporaryDirectory(prefix="mmtrain_export_") as scratch:
            _, datamodule, model = rebuild(ckpt, str(ckpt_path), cfg, Path(scratch))
            result = _write_model(fmt, cfg, ckpt, model, datamodule, folder)
    files = [Path(f) if Path(f).is_absolute() else folder / f for f in result.get("files", [])]
    info = {key: value for key, value in result.items() if key != "files" and _is_json(value)} | {
        "format": fmt,
        "version": EXPORT_VERSION,
        "source": str(ckpt_path.resolve()),
        "command": _command(),
        "files": {f.relative_to(folder).as_posix(): f.stat().st_size for f in files},
        "metrics": run_metrics(ckpt_path, ckpt),
    }
    write_card(folder, out, info, ckpt[CHECKPOINT_KEY]["config"], ckpt)
    text = json.dumps(info, indent=2, sort_keys=True)
    (folder / EXPORT_INFO).write_text(text + "\n")
    return info


def _write_model(
    fmt: str, cfg: Any, ckpt: dict[str, Any], model: Any, datamodule: Any, folder: Path
) -> dict[str, Any]:
    """The formats written from the rebuilt model."""
    if fmt == "safetensors":
        from mmtrain.export.weights import write_safetensors

        return {"files": write_safetensors(model, ckpt, folder)}
    if fmt in ("onnx", "torch_export"):
        from mmtrain.export.graph import export_graph

        return export_graph(model, datamodule, cfg, folder)
    try:
        from mmtrain.export.hf import export_hf
    except ModuleNotFoundError as err:
        if err.name != "mmtrain.export.hf":
            raise
        raise MMTrainError(
            "format=hf is not available in this mmtrain (no mmtrain.export.hf)"
        ) from None
    result = export_hf(model, cfg, folder, datamodule=datamodule)
    diffs = result.get("parity")
    if isinstance(diffs, dict) and "max_abs_diff" not in diffs:  # {name: diff}: as the others'
        result["parity"] = {"max_abs_diff": diffs, "atol": result.get("tolerance")}
    return result


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _report(out: Path, info: dict[str, Any]) -> None:
    """One line per file written, and the parity numbers."""
    from mmtrain.export.card import human_size

    for name, size in sorted(info["files"].items()):
        print(f"mmtrain export: {out / name} ({human_size(size)})", flush=True)
    checked = info.get("parity") or {}
    diffs = checked.get("max_abs_diff") or {}
    if diffs:
        numbers = ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
        sizes = ", ".join(map(str, checked.get("batch_sizes", [])))
        where = f", batch sizes {sizes}" if sizes else ""
        print(
            f"mmtrain export: parity with eager PyTorch (max abs diff{where}): {numbers}",
            flush=True,
        )
    print(f"mmtrain export: {info['format']} export in {out} (README.md, export.json)", flush=True)
