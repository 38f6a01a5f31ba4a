"""The math of every loss weighting, on hand-made losses and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmtrain.contracts import SharedParameters
from mmtrain.loss_weighting.dwa import DWAWeighting
from mmtrain.loss_weighting.fixed import FixedWeighting
from mmtrain.loss_weighting.gradnorm import GradNormWeighting
from mmtrain.loss_weighting.pcgrad import PCGradWeighting, project_conflicting
from mmtrain.loss_weighting.rlw import RandomWeighting
from mmtrain.loss_weighting.uncertainty import UncertaintyWeighting

NAMES = ["caption", "label"]


def _losses(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"caption": torch.tensor(a), "label": torch.tensor(b)}


# ---- fixed and the shared warm-up -----------------------------------------------------------
def test_fixed_weighted_sum_of_the_tasks_present() -> None:
    w = FixedWeighting(NAMES, weights={"label": 2.0})
    total, weights = w(_losses(1.5, 0.5))
    assert total.item() == pytest.approx(1.5 + 2.0 * 0.5)
    assert {k: v.item() for k, v in weights.items()} == {"caption": 1.0, "label": 2.0}
    total, weights = w({"label": torch.tensor(3.0)})  # a batch with one task's target
    assert total.item() == 6.0 and set(weights) == {"label"}


def test_warmup_gives_equal_weights_then_the_scheme() -> None:
    w = FixedWeighting(NAMES, weights={"label": 3.0}, warmup_steps=2)
    seen = [w(_losses(1.0, 1.0))[1]["label"].item() for _ in range(4)]
    assert seen == [1.0, 1.0, 3.0, 3.0]
    assert int(w.step) == 4
    w.eval()  # evaluation uses the current weights and does not count steps
    assert w(_losses(1.0, 1.0))[1]["label"].item() == 3.0 and int(w.step) == 4


def test_step_count_is_saved_in_the_state_dict() -> None:
    w = FixedWeighting(NAMES, warmup_steps=5)
    for _ in range(3):
        w(_losses(1.0, 1.0))
    resumed = FixedWeighting(NAMES, warmup_steps=5)
    resumed.load_state_dict(w.state_dict())
    assert int(resumed.step) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": {"answer": 1.0}}, r"unknown tasks \['answer'\]"),
        ({"weights": {"label": -1.0}}, r"must be >= 0"),
        ({"warmup_steps": -1}, r"warmup_steps must be >= 0, got -1"),
    ],
)
def test_fixed_rejects_bad_config(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        FixedWeighting(NAMES, **kwargs)


def test_a_loss_of_an_unknown_task_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown tasks \['answer'\]"):
        FixedWeighting(NAMES)({"answer": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="no task losses"):
        FixedWeighting(NAMES)({})


# ---- uncertainty ----------------------------------------------------------------------------
def test_uncertainty_objective_and_weights() -> None:
    w = UncertaintyWeighting(NAMES, init_log_var=0.5)
    total, weights = w(_losses(2.0, 0.25))
    expected = math.exp(-0.5) * 2.0 + 0.5 + math.exp(-0.5) * 0.25 + 0.5
    assert total.item() == pytest.approx(expected)
    assert weights["caption"].item() == pytest.approx(math.exp(-0.5))


def test_uncertainty_optimum_matches_the_closed_form() -> None:
    """For fixed losses, exp(-s) L + s is smallest at s = log L: weight 1 / L."""
    w = UncertaintyWeighting(NAMES)
    optimizer = torch.optim.SGD(w.parameters(), lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        w(_losses(4.0, 0.5))[0].backward()
        optimizer.step()
    assert w.log_vars.detach().tolist() == pytest.approx([math.log(4.0), math.log(0.5)], abs=1e-3)
    _, weights = w(_losses(4.0, 0.5))
    assert weights["caption"].item() == pytest.approx(0.25, rel=1e-3)
    assert weights["label"].item() == pytest.approx(2.0, rel=1e-3)


# ---- DWA --------------------------------------------------------------------------------------
def _epoch(w: DWAWeighting, a: list[float], b: list[float]) -> None:
    for x, y in zip(a, b):
        w(_losses(x, y))
    w.epoch_end()


def test_dwa_equal_weights_until_two_epochs_of_history() -> None:
    w = DWAWeighting(NAMES, temperature=2.0)
    _, weights = w(_losses(3.0, 1.0))
    assert [v.item() for v in weights.values()] == [1.0, 1.0]
    w.epoch_end()
    _, weights = w(_losses(3.0, 1.0))
    assert [v.item() for v in weights.values()] == [1.0, 1.0]


def test_dwa_weights_follow_the_loss_ratios() -> None:
    w = DWAWeighting(NAMES, temperature=2.0)
    _epoch(w, [2.0, 4.0], [1.0, 1.0])  # epoch means: caption 3, label 1
    _epoch(w, [1.0, 2.0], [1.0, 1.0])  # caption 1.5 (ratio 0.5), label 1 (ratio 1)
    _, weights = w(_losses(1.0, 1.0))
    e_caption, e_label = math.exp(0.5 / 2.0), math.exp(1.0 / 2.0)
    expected_label = 2 * e_label / (e_caption + e_label)
    assert weights["label"].item() == pytest.approx(expected_label, rel=1e-6)
    assert weights["caption"].item() + weights["label"].item() == pytest.approx(2.0)
    assert weights["label"].item() > 1.0  # the task whose loss fell slower gets more weight


def test_dwa_keeps_the_history_of_a_task_not_seen_this_epoch() -> None:
    w = DWAWeighting(NAMES)
    _epoch(w, [2.0], [1.0])
    _epoch(w, [1.0], [1.0])
    before = w.history.clone()
    w({"caption": torch.tensor(0.5)})
    w.epoch_end()  # label not seen: its history stays
    assert w.history[:, 1].tolist() == before[:, 1].tolist()
    assert w.history[:, 0].tolist() == [1.0, 0.5]


# ---- RLW --------------------------------------------------------------------------------------
def test_rlw_weights_are_random_positive_and_reproducible() -> None:
    a, b = RandomWeighting(NAMES, seed=3), RandomWeighting(NAMES, seed=3)
    draws = [a(_losses(1.0, 1.0))[1] for _ in range(20)]
    again = [b(_losses(1.0, 1.0))[1] for _ in range(20)]
    for weights, same in zip(draws, again):
        assert sum(v.item() for v in weights.values()) == pytest.approx(2.0)
        assert all(v.item() > 0 for v in weights.values())
        assert {k: v.item() for k, v in weights.items()} == {k: v.item() for k, v in same.items()}
    labels = {round(w["label"].item(), 6) for w in draws}
    assert len(labels) == 20  # a fresh draw every step
    a.eval()
    assert [v.item() for v in a(_losses(1.0, 1.0))[1].values()] == [1.0, 1.0]


# ---- GradNorm ---------------------------------------------------------------------------------
def test_gradnorm_update_moves_toward_equal_gradient_norms() -> None:
    w = GradNormWeighting(NAMES, alpha=1.5, lr=0.001)
    weights, norms, rates = torch.ones(2), torch.tensor([10.0, 1.0]), torch.ones(2)
    gaps = []
    for _ in range(300):
        weights = w.update(weights, norms, rates)
        gaps.append(abs((weights * norms)[0] - (weights * norms)[1]).item())
        assert weights.sum().item() == pytest.approx(2.0, rel=1e-5)
    assert gaps[0] < 9.0 and gaps[-1] < 0.2  # from |10 - 1| to nearly equal
    assert (weights * norms)[0].item() == pytest.approx((weights * norms)[1].item(), rel=0.1)


def test_gradnorm_pushes_the_slower_task_by_alpha() -> None:
    """Equal norms but task 0 has trained less (ratio 2 vs 1): its target norm is larger."""
    w = GradNormWeighting(NAMES, alpha=1.0, lr=0.01)
    weights, norms, rates = torch.ones(2), torch.ones(2), torch.tensor([1.0, 0.5])
    for _ in range(500):
        weights = w.update(weights, norms, rates)
    g = weights * norms
    r = rates / rates.mean()
    assert (g[0] / g[1]).item() == pytest.approx((r[0] / r[1]).item(), rel=0.05)  # G_i ~ r_i^1


class _TwoTasks(nn.Module):
    """A shared layer and two heads whose losses have very different gradient scales."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 4)
        self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 1)])

    def losses(self) -> dict[str, torch.Tensor]:
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
        z = torch.tanh(self.shared(x))
        return {
            "caption": 10.0 * self.heads[0](z).pow(2).mean(),
            "label": 0.1 * self.heads[1](z).pow(2).mean(),
        }

    def shared_parameters(self) -> SharedParameters:
        params = list(self.shared.parameters())
        return SharedParameters(all=params, last=params)


def test_gradnorm_backward_is_the_plain_backward_then_updates_the_weights() -> None:
    model, w = _TwoTasks(), GradNormWeighting(NAMES, lr=0.05)
    losses = model.losses()
    total, _ = w(losses)
    total.backward(retain_graph=True)
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    w.backward(losses, total, model.shared_parameters(), lambda t: t.backward())
    assert all(torch.equal(a, p.grad) for a, p in zip(plain, model.parameters()))
    new = w.task_weights.tolist()
    assert new[0] < 1.0 < new[1]  # the task with the larger gradient is damped
    assert sum(new) == pytest.approx(2.0)


# ---- PCGrad -----------------------------------------------------------------------------------
def test_pcgrad_removes_the_conflicting_component() -> None:
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    p1, p2 = project_conflicting([g1, g2])
    assert p1.tolist() == pytest.approx([0.5, 0.5])
    assert p2.tolist() == pytest.approx([0.0, 1.0])
    assert torch.dot(p1, g2).item() == pytest.approx(0.0, abs=1e-7)
    assert torch.dot(p2, g1).item() == pytest.approx(0.0, abs=1e-7)


def test_pcgrad_leaves_agreeing_gradients_alone() -> None:
    grads = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.1]), torch.tensor([0.0, 3.0])]
    assert all(torch.equal(a, b) for a, b in zip(grads, project_conflicting(grads)))


def test_pcgrad_three_tasks_project_in_turn() -> None:
    """Task 0 conflicts with both others: each projection is off the original gradient."""
    g = [
        torch.tensor([1.0, 0.0, 0.0]),
        torch.tensor([-1.0, 1.0, 0.0]),
        torch.tensor([-1.0, 0.0, 1.0]),
    ]
    order = torch.Generator().manual_seed(0)
    out = project_conflicting(g, order)[0]
    # By hand, for either order: after the first projection g0 = (0.5, 0.5, 0) or (0.5, 0, 0.5);
    # its dot with the other gradient is -0.5, so it is projected again.
    candidates = []
    for first, second in ((g[1], g[2]), (g[2], g[1])):
        x = g[0] - torch.dot(g[0], first) / first.square().sum() * first
        x = x - torch.dot(x, second) / second.square().sum() * second
        candidates.append(x.tolist())
    assert any(out.tolist() == pytest.approx(c) for c in candidates)


def test_pcgrad_backward_puts_the_surgered_gradient_on_shared_parameters() -> None:
    model, w = _TwoTasks(), PCGradWeighting(NAMES)
    losses = model.losses()
    total, _ = w(losses)
    shared = model.shared_parameters().all
    per_task = [torch.autograd.grad(loss, shared, retain_graph=True) for loss in losses.values()]
    flat = [torch.cat([g.flatten() for g in grads]) for grads in per_task]
    expected = torch.stack(project_conflicting(flat, torch.Generator().manual_seed(0))).sum(0)
    head_grads = [
        torch.autograd.grad(total, list(h.parameters()), retain_graph=True) for h in model.heads
    ]
    w.backward(losses, total, model.shared_parameters(), lambda t: t.backward())
    got = torch.cat([p.grad.flatten() for p in shared])
    assert torch.allclose(got, expected, atol=1e-6)
    for head, grads in zip(model.heads, head_grads):  # task-specific parameters: plain grads
        assert all(torch.allclose(p.grad, g) for p, g in zip(head.parameters(), grads))


def test_pcgrad_with_conflict_changes_the_shared_gradient() -> None:
    shared = nn.Parameter(torch.tensor([1.0, 1.0]))
    losses = {"caption": shared[0] - shared[1], "label": shared[1] - 0.5 * shared[0]}
    w = PCGradWeighting(NAMES)
    total, _ = w(losses)
    w.backward(losses, total, SharedParameters([shared], [shared]), lambda t: t.backward())
    # g_caption = (1, -1), g_label = (-0.5, 1): they conflict (dot -1.5)
    g1, g2 = torch.tensor([1.0, -1.0]), torch.tensor([-0.5, 1.0])
    p1 = g1 - torch.dot(g1, g2) / g2.square().sum() * g2
    p2 = g2 - torch.dot(g2, g1) / g1.square().sum() * g1
    assert shared.grad.tolist() == pytest.approx((p1 + p2).tolist())
    assert shared.grad.tolist() != pytest.approx((g1 + g2).tolist())


def test_gradient_weightings_backpropagate_plainly_in_warmup() -> None:
    shared = nn.Parameter(torch.tensor([1.0, 1.0]))
    losses = {"caption": shared[0] - shared[1], "label": shared[1] - 0.5 * shared[0]}
    w = PCGradWeighting(NAMES, warmup_steps=1)
    total, _ = w(losses)
    w.backward(losses, total, SharedParameters([shared], [shared]), lambda t: t.backward())
    assert shared.grad.tolist() == pytest.approx([0.5, 0.0])  # (1, -1) + (-0.5, 1)


def test_gradient_weightings_honour_the_loss_scale() -> None:
    """fp16 loss scaling and gradient accumulation multiply what is backpropagated by a factor:
    PCGrad's gradients scale with it, GradNorm's weight update does not change."""
    for scale in (1.0, 0.25):
        model, pcgrad = _TwoTasks(), PCGradWeighting(NAMES)
        losses = model.losses()
        total, _ = pcgrad(losses)
        pcgrad.backward(
            losses, total * scale, model.shared_parameters(), lambda t: t.backward(), scale
        )
        grads = [p.grad.clone() for p in model.parameters()]
        if scale == 1.0:
            reference = grads
        else:
            assert all(torch.allclose(g, scale * r, atol=1e-7) for g, r in zip(grads, reference))

    updated = []
    for scale in (1.0, 1024.0):
        model, gradnorm = _TwoTasks(), GradNormWeighting(NAMES, lr=0.05)
        losses = model.losses()
        total, _ = gradnorm(losses)
        gradnorm.backward(
            losses, total * scale, model.shared_parameters(), lambda t: t.backward(), scale
        )
        updated.append(gradnorm.task_weights.clone())
    assert torch.allclose(updated[0], updated[1])


def test_gradient_weighting_under_deepspeed_is_a_clear_error(compose_config, synth_facts) -> None:
    """DeepSpeed bypasses LightningModule.backward: refuse rather than silently sum."""
    from types import SimpleNamespace

    from mmtrain.build import build_module
    from mmtrain.errors import MMTrainError

    module = build_module(compose_config("loss_weighting=pcgrad"), synth_facts)

    class DeepSpeedStrategy:  # stands in for Lightning's (deepspeed is not installed here)
        pass

    module.trainer = SimpleNamespace(strategy=DeepSpeedStrategy())
    with pytest.raises(MMTrainError, match=r"PCGradWeighting needs per-task gradients"):
        module.setup("fit")
    module.trainer = SimpleNamespace(strategy=object())
    module.setup("fit")  # any other strategy is fine
