"""Sharded training: ``trainer=fsdp`` (FSDP, torch's ``FullyShardedDataParallel``) and
``trainer=fsdp2`` (per-parameter sharding, torch's ``fully_shard``), and their checkpoints.

Both shard the model by its **blocks** (:func:`shard_blocks`): the repeated layers each part
names (``blocks()`` of pretrained towers and causal-LM heads), the classes a Hugging Face model
lists in ``_no_split_modules``, and torch's Transformer layers (mmtrain's own encoders, fusions
and caption decoder). Each block is one unit: its parameters are gathered for its forward and
backward and freed after, so no rank holds more than its shard plus one block at a time.
Without such units, the whole model is one unit and little is sharded. Activation
checkpointing, when on, recomputes the same blocks in the backward pass.

A sharded checkpoint is a directory (``last.ckpt/``): one ``__<rank>_0.distcp`` file per
process, ``.metadata`` (the index) and ``meta.pt`` (the rest: step, callbacks, mmtrain's
config). It is written into ``.<name>.tmp/`` beside its place and renamed into place once
every rank has written its shard (:class:`AtomicShardedSave`). :func:`read_sharded` reads
one back whole, into the dictionary of a single-file checkpoint, after checking that every
rank's shard is there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn

from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

META_FILE = "meta.pt"  # Lightning's name for what is neither weights nor optimizer state
INDEX_FILE = ".metadata"  # torch.distributed.checkpoint's index of the shards


# ---- the units ---------------------------------------------------------------------------------
def _block_lists(module: nn.Module) -> list[nn.Module]:
    """``module.blocks()`` when ``blocks`` is a method of its class (timm's ``blocks`` is a
    submodule attribute: that one is found through the classes instead)."""
    method = getattr(type(module), "blocks", None)
    return list(module.blocks()) if callable(method) and not isinstance(method, nn.Module) else []


def shard_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` that become sharding (and activation checkpointing) units,
    outermost only, in module order.

    A block is a module that a part lists in ``blocks()``, an instance of a class that a
    Hugging Face model of the part lists in ``_no_split_modules`` (its decoder or encoder
    layer), or a ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``.
    """
    no_split: set[str] = set()
    listed: set[int] = set()
    for module in model.modules():
        no_split |= set(getattr(module, "_no_split_modules", None) or [])
        listed |= {id(b) for b in _block_lists(module)}
    own = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if name
        and (id(module) in listed or type(module).__name__ in no_split or isinstance(module, own))
    ]
    names = {name for name, _ in chosen}
    return [
        module
        for name, module in chosen
        if not any(".".join(name.split(".")[:i]) in names for i in range(1, name.count(".") + 1))
    ]


def block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes of :func:`shard_blocks` (FSDP's wrap policy takes classes)."""
    return {type(b) for b in shard_blocks(model)}


def through_call(module: nn.Module, function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` run inside ``module.__call__``: under ``trainer=fsdp2``
    the module's own sharded weights are gathered for it, as for a step (a callback's
    predictions, the feature cache); otherwise the same as calling it."""
    original = module.__dict__.get("forward")

    def run(*a: Any, **k: Any) -> Any:
        _restore_forward(module, original)
        return function(*a, **k)

    module.forward = run  # type: ignore[method-assign]
    try:
        return module(*args, **kwargs)
    finally:
        _restore_forward(module, original)


def _restore_forward(module: nn.Module, original: Any) -> None:
    if original is not None:
        module.forward = original  # type: ignore[method-assign]
    else:
        module.__dict__.pop("forward", None)


def sharding(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` shards the model (FSDP or fsdp2), and so reads sharded checkpoints."""
    return isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


def gathers_in_calls(strategy: Any) -> bool:
    """Whether calling the model is collective under ``strategy`` (``trainer=fsdp2``: every
    rank must call it, each gathering the others' shards)."""
    return isinstance(strategy, ShardedDataParallel)


# ---- sharded checkpoints ------------------------------------------------------------------------
class _IndexUnpickler(pickle.Unpickler):
    """Reads ``.metadata`` (a pickle, as torch.distributed.checkpoint writes it) allowing only
    the classes of that index: a directory from elsewhere cannot run code when read."""

    ALLOWED = ("torch.distributed.checkpoint.", "collections")
    NAMES = {
        ("torch", "Size"),
        ("torch", "device"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
    }

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in self.NAMES or dtype:
            return super().find_class(module, name)
        if module.startswith(self.ALLOWED):
            found = super().find_class(module, name)
            if isinstance(found, type):  # the index's classes, not the module's functions
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a sharded checkpoint directory (``.metadata`` or ``meta.pt`` in it)."""
    path = Path(path)
    return path.is_dir() and ((path / INDEX_FILE).is_file() or (path / META_FILE).is_file())


def _read_index(path: Path, key: str = "ckpt_path") -> Any:
    """The ``.metadata`` index of a sharded checkpoint, read with :class:`_IndexUnpickler`."""
    try:
        with open(path / INDEX_FILE, "rb") as file:
            return _IndexUnpickler(file).load()
    except Exception as err:  # refused class, truncated file
        raise MMTrainError(f"{key}: cannot read {path / INDEX_FILE}: {err}") from None


def stored_weights(path: Path) -> set[str]:
    """The model weights a sharded checkpoint holds (a trimmed one lacks its frozen bases)."""
    prefixes = ("state_dict.", "model.")  # fsdp2's and fsdp's
    return {
        name.split(".", 1)[1]
        for name in _read_index(path).state_dict_metadata
        if name.startswith(prefixes)
    }


def shard_files(path: Path, key: str = "ckpt_path") -> list[str]:
    """The files that ``path``'s index names (one or more per rank), checked present.

    Raises:
        MMTrainError: naming the directory and the missing files: an index or a meta file
            missing, or a rank's shard.
    """
    for name in (INDEX_FILE, META_FILE):
        if not (path / name).is_file():
            raise MMTrainError(
                f"{key}: {path} is not a complete sharded checkpoint: {name} is missing"
            )
    index = _read_index(path, key)
    files = sorted({info.relative_path for info in index.storage_data.values()})
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise MMTrainError(
            f"{key}: {path} is missing {len(missing)} of its {len(files)} shard files "
            f"({', '.join(missing[:4])}): a rank did not write its shard (or it was deleted); "
            "nothing was loaded"
        )
    return files


def _optimizer_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter names (torch.distributed.checkpoint's form) keyed
    by position instead, as ``torch.optim.Optimizer.load_state_dict`` takes it."""
    groups = state.get("param_groups") or []
    order = [name for group in groups for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    return {
        "state": {index[name]: value for name, value in (state.get("state") or {}).items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]} for group in groups
        ],
    }


def read_sharded(path: str | Path, key: str = "ckpt_path", weights: bool = True) -> dict[str, Any]:
    """A sharded checkpoint directory as the dictionary of a single-file checkpoint: full
    weights in ``state_dict``, ``optimizer_states`` keyed by position, and ``meta.pt``'s
    entries (step, loops, callbacks, mmtrain's config). Everything is read into CPU memory;
    with ``weights`` false only ``meta.pt`` (``state_dict`` empty): a sharded resume, whose
    shards the strategy reads each into its own rank.

    Raises:
        MMTrainError: when a file is missing or unreadable (naming it).
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = Path(path)
    shard_files(path, key)
    try:
        extra = torch.load(path / META_FILE, map_location="cpu", weights_only=True)
        if not weights:
            return {**extra, "state_dict": {}}
        state: dict[str, Any] = {}
        _load_state_dict(
            state,
            storage_reader=FileSystemReader(path),
            planner=_EmptyStateDictLoadPlanner(),
            no_dist=True,
        )
    except Exception as err:
        raise MMTrainError(f"{key}: cannot read sharded checkpoint {path}: {err}") from None
    out = dict(extra)
    out["state_dict"] = state.pop("state_dict", None) or state.pop("model", {})  # fsdp2, fsdp
    count = len([k for k in state if k.startswith("optimizer_")])
    out["optimizer_states"] = [_optimizer_by_index(state[f"optimizer_{i}"]) for i in range(count)]
    return out


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        if file.is_file():
            with open(file, "rb") as handle, contextlib.suppress(OSError):
                os.fsync(handle.fileno())


class AtomicShardedSave:
    """A sharded save into ``.<name>.tmp/`` beside its place, renamed into place once every
    rank has written: ``last.ckpt/`` always holds one complete checkpoint (the previous one
    until the rename). A killed save leaves the previous directory and a ``.tmp`` folder that
    the next save removes.

    Mixed into a strategy whose ``save_checkpoint`` writes a directory when ``sharded`` is
    true (FSDP with ``state_dict_type: sharded``, fsdp2 with its distributed checkpoint).
    """

    sharded: bool

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        if not self.sharded or "://" in str(filepath):
            super().save_checkpoint(checkpoint, filepath, storage_options)  # type: ignore[misc]
            return
        path = Path(self.broadcast(filepath))  # type: ignore[attr-defined]
        tmp = path.with_name(f".{path.name}.tmp")
        old = path.with_name(f".{path.name}.old")
        if self.global_rank == 0:  # type: ignore[attr-defined]
            for stale in (tmp, old):
                if stale.exists():
                    shutil.rmtree(stale)
        self.barrier("mmtrain.sharded_save.start")  # type: ignore[attr-defined]
        super().save_checkpoint(checkpoint, tmp, storage_options)  # type: ignore[misc]
        self.barrier("mmtrain.sharded_save.written")  # type: ignore[attr-defined]
        if self.global_rank == 0:  # type: ignore[attr-defined]
            _fsync_tree(tmp)
            if path.is_file():
                path.unlink()
            elif path.exists():
                path.rename(old)
            tmp.rename(path)
            if old.exists():
                shutil.rmtree(old)
        self.barrier("mmtrain.sharded_save.renamed")  # type: ignore[attr-defined]


# ---- the strategies -----------------------------------------------------------------------------
class ShardedDataParallel(AtomicShardedSave, ModelParallelStrategy):
    """``trainer=fsdp2``: Lightning's ``ModelParallelStrategy`` with every process a data
    parallel rank, each block and then the whole model sharded with ``fully_shard``.

    Args:
        activation_checkpointing: recompute each block's activations in the backward pass.
        reshard_after_forward: free each block's gathered parameters after its forward (less
            memory; False gathers them once more for the backward).
        load_on_rank0: only rank 0 builds the model with its weights (pretrained parts,
            ``init_from``); the other ranks build it on the meta device, without weights, and
            receive their shards from rank 0 once it is sharded (:func:`spread_from_rank0`).
            One copy of the weights in host memory instead of one a process.
        save_distributed_checkpoint: checkpoints as directories of shards (each rank writes its
            own); False gathers a single file on rank 0.
        process_group_backend: ``gloo`` on CPU processes, ``nccl`` on GPUs when null.
        timeout: the process group's timeout.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        load_on_rank0: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            **kwargs,
        )
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward
        self.sharded = save_distributed_checkpoint
        self.load_on_rank0 = load_on_rank0

    def builds_empty(self) -> bool:
        """Whether this process builds the model without weights, on the meta device
        (``load_on_rank0`` on a rank other than 0); asked before the processes start."""
        self.set_world_ranks()  # from the environment: the launcher's, torchrun's, SLURM's
        return self.load_on_rank0 and self.global_rank != 0

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # every process of every node shards the data
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def setup(self, trainer: pl.Trainer) -> None:
        assert self.model is not None
        # bf16-true: the weights in bf16 before they are sharded (each rank converts its own)
        self.model = self.precision_plugin.convert_module(self.model)
        # load_on_rank0: rank 0's weights, whole until every rank has its shard
        whole = self.model.state_dict() if self.load_on_rank0 and self.global_rank == 0 else {}
        shard_model(
            self.model,
            self.device_mesh["data_parallel"],
            self.activation_checkpointing,
            self.reshard_after_forward,
        )
        if self.load_on_rank0:
            spread_from_rank0(self.model, whole, self.root_device)
            del whole
        super().setup(trainer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        """Lightning's load; for a trimmed sharded checkpoint (``model.save_frozen=false``:
        the frozen bases left out), the weights it holds, the bases staying as built."""
        from lightning_fabric.strategies.fsdp import _distributed_checkpoint_load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        if not is_sharded(path):
            return super().load_checkpoint(checkpoint_path, weights_only)
        own = get_model_state_dict(self.model)
        stored = stored_weights(path)
        if set(own) <= stored:
            return super().load_checkpoint(checkpoint_path, weights_only)
        module_state = {"state_dict": {k: v for k, v in own.items() if k in stored}}
        _distributed_checkpoint_load(module_state, path)
        self.model.load_state_dict(module_state["state_dict"], strict=False)
        options = StateDictOptions(cpu_offload=True)
        for i, optimizer in enumerate(self.optimizers):  # what trains: all of it stored
            key = f"optimizer_{i}"
            state = {key: get_optimizer_state_dict(self.model, optimizer)}
            _distributed_checkpoint_load(state, path)
            set_optimizer_state_dict(self.model, optimizer, state[key], options=options)
        return torch.load(path / META_FILE, map_location="cpu", weights_only=True)

    # The model itself is sharded (its own weights: embeddings, heads' layers outside blocks):
    # its steps go through its __call__, so that fully_shard gathers those weights first.
    def _through_call(self, context: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        with context():
            return self._forward_redirection(
                self.model, self.lightning_module, method, *args, **kwargs
            )

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        context = self.precision_plugin.train_step_context
        return self._through_call(context, "training_step", *args, **kwargs)

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        context = self.precision_plugin.val_step_context
        return self._through_call(context, "validation_step", *args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        context = self.precision_plugin.test_step_context
        return self._through_call(context, "test_step", *args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        context = self.precision_plugin.predict_step_context
        return self._through_call(context, "predict_step", *args, **kwargs)


def shard_model(
    model: nn.Module, mesh: Any, activation_checkpointing: bool, reshard_after_forward: bool
) -> int:
    """``fully_shard`` each block of ``model`` (after activation checkpointing, when on) and
    then the model itself, over ``mesh``; returns the number of blocks."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import fully_shard

    blocks = shard_blocks(model)
    for block in blocks:
        if activation_checkpointing:
            checkpoint(block)
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    log.info(
        "fsdp2: %d blocks sharded over %d processes%s",
        len(blocks),
        mesh.size(),
        ", activations checkpointed" if activation_checkpointing else "",
    )
    return len(blocks)


def spread_from_rank0(model: nn.Module, whole: dict[str, Any], device: torch.device) -> None:
    """Give every rank its shard of rank 0's weights: the ranks that built ``model`` on the
    meta device allocate their shards (``to_empty``), rank 0 broadcasts ``whole`` (its state
    dict from before sharding; empty on the other ranks) shard by shard, then every buffer
    (non-persistent ones too: rotary frequencies, position ids)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if any(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()]):
        model.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, whole, options=options)
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


class BlockFSDP(AtomicShardedSave, FSDPStrategy):
    """``trainer=fsdp``: Lightning's ``FSDPStrategy`` whose wrap policy (and activation
    checkpointing policy) defaults to the model's block classes (:func:`block_classes`),
    found when the model is wrapped; ``use_orig_params`` stays on, so frozen and trainable
    weights (a frozen tower, LoRA adapters) share units.

    Args:
        auto_wrap_policy: ``blocks`` (the default), or what ``FSDPStrategy`` takes.
        activation_checkpointing_policy: ``blocks``, null (off), or what ``FSDPStrategy`` takes.
        state_dict_type: ``sharded`` (a directory of shards per checkpoint, the default) or
            ``full`` (one file gathered on rank 0).
        **kwargs: the other ``FSDPStrategy`` arguments (``sharding_strategy``, ``cpu_offload``...).
    """

    def __init__(
        self,
        auto_wrap_policy: Any = "blocks",
        activation_checkpointing_policy: Any = None,
        state_dict_type: str = "sharded",
        **kwargs: Any,
    ) -> None:
        self._wrap_blocks = auto_wrap_policy == "blocks"
        self._checkpoint_blocks = activation_checkpointing_policy == "blocks"
        super().__init__(
            auto_wrap_policy=None if self._wrap_blocks else auto_wrap_policy,
            activation_checkpointing_policy=(
                None if self._checkpoint_blocks else activation_checkpointing_policy
            ),
            state_dict_type=state_dict_type,
            **kwargs,
        )
        self.sharded = state_dict_type == "sharded"

    def policies(self, model: nn.Module) -> dict[str, Any]:
        """The ``FullyShardedDataParallel`` keywords the blocks of ``model`` give: the wrap
        policy and the activation checkpointing keywords."""
        from lightning_fabric.strategies.fsdp import (
            _activation_checkpointing_kwargs,
            _auto_wrap_policy_kwargs,
        )

        classes = block_classes(model)
        out: dict[str, Any] = {}
        if self._wrap_blocks:
            out |= _auto_wrap_policy_kwargs(classes, {})
        if self._checkpoint_blocks:
            out["activation_checkpointing"] = _activation_checkpointing_kwargs(None, classes)
        return out

    def _setup_model(self, model: nn.Module) -> nn.Module:
        policies = self.policies(model)
        if "auto_wrap_policy" in policies:
            self.kwargs["auto_wrap_policy"] = policies["auto_wrap_policy"]
        if "activation_checkpointing" in policies:
            self._activation_checkpointing_kwargs = policies["activation_checkpointing"]
        names = sorted(c.__name__ for c in block_classes(model))
        log.info("fsdp: one unit per block (%s)", ", ".join(names) or "none: the whole model")
        return super()._setup_model(model)
