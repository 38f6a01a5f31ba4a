"""RetrievalRecall and the contrastive loss pieces, pinned on hand-made numbers and references."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmtrain.heads.contrastive import (
    ContrastiveProjection,
    LogitScale,
    clip_loss,
    gather_with_grad,
)
from mmtrain.metrics.retrieval import RetrievalRecall, id_to_int


def unit(degrees: float, norm: float = 1.0) -> list[float]:
    """A 2-d vector at an angle: the cosine of two of them is the cosine of the angle between."""
    rad = math.radians(degrees)
    return [norm * math.cos(rad), norm * math.sin(rad)]


# ---- RetrievalRecall on hand-made embeddings ---------------------------------------------------
# Images A (0 deg), B (90 deg), C (180 deg); five captions, two of A, two of B, one of C. Ranking by
# cosine = ranking by the angular distance. Norms differ on purpose: only after L2 normalisation
# are the rankings the ones below (unnormalised, image A would rank t4 first: 3 cos 50 > cos 10).
#   t0 (A) at  10 deg   t1 (A) at 100 deg (closer to B)   t2 (B) at 75 deg
#   t3 (B) at 200 deg (closer to C)   t4 (C) at 50 deg (between A and B)
# image -> text, distances:
#   A: t0 10, t4 50, t2 75, t1 100, t3 160 -> best own text t0 at rank 1
#   B: t1 10, t2 15, t4 40, t0 80, t3 110  -> best own text t2 at rank 2
#   C: t3 20, t1 80, t2 105, t4 130, t0 170 -> own text t4 at rank 4
#   R@1 = 1/3, R@2 = 2/3, R@3 = 2/3, R@10 = 1 (10 > 5 candidates)
# text -> image, distances to A, B, C:
#   t0: 10, 80, 170 -> A rank 1      t1: 100, 10, 80 -> A rank 3
#   t2: 75, 15, 105 -> B rank 1      t3: 160, 110, 20 -> B rank 2
#   t4: 50, 40, 130 -> C rank 3
#   R@1 = 2/5, R@2 = 3/5, R@3 = 5/5, R@10 = 1
IMAGES = {"A": unit(0, 0.5), "B": unit(90, 3.0), "C": unit(180, 2.0)}
PAIRS = [("A", 10, 1.0), ("A", 100, 4.0), ("B", 75, 0.5), ("B", 200, 2.0), ("C", 50, 3.0)]
EXPECTED = {
    "i2t_r1": 1 / 3,
    "i2t_r2": 2 / 3,
    "i2t_r3": 2 / 3,
    "i2t_r10": 1.0,
    "t2i_r1": 2 / 5,
    "t2i_r2": 3 / 5,
    "t2i_r3": 1.0,
    "t2i_r10": 1.0,
}


def hand_made() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The pairs above; the second pair of each image carries a garbage image embedding, which
    the metric must ignore (the first pair of an image gives its embedding)."""
    image_emb, seen = [], set()
    for image, _, _ in PAIRS:
        image_emb.append(unit(135) if image in seen else IMAGES[image])
        seen.add(image)
    text_emb = [unit(angle, norm) for _, angle, norm in PAIRS]
    return torch.tensor(image_emb), torch.tensor(text_emb), [image for image, _, _ in PAIRS]


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: value.item() for key, value in result.items()}


def test_recall_hand_made() -> None:
    images, texts, ids = hand_made()
    metric = RetrievalRecall(ks=(1, 2, 3, 10))
    metric.update(images, texts, ids)
    assert as_floats(metric.compute()) == pytest.approx(EXPECTED)


def test_recall_default_keys_and_tensor_ids() -> None:
    images, texts, ids = hand_made()
    metric = RetrievalRecall()
    metric.update(images, texts, torch.tensor([0, 0, 1, 1, 2]))
    result = as_floats(metric.compute())
    assert list(result) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    # K = 5 covers every candidate (5 texts, 3 images): recall 1
    assert result == pytest.approx(
        {"i2t_r1": 1 / 3, "i2t_r5": 1, "i2t_r10": 1, "t2i_r1": 2 / 5, "t2i_r5": 1, "t2i_r10": 1}
    )


def test_recall_ties_are_pessimistic() -> None:
    # images A (1, 0), B (0, 1); t0 (A) at 45 deg is equally close to both, t1 (B) is B.
    # text -> image: t0 ties A with B -> counted at rank 2; t1 rank 1. R@1 = 1/2, R@2 = 1.
    # image -> text: A ranks t0 (cos 45) over t1 (cos 90); B ranks t1 (1) over t0: both hit @1.
    metric = RetrievalRecall(ks=(1, 2))
    metric.update(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]]), ["a", "b"]
    )
    assert as_floats(metric.compute()) == {
        "i2t_r1": 1.0,
        "i2t_r2": 1.0,
        "t2i_r1": 0.5,
        "t2i_r2": 1.0,
    }
    # all-equal embeddings: every positive ties with every negative, no hit below K = 2
    metric = RetrievalRecall(ks=(1, 2))
    metric.update(torch.ones(2, 3), torch.ones(2, 3), ["a", "b"])
    assert as_floats(metric.compute()) == {
        "i2t_r1": 0.0,
        "i2t_r2": 1.0,
        "t2i_r1": 0.0,
        "t2i_r2": 1.0,
    }


def brute_force(
    images: torch.Tensor, texts: torch.Tensor, ids: list[int], ks: tuple[int, ...]
) -> dict[str, float]:
    """Independent reference: Python loops, a sort per query, positives placed after ties."""

    def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
        return sum(a * b for a, b in zip(u.tolist(), v.tolist())) / (
            math.sqrt(sum(a * a for a in u.tolist())) * math.sqrt(sum(b * b for b in v.tolist()))
        )

    first: dict[int, int] = {}
    for pair, image_id in enumerate(ids):
        first.setdefault(image_id, pair)
    i2t_ranks, t2i_ranks = [], []
    for image_id, pair in first.items():
        ranked = sorted(
            range(len(ids)), key=lambda j: (-cosine(images[pair], texts[j]), ids[j] == image_id)
        )
        i2t_ranks.append(next(r for r, j in enumerate(ranked) if ids[j] == image_id))
    for j, image_id in enumerate(ids):
        ranked = sorted(first, key=lambda i: (-cosine(images[first[i]], texts[j]), i == image_id))
        t2i_ranks.append(ranked.index(image_id))
    result = {}
    for name, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        for k in ks:
            result[f"{name}_r{k}"] = sum(r < k for r in ranks) / len(ranks)
    return result


def random_split(seed: int, num_pairs: int = 60, num_images: int = 20) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(num_images, (num_pairs,), generator=generator)
    # float64: near-ties cannot flip between the metric's matmul and the reference's loops
    images = torch.randn(num_pairs, 8, generator=generator, dtype=torch.float64)
    texts = images + 1.5 * torch.randn(num_pairs, 8, generator=generator, dtype=torch.float64)
    return images, texts, ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force(seed: int) -> None:
    images, texts, ids = random_split(seed)
    ks = (1, 3, 5, 10, 100)
    metric = RetrievalRecall(ks=ks)
    metric.update(images, texts, ids)
    expected = brute_force(images, texts, ids.tolist(), ks)
    assert as_floats(metric.compute()) == pytest.approx(expected)
    assert 0 < expected["i2t_r1"] < 1 and 0 < expected["t2i_r5"] < 1  # not a degenerate case


def test_recall_batches_and_chunks_give_the_same_result() -> None:
    images, texts, ids = random_split(3)
    one = RetrievalRecall(ks=(1, 5, 10))
    one.update(images, texts, ids)
    reference = as_floats(one.compute())
    for chunk_size in (1, 7, 1000):
        metric = RetrievalRecall(ks=(1, 5, 10), chunk_size=chunk_size)
        for rows in (slice(0, 13), slice(13, 14), slice(14, 60)):
            metric.update(images[rows], texts[rows], ids[rows].tolist())  # ints as a list
        assert as_floats(metric.compute()) == reference
    one.reset()
    one.update(images[:20], texts[:20], ids[:20])
    assert as_floats(one.compute()) == pytest.approx(
        brute_force(images[:20], texts[:20], ids[:20].tolist(), (1, 5, 10))
    )


def test_string_ids_hash_stably() -> None:
    # blake2b, not the per-process salted hash(): ranks agree on the keys
    # The same key in other processes, whatever their hash salt (as on the ranks of DDP).
    name = "COCO_val2014_000000000042.jpg"
    script = f"from mmtrain.metrics.retrieval import id_to_int; print(id_to_int({name!r}))"
    keys = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert keys == {str(id_to_int(name))}
    assert id_to_int("a") != id_to_int("b")
    assert id_to_int(7) == 7


def test_recall_errors() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(3, 5\)"):
        RetrievalRecall().update(torch.zeros(3, 4), torch.zeros(3, 5), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(2,\)"):
        RetrievalRecall().update(torch.zeros(3, 4), torch.zeros(3, 4), ["a", "b"])
    with pytest.raises(ValueError, match="integer tensor"):
        RetrievalRecall().update(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2))
    metric = RetrievalRecall()
    metric.update(torch.zeros(2, 4), torch.zeros(2, 4), ["a", "b"])
    with pytest.raises(ValueError, match="width 5 differs"):
        metric.update(torch.zeros(2, 5), torch.zeros(2, 5), ["a", "b"])
    with pytest.raises(ValueError, match="ks must"):
        RetrievalRecall(ks=(1, 0))
    with pytest.raises(ValueError, match="repeat"):
        RetrievalRecall(ks=(1, 1))
    # torchmetrics warns first, then our compute() raises
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="before any update"):
        RetrievalRecall().compute()
    nan = RetrievalRecall()
    nan.update(torch.tensor([[1.0, 0.0], [float("nan"), 0.0]]), torch.ones(2, 2), ["a", "b"])
    with pytest.raises(ValueError, match=r"image_emb holds NaN/inf in pairs \[1\]"):
        nan.compute()


# ---- clip_loss ---------------------------------------------------------------------------------
def log1p_exp(x: float) -> float:
    return math.log(1.0 + math.exp(x))


def test_clip_loss_hand_computed() -> None:
    # normalised: I0 = (1, 0), I1 = (0, 1), T0 = (1, 0), T1 = (0.6, 0.8); scale exp(log 2) = 2
    # logits (images x texts) = 2 * [[1, 0.6], [0, 0.8]] = [[2, 1.2], [0, 1.6]]
    # -log softmax of the diagonal, a two-way softmax: -log(e^a / (e^a + e^b)) = log(1 + e^(b-a))
    # image -> text rows:    [2, 1.2] -> log(1 + e^-0.8);  [0, 1.6] -> log(1 + e^-1.6)
    # text -> image columns: [2, 0]   -> log(1 + e^-2);    [1.2, 1.6] -> log(1 + e^-0.4)
    images = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # norms 3 and 0.5: normalised inside
    texts = torch.tensor([[2.0, 0.0], [3.0, 4.0]])
    i2t = (log1p_exp(-0.8) + log1p_exp(-1.6)) / 2
    t2i = (log1p_exp(-2.0) + log1p_exp(-0.4)) / 2
    loss = clip_loss(images, texts, torch.tensor(math.log(2.0)))
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    # the scale is clamped at 100: exp(log 1000) acts as 100
    clamped = clip_loss(images, texts, torch.tensor(math.log(1000.0)))
    at_100 = clip_loss(images, texts, torch.tensor(math.log(100.0)))
    assert clamped.item() == pytest.approx(at_100.item(), rel=1e-6)
    assert at_100.item() < clip_loss(images, texts, torch.tensor(math.log(50.0))).item()


def test_clip_loss_symmetric_and_differentiable() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 5, generator=generator, requires_grad=True)
    texts = torch.randn(6, 5, generator=generator, requires_grad=True)
    scale = LogitScale()
    loss = clip_loss(images, texts, scale())
    assert loss.item() == pytest.approx(clip_loss(texts, images, scale()).item(), rel=1e-6)
    loss.backward()
    for grad in (images.grad, texts.grad, scale.log_scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_clip_loss_multi_positive_hand_computed() -> None:
    # pairs 0 and 1 are two captions of one image (ids 7, 7, 9; two augmentations of the image,
    # so two different image embeddings); scale exp(0) = 1
    # images I0 = (1, 0), I1 = (0.8, 0.6), I2 = (0, 1); texts T0 = (1, 0), T1 = (0.6, 0.8),
    # T2 = (0, 1). Cosines, images x texts: I0 [1, .6, 0], I1 [.8, .96, .6], I2 [0, .8, 1].
    # Targets (rows and columns alike): pairs 0 and 1 -> [.5, .5, 0], pair 2 -> [0, 0, 1].
    # Soft cross-entropy of a row: -sum(target * (logit - logsumexp(row))) =
    # logsumexp(row) - (mean logit of the positives):
    #   image -> text rows:    I0: lse(1, .6, 0) - .8;  I1: lse(.8, .96, .6) - .88;
    #                          I2: lse(0, .8, 1) - 1
    #   text -> image columns: T0 [1, .8, 0]: lse - .9;  T1 [.6, .96, .8]: lse - .78;
    #                          T2 [0, .6, 1] (image 2 only): lse - 1
    def lse(*values: float) -> float:
        return math.log(sum(math.exp(v) for v in values))

    i2t = (lse(1, 0.6, 0) - 0.8 + lse(0.8, 0.96, 0.6) - 0.88 + lse(0, 0.8, 1) - 1) / 3
    t2i = (lse(1, 0.8, 0) - 0.9 + lse(0.6, 0.96, 0.8) - 0.78 + lse(0, 0.6, 1) - 1) / 3
    images = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    loss = clip_loss(images, texts, torch.tensor(0.0), image_ids=torch.tensor([7, 7, 9]))
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    # the one-positive CLIP loss, by hand: the diagonal only
    plain_i2t = (lse(1, 0.6, 0) - 1 + lse(0.8, 0.96, 0.6) - 0.96 + lse(0, 0.8, 1) - 1) / 3
    plain_t2i = (lse(1, 0.8, 0) - 1 + lse(0.6, 0.96, 0.8) - 0.96 + lse(0, 0.6, 1) - 1) / 3
    plain = clip_loss(images, texts, torch.tensor(0.0))
    assert plain.item() == pytest.approx((plain_i2t + plain_t2i) / 2, rel=1e-6)
    # distinct ids: exactly the one-positive CLIP loss
    distinct = clip_loss(images, texts, torch.tensor(0.0), image_ids=torch.tensor([1, 2, 3]))
    assert distinct.item() == pytest.approx(plain.item(), rel=1e-6)


def test_clip_loss_errors() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        clip_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor(1.0))
    with pytest.raises(ValueError, match="scalar"):
        clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(2,\), got \(3,\)"):
        clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor(1.0), torch.zeros(3))


# ---- projection, temperature, gather -----------------------------------------------------------
def test_projection_and_logit_scale() -> None:
    projection = ContrastiveProjection(in_dim=12, out_dim=6)
    assert projection(torch.randn(4, 12)).shape == (4, 6)
    assert projection(torch.randn(2, 3, 12)).shape == (2, 3, 6)
    with pytest.raises(ValueError, match=r"\(\.\.\., 12\).*\(4, 10\)"):
        projection(torch.randn(4, 10))
    with pytest.raises(ValueError, match="0 and 6"):
        ContrastiveProjection(in_dim=0, out_dim=6)
    scale = LogitScale()
    assert scale().item() == pytest.approx(math.log(1 / 0.07))
    assert scale.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(math.log(500.0))
    assert scale.scale().item() == pytest.approx(100.0)
    assert "log_scale" in dict(LogitScale(learnable=False).named_buffers())
    with pytest.raises(ValueError, match="got -1"):
        LogitScale(init_temperature=-1)


def test_gather_without_distributed_is_identity() -> None:
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


# ---- a real 2-process DDP run (gloo, CPU) ------------------------------------------------------
WORLD = 2
LOCAL = 3  # pairs per rank


def ddp_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The full batch of both ranks: rank r holds rows r * LOCAL ... (r + 1) * LOCAL - 1."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * LOCAL, 4, generator=generator)
    texts = torch.randn(WORLD * LOCAL, 4, generator=generator)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])  # a duplicate image inside a rank and across none
    return images, texts, ids


def ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images, texts, ids = ddp_data()
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        x = torch.arange(4.0).reshape(2, 2) + 10 * rank
        x.requires_grad_(True)
        gathered = gather_with_grad(x)
        # every rank computes the same loss on the gathered rows
        (gathered * torch.arange(8.0).reshape(4, 2)).sum().backward()
        local_images = images[rows].clone().requires_grad_(True)
        local_texts = texts[rows].clone().requires_grad_(True)
        log_scale = torch.tensor(math.log(5.0), requires_grad=True)
        loss = clip_loss(local_images, local_texts, log_scale, image_ids=ids[rows])
        loss.backward()
        # uneven shards for the metric: rank 0 gets 2 pairs, rank 1 gets 4
        metric_rows = slice(0, 2) if rank == 0 else slice(2, 6)
        metric = RetrievalRecall(ks=(1, 2, 3))
        metric.update(images[metric_rows], texts[metric_rows], ids[metric_rows].tolist())
        recall = {key: value.item() for key, value in metric.compute().items()}
        torch.save(
            {
                "gathered": gathered.detach(),
                "x_grad": x.grad,
                "loss": loss.detach(),
                "image_grad": local_images.grad,
                "text_grad": local_texts.grad,
                "scale_grad": log_scale.grad,
                "recall": recall,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_with_grad_ddp(tmp_path: Path) -> None:
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # gathered values in rank order; d(sum(gathered * w))/dx_r = WORLD * w[rows of r], since
    # the all-gather's backward sums the gradients of both ranks' (identical) losses
    x_all = torch.cat([torch.arange(4.0).reshape(2, 2) + 10 * r for r in range(WORLD)])
    weights = torch.arange(8.0).reshape(4, 2)
    for rank, result in enumerate(results):
        assert torch.equal(result["gathered"], x_all)
        assert torch.equal(result["x_grad"], WORLD * weights[2 * rank : 2 * rank + 2])

    # clip_loss: each rank's loss is the single-process full-batch loss; its local rows get
    # WORLD x the full-batch gradient, so DDP's gradient average gives the full-batch gradient
    images, texts, ids = ddp_data()
    images.requires_grad_(True)
    texts.requires_grad_(True)
    log_scale = torch.tensor(math.log(5.0), requires_grad=True)
    loss = clip_loss(images, texts, log_scale, image_ids=ids)
    loss.backward()
    for rank, result in enumerate(results):
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        assert result["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        torch.testing.assert_close(result["image_grad"], WORLD * images.grad[rows])
        torch.testing.assert_close(result["text_grad"], WORLD * texts.grad[rows])
        torch.testing.assert_close(result["scale_grad"], log_scale.grad)  # not gathered

    # RetrievalRecall gathers every rank's pairs: same numbers as one process on all of them
    metric = RetrievalRecall(ks=(1, 2, 3))
    metric.update(images.detach(), texts.detach(), ids)
    expected = as_floats(metric.compute())
    assert results[0]["recall"] == expected and results[1]["recall"] == expected
