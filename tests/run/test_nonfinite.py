"""``model.nonfinite``: a NaN/inf loss or gradient stops the run, or skips the step, named."""

from __future__ import annotations

import math

import pytest
import torch

from mmtrain.errors import MMTrainError
from mmtrain.utils.nonfinite import NonFiniteGuard, describe_parameters

MODALITIES, TASKS = ["image", "text", "audio"], ["label"]


# ---- the guard on its own ------------------------------------------------------------------------
def test_bad_losses_names_the_tasks_and_values():
    losses = {"label": torch.tensor(1.0), "caption": torch.tensor(math.nan)}
    assert NonFiniteGuard.bad_losses(losses) == {"caption": pytest.approx(math.nan, nan_ok=True)}
    assert NonFiniteGuard.bad_losses({"label": torch.tensor(2.0)}) == {}
    assert list(NonFiniteGuard.bad_losses({"a": torch.tensor(math.inf)})) == ["a"]


def test_bad_gradients_names_the_parameters():
    good, bad = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    good.grad, bad.grad = torch.ones(2), torch.tensor([1.0, math.inf])
    none = torch.nn.Parameter(torch.ones(1))  # no gradient: not looked at
    named = [("heads.label.w", good), ("encoders.image.w", bad), ("fusion.w", none)]
    assert NonFiniteGuard.bad_gradients(named) == ["encoders.image.w"]
    bad.grad = torch.zeros(2)
    assert NonFiniteGuard.bad_gradients(named) == []


def test_describe_parameters_names_the_task_of_head_parameters():
    text = describe_parameters(["heads.caption.proj.weight", "encoders.image.net.0.weight"])
    assert text == "heads.caption.proj.weight (task caption), encoders.image.net.0.weight (shared)"
    assert describe_parameters([f"p{i}" for i in range(6)], shown=2).endswith("and 4 more")


def test_raise_policy_raises_naming_where():
    guard = NonFiniteGuard("raise")
    with pytest.raises(MMTrainError, match=r"non-finite loss at step 3 .*nonfinite=skip"):
        guard.handle("non-finite loss", "step 3 (epoch 0, batch 3; samples a, b)")


def test_skip_policy_counts_and_stops_over_the_budget():
    guard = NonFiniteGuard("skip", budget=2)
    guard.handle("x", "step 1")
    guard.handle("x", "step 2")
    assert guard.skipped == 2
    with pytest.raises(MMTrainError, match=r"3 steps skipped, over the budget .*budget=2"):
        guard.handle("x", "step 3")


@pytest.mark.parametrize(("policy", "budget"), [("ignore", 1), ("skip", -1)])
def test_guard_rejects_bad_options(policy, budget):
    with pytest.raises(ValueError, match="nonfinite"):
        NonFiniteGuard(policy, budget)


# ---- in training ---------------------------------------------------------------------------------
class _Snapshots:
    """Parameters and optimizer state after each training step."""

    def __init__(self) -> None:
        import pytorch_lightning as pl

        snapshots = self.snapshots = []

        class Record(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                optimizer = trainer.optimizers[0]
                snapshots.append(
                    (
                        {k: v.detach().clone() for k, v in module.state_dict().items()},
                        {
                            k: {n: t.clone() for n, t in s.items() if torch.is_tensor(t)}
                            for k, s in optimizer.state.items()
                        },
                    )
                )

        self.callback = Record()


def _fit(compose_config, synth_facts, batches, tmp_path, *overrides, callbacks=()):
    import pytorch_lightning as pl

    from mmtrain.build import build_module

    cfg = compose_config("~head/caption", *overrides)
    module = build_module(cfg, synth_facts)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the batches as they are
    trainer.fit(module, train_dataloaders=loader)
    return trainer, module


def _batches(synth_batch, synth_facts, nan_at=None, count=4):
    out = []
    for i in range(count):
        batch = synth_batch(MODALITIES, TASKS, synth_facts, batch_size=2, seed=i)
        batch["id"] = [f"b{i}_s{j}" for j in range(2)]
        if i == nan_at:
            batch["image"][1, 0, 0, 0] = math.nan  # one bad pixel in one sample
        out.append(batch)
    return out


def test_a_nan_loss_stops_the_run_naming_step_task_and_samples(
    compose_config, synth_batch, synth_facts, tmp_path
):
    batches = _batches(synth_batch, synth_facts, nan_at=2)
    with pytest.raises(MMTrainError) as caught:
        _fit(compose_config, synth_facts, batches, tmp_path)
    message = str(caught.value)
    assert "non-finite loss" in message and "task 'label'" in message, message
    assert "step 2 (epoch 0, batch 2; samples b2_s0, b2_s1)" in message, message


def test_skip_leaves_weights_and_optimizer_as_they_were(
    compose_config, synth_batch, synth_facts, tmp_path
):
    batches = _batches(synth_batch, synth_facts, nan_at=2)
    record = _Snapshots()
    trainer, module = _fit(
        compose_config,
        synth_facts,
        batches,
        tmp_path,
        "model.nonfinite=skip",
        callbacks=[record.callback],
    )
    (weights1, optim1), (weights2, optim2), (weights3, _) = record.snapshots[1:4]
    changed = [k for k in weights1 if not torch.equal(weights1[k], weights2[k])]
    assert not changed  # step 2 was skipped: parameters and buffers (batch norm) as they were
    assert optim1.keys() == optim2.keys()
    for key, state in optim1.items():
        assert all(torch.equal(t, optim2[key][n]) for n, t in state.items())
    assert any(not torch.equal(weights2[k], weights3[k]) for k in weights2)  # step 3 trained
    floats = [v for v in module.state_dict().values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in floats)
    assert module.nonfinite.skipped == 1
    assert trainer.callback_metrics["train/nonfinite_steps"] == 1


def test_skip_stops_once_over_the_budget(compose_config, synth_batch, synth_facts, tmp_path):
    batches = _batches(synth_batch, synth_facts, nan_at=1)
    with pytest.raises(MMTrainError, match=r"1 steps skipped, over the budget .*budget=0"):
        _fit(
            compose_config,
            synth_facts,
            batches,
            tmp_path,
            "model.nonfinite=skip",
            "model.nonfinite_budget=0",
        )


def test_nan_gradients_with_a_finite_loss_name_the_parameter(
    compose_config, synth_batch, synth_facts, tmp_path
):
    import pytorch_lightning as pl

    class PoisonGradient(pl.Callback):  # the fusion's first weight gets NaN in step 1
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 1:
                name, param = next(iter(module.heads.label.named_parameters()))
                self.name = f"heads.label.{name}"
                param.register_hook(lambda grad: grad * math.nan)

    poison = PoisonGradient()
    batches = _batches(synth_batch, synth_facts)
    with pytest.raises(MMTrainError) as caught:
        _fit(compose_config, synth_facts, batches, tmp_path, callbacks=[poison])
    message = str(caught.value)
    assert f"non-finite gradients in {poison.name} (task label)" in message, message
    assert "step 1 (epoch 0, batch 1; samples b1_s0, b1_s1)" in message, message
