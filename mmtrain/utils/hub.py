"""Where pretrained models come from, offline by design.

A ``model_name_or_path`` is looked up in this order:

1. a local folder (``/models/clip``, ``./bert``): used as it is, no network;
2. ``<dir>/<id>`` (or ``<dir>/<org>--<name>``) in ``paths.model_dir`` and then in every folder
   of ``MMTRAIN_MODEL_DIR`` (``os.pathsep``-separated): a shared model store on a cluster;
3. a Hugging Face hub id (``openai/clip-vit-base-patch32``) through the Hugging Face cache
   (``HF_HOME``/``HF_HUB_CACHE``): on a machine with a network it downloads, as transformers
   does; with ``HF_HUB_OFFLINE=1`` (or no network) only the cache is read.

A model that none of them has is one line (:class:`MMTrainError`) naming the id, the folders
searched and the command that fetches it on a connected machine; nothing is written.

torch-free: the data side reads processor configs with it before anything heavy is built.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path

from mmtrain.errors import MMTrainError

MODEL_DIR_ENV = "MMTRAIN_MODEL_DIR"
# Files that hold weights: never copied into a checkpoint's model files (the state_dict has them).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
MAX_MODEL_FILE = 64 * 2**20  # a tokenizer.json is a few MB; anything larger is not a config
# What a hub download fetches: configs, tokenizers, processors and safetensors weights (not the
# pickled, TensorFlow or Flax copies that many repositories also hold).
HUB_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")


def did_you_mean(name: str, choices: list[str]) -> str:
    """`` (did you mean a, b?)`` for the close matches of ``name`` in ``choices`` (a library's
    model names), or ``""``."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def offline() -> bool:
    """Whether the hub must not be contacted: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def search_dirs(model_dir: str | Path | None = None) -> list[Path]:
    """The model stores searched for ``<id>`` folders: ``paths.model_dir``, then each folder of
    ``MMTRAIN_MODEL_DIR``."""
    dirs = [Path(model_dir).expanduser()] if model_dir else []
    env = os.environ.get(MODEL_DIR_ENV, "")
    dirs += [Path(d).expanduser() for d in env.split(os.pathsep) if d]
    return list(dict.fromkeys(dirs))


def is_path(name: str) -> bool:
    """Whether ``name`` is written as a path rather than an id (``/x``, ``./x``, ``~/x``, or
    more than one ``/``): such a name is never looked up on the hub."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1


def local_model(name: str, model_dir: str | Path | None = None) -> Path | None:
    """The local folder of ``name``: itself, or ``<store>/<name>`` (``<store>/<org>--<name>``)
    in a model store of :func:`search_dirs`; None when there is none."""
    own = Path(name).expanduser()
    if own.is_dir():
        return own
    if is_path(name):
        return None
    for store in search_dirs(model_dir):
        for candidate in (store / name, store / name.replace("/", "--")):
            if candidate.is_dir():
                return candidate
    return None


def fetch_command(name: str, revision: str | None = None) -> str:
    """The command that puts ``name`` into the Hugging Face cache on a connected machine."""
    return f"hf download {name}" + (f" --revision {revision}" if revision else "")


def not_found(
    name: str,
    key: str,
    model_dir: str | Path | None = None,
    revision: str | None = None,
    why: str = "",
) -> MMTrainError:
    """The one line for a model that is not here: the id, where it was looked for, and how to
    get it."""
    from huggingface_hub import constants

    stores = [str(d) for d in search_dirs(model_dir)]
    searched = ", ".join(
        [*(f"{s}/{name}" for s in stores), f"the Hugging Face cache {constants.HF_HUB_CACHE}"]
    )
    mode = " (offline: HF_HUB_OFFLINE=1)" if offline() else ""
    return MMTrainError(
        f"{key}={name}: model not found{mode}; searched {searched}{f' ({why})' if why else ''}. "
        f"On a machine with a network run `{fetch_command(name, revision)}` and copy the "
        f"cache, or put the model folder at <paths.model_dir>/{name} "
        f"(or {MODEL_DIR_ENV}=<folder>)"
    )


def resolve(
    name: str,
    key: str = "model_name_or_path",
    revision: str | None = None,
    model_dir: str | Path | None = None,
    pickled: bool = False,
) -> Path:
    """The local folder of a model: a folder, a model store's ``<id>`` folder, or the hub
    snapshot of the id (downloaded unless offline).

    Args:
        name: ``model_name_or_path``: a folder or a hub id.
        key: the config key, for the messages (``encoder.image.model_name_or_path``).
        revision: the hub revision (branch, tag or commit) that pins the model.
        model_dir: ``paths.model_dir``, searched first.
        pickled: also fetch pickled weights (``*.bin``) from the hub (``safetensors=false``).

    Returns:
        The folder.

    Raises:
        MMTrainError: naming the id, the folders searched and the fetch command, when the
            model is not available.
    """
    if not isinstance(name, str) or not name.strip():
        raise MMTrainError(f"{key}: set a model folder or hub id, got {name!r}")
    found = local_model(name, model_dir)
    if found is not None:
        return found
    if is_path(name):
        raise MMTrainError(f"{key}={name}: no such folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = [*HUB_PATTERNS, *(PICKLE_PATTERNS if pickled else ())]
    try:
        folder = snapshot_download(
            name, revision=revision, local_files_only=offline(), allow_patterns=patterns
        )
    except HFValidationError:
        raise MMTrainError(
            f"{key}={name}: neither a folder nor a Hugging Face hub id (org/name)"
        ) from None
    except Exception as err:  # not cached offline, no network, not on the hub, gated...
        # Offline, the reason is always "not in the cache"; otherwise say what the hub said.
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        why = "" if offline() else first[:160]
        raise not_found(name, key, model_dir, revision, why) from None
    return Path(folder)


def model_files(folder: Path) -> dict[str, bytes]:
    """The files of a model folder that rebuild it without its weights (config, tokenizer,
    processor): what a checkpoint stores so that ``mmtrain test|predict`` never reads the
    folder again. Top-level files only, weights left out."""
    files = {}
    for path in sorted(Path(folder).iterdir()):
        config = not path.name.endswith(WEIGHT_SUFFIXES) and not path.name.startswith(".")
        if path.is_file() and config and path.stat().st_size <= MAX_MODEL_FILE:
            files[path.name] = path.read_bytes()
    return files


def materialize(files: dict[str, bytes], folder: Path) -> Path:
    """Write a checkpoint's model files into ``folder`` (created), unchanged files kept."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if Path(name).name != name:  # a stored name is a plain file name, never a path
            raise MMTrainError(f"checkpoint: model file name {name!r} is not a plain file name")
        path = folder / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
    return folder


def files_digest(files: dict[str, bytes]) -> str:
    """A short hash of a set of model files (a folder name that changes with them)."""
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]
