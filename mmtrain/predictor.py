"""The Python inference API: ``mmtrain.load(checkpoint or export)`` returns a :class:`Predictor`.

    import mmtrain
    predictor = mmtrain.load("outputs/shapes/.../checkpoints/best.ckpt")
    predictor(image="photo.png", text="a red circle")      # {"label": "circle", ...}
    predictor(image=[img1, img2], text=["...", "..."])      # one result per sample

The model is rebuilt from the checkpoint alone, as ``mmtrain predict ckpt_path=...`` does
(its stored config, data state and model files; a trimmed checkpoint's bases from their
folders, fingerprints checked), and each input goes through the model's own preprocessing
(the data side's inputs, fitted state restored) before the model predicts. An ``mmtrain export``
folder loads the same way: ``format=safetensors`` and ``format=checkpoint`` (and ``format=hf``
in mmtrain's layout); for an ONNX, torch.export or llava-layout export, the error says how to
load it instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmtrain.contracts import CHECKPOINT_KEY
from mmtrain.data.collate import collate
from mmtrain.data.io import load_audio, load_image
from mmtrain.errors import MMTrainError

FILES = {"image": load_image, "audio": load_audio}  # a path given for a modality is read so
EXPORT_FILES = (".safetensors", ".onnx", ".pt2")  # an export's model file stands for its folder


class Predictor:
    """A trained model and its inputs' preprocessing, called on raw values.

    Args:
        model: the :class:`~mmtrain.module.MultimodalModule`, weights loaded.
        datamodule: its data module (the inputs' fitted state restored), for preprocessing.
        device: where the model runs.
    """

    def __init__(self, model: Any, datamodule: Any, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.datamodule = datamodule
        self.modalities = [m for m in model.encoders if m in datamodule.inputs]
        self.tasks = list(model.heads)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """Rebuild the model of an mmtrain checkpoint (see the module docstring).

        Raises:
            MMTrainError: for a file that is not an mmtrain checkpoint, or one that does not
                rebuild (naming the file).
        """
        from mmtrain.run import load_checkpoint

        return cls._rebuilt(load_checkpoint(path, key="mmtrain.load"), str(path), device)

    @classmethod
    def from_export(cls, folder: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """Rebuild the model of a ``format=safetensors`` export folder (``mmtrain export``):
        its config, data state and model files from ``mmtrain.json`` and ``models/``, every
        weight from ``model.safetensors``.

        Raises:
            MMTrainError: for a folder that is not a safetensors export, or one that does not
                rebuild (naming the folder).
        """
        from mmtrain.export.weights import read_safetensors_export

        return cls._rebuilt(read_safetensors_export(Path(folder)), str(folder), device)

    @classmethod
    def from_hf_export(cls, folder: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """Rebuild the model of a ``format=hf`` export in mmtrain's layout (see
        :mod:`mmtrain.export.hf`; a llava-layout folder is loaded with transformers).

        Raises:
            MMTrainError: for a folder that is not one, naming it.
        """
        from mmtrain.config import task_config
        from mmtrain.export.hf import rebuild_hf_export

        with tempfile.TemporaryDirectory(prefix="mmtrain_load_") as scratch:
            base = task_config("predict", [], Path(scratch))
            _, datamodule, model = rebuild_hf_export(
                Path(folder), base, Path(scratch), inputs=scratch
            )
        return cls(model, datamodule, device)

    @classmethod
    def _rebuilt(cls, ckpt: dict[str, Any], path: str, device: str | torch.device) -> Predictor:
        """A predictor of a loaded checkpoint, its data reading raw inputs."""
        with tempfile.TemporaryDirectory(prefix="mmtrain_load_") as scratch:
            from mmtrain.config import task_config

            base = task_config("predict", [], Path(scratch))
            _, datamodule, model = rebuild(ckpt, path, base, Path(scratch), inputs=scratch)
        return cls(model, datamodule, device)

    def _values(self, inputs: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """One raw item per sample from ``inputs`` (a value or a list per modality), and
        whether they came as lists.

        Raises:
            MMTrainError: for a modality the model does not take, none at all, or lists of
                different lengths.
        """
        unknown = sorted(set(inputs) - set(self.modalities))
        if unknown or not inputs:
            raise MMTrainError(
                f"this model takes {', '.join(self.modalities)}; got {', '.join(unknown) or 'none'}"
            )
        listed = {m: isinstance(v, (list, tuple)) and not _is_audio(v) for m, v in inputs.items()}
        batched = any(listed.values())
        columns = {m: list(v) if listed[m] else [v] for m, v in inputs.items()}
        sizes = {m: len(v) for m, v in columns.items()}
        if len(set(sizes.values())) > 1:
            raise MMTrainError(f"the inputs' lists differ in length: {sizes}")
        count = next(iter(sizes.values()))
        return [{m: _raw(m, v[i]) for m, v in columns.items()} for i in range(count)], batched

    @torch.no_grad()
    def __call__(
        self, batch_size: int = 32, prompt: str | None = None, **inputs: Any
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Predict for raw inputs, as ``mmtrain predict`` does.

        Args:
            batch_size: samples per forward pass.
            prompt: for causal-LM tasks, the prompt to answer (else the trained one).
            **inputs: a value, or a list of values, per modality: ``image`` (a PIL image, an
                array ``(H, W, 3)`` of uint8, or a file path), ``text`` (a string), ``audio``
                (``(samples, rate)`` or a file path), ``tabular`` (``{column: value}``).
                A modality left out is absent, as with ``robustness=missing``.

        Returns:
            ``{task: prediction}`` (class names, generated text, transcripts, masks as
            tensors), or a list of them when the inputs were lists.

        Raises:
            MMTrainError: for inputs the model does not take.
        """
        items, batched = self._values(inputs)
        heads = {
            t: h for t, h in self.model.heads.items() if "prompt" in getattr(h, "batch_keys", ())
        }
        saved = {t: h.prompt for t, h in heads.items()}
        try:
            if prompt is not None:
                for head in heads.values():
                    head.prompt = prompt
            rows = []
            for start in range(0, len(items), batch_size):
                rows += self._predict(items[start : start + batch_size], start)
        finally:
            for task, head in heads.items():
                head.prompt = saved[task]
        return rows if batched else rows[0]

    def _predict(self, items: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
        """The predictions of one batch of raw items."""
        encoded = []
        for i, item in enumerate(items):
            raw: dict[str, Any] = {"id": str(start + i)}
            for modality, value in item.items():  # tabular: {column: value}, else the value
                raw |= value if modality == "tabular" else {modality: value}
            encoded.append(self.datamodule.encode(raw, train=False))
        batch = collate(encoded, self.datamodule.parts)
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        rows = self.model.predict_step(batch, 0)
        return [{k: v for k, v in row.items() if k != "id"} for row in rows]


def _is_audio(value: Any) -> bool:
    """Whether ``value`` is one ``(samples, rate)`` pair rather than a list of inputs."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[1], int)
        and not isinstance(value[0], (str, Path))
    )


def _raw(modality: str, value: Any) -> Any:
    """``value`` as a data set gives it: a file read, an array made an image."""
    if isinstance(value, (str, Path)) and modality in FILES:
        if not Path(value).is_file():
            raise MMTrainError(f"{modality}: no such file: {value}")
        return FILES[modality](Path(value))
    if modality == "image" and not isinstance(value, Image.Image):
        array = value.numpy() if isinstance(value, torch.Tensor) else value
        return Image.fromarray(array).convert("RGB")
    return value


def rebuild(
    ckpt: dict[str, Any], path: str, cfg: Any, scratch: Path, inputs: str | None = None
) -> tuple[Any, Any, Any]:
    """Rebuild the model of a loaded checkpoint from what it stores (config, data state, model
    files), as ``mmtrain predict ckpt_path=...`` does: the predictor and ``mmtrain export``
    share this.

    Args:
        ckpt: what :func:`mmtrain.run.load_checkpoint` returns (or an export read back).
        path: the checkpoint, for messages.
        cfg: the composed config of this command (trainer, paths...); the model and data
            keys come from the checkpoint.
        scratch: a folder for the stored model files (pretrained parts are built from them);
            it must outlive the build only.
        inputs: read raw inputs from this folder instead of the data set (the predictor), or
            None to keep the checkpoint's data set (``mmtrain export``'s parity batch).

    Returns:
        ``(config, data module, model)``: the data module's fitted state restored (not set
        up), the model's weights loaded, in training mode as built.

    Raises:
        MMTrainError: when the checkpoint does not rebuild or its weights do not fit.
    """
    from mmtrain.build import build_datamodule, build_module, task_targets
    from mmtrain.run import (
        config_from_checkpoint,
        load_weights,
        predict_on_inputs,
        use_stored_models,
    )

    stored = ckpt[CHECKPOINT_KEY]
    cfg = task_targets(config_from_checkpoint(stored["config"], cfg))
    models = stored.get("models") or {}
    use_stored_models(cfg, models, scratch / "models", stored.get("base") or {})
    if inputs is not None:
        predict_on_inputs(cfg, inputs)
    datamodule = build_datamodule(cfg)
    datamodule.load_state_dict(stored.get("data") or {})
    model = build_module(cfg, datamodule.facts(), stored["config"])
    load_weights(model, ckpt, path)
    return cfg, datamodule, model


def load(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """A predictor of an mmtrain checkpoint (a file, or what
    :func:`mmtrain.run.load_checkpoint` reads) or of an ``mmtrain export`` folder
    (``format=safetensors`` or ``checkpoint``; ``hf`` in mmtrain's layout), or of the export's
    weights file (``out/model.safetensors``).

    Raises:
        MMTrainError: for a path that is neither (one line naming it); for an export in
            another format, how to load that one instead.
    """
    from mmtrain.export.weights import CHECKPOINT, export_format, load_hint

    path = Path(path)
    if path.is_file() and path.suffix in EXPORT_FILES and export_format(path.parent) is not None:
        path = path.parent  # out/model.safetensors: the export folder it belongs to
    kind = export_format(path)
    if kind == "safetensors":
        return Predictor.from_export(path, device)
    if kind == "checkpoint":  # format=checkpoint: one consolidated file
        return Predictor.from_checkpoint(path / CHECKPOINT, device)
    if kind == "hf" and (path / "mmtrain_hf.json").is_file():  # hf's mmtrain layout
        return Predictor.from_hf_export(path, device)
    if kind is not None:
        raise MMTrainError(load_hint(path, kind))
    if not path.exists():
        raise MMTrainError(f"mmtrain.load: no such file or folder: {path}")
    from mmtrain.run import load_checkpoint

    try:
        ckpt = load_checkpoint(path, key="mmtrain.load")
    except MMTrainError as err:
        if not path.is_dir():
            raise
        reason = str(err).removeprefix("mmtrain.load: ")
        raise MMTrainError(
            f"mmtrain.load: {path} is not an mmtrain checkpoint or export (a folder without "
            f"export.json, and not a checkpoint: {reason})"
        ) from None
    return Predictor._rebuilt(ckpt, str(path), device)


__all__: Sequence[str] = ("Predictor", "load", "rebuild")
