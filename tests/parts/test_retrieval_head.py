"""head/retrieval=contrastive in the model: two towers on the encoders' features, no target."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import QUIET, TINY_DATA

from mmtrain.build import build_module
from mmtrain.heads.contrastive import ContrastiveHead, clip_loss
from mmtrain.run import run


def _losses(module, batch):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        return module._task_losses(batch, "train")


def test_the_head_reads_each_tower_and_skips_batches_without_one(
    compose_config, synth_batch, synth_facts
) -> None:
    torch.manual_seed(0)
    module = build_module(compose_config("+head/retrieval=contrastive"), synth_facts).eval()
    head = module.heads["retrieval"]
    assert isinstance(head, ContrastiveHead)
    batch = synth_batch(["image", "text", "audio"], ["label"], synth_facts, batch_size=3)
    losses = _losses(module, batch)
    features = module.encode(batch)
    outputs = head(features)
    assert outputs.shape == (3, 2, 128)
    assert torch.allclose(outputs.norm(dim=-1), torch.ones(3, 2), atol=1e-5)
    ids = head.target_from_ids(batch["id"])
    expected = clip_loss(outputs[:, 0], outputs[:, 1], head.logit_scale(), ids)
    assert torch.allclose(losses["retrieval"], expected)
    # only the text tower changes with the text: the image embeddings do not
    other = dict(batch, text=batch["text"].flip(0), text_mask=batch["text_mask"].flip(0))
    assert torch.allclose(head(module.encode(other))[:, 0], outputs[:, 0])

    no_text = {k: v for k, v in batch.items() if not k.startswith("text")}
    assert "retrieval" not in _losses(module, no_text) and "label" in _losses(module, no_text)


def test_fit_logs_recall_both_ways(compose_config, tiny_data, tmp_path) -> None:
    cfg = compose_config(
        "+head/retrieval=contrastive", "debug=fdr", *TINY_DATA, *QUIET, output_dir=tmp_path
    )
    metrics = run("fit", cfg)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert 0.0 <= metrics[f"val/retrieval/{key}"] <= 1.0
    assert "train/loss/retrieval" in metrics


def test_coco_retrieval_mode_pairs_every_caption_with_its_image(tmp_path) -> None:
    """data.dataset.retrieval=true: one item per (image, caption) in every split, caption = text."""
    from helpers.coco import write_coco

    from mmtrain.data.coco import CaptionDataset

    root = tmp_path / "coco"
    write_coco(root)
    plain = CaptionDataset(str(root), "val")
    pairs = CaptionDataset(str(root), "val", retrieval=True)
    captions = sum(len(refs) for refs in plain.values("caption_references"))
    assert len(plain) < len(pairs) == captions
    assert "text" in pairs.columns and "text" not in plain.columns
    item = pairs[1]
    assert item["text"] == item["caption"] and set(item) >= {"id", "image", "text"}
    assert pairs.values("text") == [pairs[i]["caption"] for i in range(len(pairs))]


def test_sigmoid_loss_by_hand_and_a_siglip_tower_wires_its_bias(tmp_path) -> None:
    """SigLIP's pairwise sigmoid loss equals the sum over every (image, text) pair computed by
    hand, texts of the same image counting as positives; a head with ``loss: sigmoid`` on
    SigLIP towers (``output: projected``) starts from their logit scale and bias."""
    import math

    from conftest import compose_cfg

    from mmtrain.heads.contrastive import sigmoid_loss

    torch.manual_seed(0)
    images, texts = torch.randn(4, 5), torch.randn(4, 5)
    scale, bias = torch.tensor(math.log(7.0)), torch.tensor(-2.5)
    ids = torch.tensor([0, 1, 1, 2])  # texts 1 and 2 describe the same image
    want = 0.0
    for i in range(4):
        for j in range(4):
            cos = torch.nn.functional.cosine_similarity(images[i], texts[j], dim=0)
            z = 1.0 if ids[i] == ids[j] else -1.0
            want += -math.log(1 / (1 + math.exp(-z * (7.0 * float(cos) + -2.5))))
    got = sigmoid_loss(images, texts, scale, bias, ids)
    assert float(got) == pytest.approx(want / 4, rel=1e-5)
    diagonal = sigmoid_loss(images, texts, scale, bias)  # no ids: the diagonal only
    assert float(diagonal) != pytest.approx(float(got))

    from helpers.tiny_hf import tiny_siglip

    folder = tiny_siglip(tmp_path / "siglip")
    cfg = compose_cfg(
        "experiment=coco_retrieval_clip",
        f"encoder.image.model_name_or_path={folder}",
        f"encoder.text.model_name_or_path={folder}",
        "head.retrieval.loss=sigmoid",
    )
    module = build_module(cfg, {"inputs": {"text": {"vocab_size": 10, "pad_id": 0}}})
    head, tower = module.heads["retrieval"], module.encoders["image"]
    assert tower.logit_bias is not None
    assert float(head.logit_bias.detach()) == pytest.approx(tower.logit_bias)
    assert float(head.logit_scale()) == pytest.approx(tower.logit_scale)
