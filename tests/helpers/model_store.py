"""A model store of tiny random models under the ids that the presets and experiments name.

The pretrained presets (``encoder/image=hf``, ``encoder/text=open_clip``...) and experiments
(``coco_caption_clip``...) name real models (``openai/clip-vit-base-patch16``, ``ViT-B-32``).
The generated tests build and run every one of them on tiny random models instead, laid out as
``<store>/<id>/`` in each library's own format, and found through ``MMTRAIN_MODEL_DIR`` exactly
as a user's model store is (mmtrain/utils/hub.py): nothing is downloaded or skipped. A preset or
experiment naming a new id needs an entry in :data:`TINY_MODELS`
(``test_every_model_id_of_the_configs_has_a_tiny_model`` says so).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from helpers import tiny_hf, tiny_lm, tiny_vision

# model_name_or_path in configs/ -> the builder of its tiny stand-in (folder -> folder)
TINY_MODELS: dict[str, Callable[[Path], Path]] = {
    "openai/clip-vit-base-patch16": tiny_hf.tiny_clip,
    "openai/clip-vit-base-patch32": tiny_hf.tiny_clip,
    "google-bert/bert-base-uncased": tiny_hf.tiny_bert,
    "facebook/wav2vec2-base": tiny_hf.tiny_wav2vec2,
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": tiny_vision.timm_vit,
    "ViT-B-32": tiny_vision.open_clip_model,
    "Qwen/Qwen2.5-0.5B-Instruct": tiny_lm.tiny_llama_lm,  # a chat template (ChatML)
}


def config_model_ids(config_dir: Path) -> set[str]:
    """Every ``model_name_or_path`` value in the YAML files of ``config_dir``."""
    import yaml

    ids = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "model_name_or_path" and isinstance(value, str) and value != "???":
                    ids.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(config_dir.rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    return ids


def write_model_store(root: Path) -> Path:
    """Every tiny model of :data:`TINY_MODELS` at ``root/<id>/``; returns ``root``."""
    for model_id, build in TINY_MODELS.items():
        build(root / model_id)
    return root
