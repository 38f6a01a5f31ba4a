"""Numbers of the parts pinned against independent, hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.modules import randomize_batchnorm

from mmtrain.contracts import Features
from mmtrain.encoders.audio import MelCNNEncoder
from mmtrain.encoders.image import ResNetEncoder, SmallCNNEncoder
from mmtrain.encoders.text import GRUTextEncoder
from mmtrain.fusions.attention import AttentionFusion
from mmtrain.fusions.concat import ConcatFusion
from mmtrain.heads.classification import ClassificationHead
from mmtrain.loss_weighting.fixed import FixedWeighting

LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]
TARGETS = [0, 2]


def _cross_entropy(logits: list[list[float]], targets: list[int], smoothing: float = 0.0) -> float:
    """Mean cross-entropy in plain Python: -log softmax, with uniform label smoothing."""
    total = 0.0
    for row, t in zip(logits, targets):
        lse = math.log(sum(math.exp(x) for x in row))
        nll = [lse - x for x in row]
        total += (1 - smoothing) * nll[t] + smoothing * sum(nll) / len(row)
    return total / len(logits)


# ---- heads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_classification_loss_is_cross_entropy(smoothing):
    head = ClassificationHead(in_dim=4, num_classes=3, label_smoothing=smoothing)
    loss = head.loss(torch.tensor(LOGITS), torch.tensor(TARGETS))
    assert loss.item() == pytest.approx(_cross_entropy(LOGITS, TARGETS, smoothing), rel=1e-6)
    if smoothing == 0.0:  # pinned: (lse([2, 1, .1]) - 2 + lse([.5, 2.5, -1]) + 1) / 2
        assert loss.item() == pytest.approx(2.035104, abs=1e-5)


def test_classification_metrics_and_decode():
    head = ClassificationHead(in_dim=4, num_classes=3, class_names=["a", "b", "c"])
    metrics = head.make_metrics()
    head.update_metrics(metrics, torch.tensor(LOGITS), torch.tensor(TARGETS))
    values = {k: v.item() for k, v in metrics.compute().items()}
    # predictions [0, 1] vs targets [0, 2]: one of two right; per-class F1 = 1, 0, 0
    assert values["accuracy"] == pytest.approx(0.5)
    assert values["f1"] == pytest.approx(1 / 3)
    assert head.decode(torch.tensor(LOGITS)) == ["a", "b"]
    assert ClassificationHead(in_dim=4, num_classes=3).decode(torch.tensor(LOGITS)) == [0, 1]


def test_classification_head_pools_real_tokens_only():
    torch.manual_seed(0)
    head = ClassificationHead(in_dim=2, num_classes=2, hidden_dim=0, dropout=0.0).eval()
    linear = head.mlp[-1]
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e4, -1e4]]])  # last token is padding
    mask = torch.tensor([[True, True, False]])
    out = head(Features(tokens, mask))
    expected = linear.weight @ torch.tensor([2.0, 3.0]) + linear.bias
    torch.testing.assert_close(out[0], expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"num_classes": 3, "class_names": ["a", "b"]}, "2 class_names for num_classes=3"),
    ],
)
def test_classification_head_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassificationHead(in_dim=4, **kwargs)


# ---- loss weighting ----------------------------------------------------------------------------
def test_fixed_weighting_is_the_weighted_sum():
    weighting = FixedWeighting(["label", "caption"], weights={"label": 2.0})
    label = torch.tensor(1.5, requires_grad=True)
    caption = torch.tensor(0.25, requires_grad=True)
    total, weights = weighting({"label": label, "caption": caption})
    assert total.item() == pytest.approx(2.0 * 1.5 + 1.0 * 0.25)
    assert {k: v.item() for k, v in weights.items()} == {"label": 2.0, "caption": 1.0}
    total.backward()
    assert (label.grad.item(), caption.grad.item()) == (2.0, 1.0)
    # A batch without a caption target: only the label loss counts.
    total, weights = weighting({"label": torch.tensor(0.5)})
    assert total.item() == pytest.approx(1.0) and set(weights) == {"label"}


def test_fixed_weighting_rejects_bad_weights():
    with pytest.raises(ValueError, match=r"unknown tasks \['labl'\].*\['label'\]"):
        FixedWeighting(["label"], weights={"labl": 2.0})
    with pytest.raises(ValueError, match="must be >= 0"):
        FixedWeighting(["label"], weights={"label": -1.0})
    with pytest.raises(ValueError, match="no task losses"):
        FixedWeighting(["label"])({})


# ---- Features ----------------------------------------------------------------------------------
def test_features_pooled_is_the_masked_mean():
    tokens = torch.tensor(
        [[[1.0, 10.0], [3.0, 30.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]]
    )
    mask = torch.tensor([[True, True, False], [False, False, False]])
    pooled = Features(tokens, mask).pooled()
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 20.0], [0.0, 0.0]]))
    assert not torch.isnan(pooled).any()
    assert Features(tokens, mask).present().tolist() == [True, False]
    torch.testing.assert_close(Features(tokens).pooled(), tokens.mean(dim=1))
    assert Features(tokens).present().tolist() == [True, True]


# ---- fusions -----------------------------------------------------------------------------------
def _attention_fusion() -> AttentionFusion:
    torch.manual_seed(0)
    return AttentionFusion({"image": 4, "text": 6}, dim=5, hidden_dim=3).eval()


def _image_text():
    g = torch.Generator().manual_seed(1)
    image = Features(torch.randn(2, 3, 4, generator=g))
    text = Features(
        torch.randn(2, 2, 6, generator=g), torch.tensor([[False, False], [True, False]])
    )
    return image, text


def test_attention_fusion_weights_by_hand():
    fusion = _attention_fusion()
    image, text = _image_text()
    with torch.no_grad():
        out = fusion({"image": image, "text": text})
        v_img = fusion.proj["image"](image.tokens.mean(dim=1))  # (2, 5)
        v_txt = fusion.proj["text"](text.tokens[:, 0])  # sample 1 has one real text token
        s_img, s_txt = fusion.scorer(v_img)[:, 0], fusion.scorer(v_txt)[:, 0]
    assert out.tokens.shape == (2, 1, 5) and out.mask is None
    # Sample 0: its text is fully masked, so it gets weight 0: the image projection alone.
    torch.testing.assert_close(out.tokens[0, 0], v_img[0])
    # Sample 1: softmax over the two modality scores, written out.
    w_img = math.exp(s_img[1]) / (math.exp(s_img[1]) + math.exp(s_txt[1]))
    torch.testing.assert_close(out.tokens[1, 0], w_img * v_img[1] + (1 - w_img) * v_txt[1])


def test_attention_fusion_absent_modality_is_weight_zero():
    fusion = _attention_fusion()
    image, _ = _image_text()
    with torch.no_grad():
        out = fusion({"image": image})
        torch.testing.assert_close(out.tokens[:, 0], fusion.proj["image"](image.tokens.mean(1)))
    with pytest.raises(ValueError, match="no known modality"):
        fusion({"video": image})


def test_attention_fusion_sample_with_nothing_is_zero_and_has_finite_grads():
    fusion = _attention_fusion().train()
    _, text = _image_text()
    out = fusion({"text": text})  # sample 0 has no real token in any modality
    torch.testing.assert_close(out.tokens[0], torch.zeros(1, 5))
    out.tokens.sum().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_concat_fusion_concatenates_tokens_and_masks():
    torch.manual_seed(0)
    fusion = ConcatFusion({"image": 4, "text": 6}, dim=5).eval()
    image, text = _image_text()
    with torch.no_grad():
        out = fusion({"image": image, "text": text})
        expected_img = fusion.proj["image"](image.tokens) + fusion.modality_embed["image"]
    assert out.tokens.shape == (2, 3 + 2, 5)
    torch.testing.assert_close(out.tokens[:, :3], expected_img)
    assert out.mask.tolist() == [[True] * 3 + [False, False], [True] * 3 + [True, False]]
    # An absent modality contributes no tokens; all real tokens -> mask None.
    alone = fusion({"image": image})
    assert alone.tokens.shape == (2, 3, 5) and alone.mask is None
    with pytest.raises(ValueError, match="no known modality"):
        fusion({})


# ---- encoders ----------------------------------------------------------------------------------
def test_gru_padded_and_unpadded_samples_give_the_same_features():
    torch.manual_seed(0)
    encoder = GRUTextEncoder(vocab_size=20, embed_dim=8, hidden_dim=6).eval()  # bidirectional
    padded = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    mask = padded != 0
    with torch.no_grad():
        batch = encoder(padded, mask)
        for i, n in enumerate((3, 2)):
            alone = encoder(padded[i : i + 1, :n])  # no padding at all, mask None
            torch.testing.assert_close(batch.tokens[i, :n], alone.tokens[0])
    assert batch.tokens.shape == (2, 5, 12) and torch.equal(batch.mask, mask)


def test_gru_accepts_an_empty_text():
    encoder = GRUTextEncoder(vocab_size=20, embed_dim=8, hidden_dim=6).eval()
    ids = torch.tensor([[5, 6], [0, 0]])
    out = encoder(ids, ids != 0)
    assert torch.isfinite(out.tokens).all() and out.present().tolist() == [True, False]


def test_mel_cnn_downsamples_the_frame_mask():
    encoder = MelCNNEncoder(n_mels=40, channels=[8, 16, 32]).eval()
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0], mask[1, :30] = True, True
    out = encoder(torch.randn(2, 40, 50), mask)
    # Three blocks, each halving time with ceil: 50 -> 25 -> 13 -> 7 and 30 -> 15 -> 8 -> 4.
    assert out.tokens.shape == (2, 7, 32)
    assert out.mask.sum(dim=1).tolist() == [7, 4]
    with pytest.raises(ValueError, match="too small"):
        MelCNNEncoder(n_mels=4, channels=[8, 16, 32])


def test_mel_cnn_padded_and_unpadded_clips_give_the_same_features():
    frames = 21  # not a multiple of 8 (three blocks); see the aligned control test below
    torch.manual_seed(0)
    encoder = MelCNNEncoder(n_mels=40, channels=[8, 16, 32]).eval()
    randomize_batchnorm(encoder)
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(1, 40, frames, generator=g)
    padded = torch.cat([clip, torch.randn(1, 40, 40 - frames, generator=g)], dim=-1)
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, :frames] = True
    with torch.no_grad():
        alone = encoder(clip)
        batch = encoder(padded, mask)
    n = alone.tokens.shape[1]
    assert batch.mask[0].sum().item() == n
    torch.testing.assert_close(batch.tokens[:, :n], alone.tokens)


def test_mel_cnn_aligned_padding_is_invariant():
    """The control for the test above: a clip of 24 frames (3 blocks -> multiple of 8)."""
    torch.manual_seed(0)
    encoder = MelCNNEncoder(n_mels=40, channels=[8, 16, 32]).eval()
    randomize_batchnorm(encoder)
    clip = torch.randn(1, 40, 24)
    padded = torch.cat([clip, torch.randn(1, 40, 16)], dim=-1)
    mask = torch.arange(40)[None] < 24
    with torch.no_grad():
        torch.testing.assert_close(encoder(padded, mask).tokens[:, :3], encoder(clip).tokens)


def test_small_cnn_grid_tokens():
    encoder = SmallCNNEncoder(channels=[4, 8], grid=None)  # each block halves
    out = encoder(torch.randn(2, 3, 64, 64))
    assert out.tokens.shape == (2, 16 * 16, 8) and out.mask is None and encoder.out_dim == 8
    out = SmallCNNEncoder(channels=[4, 8])(torch.randn(2, 3, 64, 64))  # grid=4: at most 4x4
    assert out.tokens.shape == (2, 4 * 4, 8)
    with pytest.raises(ValueError, match="non-empty and positive"):
        SmallCNNEncoder(channels=[])


def test_resnet_freeze_keeps_trunk_fixed():
    encoder = ResNetEncoder("resnet18", freeze=True).train()
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.trunk.training  # BatchNorm statistics stay fixed
    out = encoder(torch.randn(1, 3, 64, 64))
    assert out.tokens.shape == (1, 4, 512) and not out.tokens.requires_grad
    with pytest.raises(ValueError, match="arch must be one of"):
        ResNetEncoder("resnet9")


# ---- pretrained torchvision weights: read from the local cache, never downloaded ---------------
def test_pretrained_weights_missing_is_a_clear_error(tmp_path, monkeypatch):
    from mmtrain.encoders.image import ResNetEncoder, ViTEncoder

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match=r"resnet18 not found at .*checkpoints/resnet18-.*\.pth"):
        ResNetEncoder("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="image_size=224"):
        ViTEncoder("vit_b_16", pretrained=True, image_size=64)


def test_pretrained_weights_are_loaded_from_the_cache(tmp_path, monkeypatch):
    from urllib.parse import urlparse

    import torchvision

    from mmtrain.encoders.image import ResNetEncoder

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    file = tmp_path / "checkpoints" / urlparse(url).path.split("/")[-1]
    file.parent.mkdir()
    torch.manual_seed(123)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), file)

    encoder = ResNetEncoder("resnet18", pretrained=True)
    assert torch.equal(encoder.trunk[0].weight, reference.conv1.weight)
    assert torch.equal(encoder.trunk[-1][-1].bn2.running_var, reference.layer4[-1].bn2.running_var)


def test_vit_gives_class_and_patch_tokens():
    from mmtrain.encoders.image import ViTEncoder

    torch.manual_seed(0)
    encoder = ViTEncoder("vit_b_32", image_size=64).eval()
    out = encoder(torch.randn(2, 3, 64, 64))
    assert out.tokens.shape == (2, 1 + (64 // 32) ** 2, 768) and out.mask is None
