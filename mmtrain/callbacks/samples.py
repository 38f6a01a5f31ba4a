"""SamplePredictions: the model's predictions on a few validation samples, in the loggers.

Where each logger shows them: wandb, a table (id, image, one column per task); TensorBoard, a
markdown table (text) and the images; CSV and MLflow, ``<run dir>/samples/epoch_<n>.json``
(MLflow also keeps it as an artifact). Predicted masks appear by their shape (``array[H, W]``);
``mmtrain test`` writes them as PNGs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import move_data_to_device

from mmtrain.contracts import REFERENCES
from mmtrain.data.transforms.image import IMAGENET_MEAN, IMAGENET_STD
from mmtrain.strategies import gathers_in_calls, through_call

KEY = "val/samples"
_MAX_CELL = 200  # characters of a table cell (long captions, embeddings)


def _head(value: Any, n: int) -> Any:
    """The first ``n`` samples of a batch entry (tensors and lists; anything else as is)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value[:n]
    if isinstance(value, (list, tuple)):
        return value[:n]
    return value


def _jsonable(value: Any) -> Any:
    """Plain JSON values; arrays (segmentation masks) by their shape, as in the tables."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"array{list(value.shape)}"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _cell(value: Any) -> Any:
    """A table cell: primitives as they are, arrays by their shape, the rest as short text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"array{list(value.shape)}"
    text = json.dumps(_jsonable(value), default=str)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``(N, 3, H, W)`` images back to ``[0, 1]`` (float, on the CPU)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.detach().float().cpu() * std + mean).clamp(0.0, 1.0)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (TensorBoard renders text as markdown)."""

    def text(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class SamplePredictions(pl.Callback):
    """Log predictions on the first validation samples at the end of validation.

    The samples are the first ``num_samples`` of the first batch of the (first) validation
    loader, fetched once and kept; each time, the module predicts them (``predict_step``, in
    eval mode, without gradients). Only while fitting, on the global-zero process, and never
    in fast_dev_run (Lightning replaces the loggers there) or the sanity check.

    Args:
        num_samples: samples shown each time.
        every_n_epochs: log after every n-th epoch's validation.

    Raises:
        ValueError: if ``num_samples`` or ``every_n_epochs`` is below 1.
    """

    def __init__(self, num_samples: int = 4, every_n_epochs: int = 1) -> None:
        if num_samples < 1 or every_n_epochs < 1:
            raise ValueError(
                f"num_samples={num_samples} and every_n_epochs={every_n_epochs} must be >= 1"
            )
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self._batch: dict[str, Any] | None = None

    def _sample_batch(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """The first ``num_samples`` of the first validation batch (cached, on the CPU)."""
        if self._batch is None:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None:
                return None
            loaders = datamodule.val_dataloader()
            if isinstance(loaders, Mapping):  # several loaders by name
                loaders = next(iter(loaders.values()), None)
            elif isinstance(loaders, (list, tuple)):  # data=multi: a loader per data set
                loaders = loaders[0] if loaders else None
            batch = next(iter(loaders), None) if loaders is not None else None
            if not isinstance(batch, Mapping) or "id" not in batch:
                return None
            self._batch = {k: _head(v, self.num_samples) for k, v in batch.items()}
        return self._batch

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Predict the samples and log them to each logger that can show them."""
        if (
            trainer.sanity_checking
            or trainer.fast_dev_run
            or not (trainer.is_global_zero or gathers_in_calls(trainer.strategy))
            or trainer.state.fn != TrainerFn.FITTING
            or (trainer.current_epoch + 1) % self.every_n_epochs
        ):
            return
        kinds = (WandbLogger, TensorBoardLogger, CSVLogger, MLFlowLogger)
        loggers = [logger for logger in trainer.loggers if isinstance(logger, kinds)]
        if not loggers:
            return
        # Logging must not change training: a new data-loader iterator draws a seed from the
        # global generator, so the random state is put back afterwards (fork_rng).
        cuda = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            batch = self._sample_batch(trainer)
            if batch is None:
                return
            was_training = pl_module.training
            pl_module.eval()
            precision = trainer.precision_plugin  # bf16-true: the inputs in bf16 too
            with torch.no_grad(), precision.forward_context():
                inputs = precision.convert_input(move_data_to_device(batch, pl_module.device))
                rows = through_call(pl_module, pl_module.predict_step, inputs, 0)
            pl_module.train(was_training)
        if not trainer.is_global_zero:  # fsdp2: every rank took part in the predictions
            return
        images = batch.get("image")
        if not (isinstance(images, torch.Tensor) and images.dim() == 4 and images.size(1) == 3):
            images = None
        self.log_samples(trainer, loggers, rows, None if images is None else denormalize(images))

    def log_samples(
        self,
        trainer: pl.Trainer,
        loggers: Sequence[Any],
        rows: list[dict[str, Any]],
        images: torch.Tensor | None,
    ) -> None:
        """Hand the predicted ``rows`` (and ``[0, 1]`` images, if any) to each logger."""
        epoch, step = trainer.current_epoch, trainer.global_step
        skip = ("id", "source")
        tasks = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in skip]
        tasks = [k for k in tasks if not k.endswith(REFERENCES)]
        extra = ["source"] if any("source" in r for r in rows) else []
        columns = ["id", *extra, *tasks]
        table = [[_cell(r.get(c)) for c in columns] for r in rows]
        record = {"epoch": epoch, "step": step, "samples": _jsonable(rows)}
        text = json.dumps(record, indent=2, default=str)
        wrote_json = False
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                names, data = columns, table
                if images is not None:  # id, image, the rest
                    pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
                    names = [columns[0], "image", *columns[1:]]
                    data = [[row[0], wandb.Image(p), *row[1:]] for row, p in zip(table, pixels)]
                logger.log_table(key=KEY, columns=names, data=data, step=step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(KEY, markdown_table(columns, table), step)
                if images is not None:
                    logger.experiment.add_images(f"{KEY}/image", images, step)
            else:  # CSV, MLflow: a JSON file in the run directory (once for both)
                if not wrote_json:
                    path = Path(trainer.default_root_dir) / "samples" / f"epoch_{epoch}.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text + "\n")
                    wrote_json = True
                if isinstance(logger, MLFlowLogger):
                    logger.experiment.log_text(logger.run_id, text, f"samples/epoch_{epoch}.json")
