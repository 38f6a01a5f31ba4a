"""``format=safetensors`` and ``format=checkpoint`` exports, and reading an export folder back.

A safetensors export holds no pickle: ``model.safetensors`` (every weight of the model, the
frozen bases of a trimmed checkpoint included), ``mmtrain.json`` (the config as YAML, the data
state, the format version) and ``models/<part path>/`` (the files that rebuild each pretrained
part without its weights: config, tokenizer, processor). ``mmtrain.load(<folder>)`` rebuilds
the model from them as it does from a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmtrain.contracts import CHECKPOINT_KEY
from mmtrain.errors import MMTrainError

MANIFEST = "mmtrain.json"  # config, data state, format version of a safetensors export
EXPORT_INFO = "export.json"  # every export: its format, files, parity numbers, source
WEIGHTS = "model.safetensors"
CHECKPOINT = "model.ckpt"
MODELS = "models"  # models/<part path>/<file>: a pretrained part's files
FORMAT_VERSION = 1
# How to load each export format that mmtrain.load does not (its line for the user).
LOAD_HINTS = {
    "onnx": "an ONNX export: run {path}/model.onnx with onnxruntime "
    "(onnxruntime.InferenceSession(...)); its inputs are preprocessed tensors, see its README.md",
    "torch_export": "a torch.export program: torch.export.load('{path}/model.pt2').module(); its "
    "inputs are preprocessed tensors, see its README.md",
    "hf": "a Hugging Face transformers export (llava layout): load it with transformers "
    "(LlavaForConditionalGeneration.from_pretrained('{path}')), see its README.md",
}


def _safetensors() -> Any:
    """``safetensors.torch``, or one line on how to install it."""
    try:
        import safetensors.torch
    except ImportError:
        raise MMTrainError(
            "safetensors exports need the safetensors package: pip install 'mmtrain[export]'"
        ) from None
    return safetensors.torch


def state_tensors(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors of a state_dict as safetensors stores them, and the aliases left out.

    safetensors refuses tensors that share memory: a tensor that is exactly another one (tied
    weights) is recorded as an alias of the first name; one that overlaps another's memory
    otherwise is copied. Every tensor is made contiguous and moved to the CPU.

    Returns:
        ``({name: tensor}, {alias: name it repeats})``.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    exact: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, value in state.items():
        tensor = value.detach().cpu()
        if tensor.numel() == 0:
            tensors[name] = tensor.clone()
            continue
        storage = tensor.untyped_storage().data_ptr()
        key = (storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key in exact:
            aliases[name] = exact[key]
            continue
        exact[key] = name
        if storage in storages or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        storages.add(storage)
        tensors[name] = tensor
    return tensors, aliases


def write_safetensors(model: Any, ckpt: dict[str, Any], folder: Path) -> list[Path]:
    """Write a ``format=safetensors`` export of a rebuilt model into ``folder``.

    Args:
        model: the rebuilt model, its weights loaded (its ``state_dict`` is exported: a trimmed
            checkpoint's bases come from the model, not the checkpoint).
        ckpt: the loaded checkpoint (its config, data state and model files).
        folder: an empty folder.

    Returns:
        The files written.

    Raises:
        MMTrainError: when the data state is not plain JSON types.
    """
    from mmtrain.utils.hub import materialize

    save_file = _safetensors().save_file

    stored = ckpt[CHECKPOINT_KEY]
    tensors, aliases = state_tensors(model.state_dict())
    metadata = {"format": "pt", "mmtrain_format_version": str(FORMAT_VERSION)}
    if aliases:
        metadata["aliases"] = json.dumps(aliases, sort_keys=True)
    save_file(tensors, str(folder / WEIGHTS), metadata=metadata)
    models = stored.get("models") or {}
    manifest = {
        "format": "safetensors",
        "version": FORMAT_VERSION,
        "config": stored["config"],
        "data": stored.get("data") or {},
        "models": sorted(models),
        "weights": WEIGHTS,
    }
    try:
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise MMTrainError(
            f"format=safetensors: the checkpoint's data state is not JSON: {err}"
        ) from None
    (folder / MANIFEST).write_text(text + "\n")
    written = [folder / WEIGHTS, folder / MANIFEST]
    for path, files in sorted(models.items()):
        materialize(files, folder / MODELS / path)
        written += [folder / MODELS / path / name for name in sorted(files)]
    return written


def read_safetensors_export(folder: Path) -> dict[str, Any]:
    """A safetensors export read back as :func:`mmtrain.run.load_checkpoint` returns a
    checkpoint: ``{"state_dict": ..., "mmtrain": {"config", "data", "models"}}``.

    Raises:
        MMTrainError: naming the folder, when it is not a readable safetensors export.
    """
    st = _safetensors()
    load_file, safe_open = st.load_file, st.safe_open
    from safetensors import SafetensorError

    manifest_path, weights = folder / MANIFEST, folder / WEIGHTS
    if not manifest_path.is_file() or not weights.is_file():
        raise MMTrainError(
            f"mmtrain.load: {folder} is not a safetensors export (no {MANIFEST} and {WEIGHTS})"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        state = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as reader:
            metadata = reader.metadata() or {}
    except (OSError, ValueError, SafetensorError) as err:
        raise MMTrainError(f"mmtrain.load: cannot read the export {folder}: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != FORMAT_VERSION:
        version = manifest.get("version") if isinstance(manifest, dict) else None
        raise MMTrainError(
            f"mmtrain.load: {manifest_path}: export format version {version!r}, this mmtrain "
            f"reads version {FORMAT_VERSION}"
        )
    for alias, name in json.loads(metadata.get("aliases", "{}")).items():
        state[alias] = state[name]
    models = {}
    for path in manifest.get("models") or []:
        part = folder / MODELS / path
        models[path] = {f.name: f.read_bytes() for f in sorted(part.iterdir()) if f.is_file()}
    stored = {"config": manifest["config"], "data": manifest.get("data") or {}, "models": models}
    return {"state_dict": state, CHECKPOINT_KEY: stored}


def write_checkpoint(ckpt: dict[str, Any], folder: Path) -> list[Path]:
    """``format=checkpoint``: the loaded (consolidated) checkpoint as one regular file,
    ``model.ckpt``, that ``mmtrain test|predict|fit ckpt_path=...`` read.

    Returns:
        The file written.
    """
    import torch

    torch.save(ckpt, folder / CHECKPOINT)
    return [folder / CHECKPOINT]


def export_format(path: Path) -> str | None:
    """The format of an export folder (``export.json``; a bare safetensors export by its
    ``mmtrain.json``), or None for anything else."""
    if not path.is_dir():
        return None
    info = path / EXPORT_INFO
    if info.is_file():
        try:
            found = json.loads(info.read_text()).get("format")
        except (ValueError, AttributeError):
            found = None
        return str(found) if found else None
    return "safetensors" if (path / MANIFEST).is_file() else None


def load_hint(path: Path, kind: str) -> str:
    """One line for ``mmtrain.load`` on an export it does not load: how to load it."""
    hint = LOAD_HINTS.get(kind, "an export in format {kind!r} that mmtrain.load does not read")
    return f"mmtrain.load: {path} is " + hint.format(path=path, kind=kind)
