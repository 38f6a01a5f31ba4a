"""MultimodalModule: encoders -> fusion -> heads -> loss weighting, as one LightningModule."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from mmtrain.contracts import (
    CHECKPOINT_KEY,
    FEATURES,
    REFERENCES,
    Batch,
    Features,
    SharedParameters,
)
from mmtrain.errors import MMTrainError
from mmtrain.loss_weighting.base import GradientWeighting
from mmtrain.optim import (
    check_layer_decay,
    check_lr_mult,
    clean_name,
    describe_groups,
    param_groups,
    scale_groups,
)
from mmtrain.utils.base_weights import describe_base
from mmtrain.utils.nonfinite import NonFiniteGuard, describe_parameters

log = logging.getLogger(__name__)

TOTAL = "_total"  # the key of the total loss among the per-task evaluation losses


def is_joint(batch: Any) -> bool:
    """Whether ``batch`` is ``{data set: batch}`` (data.sampling=joint) rather than a batch."""
    return (
        isinstance(batch, dict) and bool(batch) and all(isinstance(v, dict) for v in batch.values())
    )


def _rows(batch: Batch) -> list[dict[str, Any]]:
    """A prediction row per sample: its ``id`` and, with data=multi, its data set (``source``)."""
    rows = [{"id": sample_id} for sample_id in batch["id"]]
    for row, source in zip(rows, batch.get("source", ())):
        row["source"] = source
    return rows


def _extras(head: nn.Module, task: str, batch: Batch) -> dict[str, Tensor]:
    """The batch keys ``<task>_<key>`` a head reads besides its target (its ``batch_keys``: a
    causal-LM head's ``labels``, ``prompt`` and ``prompt_mask``), those the batch has."""
    keys = getattr(head, "batch_keys", ())
    return {k: batch[f"{task}_{k}"] for k in keys if f"{task}_{k}" in batch}


def _prompts(extras: dict[str, Tensor]) -> dict[str, Tensor]:
    """What ``predict`` reads of the extras: the generation prompts, not the labels."""
    return {k: v for k, v in extras.items() if k != "labels"}


class MultimodalModule(pl.LightningModule):
    """Trains every head whose target is in the batch on the fused features of all encoders.

    Args:
        encoders: ``{modality: encoder}``.
        fusion: maps ``{modality: Features}`` to fused Features.
        heads: ``{task: head}``; the batch carries a task's target under the task's name.
        loss_weighting: combines ``{task: loss}`` into the total.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (a Hydra partial).
        scheduler: ``scheduler(optimizer) -> LRScheduler`` or None; stepped every step. A
            ``T_max`` or ``total_steps`` argument it leaves open is set to the run's steps.
        config_yaml: the composed config, saved in every checkpoint.
        modality_dropout: in training, the probability that a sample loses a modality (its
            features are fully masked, which every fusion accepts); a sample always keeps at
            least one modality.
        nonfinite: a training step with a NaN or infinite loss or gradient: ``raise`` (stop,
            naming the step, tasks and sample ids) or ``skip`` (leave the weights as they
            were, count it); see :mod:`mmtrain.utils.nonfinite`.
        nonfinite_budget: with ``skip``, the most steps skipped in a run.
        compile: compile the encoders, the fusion and the heads with ``torch.compile`` (in
            place: checkpoints keep their keys); the first steps are slower.
        channels_last: keep convolutional image encoders and the images in channels-last
            memory format (faster convolutions on GPUs with tensor cores and on recent CPUs).
        lr_mult: ``{part path: multiplier}`` of the optimizer's learning rate, e.g.
            ``{"encoders.image": 0.1}`` for a pretrained tower (nested mappings, as the command
            line ``model.lr_mult.encoders.image=0.1`` makes, are read as dotted paths). A path
            is a module or parameter inside this module (``encoders``, ``encoders.image``,
            ``fusion``, ``heads.caption``, ``loss_weighting``...); a parameter takes the
            multiplier of the longest path above it, 1 without one.
        layer_decay: None (off) or a number in (0, 1]: layer-wise learning-rate decay in every
            part with a ``blocks()`` method (pretrained towers). With ``n`` blocks, block ``i``
            (0-based) is layer ``i + 1``, what comes before the first block (embeddings) layer
            0, after the last (final norm, projection) layer ``n + 1``; a layer's learning rate
            is multiplied by ``layer_decay ** (n + 1 - layer)``, and by ``lr_mult``.
        no_decay: no weight decay for biases and other vectors, normalisation layers and
            embeddings (``nn.Embedding``, ``pos_embed``, ``cls_token``, ``logit_scale``...);
            False: the optimizer's weight decay for every parameter.
        save_frozen: False: checkpoints leave out the frozen weights of pretrained bases
            (towers and LMs loaded with their weights) and record each base's model and
            fingerprint instead (:mod:`mmtrain.utils.base_weights`); None: the phase's
            choice (false for ``phase=align`` and ``lora``), True without a phase.

    Attributes:
        without: modalities left out of evaluation (robustness tests set it), as if absent.

    Raises:
        ValueError: for a bad option; for ``lr_mult``, naming an unknown path and the parts.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: nn.Module,
        heads: dict[str, nn.Module],
        loss_weighting: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        config_yaml: str | None = None,
        modality_dropout: float = 0.0,
        nonfinite: str = "raise",
        nonfinite_budget: int = 10,
        compile: bool = False,
        channels_last: bool = False,
        lr_mult: dict[str, Any] | None = None,
        layer_decay: float | None = None,
        no_decay: bool = True,
        save_frozen: bool | None = None,
    ) -> None:
        super().__init__()
        self.compile_parts, self.channels_last = compile, channels_last
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.nonfinite = NonFiniteGuard(nonfinite, nonfinite_budget)
        self._skip_step = False  # this optimizer step's gradients are dropped (nonfinite=skip)
        self._batch_ids: tuple[int, list[Any]] = (0, [])  # the step's batch, for messages
        self._buffers_before: list[Tensor] = []  # nonfinite=skip: buffers before the step
        self.modality_dropout = modality_dropout
        self.without: frozenset[str] = frozenset()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.heads = nn.ModuleDict(heads)
        self.loss_weighting = loss_weighting
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.config_yaml = config_yaml
        # One metric object per (split, task); "/" is not allowed in module names. They are
        # computed and logged at the end of each evaluation epoch (see _log_metrics).
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{task}": head.make_metrics()
                for split in ("val", "test")
                for task, head in heads.items()
            }
        )
        # Evaluation losses too, as sample-weighted epoch means (any number of data loaders).
        self.eval_losses = nn.ModuleDict(
            {f"{split}_{key}": MeanMetric() for split in ("val", "test") for key in (*heads, TOTAL)}
        )
        self.predictions: list[dict[str, Any]] = []
        self._train_losses: dict[str, Tensor] = {}  # the step's task losses, for backward()
        # data.cache_features: {modality: whether its cached features carry a mask}, set by the
        # FeatureCache callback (mmtrain.callbacks.feature_cache)
        self.cache_masked: dict[str, bool] = {}
        # Checked now that the parts exist: a wrong path fails before training starts.
        self.lr_mult = check_lr_mult(self, lr_mult)
        self.layer_decay = check_layer_decay(layer_decay)
        self.no_decay = bool(no_decay)
        self.save_frozen = save_frozen
        # {config path: {"model", "revision", "module"}} of the pretrained bases loaded with
        # their weights (build.py sets it): what save_frozen=false leaves out
        self.bases: dict[str, dict[str, Any]] = {}
        self._base_records: dict[str, dict[str, Any]] = {}  # their fingerprints, computed once
        self._param_ndims: dict[str, int] = {}  # as built, see configure_model

    def configure_model(self) -> None:
        """``model.compile`` and ``model.channels_last`` (Lightning calls this before fitting)."""
        # The parameters' shapes before a strategy shards them (FSDP and ZeRO-3 flatten them
        # into 1-D views), so that configure_optimizers tells vectors from matrices as built.
        self._param_ndims = {clean_name(n): p.ndim for n, p in self.named_parameters()}
        if self.channels_last and "image" in self.encoders:
            self.encoders["image"].to(memory_format=torch.channels_last)
        if self.compile_parts and not getattr(self, "_compiled", False):
            for part in [*self.encoders.values(), self.fusion, *self.heads.values()]:
                part.compile()
            self._compiled = True

    def encode(self, batch: Batch) -> dict[str, Features]:
        """``{modality: Features}`` of the modalities present in ``batch`` (less ``without``)."""
        features = {}
        for m, encoder in self.encoders.items():
            if m in self.without:
                continue
            if m + FEATURES in batch:  # data.cache_features: the frozen encoder's output
                features[m] = self._cached_features(m, batch)
            elif m in batch:
                features[m] = encoder(self._input(m, batch[m]), batch.get(f"{m}_mask"))
        if self.training and self.modality_dropout > 0 and len(features) > 1:
            features = self._drop_modalities(features)
        return features

    def _cached_features(self, modality: str, batch: Batch) -> Features:
        """The cached features of ``modality`` as its encoder gives them (see
        :mod:`mmtrain.data.feature_cache`): ``(B, D, T)`` -> ``(B, T, D)``, float32, and a
        mask only if the encoder gives one."""
        tokens = batch[modality + FEATURES].transpose(1, 2)
        if tokens.dtype == torch.float16:  # data.cache_dtype=float16
            tokens = tokens.float()
        masked = self.cache_masked.get(modality, True)
        mask = batch.get(f"{modality}{FEATURES}_mask") if masked else None
        return Features(tokens, mask)

    def _input(self, modality: str, x: Tensor) -> Tensor:
        """An encoder's input; images in channels-last memory format with ``channels_last``."""
        if self.channels_last and modality == "image" and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, batch: Batch) -> Features:
        """Encode the modalities present in ``batch`` (less ``without``) and fuse them."""
        return self.fusion(self.encode(batch))

    def _head_inputs(
        self, batch: Batch, features: dict[str, Features]
    ) -> dict[str, Features | dict[str, Features] | None]:
        """What each head reads: the fused features, or for an ``unfused`` head (two-tower
        retrieval) the encoders' own; None when the batch lacks a modality the head declares
        it cannot do without (its ``modalities``: segmentation needs the image)."""
        fused = self.fusion(features) if any(not h.unfused for h in self.heads.values()) else None
        inputs: dict[str, Features | dict[str, Features] | None] = {}
        for task, head in self.heads.items():
            if not all(m in features for m in head.modalities):
                inputs[task] = None
            else:
                inputs[task] = features if head.unfused else fused
        return inputs

    def _drop_modalities(self, features: dict[str, Features]) -> dict[str, Features]:
        """Mask out whole modalities of random samples, keeping one per sample at least."""
        first = next(iter(features.values())).tokens
        batch_size, count = first.shape[0], len(features)
        keep = torch.rand(batch_size, count, device=first.device) >= self.modality_dropout
        # A sample that lost everything gets one random modality back.
        lost = ~keep.any(dim=1)  # (B,)
        keep[lost, torch.randint(count, (int(lost.sum()),), device=first.device)] = True
        out = {}
        for i, (m, f) in enumerate(features.items()):
            mask = (
                f.mask
                if f.mask is not None
                else torch.ones(f.tokens.shape[:2], dtype=torch.bool, device=f.tokens.device)
            )
            kept = keep[:, i]  # (B,)
            out[m] = Features(
                f.tokens * kept[:, None, None].to(f.tokens.dtype), mask & kept[:, None]
            )
        return out

    def _task_losses(self, batch: Batch, split: str) -> dict[str, Tensor]:
        """``{task: loss}`` of the tasks whose target is in ``batch``; in evaluation, also
        updates the metrics (and, in test, collects the predictions)."""
        inputs = self._head_inputs(batch, self.encode(batch))
        losses: dict[str, Tensor] = {}
        rows = _rows(batch)
        for task, head in self.heads.items():
            if inputs[task] is None:  # the batch lacks a modality the head needs
                continue
            if head.unfused:  # its target: which pairs show the same image
                target, target_mask = head.target_from_ids(batch["id"], self.device), None
            elif task in batch:
                target, target_mask = batch[task], batch.get(f"{task}_mask")
            else:  # this batch carries no target for the task
                continue
            fused = inputs[task]
            extras = _extras(head, task, batch)
            outputs = head(fused, target, target_mask, **extras)
            losses[task] = head.loss(outputs, target, target_mask)
            if split != "train":
                # retrieval's per-sample "predictions" are embeddings: `mmtrain predict` writes
                # them; its evaluation is recall over the split's embeddings, not rows
                predictions = (
                    [] if head.unfused else head.predict(fused, outputs, **_prompts(extras))
                )
                references = batch.get(f"{task}{REFERENCES}")
                head.update_metrics(
                    self.metrics[f"{split}_{task}"],
                    outputs,
                    target,
                    target_mask,
                    predictions=predictions,
                    references=references,
                )
                for i, (row, pred) in enumerate(zip(rows, predictions)):
                    row[task] = pred
                    if references is not None:  # text targets: written next to predictions
                        row[f"{task}{REFERENCES}"] = references[i]
        if split == "test":
            self.predictions.extend(rows)
        return losses

    def _step(self, batch: Batch, split: str) -> Tensor:
        if is_joint(batch):  # data.sampling=joint: {data set: batch}, every task in the step
            parts = list(batch.values())
            batch_size = sum(len(part["id"]) for part in parts)
            per_part = [(len(part["id"]), self._task_losses(part, split)) for part in parts]
            # A task in several data sets: the mean over their samples.
            losses = {}
            for task in self.heads:
                sized = [(n, part[task]) for n, part in per_part if task in part]
                if sized:
                    losses[task] = sum(n * loss for n, loss in sized) / sum(n for n, _ in sized)
        else:
            batch_size = len(batch["id"])
            losses = self._task_losses(batch, split)
        if not losses and split != "train":  # e.g. robustness=missing took the image away
            return torch.zeros((), device=self.device)
        total, weights = self.loss_weighting(losses)
        if split != "train":  # logged as epoch means by _log_metrics
            for task, loss in losses.items():
                self.eval_losses[f"{split}_{task}"].update(loss.detach(), batch_size)
            self.eval_losses[f"{split}_{TOTAL}"].update(total.detach(), batch_size)
            return total
        self._check_losses(losses)
        self._train_losses = losses  # for a gradient-based weighting's backward
        for task, loss in losses.items():
            self.log(f"train/loss/{task}", loss, on_step=True, batch_size=batch_size)
            self.log(f"train/weight/{task}", weights[task], on_step=True, batch_size=batch_size)
        self.log("train/loss", total, on_step=True, prog_bar=True, batch_size=batch_size)
        return total

    def _log_metrics(self, split: str) -> None:
        """Compute, log as ``<split>/<task>/<metric>`` and reset every metric of ``split``;
        the same for the losses (``<split>/loss/<task>``, ``<split>/loss``)."""
        for key in (*self.heads, TOTAL):
            mean = self.eval_losses[f"{split}_{key}"]
            if mean.update_called:
                name = f"{split}/loss" if key == TOTAL else f"{split}/loss/{key}"
                self.log(name, mean.compute(), prog_bar=key == TOTAL)
                mean.reset()
        for task in self.heads:
            metric = self.metrics[f"{split}_{task}"]
            parts = metric.values() if isinstance(metric, MetricCollection) else [metric]
            if not any(m.update_called for m in parts):  # no batch of the split had the task
                continue
            values = metric.compute()
            self.log_dict({f"{split}/{task}/{k}": v for k, v in values.items()})
            metric.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        parts = list(batch.values()) if is_joint(batch) else [batch]
        self._batch_ids = (batch_idx, [i for part in parts for i in part.get("id", ())])
        if self.nonfinite.policy == "skip" and not self._buffers_before:
            # as at the start of the optimizer step (its first accumulated batch): the forward
            # updates buffers (batch norm statistics)
            self._buffers_before = [b.clone() for b in self.buffers()]
        return self._step(batch, "train")

    def _where(self) -> str:
        """The step, epoch, batch and its first sample ids, for messages."""
        batch_idx, ids = self._batch_ids
        shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
        return (
            f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx}; "
            f"samples {shown})"
        )

    def _check_losses(self, losses: dict[str, Tensor]) -> None:
        """``model.nonfinite`` for the step's task losses (every process decides the same)."""
        bad = self.nonfinite.bad_losses(losses)
        anywhere = bool(bad)
        if self._trainer is not None and self.trainer.world_size > 1:
            anywhere = self.trainer.strategy.reduce_boolean_decision(anywhere, all=False)
        if anywhere:
            values = ", ".join(f"task {t!r} loss={v}" for t, v in bad.items())
            self.nonfinite.handle(
                f"non-finite loss ({values or 'on another process'})", self._where()
            )
            self._skip_step = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``model.nonfinite`` for the gradients (unless fp16's loss scaler handles them);
        a skipped step reaches the optimizer without gradients, so nothing changes."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if not self._skip_step and scaler is None:
            bad = self.nonfinite.bad_gradients(self.named_parameters())
            if bad:
                self.nonfinite.handle(
                    f"non-finite gradients in {describe_parameters(bad)}", self._where()
                )
                self._skip_step = True
        if self._skip_step:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            with torch.no_grad():  # running statistics as before the bad batch
                for buffer, before in zip(self.buffers(), self._buffers_before):
                    buffer.copy_(before)
            self._skip_step = False
            self.log("train/nonfinite_steps", float(self.nonfinite.skipped), on_step=True)
        self._buffers_before = []

    # dataloader_idx: data=multi evaluates one data loader per data set.
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "test")

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Backpropagate the step's loss; a gradient-based loss weighting does it its way.

        ``loss`` is what the trainer hands over: the total, divided by the gradient
        accumulation count and multiplied by the fp16 loss scale when there is one. A
        :class:`GradientWeighting` gets the unweighted task losses, that factor, the shared
        parameters and this same backward (precision plugin, strategy) to finish with.
        """
        losses, self._train_losses = self._train_losses, {}
        if not isinstance(self.loss_weighting, GradientWeighting) or not losses:
            super().backward(loss, *args, **kwargs)
            return
        scale = 1.0
        if self._trainer is not None:
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            scale = float(scaler.get_scale()) if scaler is not None else 1.0
            scale /= self.trainer.accumulate_grad_batches
        self.loss_weighting.backward(
            losses,
            loss,
            self.shared_parameters(),
            lambda t: super(MultimodalModule, self).backward(t, *args, **kwargs),
            scale=scale,
        )

    def shared_parameters(self) -> SharedParameters:
        """The trainable parameters every task shares: encoders and fusion."""
        encoders = [p for p in self.encoders.parameters() if p.requires_grad]
        fusion = [p for p in self.fusion.parameters() if p.requires_grad]
        return SharedParameters(all=encoders + fusion, last=fusion or encoders)

    def setup(self, stage: str) -> None:
        # DeepSpeed backpropagates through its engine, never through self.backward(): a
        # gradient-based weighting would silently become a plain weighted sum. (Checked here,
        # before the feature cache is built at on_fit_start.)
        strategy = type(self.trainer.strategy).__name__
        if isinstance(self.loss_weighting, GradientWeighting) and "DeepSpeed" in strategy:
            raise MMTrainError(
                f"loss_weighting={type(self.loss_weighting).__name__} needs per-task gradients, "
                f"which trainer.strategy={strategy} does not let it compute; use ddp instead"
            )

    def on_train_epoch_end(self) -> None:
        self.loss_weighting.epoch_end()  # DWA's epoch history

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(
        self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        inputs = self._head_inputs(batch, self.encode(batch))
        rows = _rows(batch)
        for task, head in self.heads.items():
            if inputs[task] is None:
                continue
            extras = _prompts(_extras(head, task, batch))
            for row, pred in zip(rows, head.predict(inputs[task], **extras)):
                row[task] = pred
        return rows

    def configure_optimizers(self) -> Any:
        """The optimizer over the trainable parameters in groups (``lr_mult``, ``layer_decay``,
        ``no_decay``: see :mod:`mmtrain.optim`), and the scheduler stepped every step.

        Raises:
            MMTrainError: when nothing is trainable, or the optimizer or the scheduler rejects
                its arguments.
        """
        groups = param_groups(
            self, self.lr_mult, self.layer_decay, self.no_decay, self._param_ndims or None
        )
        if not groups:
            raise MMTrainError("no trainable parameters: every part of the model is frozen")
        try:
            optimizer = self.optimizer_factory(groups)
        except ValueError as err:  # e.g. optimizer.lr=-1
            raise MMTrainError(f"optimizer: {err}") from None
        # Before the scheduler: it takes each group's lr as its initial_lr.
        scale_groups(optimizer)
        if self._trainer is None or self.trainer.is_global_zero:
            log.info("parameter groups:\n%s", describe_groups(optimizer))
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        bound = getattr(self.scheduler_factory, "keywords", {})
        params = inspect.signature(getattr(self.scheduler_factory, "func", self.scheduler_factory))
        for name in ("T_max", "total_steps"):
            if name in params.parameters and name not in bound:
                steps = self.trainer.estimated_stepping_batches
                if steps == float("inf"):
                    raise MMTrainError(
                        f"scheduler: {name} is the run's length, and this run has none: set "
                        "trainer.max_steps or trainer.max_epochs"
                    )
                kwargs[name] = int(steps)
        try:
            scheduler = self.scheduler_factory(optimizer, **kwargs)
        except ValueError as err:  # e.g. scheduler.warmup_steps and warmup_ratio both set
            raise MMTrainError(f"scheduler: {err}") from None
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the config, the data state and the pretrained parts' model files as plain
        types (loadable with weights_only)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config_yaml,
            "data": datamodule.state_dict() if datamodule is not None else {},
            "nonfinite_steps": self.nonfinite.skipped,
            "models": self.model_files(),
        }
        if self.save_frozen is False and self.bases:
            records = self.base_records()
            for record in records.values():
                for key in record["keys"]:
                    checkpoint["state_dict"].pop(key, None)
            checkpoint[CHECKPOINT_KEY]["base"] = records

    def base_records(self) -> dict[str, dict[str, Any]]:
        """What a trimmed checkpoint records of each base (its frozen keys and fingerprint;
        see :mod:`mmtrain.utils.base_weights`), computed once: frozen weights do not change."""
        if set(self._base_records) != set(self.bases):
            self._base_records = {
                path: describe_base(
                    self, source["module"], {k: source[k] for k in ("model", "revision")}
                )
                for path, source in self.bases.items()
            }
        return self._base_records

    def model_files(self) -> dict[str, dict[str, bytes]]:
        """``{"encoder.image": {file name: content}}``: the files that rebuild each part that
        came from a pretrained model without its weights (its config, tokenizer, processor; see
        :class:`mmtrain.encoders.pretrained.PretrainedEncoder`), so that a checkpoint is
        self-contained: ``mmtrain test|predict`` rebuild from them."""
        parts = {f"encoder.{m}": e for m, e in self.encoders.items()}
        parts |= {"fusion": self.fusion}  # a Q-Former started from BERT
        parts |= {f"head.{task}": head for task, head in self.heads.items()}
        return {
            path: dict(part.model_files)
            for path, part in parts.items()
            if getattr(part, "model_files", None) is not None
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume the count of skipped steps (``model.nonfinite=skip``)."""
        self.nonfinite.skipped = int(checkpoint.get(CHECKPOINT_KEY, {}).get("nonfinite_steps", 0))
