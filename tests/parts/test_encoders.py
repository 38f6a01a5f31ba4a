"""Text and audio encoders (LSTM, Transformer, AST) and SpecAugment, against hand references.

The generated tests (test_model_groups.py) already train every preset one step; these pin the
numbers: recurrences and attention written out by hand, padding invariance in eval mode, the
AST patch layout and mask, and what SpecAugment may and may not touch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.modules import randomize_batchnorm
from torch import Tensor, nn

from mmtrain.build import build_datamodule
from mmtrain.data.transforms import AudioTransform
from mmtrain.encoders.audio import ASTEncoder
from mmtrain.encoders.text import LSTMTextEncoder, TransformerTextEncoder
from mmtrain.utils.config_check import check_config

PAD = 0
LENGTHS = (5, 3, 1)  # a full, a padded and a one-token text


def _padded_ids(seed: int = 0, garbage: bool = True) -> tuple[Tensor, Tensor]:
    """``(3, 5)`` ids and mask; padded slots hold random ids (``garbage``) or ``PAD``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (len(LENGTHS), max(LENGTHS)), generator=g)
    mask = torch.arange(max(LENGTHS))[None] < torch.tensor(LENGTHS)[:, None]
    if not garbage:
        ids[~mask] = PAD
    return ids, mask


# ---- LSTM ----------------------------------------------------------------------------------
def _lstm_by_hand(x: Tensor, lstm: nn.LSTM, suffix: str = "") -> Tensor:
    """One LSTM layer over ``x`` (L, E), step by step; gates in PyTorch's order i, f, g, o."""
    w_ih, w_hh = getattr(lstm, f"weight_ih_l0{suffix}"), getattr(lstm, f"weight_hh_l0{suffix}")
    bias = getattr(lstm, f"bias_ih_l0{suffix}") + getattr(lstm, f"bias_hh_l0{suffix}")
    h = c = torch.zeros(lstm.hidden_size)
    out = []
    for x_t in x:
        i, f, g, o = (w_ih @ x_t + w_hh @ h + bias).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


def test_lstm_matches_the_recurrence_by_hand_in_both_directions():
    torch.manual_seed(0)
    encoder = LSTMTextEncoder(vocab_size=20, embed_dim=6, hidden_dim=5).eval()  # bidirectional
    ids, mask = _padded_ids()  # garbage ids in the padding: packing must never read them
    with torch.no_grad():
        out = encoder(ids, mask)
        for i, n in enumerate(LENGTHS):
            emb = encoder.embed(ids[i, :n])  # (n, E): the real tokens only
            forward = _lstm_by_hand(emb, encoder.rnn)
            # The backward direction starts at the last real token, not at the padding.
            backward = _lstm_by_hand(emb.flip(0), encoder.rnn, "_reverse").flip(0)
            expected = torch.cat([forward, backward], dim=1)  # (n, 2H)
            torch.testing.assert_close(out.tokens[i, :n], expected)
    assert out.tokens.shape == (3, 5, 10) and encoder.out_dim == 10
    assert torch.equal(out.mask, mask)
    assert out.tokens[~mask].eq(0).all()  # padded positions are zero


@pytest.mark.parametrize(("bidirectional", "out_dim"), [(True, 16), (False, 8)])
def test_lstm_padded_and_unpadded_samples_give_the_same_features(bidirectional, out_dim):
    torch.manual_seed(0)
    encoder = LSTMTextEncoder(
        vocab_size=20, embed_dim=6, hidden_dim=8, num_layers=2, bidirectional=bidirectional
    ).eval()
    ids, mask = _padded_ids()
    with torch.no_grad():
        batch = encoder(ids, mask)
        for i, n in enumerate(LENGTHS):
            alone = encoder(ids[i : i + 1, :n])  # no padding at all, mask None
            assert alone.mask is None and alone.tokens.shape == (1, n, out_dim)
            torch.testing.assert_close(batch.tokens[i, :n], alone.tokens[0])
    assert encoder.out_dim == out_dim and batch.tokens.shape == (3, 5, out_dim)


def test_lstm_accepts_an_empty_text_and_rejects_bad_sizes():
    encoder = LSTMTextEncoder(vocab_size=20, embed_dim=4, hidden_dim=3).eval()
    ids = torch.tensor([[5, 6], [0, 0]])
    out = encoder(ids, ids != PAD)
    assert torch.isfinite(out.tokens).all() and out.present().tolist() == [True, False]
    with pytest.raises(ValueError, match=r"sizes must be positive, got .*hidden_dim=0"):
        LSTMTextEncoder(vocab_size=20, hidden_dim=0)


# ---- Transformer text ----------------------------------------------------------------------
def _transformer_by_hand(encoder: TransformerTextEncoder, ids: Tensor, real: Tensor) -> Tensor:
    """Pre-norm Transformer layers written out for one sample ``ids`` (L,), keys ``real`` (L,)."""
    x = encoder.embed.weight[ids] + encoder.pos.weight[: len(ids)]  # (L, D)
    for layer in encoder.encoder.layers.layers:
        attn = layer.self_attn
        heads, dim = attn.num_heads, x.shape[1]
        h = F.layer_norm(x, (dim,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        q, k, v = (h @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, dim=1)
        q, k, v = (t.view(len(ids), heads, -1).transpose(0, 1) for t in (q, k, v))  # (H, L, d)
        scores = q @ k.transpose(1, 2) / math.sqrt(dim // heads)  # (H, L, L)
        scores = scores.masked_fill(~real, float("-inf"))  # padded keys get no weight
        context = (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(len(ids), dim)
        x = x + context @ attn.out_proj.weight.T + attn.out_proj.bias
        h = F.layer_norm(x, (dim,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
        x = x + layer.linear2(F.gelu(layer.linear1(h)))
    norm = encoder.encoder.norm
    return F.layer_norm(x, (x.shape[1],), norm.weight, norm.bias, norm.eps)


def test_transformer_text_matches_attention_by_hand():
    torch.manual_seed(0)
    encoder = TransformerTextEncoder(
        vocab_size=20, dim=8, num_layers=2, num_heads=2, ff_mult=2, max_length=6
    ).eval()
    ids, mask = _padded_ids()
    with torch.no_grad():
        out = encoder(ids, mask)
        for i, n in enumerate(LENGTHS):
            expected = _transformer_by_hand(encoder, ids[i], mask[i])
            torch.testing.assert_close(out.tokens[i, :n], expected[:n])
    assert out.tokens.shape == (3, 5, 8) and encoder.out_dim == 8
    assert torch.equal(out.mask, mask) and out.tokens[~mask].eq(0).all()


def test_transformer_text_padded_and_unpadded_samples_give_the_same_features():
    torch.manual_seed(0)
    encoder = TransformerTextEncoder(vocab_size=20, dim=16, num_heads=4, dropout=0.5).eval()
    for garbage in (False, True):  # PAD ids as collated, or anything at all in the padding
        ids, mask = _padded_ids(garbage=garbage)
        with torch.no_grad():
            batch = encoder(ids, mask)
            for i, n in enumerate(LENGTHS):
                alone = encoder(ids[i : i + 1, :n])  # mask None
                torch.testing.assert_close(batch.tokens[i, :n], alone.tokens[0])


def test_transformer_text_empty_text_and_errors():
    encoder = TransformerTextEncoder(vocab_size=20, dim=8, num_heads=2, max_length=4).eval()
    ids = torch.tensor([[5, 6, 7], [0, 0, 0]])
    out = encoder(ids, ids != PAD)
    assert torch.isfinite(out.tokens).all() and out.tokens[1].eq(0).all()
    assert out.present().tolist() == [True, False]
    with pytest.raises(ValueError, match=r"5 tokens is longer than max_length=4"):
        encoder(torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"dim=10 must be divisible by num_heads=4"):
        TransformerTextEncoder(vocab_size=20, dim=10, num_heads=4)
    with pytest.raises(ValueError, match=r"sizes must be positive, got .*max_length=0"):
        TransformerTextEncoder(vocab_size=20, max_length=0)


# ---- AST -----------------------------------------------------------------------------------
def _frame_mask(lengths: list[int], frames: int) -> Tensor:
    return torch.arange(frames)[None] < torch.tensor(lengths)[:, None]  # (B, T)


@pytest.mark.parametrize(
    ("n_mels", "patch", "n_freq", "n_time", "real_time"),
    [
        (40, 8, 5, 7, 4),  # the preset on data=shapes: 50 frames -> 7 time patches, 30 -> 4
        (64, 8, 8, 7, 4),
        (64, 16, 4, 4, 2),  # original AST patches: 50 -> ceil(50/16) = 4, 30 -> 2
    ],
)
def test_ast_shapes_and_mask_downsampling(n_mels, patch, n_freq, n_time, real_time):
    torch.manual_seed(0)
    encoder = ASTEncoder(n_mels, patch_freq=patch, patch_time=patch, dim=32, num_layers=1)
    mask = _frame_mask([50, 30], 50)
    out = encoder(torch.randn(2, n_mels, 50), mask)
    assert out.tokens.shape == (2, n_time * n_freq, 32) and encoder.out_dim == 32
    # Time-major tokens: the real time patches' tokens come first, F' per time patch.
    expected = [
        [True] * n_time * n_freq,
        [True] * real_time * n_freq + [False] * (n_time - real_time) * n_freq,
    ]
    assert out.mask.tolist() == expected and out.mask.dtype == torch.bool
    assert out.tokens[~out.mask].eq(0).all()
    unmasked = encoder(torch.randn(2, n_mels, 50))
    assert unmasked.mask is None and unmasked.tokens.shape == out.tokens.shape


def test_ast_patch_is_real_when_any_frame_is():
    encoder = ASTEncoder(16, patch_freq=8, patch_time=8, dim=8, num_heads=2, num_layers=1)
    mask = _frame_mask([16, 17, 1, 0], 20)  # 20 frames -> 3 time patches, 2 frequency patches
    out = encoder(torch.randn(4, 16, 20), mask)
    assert out.mask.sum(dim=1).tolist() == [2 * 2, 3 * 2, 1 * 2, 0]
    assert torch.isfinite(out.tokens).all()  # a silent clip (no real frame) stays finite


def test_ast_patch_tokens_by_hand():
    """Token ``t * F' + f`` = conv of patch (f, t) of the normalised, masked, zero-filled input
    + time position t + frequency position f (checked at the Transformer's input)."""
    torch.manual_seed(0)
    encoder = ASTEncoder(16, patch_freq=8, patch_time=4, dim=8, num_heads=2, num_layers=1).eval()
    randomize_batchnorm(encoder)
    x, mask = torch.randn(2, 16, 10), _frame_mask([10, 6], 10)
    seen = {}
    encoder.encoder.register_forward_hook(lambda m, args, out: seen.update(tokens=args[0]))
    with torch.no_grad():
        encoder(x, mask)
    bn, conv = encoder.input_norm, encoder.patch
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    xn = (x - bn.running_mean) * scale + bn.bias  # (B, 16, 10)
    xn = torch.cat([xn * mask[:, None], torch.zeros(2, 16, 2)], dim=-1)  # 10 -> 12 frames
    for b in range(2):
        for t in range(3):
            for f in range(2):
                patch = xn[b, 8 * f : 8 * (f + 1), 4 * t : 4 * (t + 1)]  # (8, 4)
                value = (conv.weight[:, 0] * patch).sum(dim=(1, 2)) + conv.bias
                value = value + encoder.time_pos.weight[t] + encoder.freq_pos.weight[f]
                torch.testing.assert_close(seen["tokens"][b, t * 2 + f], value)


def test_ast_padded_and_unpadded_clips_give_the_same_tokens():
    torch.manual_seed(0)
    encoder = ASTEncoder(40, patch_freq=8, patch_time=8, dim=32, dropout=0.5).eval()
    randomize_batchnorm(encoder)
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(1, 40, 30, generator=g)  # 30 frames: the 4th patch is half padding
    garbage = torch.randn(1, 40, 20, generator=g) * 100  # whatever sits in the padding
    padded = torch.cat([torch.cat([clip, garbage], dim=-1), torch.randn(1, 40, 50)])
    with torch.no_grad():
        batch = encoder(padded, _frame_mask([30, 50], 50))
        alone = encoder(clip)  # 4 time patches x 5 frequency patches, mask None
    assert alone.tokens.shape == (1, 20, 32)
    torch.testing.assert_close(batch.tokens[0, :20], alone.tokens[0])
    assert batch.mask[0].sum() == 20


def test_ast_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"n_mels=40 must be a multiple of patch_freq=16"):
        ASTEncoder(40, patch_freq=16)
    with pytest.raises(ValueError, match=r"sizes must be positive, got .*patch_time=0"):
        ASTEncoder(40, patch_freq=8, patch_time=0)
    with pytest.raises(ValueError, match=r"dim=30 must be divisible by num_heads=4"):
        ASTEncoder(40, patch_freq=8, dim=30)
    encoder = ASTEncoder(40, patch_freq=8, patch_time=8, dim=8, num_heads=2, max_frames=32)
    encoder(torch.randn(1, 40, 32))  # exactly max_frames is fine
    with pytest.raises(ValueError, match=r"33 frames is more than max_frames=32"):
        encoder(torch.randn(1, 40, 33))
    with pytest.raises(ValueError, match=r"expected 40 mel bins, got .*\(1, 64, 20\)"):
        encoder(torch.randn(1, 64, 20))


# ---- SpecAugment ---------------------------------------------------------------------------
def _noise(seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    # White noise: every mel bin has energy, so no row is constant unless it is masked.
    return np.random.default_rng(0).standard_normal(int(seconds * rate)).astype(np.float32)


def _masked(feats: Tensor, fill: float) -> tuple[Tensor, Tensor]:
    """(rows, columns) that hold ``fill`` everywhere."""
    is_fill = feats == fill
    return is_fill.all(dim=1), is_fill.all(dim=0)


def test_spec_augment_is_off_outside_training_and_by_default():
    plain = AudioTransform(n_mels=40)(_noise(), 16000)
    augmenting = AudioTransform(n_mels=40, freq_mask=10, time_mask=20, num_masks=2)
    assert torch.equal(augmenting(_noise(), 16000, train=False), plain)
    assert torch.equal(AudioTransform(n_mels=40)(_noise(), 16000, train=True), plain)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spec_augment_masks_bands_and_frames_with_the_mean(seed):
    freq_mask, time_mask, num_masks = 8, 10, 2
    transform = AudioTransform(
        n_mels=40, freq_mask=freq_mask, time_mask=time_mask, num_masks=num_masks
    )
    plain = AudioTransform(n_mels=40)(_noise(), 16000)  # (40, 51)
    torch.manual_seed(seed)
    feats = transform(_noise(), 16000, train=True)
    fill = float(plain.mean())  # the unmasked clip's mean log-mel
    rows, cols = _masked(feats, fill)
    assert 0 < rows.sum() <= num_masks * freq_mask
    assert 0 < cols.sum() <= num_masks * time_mask
    # Every other cell is untouched.
    keep = ~rows[:, None] & ~cols[None, :]
    assert torch.equal(feats[keep], plain[keep])
    assert feats.eq(fill).sum() == (~keep).sum()


def test_spec_augment_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"freq_mask=41, n_mels=40"):
        AudioTransform(n_mels=40, freq_mask=41)
    with pytest.raises(ValueError, match=r"time_mask=-1"):
        AudioTransform(time_mask=-1)
    with pytest.raises(ValueError, match=r"num_masks=0"):
        AudioTransform(freq_mask=4, num_masks=0)


def test_spec_augment_is_switched_on_from_the_data_config(compose_config):
    overrides = ("data.audio.freq_mask=8", "data.audio.time_mask=10", "data.audio.num_masks=2")
    cfg = compose_config(*overrides)
    check_config(cfg)  # the keys bind to AudioTransform's signature
    transform = build_datamodule(cfg).inputs["audio"]
    assert [type(m).__name__ for m in transform.spec_augment] == ["FrequencyMasking", "TimeMasking"]
    assert transform.num_masks == 2


def test_torchvision_pretrained_weights_download_with_a_network_and_fail_clearly_offline(
    tmp_path, monkeypatch
):
    """pretrained=true reads the torch hub cache; a missing file is downloaded as torchvision
    does (hash checked, weights_only) unless offline, where one error says how to get it."""
    from mmtrain.encoders import image

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match=r"resnet18 not found at .*offline: HF_HUB_OFFLINE=1"):
        image.pretrained_state("resnet18")  # the tests run offline

    calls = []
    state = image.ResNetEncoder("resnet18").trunk.state_dict()

    def download(url, **kwargs):  # what torchvision would fetch: the same keys as the model
        import torchvision

        calls.append((url, kwargs))
        return torchvision.models.resnet18(weights=None).state_dict()

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    encoder = image.ResNetEncoder("resnet18", pretrained=True)
    ((url, kwargs),) = calls
    assert url.startswith("https://download.pytorch.org/models/resnet18")
    assert kwargs["weights_only"] and kwargs["check_hash"]
    assert set(encoder.trunk.state_dict()) == set(state)

    def no_network(url, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ValueError, match=r"the download failed: \[Errno -3\]"):
        image.pretrained_state("resnet18")
