"""Sharded training: ``trainer=fsdp2`` with two real CPU processes (gloo), its sharded
checkpoints, and the block units of ``trainer=fsdp`` (whose runs need GPUs: the GPU script).

The runs are ``mmtrain fit`` subprocesses with ``tests/resume_probe.py`` (every step's sample
ids and loss on every rank; each rank's parameter and optimizer bytes at the end), as the
exact-resume tests run them.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.resume import explain_exit, fit
from torch import nn

from mmtrain.errors import MMTrainError
from mmtrain.run import load_checkpoint
from mmtrain.strategies import AtomicShardedSave, BlockFSDP, read_sharded, shard_blocks

TWO_CPUS = ["trainer.accelerator=cpu", "trainer.devices=2", "data.num_workers=0"]
EPOCHS = ["trainer.max_epochs=2"]  # of 3 steps a rank
FSDP2 = ["trainer=fsdp2", "trainer.precision=32-true", *TWO_CPUS]
DDP = ["trainer=ddp_cpu", *TWO_CPUS]
MEMORY = ["+callbacks.memory._target_=resume_probe.MemoryProbe"]


def _rows(run: Path) -> list[tuple]:
    """Every rank's steps: (step, sample ids, loss), sorted."""
    lines = Path(f"{run}.jsonl").read_text().splitlines()
    return sorted((r["step"], tuple(r["ids"]), r["loss"]) for r in map(json.loads, lines))


def _bytes(run: Path) -> list[dict[str, int]]:
    return [json.loads(Path(f"{run}.rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, session_dirs, tiny_data) -> dict[str, Path]:
    """Two epochs under fsdp2 and under DDP, each with two CPU processes."""
    root = tmp_path_factory.mktemp("fsdp")
    out = {}
    for name, trainer in (("fsdp2", FSDP2), ("ddp", DDP)):
        run = out[name] = root / name
        code, stdout, err = fit(run, session_dirs["data"], *trainer, *EPOCHS, *MEMORY,
                                f"+callbacks.memory.record={run}")  # fmt: skip
        assert code == 0, explain_exit(code, stdout, err)
        (run.parent / f"{name}.log").write_text(stdout + err)
    return out


def test_fsdp2_trains_as_ddp_does_on_half_the_memory_per_rank(runs) -> None:
    """Same samples and losses at every step on every rank as DDP; each rank holds about half
    of DDP's parameter and optimizer bytes (one of two shards)."""
    # load_on_rank0 (the preset's default): rank 1 built the model empty, rank 0's weights
    # reached it once sharded, and it trained exactly as DDP's rank 1 did
    log = (runs["fsdp2"].parent / "fsdp2.log").read_text()
    assert log.count("model built on the meta device") == 1
    fsdp2, ddp = _rows(runs["fsdp2"]), _rows(runs["ddp"])
    assert [r[:2] for r in fsdp2] == [r[:2] for r in ddp]
    assert len(fsdp2) == 2 * 2 * 3  # 2 ranks, 2 epochs of 3 steps
    assert max(abs(a[2] - b[2]) for a, b in zip(fsdp2, ddp)) < 1e-5
    for sharded, whole in zip(_bytes(runs["fsdp2"]), _bytes(runs["ddp"])):
        for kind in ("parameters", "optimizer"):
            assert 0.4 < sharded[kind] / whole[kind] < 0.6, (kind, sharded, whole)
    last = runs["fsdp2"] / "checkpoints" / "last.ckpt"
    assert last.is_dir() and {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= {
        p.name for p in last.iterdir()
    }
    assert not list(last.parent.glob(".last.ckpt.*"))  # no staging folder left


@pytest.mark.slow
def test_fsdp2_resumes_bit_for_bit_from_a_sharded_checkpoint(runs, session_dirs, tmp_path):
    """SIGTERM in both processes at step 2, resumed from the sharded last.ckpt/ in new
    processes: the same steps and losses, weights and optimizer state as the uninterrupted run."""
    run, data = tmp_path / "stopped", session_dirs["data"]
    code, out, err = fit(run, data, *FSDP2, *EPOCHS, "+callbacks.probe.signal_at=[2]")
    assert code == 128 + signal.SIGTERM, explain_exit(code, out, err)
    last = run / "checkpoints/last.ckpt"
    code, out, err = fit(run, data, *FSDP2, *EPOCHS, f"ckpt_path={last}")
    assert code == 0, explain_exit(code, out, err)
    assert _rows(run) == _rows(runs["fsdp2"])
    a = read_sharded(runs["fsdp2"] / "checkpoints/last.ckpt")
    b = read_sharded(run / "checkpoints/last.ckpt")
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"]) == (6, 1)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    for x, y in zip(a["optimizer_states"][0]["state"].values(),
                    b["optimizer_states"][0]["state"].values()):  # fmt: skip
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_a_sharded_checkpoint_reads_whole_and_tests(runs, scratch) -> None:
    """``mmtrain test`` reads the directory whole: the same weights as the processes held."""
    from helpers.cli import explain_run, mmtrain

    last = runs["fsdp2"] / "checkpoints" / "last.ckpt"
    whole = load_checkpoint(last)
    assert whole["global_step"] == 6 and "mmtrain" in whole
    state = whole["state_dict"]
    assert all(isinstance(v, torch.Tensor) and not hasattr(v, "to_local") for v in state.values())
    # the positional optimizer state loads into a plain AdamW over the same parameters
    assert len(whole["optimizer_states"][0]["state"]) == len(
        [p for g in whole["optimizer_states"][0]["param_groups"] for p in g["params"]]
    )
    proc = mmtrain(scratch, "test", f"ckpt_path={last}", "trainer.enable_progress_bar=false")
    assert proc.returncode == 0, explain_run(proc)


def _without_rank1(runs: dict[str, Path], tmp_path: Path) -> Path:
    broken = tmp_path / "last.ckpt"
    shutil.copytree(runs["fsdp2"] / "checkpoints" / "last.ckpt", broken)
    (broken / "__1_0.distcp").unlink()
    return broken


def test_a_sharded_checkpoint_missing_a_rank_is_one_error(runs, tmp_path) -> None:
    broken = _without_rank1(runs, tmp_path)
    before = sorted(p.name for p in broken.iterdir())
    for weights in (True, False):  # read whole, or its meta.pt only (a sharded resume)
        with pytest.raises(MMTrainError, match=r"missing 1 of its 2 shard files \(__1_0.distcp\)"):
            load_checkpoint(broken, weights=weights)
    assert sorted(p.name for p in broken.iterdir()) == before


@pytest.mark.slow
def test_the_cli_refuses_a_missing_rank_and_a_directory_for_one_process(runs, tmp_path, scratch):
    from helpers.cli import explain_run, mmtrain

    broken = _without_rank1(runs, tmp_path)
    before = sorted(p.name for p in broken.iterdir())
    proc = mmtrain(scratch, "fit", *FSDP2, f"ckpt_path={broken}")
    assert proc.returncode == 1, explain_run(proc)
    assert "__1_0.distcp" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in broken.iterdir()) == before  # nothing written over it
    # a directory resumes only under a sharded trainer
    proc = mmtrain(scratch, "fit", f"ckpt_path={runs['fsdp2'] / 'checkpoints/last.ckpt'}")
    assert proc.returncode == 1, explain_run(proc)
    assert "resume it with a sharded trainer" in proc.stderr and "Traceback" not in proc.stderr


def test_a_foreign_index_is_not_unpickled(tmp_path) -> None:
    """``.metadata`` is a pickle: only the classes of a checkpoint index are allowed."""
    import pickle

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(print))
    torch.save({}, folder / "meta.pt")
    with pytest.raises(MMTrainError, match=r"builtins.print is not part of a checkpoint index"):
        load_checkpoint(folder)


# ---- the units -----------------------------------------------------------------------------------
class _Tower(nn.Module):
    """A part naming its blocks, one of which holds a Transformer layer (not a unit then)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True))]
            + [nn.Sequential(nn.Linear(8, 8)) for _ in range(2)]
        )

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)


def _llama(tmp_path: Path) -> nn.Module:
    from helpers.tiny_lm import tiny_llama_lm
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_lm(tmp_path / "lm"))


def test_the_units_are_the_parts_blocks(tmp_path) -> None:
    """Blocks from blocks(), from an HF model's _no_split_modules and torch's Transformer
    layers; the outermost only, so a Transformer layer inside a listed block is not a unit."""
    lm = _llama(tmp_path)
    own = nn.TransformerDecoderLayer(8, 2, 16, batch_first=True)
    model = nn.ModuleDict({"tower": _Tower(), "lm": lm, "decoder": nn.ModuleList([own])})
    blocks = shard_blocks(model)
    assert blocks[:3] == list(model["tower"].layers)
    assert blocks[3:5] == list(lm.model.layers)  # LlamaDecoderLayer, from _no_split_modules
    assert blocks[5:] == [own] and len(blocks) == 6


def test_fsdp_wraps_and_checkpoints_the_block_classes(tmp_path) -> None:
    """``trainer=fsdp``'s policies (its runs need GPUs): one unit per block class."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    lm = _llama(tmp_path)
    model = nn.ModuleDict({"tower": _Tower(), "lm": lm})
    strategy = BlockFSDP(activation_checkpointing_policy="blocks")
    policies = strategy.policies(model)
    wrap = policies["auto_wrap_policy"]
    assert isinstance(wrap, ModuleWrapPolicy)
    names = {c.__name__ for c in wrap._module_classes}
    assert names == {"Sequential", "LlamaDecoderLayer"}
    checkpointed = policies["activation_checkpointing"]["auto_wrap_policy"]
    assert checkpointed._module_classes == wrap._module_classes
    assert strategy.kwargs["use_orig_params"] is True and strategy.sharded
    plain = BlockFSDP(auto_wrap_policy=None, state_dict_type="full")
    assert plain.policies(model) == {} and not plain.sharded


# ---- the atomic save -----------------------------------------------------------------------------
class _Writer:
    """A strategy's sharded save on one process: writes two shard files, or fails midway."""

    fail = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, options: Any = None) -> None:
        path.mkdir(parents=True)
        (path / "__0_0.distcp").write_text(checkpoint["v"])
        if self.fail:
            raise OSError("killed")
        (path / "meta.pt").write_text(checkpoint["v"])


class _Saver(AtomicShardedSave, _Writer):
    sharded, global_rank = True, 0

    def broadcast(self, obj: Any) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        pass


def test_a_sharded_save_replaces_the_directory_whole_or_not_at_all(tmp_path) -> None:
    saver, last = _Saver(), tmp_path / "last.ckpt"
    saver.save_checkpoint({"v": "1"}, last)
    saver.save_checkpoint({"v": "2"}, last)
    assert (last / "meta.pt").read_text() == "2"
    saver.fail = True
    with pytest.raises(OSError, match="killed"):
        saver.save_checkpoint({"v": "3"}, last)
    assert (last / "meta.pt").read_text() == "2"  # the previous checkpoint, whole
    saver.fail = False
    saver.save_checkpoint({"v": "4"}, last)  # the next save clears the half-written folder
    assert (last / "meta.pt").read_text() == "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ---- more than the default model -----------------------------------------------------------------
@pytest.mark.slow
def test_fsdp2_trains_lora_next_to_a_frozen_lm_and_tests_from_its_shards(scratch, tiny_data):
    """experiment=shapes_llm with phase=lora: frozen LM weights and trainable adapters in the
    same sharded blocks, generation (validation, test) through the sharded LM, bf16-true."""
    from helpers.cli import explain_run, mmtrain

    lm = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 128}  # fmt: skip
    args = ["experiment=shapes_llm", *(f"head.caption.config.{k}={v}" for k, v in lm.items()),
            "phase=lora", "peft.r=4", "data.batch_size=4", "data.dataset.num_train=16",
            "data.dataset.num_val=8", "trainer.max_epochs=1",
            "trainer.limit_val_batches=1"]  # fmt: skip
    run = scratch["out"] / "llm"
    proc = mmtrain(scratch, "fit", *args, "trainer=fsdp2", "trainer.precision=bf16-true",
                   *TWO_CPUS, f"hydra.run.dir={run}", timeout=300)  # fmt: skip
    assert proc.returncode == 0, explain_run(proc)
    assert "fsdp2: 2 blocks sharded over 2 processes" in proc.stderr + proc.stdout
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    adapters = [k for k in state if "lora_" in k]
    assert adapters and all(state[k].dtype == torch.bfloat16 for k in adapters)
    proc = mmtrain(scratch, "test", f"ckpt_path={run / 'checkpoints/last.ckpt'}",
                   "trainer.enable_progress_bar=false", "data.dataset.num_test=8")  # fmt: skip
    assert proc.returncode == 0, explain_run(proc)


@pytest.mark.slow
def test_fsdp2_activation_checkpointing_recomputes_the_same_steps(session_dirs, tmp_path):
    """Without dropout (whose random stream checkpointing's recomputation shifts), the same
    losses with and without activation checkpointing."""
    same = [*FSDP2, "trainer.max_epochs=1", "head.caption.dropout=0.0"]
    rows = []
    for name, extra in (
        ("plain", []),
        ("checkpointed", ["trainer.strategy.activation_checkpointing=true"]),
    ):
        code, out, err = fit(tmp_path / name, session_dirs["data"], *same, *extra)
        assert code == 0, explain_exit(code, out, err)
        rows.append(_rows(tmp_path / name))
    assert rows[0] == rows[1]


@pytest.mark.slow
def test_fsdp2_builds_the_feature_cache_on_ranks_of_unequal_shares(session_dirs, tmp_path):
    """data.cache_features with a frozen tower: 25 samples over 2 ranks (13 and 12: a rank makes
    an extra, unused call of the sharded model as the other encodes its last batch). The cache
    holds the features DDP's ranks compute."""
    from mmtrain.data.feature_cache import FeatureStore

    cached = ["encoder.image.freeze=true", "data.cache_features=true",
              "data.dataset.num_train=25", "trainer.max_epochs=1"]  # fmt: skip
    stores = {}
    for name, trainer in (("fsdp2", FSDP2), ("ddp", DDP)):
        code, out, err = fit(tmp_path / name, session_dirs["data"], *trainer, *cached)
        assert code == 0, explain_exit(code, out, err)
        (folder,) = (tmp_path / name / "feature_cache").glob("*/train/image")
        stores[name] = FeatureStore(folder)
    assert len(stores["fsdp2"]) == len(stores["ddp"]) == 25
    for i in range(25):
        torch.testing.assert_close(stores["fsdp2"][i], stores["ddp"][i], atol=1e-3, rtol=1e-3)


def test_fsdp_on_cpu_processes_is_one_line_naming_fsdp2(compose_config, tmp_path) -> None:
    from mmtrain.build import build_trainer

    cfg = compose_config("trainer=fsdp", "trainer.accelerator=cpu", output_dir=tmp_path)
    with pytest.raises(MMTrainError, match=r"runs on GPUs only .* trainer=fsdp2") as caught:
        build_trainer(cfg)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_fsdp2_pretrained_weights_reach_every_rank_from_rank0(model_store_folder, tmp_path):
    """experiment=coco_caption_llm (the model store's CLIP tower and LM, LoRA): with
    load_on_rank0, rank 1 reads no weights and trains exactly as when every rank reads them;
    resumed from its trimmed sharded checkpoint, the run continues exactly."""
    from conftest import QUIET
    from helpers.coco import write_coco
    from helpers.resume import popen_fit

    write_coco(tmp_path / "coco")
    common = ["experiment=coco_caption_llm", f"data.root={tmp_path / 'coco'}",
              "data.batch_size=2", f"paths.model_dir={model_store_folder}", "peft.r=2",
              "trainer.max_epochs=2", "trainer.limit_train_batches=3",
              "trainer.limit_val_batches=1",
              "data.cache_features=false", *FSDP2, *QUIET,
              "+callbacks.probe._target_=resume_probe.ResumeProbe",
              "allowed_targets=[resume_probe.]"]  # fmt: skip
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    runs = (("rank0", [], 0), ("every", ["trainer.strategy.load_on_rank0=false"], 0),
            ("resumed", ["+callbacks.probe.signal_at=[4]"], 128 + signal.SIGTERM),  # stopped
            ("resumed", [f"ckpt_path={last}"], 0))  # fmt: skip
    for name, extra, exit_code in runs:
        run = tmp_path / name
        proc = popen_fit([*common, *extra, f"+callbacks.probe.record={run}.jsonl",
                          f"hydra.run.dir={run}"], tmp_path)  # fmt: skip
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == exit_code, explain_exit(proc.returncode, out, err)
        assert ("model built on the meta device" in out + err) == (name != "every")
    assert _rows(tmp_path / "rank0") == _rows(tmp_path / "every")
    # phase=lora trims the frozen tower and LM out of the checkpoint: the resume loads the
    # rest into the shards and continues exactly
    assert "base" in load_checkpoint(last)["mmtrain"]
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "rank0")
