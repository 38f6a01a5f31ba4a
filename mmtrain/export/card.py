"""The model card (``README.md``) of every export: what it is, how to load it, the command that
made it, the model's config, its data, its metrics, the parity numbers and the files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

LOADING = {
    "safetensors": """```python
import mmtrain
predictor = mmtrain.load("{out}")
predictor(image="photo.png", text="a red circle")
```
The weights alone: `safetensors.torch.load_file("{out}/model.safetensors")`; the config,
data state and format version are in `mmtrain.json`, pretrained parts' files in `models/`.""",
    "checkpoint": """```python
import mmtrain
predictor = mmtrain.load("{out}/model.ckpt")
```
or `mmtrain test ckpt_path={out}/model.ckpt`, `mmtrain fit ckpt_path={out}/model.ckpt` (resume).""",
    "onnx": """```python
import onnxruntime
session = onnxruntime.InferenceSession("{out}/model.onnx")
outputs = session.run(None, {{name: array for name, array in inputs.items()}})
```
The inputs are preprocessed tensors, as in an mmtrain batch (see Inputs below).""",
    "torch_export": """```python
import torch
program = torch.export.load("{out}/model.pt2").module()
outputs = program(*tensors)  # the inputs below, in order
```
The inputs are preprocessed tensors, as in an mmtrain batch (see Inputs below).""",
    "hf_llava": """```python
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained("{out}")
processor = AutoProcessor.from_pretrained("{out}")
```""",
    "hf": """```python
import mmtrain
predictor = mmtrain.load("{out}")
```
The language model alone: `AutoModelForCausalLM.from_pretrained("{out}/language_model")`
(transformers).""",
}


def run_metrics(ckpt_path: Path, ckpt: dict[str, Any]) -> dict[str, float]:
    """The metrics of the checkpoint's run: ``<run>/metrics.json`` (a checkpoint is
    ``<run>/checkpoints/<name>``) and the best score its ModelCheckpoint stored."""
    metrics: dict[str, float] = {}
    found = ckpt_path.parent.parent / "metrics.json"
    if ckpt_path.parent.name == "checkpoints" and found.is_file():
        try:
            stored = json.loads(found.read_text())
        except ValueError:
            stored = {}
        metrics |= {k: float(v) for k, v in stored.items() if isinstance(v, (int, float))}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict):
            score, monitor = state.get("best_model_score"), state.get("monitor")
            if score is not None and monitor:
                metrics[f"best checkpoint: {monitor}"] = float(score)
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def _lists(state: Any, prefix: str = "") -> list[tuple[str, list[Any] | dict[str, Any]]]:
    """The lists and mappings of more than one item in a part's fitted state (vocabularies,
    class names), by dotted key."""
    found = []
    for key, value in (state or {}).items() if isinstance(state, dict) else ():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not all(isinstance(v, (int, float)) for v in value.values()):
            found += _lists(value, name + ".")
        elif isinstance(value, (list, dict)) and len(value) > 1:
            found.append((name, value))
    return found


def _data(config: Any, data_state: dict[str, Any]) -> list[str]:
    """Lines on the data: data module and set, root, modalities, classes and vocabularies."""
    from omegaconf import OmegaConf

    data = config.get("data") or {}
    dataset = data.get("dataset") or {}
    try:  # the root as it resolves here (it may name the training machine's folders)
        root = OmegaConf.select(OmegaConf.create(config), "data.root")
    except Exception:  # an interpolation that does not resolve here: as written
        root = data.get("root")
    lines = [
        f"- data module: `{str(data.get('_target_', '?')).rsplit('.', 1)[-1]}`, data set: "
        f"`{str(dataset.get('_target_', '?')).rsplit('.', 1)[-1]}`",
        f"- root: `{root}`",
        f"- modalities: {', '.join(config.get('encoder') or {}) or 'none'}",
    ]
    for kind, parts in (("target", "targets"), ("input", "inputs")):
        for name, state in (data_state.get(parts) or {}).items():
            for key, value in _lists(state):
                shown = value if isinstance(value, list) and len(value) <= 12 else None
                listed = f": {', '.join(map(str, shown))}" if shown else ""
                lines.append(f"- {kind} `{name}`: {key}, {len(value)}{listed}")
    return lines


def human_size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)


def write_card(folder: Path, out: Path, info: dict[str, Any], config_yaml: str, ckpt: Any) -> Path:
    """Write ``README.md`` into ``folder`` (the export, before it is moved to ``out``).

    Args:
        folder: where the export's files are now.
        out: where they will be (the paths in the loading snippet).
        info: export.json's content: format, command, source, files, parity, inputs...
        config_yaml: the model's composed config, as the checkpoint stores it.
        ckpt: the loaded checkpoint (its data state and callbacks' scores).

    Returns:
        The card's path.
    """
    from omegaconf import OmegaConf

    fmt = info["format"]
    layout = "hf_llava" if fmt == "hf" and info.get("layout") == "llava" else fmt
    config = OmegaConf.to_container(OmegaConf.create(config_yaml), resolve=False)
    name = config.get("name", "model") if isinstance(config, dict) else "model"
    data_state = (ckpt.get("mmtrain") or {}).get("data") or {}
    lines = [
        f"# {name} ({fmt} export)",
        "",
        f"Exported by mmtrain from `{info['source']}`.",
        "",
        "## Loading",
        "",
        LOADING.get(layout, "See export.json.").format(out=out),
        "",
        "## Command",
        "",
        "```sh",
        info["command"],
        "```",
        "",
    ]
    if info.get("input_shapes"):
        lines += [
            "## Inputs and outputs",
            "",
            f"Part: `{info.get('part')}`. Inputs, preprocessed as the model's data does it "
            "(a fixed length: pad to it, the mask False on padding):",
            "",
            *(
                f"- `{n}`: ({', '.join(map(str, info.get('input_shapes', {}).get(n, [])))})"
                for n in info["inputs"]
            ),
            "",
            "Outputs: " + ", ".join(f"`{n}`" for n in info.get("outputs", [])),
            "",
        ]
    lines += ["## Data", "", *_data(config if isinstance(config, dict) else {}, data_state), ""]
    metrics = info.get("metrics") or {}
    lines += ["## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("No metrics.json next to the checkpoint's run.")
    lines.append("")
    checked = info.get("parity")
    if checked:
        sizes = ", ".join(map(str, checked.get("batch_sizes", [])))
        where = f" on the model's own data (batch sizes {sizes})" if sizes else ""
        lines += [
            "## Parity with eager PyTorch",
            "",
            f"Max abs difference{where}; tolerance {checked.get('atol')}:",
            "",
            "| output | max abs diff |",
            "| --- | --- |",
            *(f"| {k} | {v:.3g} |" for k, v in checked.get("max_abs_diff", {}).items()),
            "",
        ]
    lines += ["## Files", "", "| file | size |", "| --- | --- |"]
    lines += [f"| {f} | {human_size(n)} |" for f, n in sorted(info.get("files", {}).items())]
    from mmtrain.run import MODEL_KEYS

    model_config = {k: v for k, v in config.items() if k in MODEL_KEYS}
    lines += ["", "## Model config", "", "The checkpoint's model and data keys:", ""]
    lines += ["```yaml", OmegaConf.to_yaml(model_config).rstrip(), "```", ""]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path
