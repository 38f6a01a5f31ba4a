"""``format=onnx`` and ``format=torch_export``: the model's forward as a graph, checked against
eager on a real batch.

What is exported (``export.part``):

- ``model``: preprocessed input tensors -> logits per task, for models whose heads (or the
  heads listed in ``export.tasks``) map fused features to logits in one pass
  (classification, VQA answer classification);
- ``encoders``: the encoder side, input tensors -> fused features ``(B, N, D)`` (and their mask
  ``(B, N)`` when the fusion gives one), for any model (a captioning model's decoder and
  search stay in Python).

Inputs are the batch's tensors of each modality, named as in a batch (``image``, ``text``,
``text_mask``, ``audio``, ``audio_mask``...). The parity check runs
eager PyTorch and the exported graph on a batch of the model's own data (the split
``mmtrain predict`` reads) and on a smaller one (fewer samples, shorter texts: the batch axis
and the lengths of masked modalities are dynamic), and fails above ``export.parity_atol``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmtrain.errors import MMTrainError

PARTS = ("model", "encoders")
# Heads whose forward maps fused features to logits without a target: exported as they are.
LOGIT_HEADS = ("ClassificationHead", "VQAHead")
# Why the others are not, by class name (a class not listed: its own generic line).
NOT_EXPORTED = {
    "TransformerCaptionHead": "autoregressive generation is not exported",
    "LSTMCaptionHead": "autoregressive generation is not exported",
    "CausalLMHead": "an LLM generates autoregressively (format=hf exports the language model)",
    "ContrastiveHead": "a two-tower retrieval head reads the encoders' features, not the fusion's",
    "CTCHead": "CTC decoding (beam search, language model) is not exported",
    "SegmentationHead": "its output size follows the target's; per-pixel logits are not exported",
}
FEATURES_OUT = ("features", "features_mask")  # part=encoders: the fused Features
# The exporters' INFO logs (each pass, each folded constant): not for a user.
NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export")


@contextmanager
def quiet() -> Iterator[None]:
    """The exporters' step-by-step logs and tracing notices off, for the ``with`` block."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # nn.RNN keeps its weights in a list too (_flat_weights): torch.export notices it
            warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _unsupported(task: str, head: Any, fmt: str) -> MMTrainError:
    reason = NOT_EXPORTED.get(type(head).__name__, f"{type(head).__name__} is not exportable")
    return MMTrainError(
        f"head.{task}: {reason}; format={fmt} exports the encoder side only with "
        "export.part=encoders, or only the classification heads with export.tasks=[...]"
    )


def choose_tasks(model: Any, options: Any, fmt: str) -> list[str] | None:
    """The tasks whose logits are exported, or None for the encoder side (``part=encoders``).

    Raises:
        MMTrainError: one line, for an unknown part or task, or a head that cannot be exported.
    """
    part = options.get("part", "model")
    if part not in PARTS:
        raise MMTrainError(f"export.part={part!r}: choose {' or '.join(PARTS)}")
    if part == "encoders":
        return None
    wanted = options.get("tasks")
    tasks = list(model.heads) if wanted is None else [str(t) for t in wanted]
    unknown = [t for t in tasks if t not in model.heads]
    if unknown or not tasks:
        raise MMTrainError(
            f"export.tasks={tasks}: the model's tasks are {', '.join(model.heads)}"
            if unknown
            else "export.tasks=[]: name at least one task, or export.part=encoders"
        )
    for task in tasks:
        head = model.heads[task]
        if type(head).__name__ not in LOGIT_HEADS or getattr(head, "unfused", False):
            raise _unsupported(task, head, fmt)
    return tasks


def sample_batch(model: Any, datamodule: Any) -> tuple[list[str], list[Any]]:
    """The first batch of the data ``mmtrain predict`` reads: the names and tensors of the
    model's inputs in it.

    Raises:
        MMTrainError: when the data set does not open (naming ``data.root``) or the batch holds
            none of the model's modalities.
    """
    import torch

    try:
        datamodule.prepare_data()
        datamodule.setup("predict")
        batch = next(iter(datamodule.predict_dataloader()))
    except (OSError, StopIteration, MMTrainError) as err:
        root = getattr(datamodule, "dataset_kwargs", {}).get("root")
        where = f" (data.root={root})" if root is not None else ""
        raise MMTrainError(
            f"the parity check reads a batch of the model's data{where}, which does not open: "
            f"{err or type(err).__name__}; point data.root=... at it"
        ) from None
    names = [
        key
        for m in model.encoders
        for key in (m, f"{m}_mask")
        if key in batch and torch.is_tensor(batch[key])
    ]
    if not any(n in model.encoders for n in names):
        raise MMTrainError(
            f"the data's batches hold none of the model's inputs ({', '.join(model.encoders)})"
        )
    for modality, part in getattr(datamodule, "inputs", {}).items():
        if modality in batch and f"{modality}_mask" in batch:
            batch |= padded(batch, modality, part)
    return names, [batch[n] for n in names]


def padded(batch: dict[str, Any], modality: str, part: Any) -> dict[str, Any]:
    """A text modality padded to its tokenizer's ``max_length``: a length the exported graph
    fixes (a recurrent encoder is unrolled over it) then takes every text, padded."""
    import torch.nn.functional as F

    x, mask = batch[modality], batch[f"{modality}_mask"]
    cap = getattr(getattr(part, "tokenizer", None), "max_length", None)
    if x.dim() != 2 or not isinstance(cap, int) or cap <= x.shape[1]:
        return {}
    extra = cap - x.shape[1]
    pad_id = int(part.facts().get("pad_id", 0) or 0)
    return {
        modality: F.pad(x, (0, extra), value=pad_id),
        f"{modality}_mask": F.pad(mask, (0, extra), value=False),
    }


def graph_module(model: Any, inputs: list[str], tasks: list[str] | None) -> Any:
    """A module with positional tensor inputs and a tuple of outputs: the model's encoders of
    the given inputs, its fusion and the heads of ``tasks`` (only those: nothing else of the
    model is in the graph), as :meth:`MultimodalModule.encode` and ``forward`` run them."""
    from torch import nn

    class Graph(nn.Module):
        """Inputs by position -> logits per task, or the fused features and mask."""

        def __init__(self) -> None:
            super().__init__()
            self.encoders = nn.ModuleDict({m: e for m, e in model.encoders.items() if m in inputs})
            self.fusion = model.fusion
            self.heads = nn.ModuleDict({t: model.heads[t] for t in tasks or []})

        def forward(self, *tensors: Any) -> tuple[Any, ...]:
            batch = dict(zip(inputs, tensors))
            fused = self.fusion(
                {m: e(batch[m], batch.get(f"{m}_mask")) for m, e in self.encoders.items()}
            )
            if tasks is None:
                return (fused.tokens,) if fused.mask is None else (fused.tokens, fused.mask)
            return tuple(self.heads[t](fused) for t in tasks)

    return Graph().eval()


def output_names(graph: Any, args: list[Any], tasks: list[str] | None) -> list[str]:
    """The names of the graph's outputs: the tasks, or ``features`` (and ``features_mask``)."""
    import torch

    if tasks is not None:
        return list(tasks)
    with torch.no_grad():
        count = len(graph(*args))
    return list(FEATURES_OUT[:count])


def dynamic_shapes(inputs: list[str], args: list[Any]) -> tuple[dict[int, Any], ...]:
    """Per input, its dynamic axes: the batch axis, and the length of a masked modality (its
    last axis, its mask's second), so that texts and audio of any length go in."""
    from torch.export import Dim

    batch = Dim("batch")
    masked = {name.removesuffix("_mask") for name in inputs if name.endswith("_mask")}
    shapes = []
    for name, arg in zip(inputs, args):
        axes: dict[int, Any] = {0: batch}
        if name.endswith("_mask") and arg.dim() == 2:
            axes[1] = Dim.AUTO
        elif name in masked and arg.dim() >= 2:
            axes[arg.dim() - 1] = Dim.AUTO
        shapes.append(axes)
    return tuple(shapes)


def trace(graph: Any, inputs: list[str], args: list[Any]) -> tuple[Any, dict[str, list[int]]]:
    """``torch.export.export`` of ``graph`` with a dynamic batch axis and, where the model
    allows it, dynamic lengths (a recurrent encoder is unrolled over a fixed one).

    Returns:
        The program, and the axes of each input that it leaves dynamic.

    Raises:
        MMTrainError: one line when the model does not trace.
    """
    import torch
    from torch.fx.experimental import _config as shape_config

    shapes = dynamic_shapes(inputs, args)
    try:
        # Without duck shaping: a text as long as the batch is large stays its own size.
        with shape_config.patch(use_duck_shape=False):
            program = torch.export.export(
                graph, tuple(args), dynamic_shapes=(shapes,), strict=False
            )
    except Exception as err:  # the tracer's many failure kinds: one line, the first of its text
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MMTrainError(f"torch.export cannot trace this model: {first}") from None
    fixed = _coupled(inputs, args, shapes, dynamic_axes(program, inputs))
    return program, {name: sorted(axes) for name, axes in zip(inputs, fixed)}


def _coupled(
    inputs: list[str],
    args: list[Any],
    shapes: tuple[dict[int, Any], ...],
    kept: dict[str, list[int]],
) -> list[dict[int, Any]]:
    """The dynamic shapes less the axes the tracer fixed; a modality's length and its mask's
    are one axis: fixed in one, fixed in both."""
    fixed = [{a: d for a, d in axes.items() if a in kept[n]} for n, axes in zip(inputs, shapes)]
    index = {name: i for i, name in enumerate(inputs)}
    for name in inputs:
        modality = name.removesuffix("_mask")
        if name == modality or modality not in index:
            continue
        last = args[index[modality]].dim() - 1
        if last not in fixed[index[modality]] or 1 not in fixed[index[name]]:
            fixed[index[modality]].pop(last, None)
            fixed[index[name]].pop(1, None)
    return fixed


def dynamic_axes(program: Any, inputs: list[str]) -> dict[str, list[int]]:
    """The axes of each input that the traced program left dynamic (the tracer fixes a
    length that the model's code needs fixed, e.g. a convolution's output size)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    user = program.graph_signature.user_inputs
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    found = {}
    for name, node_name in zip(inputs, user):
        shape = nodes[node_name].meta["val"].shape
        found[name] = [i for i, size in enumerate(shape) if not is_concrete_int(size)]
    return found


def smaller(inputs: list[str], args: list[Any], axes: dict[str, list[int]]) -> list[Any]:
    """The first half of a batch, each masked modality with a dynamic length cut to the
    longest real length in it: another batch size and length than the traced ones."""
    size = max(1, int(args[0].shape[0]) // 2)
    part = {name: arg[:size] for name, arg in zip(inputs, args)}
    for name in inputs:
        modality = name.removesuffix("_mask")
        if not name.endswith("_mask") or modality not in part or 1 not in axes.get(name, []):
            continue
        last = part[modality].dim() - 1
        if last in axes.get(modality, []):
            length = max(1, int(part[name].sum(dim=1).max()))
            part[name] = part[name][:, :length]
            part[modality] = part[modality].narrow(last, 0, length)
    return [part[name] for name in inputs]


def _max_diffs(expected: list[Any], got: list[Any], names: list[str]) -> dict[str, float]:
    import numpy as np

    diffs = {}
    for name, a, b in zip(names, expected, got):
        a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=np.float64)
        b = np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, dtype=np.float64)
        if a.shape != b.shape:
            raise MMTrainError(f"parity: output {name} has shape {b.shape}, eager {a.shape}")
        diffs[name] = float(np.abs(a - b).max()) if a.size else 0.0
    return diffs


def parity(
    graph: Any,
    run: Any,
    inputs: list[str],
    args: list[Any],
    names: list[str],
    atol: float,
    axes: dict[str, list[int]],
) -> dict[str, Any]:
    """Compare ``run(args)`` (the exported graph) with eager ``graph(*args)`` on the batch and
    on a smaller one (see :func:`smaller`: the dynamic axes).

    Returns:
        ``{"max_abs_diff": {output: diff}, "batch_sizes": [...], "atol": atol}``.

    Raises:
        MMTrainError: when an output differs by more than ``atol``.
    """
    import torch

    batches = [args] + ([smaller(inputs, args, axes)] if int(args[0].shape[0]) >= 2 else [])
    worst: dict[str, float] = {}
    for batch in batches:
        with torch.no_grad():
            expected = list(graph(*batch))
        for name, diff in _max_diffs(expected, list(run(batch)), names).items():
            worst[name] = max(worst.get(name, 0.0), diff)
    bad = {k: v for k, v in worst.items() if not v <= atol}
    if bad:
        listed = ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
        raise MMTrainError(
            f"parity: the export differs from eager PyTorch above export.parity_atol={atol}: "
            f"{listed} (max abs diff)"
        )
    sizes = [int(batch[0].shape[0]) for batch in batches]
    return {"max_abs_diff": worst, "batch_sizes": sizes, "atol": atol}


def export_graph(model: Any, datamodule: Any, cfg: Any, folder: Path) -> dict[str, Any]:
    """Write ``model.onnx`` (``format=onnx``) or ``model.pt2`` (``format=torch_export``) into
    ``folder`` and check it against eager PyTorch.

    Returns:
        ``{"files", "parity", "inputs", "input_shapes", "outputs", "part"}`` for export.json
        and the card (a shape names its dynamic axes ``batch`` and ``length``).

    Raises:
        MMTrainError: for a head that cannot be exported, a model that does not trace, missing
            packages, or a parity failure.
    """
    import torch

    fmt, options = str(cfg.format), cfg.get("export") or {}
    model = model.cpu().eval()
    tasks = choose_tasks(model, options, fmt)
    inputs, args = sample_batch(model, datamodule)
    graph = graph_module(model, inputs, tasks)
    outputs = output_names(graph, args, tasks)
    atol = float(options.get("parity_atol", 1e-4))
    with quiet():
        program, axes = trace(graph, inputs, args)
        if fmt == "torch_export":
            path = folder / "model.pt2"
            program.example_inputs = None  # not the data batch, in a file to share
            torch.export.save(program, str(path))
            loaded = torch.export.load(str(path)).module()

            def run(part: list[Any]) -> list[Any]:
                with torch.no_grad():
                    return list(loaded(*part))

        else:
            path = folder / "model.onnx"
            run = _write_onnx(program, path, inputs, outputs, options, axes, args)
    checked = parity(graph, run, inputs, args, outputs, atol, axes)
    part = "encoders" if tasks is None else "model"
    return {
        "files": [path],
        "parity": checked,
        "inputs": inputs,
        "input_shapes": {
            name: [
                ("batch" if i == 0 else "length") if i in axes.get(name, []) else int(size)
                for i, size in enumerate(arg.shape)
            ]
            for name, arg in zip(inputs, args)
        },
        "outputs": outputs,
        "part": part,
    }


def _write_onnx(
    program: Any,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    options: Any,
    axes: dict[str, list[int]],
    args: list[Any],
) -> Any:
    """Convert the traced program to ONNX at ``path``, its inputs' fixed axes declared with
    their sizes; a function running it in onnxruntime."""
    import torch

    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise MMTrainError(
            f"format=onnx needs the export extra ({err.name} is missing): "
            "pip install 'mmtrain[export]'"
        ) from None
    opset = options.get("opset")
    try:
        onnx_program = torch.onnx.export(
            program,
            input_names=inputs,
            output_names=outputs,
            opset_version=int(opset) if opset is not None else None,
            dynamo=True,
            external_data=False,
            optimize=bool(options.get("optimize", True)),
            verbose=False,
        )
    except Exception as err:  # the converter's failure kinds: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MMTrainError(f"format=onnx: the model does not convert to ONNX: {first}") from None
    proto = onnx_program.model_proto
    sizes = dict(zip(inputs, args))
    for value in proto.graph.input:  # a length the tracer fixed: a number, not a name
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if value.name in sizes and axis not in axes.get(value.name, []):
                dim.dim_value = int(sizes[value.name].shape[axis])
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(part: list[Any]) -> list[Any]:
        feeds = {n: a.detach().cpu().numpy() for n, a in zip(inputs, part)}
        return session.run(outputs, feeds)

    return run
