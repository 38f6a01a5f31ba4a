"""A checkpoint is data, never code: what a hostile checkpoint can make ``mmtrain`` do.

Two ways in, both through ``ckpt_path=``:

* the pickle: a file whose unpickling would run a command. Checkpoints are loaded with
  ``weights_only=True``, so it is refused with one line naming the file and nothing runs;
* the config a checkpoint carries (``checkpoint["mmtrain"]["config"]``, YAML text) that
  ``test`` / ``predict`` / ``validate`` rebuild the model and data from: a ``_target_`` outside
  the allow-list anywhere in it is refused with one line naming the key path and the target,
  before anything is built (no marker file, no ``metrics.json``), and ``allowed_targets``
  cannot be widened from the checkpoint (only the command line sets it).

Every hostile command would ``touch`` a marker file of its case: the tests fail if one exists.
One subprocess runs every case (torch is imported once).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import QUIET, TINY_DATA, compose_cfg
from helpers.cases import run_cases
from omegaconf import OmegaConf

CPU = ["trainer.accelerator=cpu", *QUIET]
EVAL_STAGES = ("test", "predict", "validate")  # the stages that rebuild the model from ckpt_path
# Every stage reads ckpt_path with the same load_checkpoint: fit (resume) and test stand for all.
PICKLE_STAGES = ("fit", "test")


class Payload:
    """Unpickling this runs ``touch <marker>`` (what an unsafe ``torch.load`` would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


# The data state of a checkpoint: the text vocabulary and the label classes.
DATA_STATE = {
    "inputs": {
        "text": {"vocab": ["<pad>", "<unk>", "<bos>", "<eos>", "a", "large", "shape", "small"]}
    },
    "targets": {"label": {"classes": ["circle_high", "circle_low", "square_high"]}},
}


def _mmtrain_checkpoint(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A well-formed mmtrain checkpoint (as ``fit`` writes it) around a stored config."""
    import pytorch_lightning as pl

    return {
        "state_dict": {},
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": pl.__version__,
        "mmtrain": {"config": yaml.safe_dump(config), "data": DATA_STATE},
        **extra,
    }


def _stored_config() -> dict[str, Any]:
    """The config a tiny ``mmtrain fit`` stores in its checkpoints (unresolved)."""
    cfg = compose_cfg(*TINY_DATA, "~head/caption")
    return OmegaConf.to_container(cfg, resolve=False)


def _keys(path: str) -> list[str | int]:
    """``"encoder.image.channels[1]"`` -> ``["encoder", "image", "channels", 1]``."""
    keys: list[str | int] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        keys += [name, int(index.rstrip("]"))] if index else [name]
    return keys


def _node(config: dict[str, Any], path: str) -> Any:
    """The value at ``path`` in ``config``, None when it is not there."""
    node: Any = config
    for key in _keys(path):
        in_dict = isinstance(node, dict) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
        if not (in_dict or in_list):
            return None
        node = node[key]
    return node


def _put(config: dict[str, Any], path: str, value: Any) -> None:
    """Set the value at ``path`` (its parent must exist)."""
    *parents, last = _keys(path)
    node: Any = config
    for key in parents:
        node = node[key]
    node[last] = value


# Hostile targets in a stored config: (case, key path of the node, target, its arguments).
# Each would create the case's marker if it ran (the {marker} placeholder), or do harm of its own.
INJECTIONS = [
    ("os_system_data", "data", "os.system", ["touch {marker}"]),
    ("eval_image_encoder", "encoder.image", "builtins.eval", ["open('{marker}', 'w')"]),
    (
        "open_caption_tokenizer",
        "data.targets.caption.tokenizer",
        "builtins.open",
        ["{marker}", "w"],
    ),
    ("subprocess_run_head_subnode", "head.label.extra", "subprocess.run", [["touch", "{marker}"]]),
    (
        "popen_list_element",
        "encoder.image.channels[1]",
        "subprocess.Popen",
        [["touch", "{marker}"]],
    ),
    ("torch_load_fusion", "fusion", "torch.load", ["{marker}"]),
    ("torch_hub_load_optimizer", "optimizer", "torch.hub.load", ["{marker}", "x"]),
    ("private_mmtrain", "loss_weighting", "mmtrain._x.evil", ["{marker}"]),
    # An allowed prefix, but the os module that mmtrain.data.coco imports: os.system. As a
    # tokenizer of its own (data.targets takes any key), a node the data module's
    # instantiation builds: it would run if it passed the check.
    (
        "os_through_mmtrain_module",
        "data.targets.evil",
        "mmtrain.data.coco.os.system",
        ["touch {marker}"],
    ),
    # torch.save through the torch module that torch.optim.optimizer imports: it would write
    # (or overwrite) any file the user can write.
    (
        "torch_save_through_torch_optim",
        "data.targets.evil",
        "torch.optim.optimizer.torch.save",
        [{"x": 1}, "{marker}"],
    ),
    (
        "function_imported_by_name",
        "data.dataset",
        "mmtrain.utils.config_check.get_object",
        ["os.system"],
    ),
]
TARGETS = {case: (path, target) for case, path, target, _ in INJECTIONS}


def _hostile_config(path: str, target: str, args: list[Any], marker: Path) -> dict[str, Any]:
    """The stored config with ``_target_: target`` and ``_args_: args`` at ``path``: an
    existing node keeps its other keys, a new one (a list element, a head's sub-node) has
    only those two."""
    config = _stored_config()
    filled = yaml.safe_load(yaml.safe_dump(args).replace("{marker}", str(marker)))
    node = _node(config, path)
    if isinstance(node, dict):
        node["_target_"], node["_args_"] = target, filled
    else:
        _put(config, path, {"_target_": target, "_args_": filled})
    return config


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, session_dirs: dict[str, Path], tiny_data: Path
) -> dict[str, Any]:
    """Write the hostile checkpoints, run every case: ``{"results", "files", "markers", "tmp"}``."""
    import torch

    tmp = tmp_path_factory.mktemp("security")
    markers = tmp / "markers"
    markers.mkdir()
    files: dict[str, Path] = {}
    cases: list[dict[str, Any]] = []

    def marker(case: str) -> Path:
        return markers / case

    # (a) the pickle: bare, inside a well-formed checkpoint, in the legacy format, raw pickle
    pickled = {
        "pickle_payload": lambda f, m: torch.save(Payload(m), f),
        "pickle_in_checkpoint": lambda f, m: torch.save(
            _mmtrain_checkpoint(_stored_config(), hyper_parameters={"x": Payload(m)}), f
        ),
        "pickle_legacy_format": lambda f, m: torch.save(
            Payload(m), f, _use_new_zipfile_serialization=False
        ),
        "pickle_raw": lambda f, m: f.write_bytes(pickle.dumps(Payload(m))),
    }
    for name, write in pickled.items():
        files[name] = tmp / f"{name}.ckpt"
        write(files[name], marker(name))
        for stage in PICKLE_STAGES:
            extra = [*TINY_DATA] if stage == "fit" else []
            cases.append(
                {
                    "name": f"{name}:{stage}",
                    "argv": [
                        stage,
                        f"ckpt_path={files[name]}",
                        *extra,
                        *CPU,
                        f"hydra.run.dir={tmp / 'runs' / name / stage}",
                    ],
                }
            )

    # (b) the config it carries
    configs = {
        case: _hostile_config(path, target, args, marker(case))
        for case, path, target, args in INJECTIONS
    }
    smuggle = _hostile_config(
        "data", "os.system", ["touch {marker}"], marker("allowed_targets_in_checkpoint")
    )
    smuggle["allowed_targets"] = ["os.", "posix."]
    configs["allowed_targets_in_checkpoint"] = smuggle
    interpolated = _stored_config()  # mmtrain.${...}: allowed as written, os.system resolved
    interpolated["data"]["targets"]["evil"] = {
        "_target_": "mmtrain.${data.targets.where}",
        "_args_": [f"touch {marker('interpolated_target')}"],
    }
    interpolated["data"]["targets"]["where"] = "data.coco.os.system"
    configs["interpolated_target"] = interpolated
    configs["clean"] = _stored_config()  # the control: passes the check, fails to load weights
    for case, config in configs.items():
        files[case] = tmp / f"{case}.ckpt"
        torch.save(_mmtrain_checkpoint(config), files[case])
        for stage in EVAL_STAGES:
            cases.append(
                {
                    "name": f"{case}:{stage}",
                    "argv": [
                        stage,
                        f"ckpt_path={files[case]}",
                        *CPU,
                        f"hydra.run.dir={tmp / 'runs' / case / stage}",
                    ],
                }
            )

    results, escaped = run_cases(cases, tmp, session_dirs["data"], tmp / "outputs")
    return {"results": results, "escaped": escaped, "files": files, "markers": markers, "tmp": tmp}


def _one_error_line(result: dict[str, Any], stage: str) -> str:
    assert result["code"] not in (0, None), result
    assert "Traceback" not in result["stdout"] + result["stderr"], result["stderr"][-3000:]
    lines = [ln for ln in result["stderr"].splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, result["stderr"]
    assert lines[0].startswith(f"mmtrain {stage}: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("stage", PICKLE_STAGES)
@pytest.mark.parametrize(
    "case", ["pickle_payload", "pickle_in_checkpoint", "pickle_legacy_format", "pickle_raw"]
)
def test_a_pickle_that_runs_code_is_refused(hostile, case, stage):
    line = _one_error_line(hostile["results"][f"{case}:{stage}"], stage)
    assert f"ckpt_path: cannot load checkpoint {hostile['files'][case]}" in line, line
    assert not (hostile["markers"] / case).exists()


@pytest.mark.parametrize("stage", EVAL_STAGES)
@pytest.mark.parametrize("case", [*TARGETS, "interpolated_target", "allowed_targets_in_checkpoint"])
def test_a_forbidden_target_in_the_stored_config_is_refused_before_anything_runs(
    hostile, case, stage
):
    path, target = TARGETS.get(case, ("data", "os.system"))
    if case == "interpolated_target":
        path, target = "data.targets.evil", "mmtrain.data.coco.os.system"
    line = _one_error_line(hostile["results"][f"{case}:{stage}"], stage)
    assert f"{path}._target_={target!r} is not allowed" in line, line
    assert not (hostile["markers"] / case).exists()
    run_dir = hostile["tmp"] / "runs" / case / stage
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "csv").exists()


@pytest.mark.parametrize("stage", EVAL_STAGES)
def test_the_clean_control_passes_the_check(hostile, stage):
    """The same checkpoint without a hostile target gets as far as loading its weights."""
    line = _one_error_line(hostile["results"][f"clean:{stage}"], stage)
    assert "does not fit the configured model" in line, line


def test_nothing_ran(hostile):
    assert sorted(p.name for p in hostile["markers"].iterdir()) == []
    assert "Traceback" not in hostile["escaped"], hostile["escaped"][-3000:]


def test_the_payload_runs_code_when_unpickled(tmp_path):
    """The control of the pickle cases: unpickled without ``weights_only``, a payload runs."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
