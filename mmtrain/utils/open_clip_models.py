"""open_clip model names: which model a ``model_name_or_path`` stands for (a registry name, a
folder, ``hf-hub:<id>``), shared by the open_clip encoders and open_clip's tokenizer on the data
side. torch-free; open_clip is imported inside :func:`find_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from mmtrain.utils import hub
from mmtrain.utils.hub import did_you_mean

CONFIG = "open_clip_config.json"  # the model_cfg and preprocess_cfg of a hub/local folder
HUB_PREFIX, LOCAL_PREFIX = "hf-hub:", "local-dir:"


class OpenCLIPModel(NamedTuple):
    """Where an open_clip model comes from.

    Attributes:
        name: the registry name (``ViT-B-32``), or the folder for a local or hub model.
        folder: the folder holding ``open_clip_config.json`` (and weights), None for a name of
            open_clip's registry.
        model_cfg: open_clip's model config (``embed_dim``, ``vision_cfg``, ``text_cfg``...).
        preprocess_cfg: the folder's ``preprocess_cfg`` ({} for a registry name).
    """

    name: str
    folder: Path | None
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]


def find_model(
    name: str, key: str, revision: str | None = None, model_dir: str | Path | None = None
) -> OpenCLIPModel:
    """The open_clip model that ``name`` stands for: a folder (``local-dir:`` optional), a
    model store's ``<store>/<name>``, ``hf-hub:<org/name>`` or a hub id through
    :func:`mmtrain.utils.hub.resolve`, or a name of open_clip's registry (``ViT-B/32`` is
    ``ViT-B-32``).

    Raises:
        ValueError: for an unknown name (with a did-you-mean) or a folder without
            ``open_clip_config.json``.
        MMTrainError: for a hub id or path that is not available.
    """
    import open_clip

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{key}: set an open_clip model name, hf-hub:<id> or folder, got {name!r}")
    bare = name.removeprefix(LOCAL_PREFIX)
    folder = hub.local_model(bare, model_dir)
    registry = name.replace("/", "-")
    if folder is None and registry in open_clip.list_models() and not name.startswith(HUB_PREFIX):
        return OpenCLIPModel(registry, None, open_clip.get_model_config(registry), {})
    if folder is None and (name.startswith((HUB_PREFIX, LOCAL_PREFIX)) or "/" in name):
        folder = hub.resolve(bare.removeprefix(HUB_PREFIX), key, revision, model_dir)
    if folder is None:
        raise ValueError(
            f"{key}={name}: not an open_clip model{did_you_mean(name, open_clip.list_models())}"
        )
    config_file = folder / CONFIG
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if "model_cfg" not in config:
        raise ValueError(f"{key}={name}: {folder} has no {CONFIG} with a model_cfg")
    return OpenCLIPModel(str(folder), folder, config["model_cfg"], config.get("preprocess_cfg", {}))
