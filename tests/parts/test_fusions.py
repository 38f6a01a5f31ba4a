"""Every fusion preset against the fusion contract, plus numbers pinned by hand.

Generated from ``configs/fusion/*.yaml`` (a new preset is picked up with no new test), for two and
three modalities and for a modality that is present, absent from the input dict, or fully masked
for one sample (ARCHITECTURE.md: "a fusion must accept a batch in which a modality is absent or
fully masked"). A few non-default options of the presets run through the same checks.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from mmtrain.cli import config_dir
from mmtrain.contracts import Features
from mmtrain.fusions.gated import GatedFusion
from mmtrain.fusions.tensor import TensorFusion

FUSION_DIR = config_dir() / "fusion"
PRESETS = sorted(p.stem for p in FUSION_DIR.glob("*.yaml"))
# Options besides the preset defaults: (preset, overrides).
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("late", {"combine": "learned"}),
    ("transformer", {"output": "cls"}),
    ("transformer", {"cls_token": False}),
    ("film", {"target": "text"}),
]
CONFIGS = [(p, {}) for p in PRESETS] + VARIANTS
CONFIG_IDS = [p + "".join(f"[{k}={v}]" for k, v in o.items()) for p, o in CONFIGS]
# Presets whose docstring does NOT promise "fully masked for a sample == removed" (none so far).
MASKED_IS_NOT_ABSENT: set[str] = set()

IN_DIMS = {"image": 12, "text": 10, "audio": 6}
NUM_TOKENS = {"image": 4, "text": 5, "audio": 3}
MODALITY_SETS = {"2mod": ("image", "text"), "3mod": ("image", "text", "audio")}
BATCH = 3


def _fusion(preset: str, overrides: dict[str, Any], modalities: tuple[str, ...]) -> nn.Module:
    cfg = OmegaConf.merge(OmegaConf.load(FUSION_DIR / f"{preset}.yaml"), overrides)
    torch.manual_seed(0)
    fusion = instantiate(cfg, in_dims={m: IN_DIMS[m] for m in modalities})
    assert isinstance(fusion.out_dim, int)
    return fusion


def _features(modalities: tuple[str, ...]) -> dict[str, Features]:
    """Image without a mask; text and audio padded: sample 0 full, the others shorter."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for m in modalities:
        n = NUM_TOKENS[m]
        tokens = torch.randn(BATCH, n, IN_DIMS[m], generator=g)
        mask = None
        if m != "image":
            mask = torch.arange(n).expand(BATCH, n) < torch.tensor([[n], [n - 1], [n - 2]])
        out[m] = Features(tokens, mask)
    return out


def _mask_sample(f: Features, sample: int = 0) -> Features:
    mask = torch.ones(f.tokens.shape[:2], dtype=torch.bool) if f.mask is None else f.mask.clone()
    mask[sample] = False
    return Features(f.tokens, mask)


def _check_output(out: Features, fusion: nn.Module) -> None:
    assert isinstance(out, Features)
    assert out.tokens.ndim == 3 and out.tokens.shape[0] == BATCH
    assert out.tokens.shape[2] == fusion.out_dim
    assert torch.isfinite(out.tokens).all()
    if out.mask is not None:
        assert out.mask.dtype == torch.bool and out.mask.shape == out.tokens.shape[:2]


def _real_tokens(out: Features, sample: int) -> torch.Tensor:
    tokens = out.tokens[sample]
    return tokens if out.mask is None else tokens[out.mask[sample]]


def _cases(modalities: tuple[str, ...], case: str) -> list[tuple[str, dict[str, Features]]]:
    feats = _features(modalities)
    if case == "all_present":
        return [("all", feats)]
    if case == "absent":
        return [(m, {k: v for k, v in feats.items() if k != m}) for m in modalities]
    if case == "masked_sample":
        return [(m, {**feats, m: _mask_sample(feats[m])}) for m in modalities]
    # "nothing_sample": sample 0 has no real token in any modality.
    return [("all", {m: _mask_sample(f) for m, f in feats.items()})]


@pytest.mark.parametrize("case", ["all_present", "absent", "masked_sample", "nothing_sample"])
@pytest.mark.parametrize("modalities", MODALITY_SETS.values(), ids=MODALITY_SETS.keys())
@pytest.mark.parametrize(("preset", "overrides"), CONFIGS, ids=CONFIG_IDS)
def test_fusion_forward_backward(preset, overrides, modalities, case):
    fusion = _fusion(preset, overrides, modalities).train()
    weightless = not list(fusion.parameters())  # fusion=tokens: the gradient reaches the inputs
    for _, feats in _cases(modalities, case):
        fusion.zero_grad()
        if weightless:
            feats = {
                m: Features(f.tokens.clone().requires_grad_(), f.mask) for m, f in feats.items()
            }
        out = fusion(feats)
        _check_output(out, fusion)
        weight = torch.randn(out.tokens.shape, generator=torch.Generator().manual_seed(1))
        (out.tokens * weight).sum().backward()
        if weightless:
            assert all(torch.isfinite(f.tokens.grad).all() for f in feats.values()), preset
            continue
        grads = {n: p.grad for n, p in fusion.named_parameters() if p.grad is not None}
        assert grads, f"{preset}: no parameter got a gradient"
        bad = sorted(n for n, g in grads.items() if not torch.isfinite(g).all())
        assert not bad, f"{preset}, {case}: non-finite gradients in {bad}"
        if case == "all_present":
            missing = sorted(n for n, p in fusion.named_parameters() if p.grad is None)
            assert not missing, f"{preset}: parameters without a gradient: {missing}"


@pytest.mark.parametrize("modalities", MODALITY_SETS.values(), ids=MODALITY_SETS.keys())
@pytest.mark.parametrize(("preset", "overrides"), CONFIGS, ids=CONFIG_IDS)
def test_fully_masked_sample_is_like_the_modality_removed(preset, overrides, modalities):
    """Sample 0's real output tokens with a modality fully masked == with that modality removed."""
    if preset in MASKED_IS_NOT_ABSENT:
        pytest.skip(f"{preset} does not promise it")
    fusion = _fusion(preset, overrides, modalities).eval()
    feats = _features(modalities)
    with torch.no_grad():
        for m in modalities:
            masked = fusion({**feats, m: _mask_sample(feats[m])})
            removed = fusion({k: v for k, v in feats.items() if k != m})
            torch.testing.assert_close(
                _real_tokens(masked, 0), _real_tokens(removed, 0), atol=1e-5, rtol=1e-4
            )


@pytest.mark.parametrize("preset", PRESETS)
def test_no_known_modality_is_a_value_error(preset):
    fusion = _fusion(preset, {}, MODALITY_SETS["3mod"])
    with pytest.raises(ValueError, match="no known modality"):
        fusion({"video": Features(torch.zeros(BATCH, 2, 4))})


# ---- numbers pinned by hand ---------------------------------------------------------------------
def _vector(*values: float) -> Features:
    return Features(torch.tensor([[list(values)]]))  # (1, 1, D)


def _identity_tensor_fusion(modalities: tuple[str, ...]) -> TensorFusion:
    fusion = TensorFusion({m: 2 for m in modalities}, dim=3, dim_per_modality=2, hidden_dim=4)
    with torch.no_grad():
        for proj in fusion.proj.values():
            proj.weight.copy_(torch.eye(2))
            proj.bias.zero_()
    return fusion.eval()


def test_tensor_fusion_outer_product_by_hand():
    fusion = _identity_tensor_fusion(("image", "text"))
    image, text = _vector(2.0, 3.0), _vector(5.0, 7.0)
    # [2, 3, 1] x [5, 7, 1], row by row.
    expected = [10.0, 14.0, 2.0, 15.0, 21.0, 3.0, 5.0, 7.0, 1.0]
    with torch.no_grad():
        assert fusion.outer({"image": image, "text": text})[0].tolist() == expected
        # A padded text token changes nothing; a missing text is [0, 0, 1]: the image terms stay.
        padded = Features(
            torch.tensor([[[5.0, 7.0], [100.0, -100.0]]]), torch.tensor([[1, 0]]).bool()
        )
        assert fusion.outer({"image": image, "text": padded})[0].tolist() == expected
        missing = [0.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0, 1.0]
        assert fusion.outer({"image": image})[0].tolist() == missing
        masked = Features(text.tokens, torch.tensor([[False]]))
        assert fusion.outer({"image": image, "text": masked})[0].tolist() == missing
        out = fusion({"image": image, "text": text})
        torch.testing.assert_close(out.tokens[0, 0], fusion.mlp(torch.tensor(expected)))


def test_tensor_fusion_three_modalities_by_hand():
    fusion = _identity_tensor_fusion(("image", "text", "audio"))
    feats = {"image": _vector(2.0, 3.0), "text": _vector(5.0, 7.0), "audio": _vector(0.5, 2.0)}
    with torch.no_grad():
        product = fusion.outer(feats)[0]
    assert product.shape == (27,)
    # Entry (i, j, l) is at 9 i + 3 j + l: z_image[i] * z_text[j] * z_audio[l].
    assert product[0].item() == 2 * 5 * 0.5
    assert product[1].item() == 2 * 5 * 2
    assert product[15].item() == 3 * 1 * 0.5
    assert product[26].item() == 1.0
    assert product.sum().item() == pytest.approx((2 + 3 + 1) * (5 + 7 + 1) * (0.5 + 2 + 1))


def test_gated_fusion_by_hand():
    fusion = GatedFusion({"image": 2, "text": 2}, dim=1).eval()
    with torch.no_grad():
        fusion.proj["image"].weight.copy_(torch.tensor([[1.0, 0.0]]))
        fusion.proj["text"].weight.copy_(torch.tensor([[0.0, 1.0]]))
        fusion.gate.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        for layer in (fusion.proj["image"], fusion.proj["text"], fusion.gate):
            layer.bias.zero_()
        feats = {"image": _vector(math.log(3.0), 0.0), "text": _vector(0.0, math.log(2.0))}
        z, h = fusion.gates(feats)
        out = fusion(feats).tokens
    # z_image = sigmoid(ln 3 - 0) = 3/4; h = tanh(ln 3) = 0.8, tanh(ln 2) = 0.6.
    torch.testing.assert_close(z[0, :, 0], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(h[0, :, 0], torch.tensor([0.8, 0.6]))
    assert out.item() == pytest.approx(0.75 * 0.8 + 0.25 * 0.6)


@pytest.mark.parametrize("modalities", MODALITY_SETS.values(), ids=MODALITY_SETS.keys())
def test_gated_fusion_gates_sum_to_one_over_present_modalities(modalities):
    fusion = _fusion("gated", {}, modalities).eval()
    feats = _features(modalities)
    feats["text"] = _mask_sample(feats["text"], sample=1)
    with torch.no_grad():
        z, h = fusion.gates(feats)
        out = fusion(feats).tokens
        z_absent, _ = fusion.gates({k: v for k, v in feats.items() if k != "image"})
    assert z.shape == h.shape == (BATCH, len(modalities), fusion.out_dim)
    assert ((z >= 0) & (z <= 1)).all() and (h.abs() < 1).all() and (out.abs() < 1).all()
    torch.testing.assert_close(z.sum(dim=1), torch.ones(BATCH, fusion.out_dim))
    text = list(modalities).index("text")
    assert (z[1, text] == 0).all() and (z[0, text] > 0).all()  # sample 1's text is masked
    assert (z_absent[:, 0] == 0).all()  # image absent: its gate is 0 everywhere
    # ... and the others sum to one, but in sample 1 of 2mod, which has no modality left.
    expected = torch.tensor([1.0, 0.0 if len(modalities) == 2 else 1.0, 1.0])
    torch.testing.assert_close(z_absent.sum(dim=1), expected[:, None].expand(-1, fusion.out_dim))


@pytest.mark.parametrize("combine", ["mean", "learned"])
def test_late_fusion_with_a_linear_head_averages_per_modality_logits(combine):
    modalities = MODALITY_SETS["2mod"]
    fusion = _fusion("late", {"combine": combine}, modalities).eval()
    if fusion.logits is not None:
        with torch.no_grad():
            fusion.logits.copy_(torch.tensor([0.3, -0.2]))
    # softmax([0.3, -0.2]) written out: e^0.5 / (e^0.5 + 1) for the image.
    w_image = math.exp(0.5) / (math.exp(0.5) + 1) if combine == "learned" else 0.5
    head = nn.Linear(fusion.out_dim, 2)
    feats = _features(modalities)
    with torch.no_grad():
        logits = head(fusion(feats).tokens[:, 0])  # (B, 2)
        image, text = (head(fusion.towers[m](feats[m].pooled())) for m in modalities)
    torch.testing.assert_close(logits, w_image * image + (1 - w_image) * text)


def test_film_identity_without_conditioning_and_fallback_without_target():
    fusion = _fusion("film", {}, MODALITY_SETS["3mod"]).eval()
    feats = _features(MODALITY_SETS["3mod"])
    with torch.no_grad():
        alone = fusion({"image": feats["image"]})
        torch.testing.assert_close(alone.tokens, fusion.target_proj(feats["image"].tokens))
        without_target = fusion({"text": feats["text"], "audio": feats["audio"]})
        cond = sum(fusion.cond_proj[m](feats[m].pooled()) for m in ("text", "audio"))
    assert without_target.tokens.shape == (BATCH, 1, fusion.out_dim)
    torch.testing.assert_close(without_target.tokens[:, 0], cond)


@pytest.mark.parametrize("name", ["perceiver", "qformer"])
def test_token_compressors_give_num_queries_tokens_and_ignore_padding(name):
    """Perceiver resampler and Q-Former: 48 image tokens and 10 text tokens become
    ``num_queries`` tokens without a mask; padded text tokens (whatever they hold) change
    nothing, and a sample whose every token is masked still gives finite queries."""
    from mmtrain.fusions.perceiver import PerceiverFusion
    from mmtrain.fusions.qformer import QFormerFusion

    torch.manual_seed(0)
    cls = {"perceiver": PerceiverFusion, "qformer": QFormerFusion}[name]
    fusion = cls({"image": 24, "text": 16}, dim=32, num_queries=8, num_heads=4).eval()
    image = torch.randn(3, 48, 24)
    text = torch.randn(3, 10, 16)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False  # sample 1: 6 real text tokens, 4 padded
    out = fusion({"image": Features(image, None), "text": Features(text, mask)})
    assert out.tokens.shape == (3, 8, 32) and out.mask is None and fusion.out_dim == 32

    noisy = text.clone()
    noisy[1, 6:] = 100.0  # what padding holds does not matter
    again = fusion({"image": Features(image, None), "text": Features(noisy, mask)})
    torch.testing.assert_close(again.tokens, out.tokens)
    shorter = fusion(
        {"image": Features(image[1:2], None), "text": Features(text[1:2, :6], mask[1:2, :6])}
    )
    torch.testing.assert_close(shorter.tokens, out.tokens[1:2], rtol=1e-5, atol=1e-5)

    nothing = fusion({"text": Features(text, torch.zeros(3, 10, dtype=torch.bool))})
    assert torch.isfinite(nothing.tokens).all()


def test_qformer_starts_from_a_bert_folder(tmp_path):
    """``fusion=qformer`` with ``model_name_or_path``: each layer's self-attention and
    feed-forward blocks compute what BERT's do (its weights, BLIP-2's start), the query norm is
    BERT's embedding norm; a rebuild (``pretrained=false``) needs the config only; other sizes
    or another model type are one error naming the key."""
    from transformers import BertConfig, BertModel

    from mmtrain.fusions.qformer import QFormerFusion

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=40,
        max_position_embeddings=16,
    )
    folder = tmp_path / "bert"
    bert = BertModel(config).eval()
    bert.save_pretrained(folder)
    sizes = {"dim": 32, "num_queries": 4, "num_layers": 2, "num_heads": 2, "ff_mult": 2}
    eps = config.layer_norm_eps
    fusion = QFormerFusion(
        {"image": 12}, dropout=0.0, layer_norm_eps=eps, model_name_or_path=str(folder), **sizes
    ).eval()
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        for ours, theirs in zip(fusion.layers.layers, bert.encoder.layer):
            attention = theirs.attention(x)
            expected = attention[0] if isinstance(attention, tuple) else attention
            torch.testing.assert_close(ours.norm1(x + ours._sa_block(x, None, None)), expected)
            expected = theirs.output(theirs.intermediate(x), x)
            torch.testing.assert_close(ours.norm3(x + ours._ff_block(x)), expected)
        torch.testing.assert_close(fusion.norm(x), bert.embeddings.LayerNorm(x))
    assert "config.json" in fusion.model_files
    rebuilt = QFormerFusion(
        {"image": 12}, layer_norm_eps=eps, model_name_or_path=str(folder), pretrained=False, **sizes
    )
    rebuilt.load_state_dict(fusion.state_dict())
    with pytest.raises(ValueError, match=r"its dim gives 32, the Q-Former's is 64: set fusion.dim"):
        QFormerFusion({"image": 12}, **{**sizes, "dim": 64}, model_name_or_path=str(folder))
    with pytest.raises(ValueError, match="layer_norm_eps"):
        QFormerFusion({"image": 12}, **sizes, model_name_or_path=str(folder))
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="BERT-style encoder"):
        QFormerFusion({"image": 12}, **sizes, model_name_or_path=str(folder))
