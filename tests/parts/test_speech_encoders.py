"""Speech encoders for CTC (conv subsampling + Transformer / BiGRU), against independent references.

The generated tests (test_model_groups.py) train both presets one step; these pin the numbers:
the token counts of the conv arithmetic, the subsampling against ``F.conv2d`` by hand, the input
norm against statistics of the real frames, padding invariance (whatever the padding holds),
finite outputs and gradients for clips without real frames, and the errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtrain.encoders.speech import (
    ConvBiGRUEncoder,
    ConvSubsampling,
    ConvTransformerEncoder,
    MaskedMelNorm,
    sinusoidal_positions,
)

N_MELS = 16
LENGTHS = (37, 20, 9, 7, 5, 1)  # full, padded, around the 7-frame receptive field, one frame


def _conv_len(frames: int) -> int:
    """Output frames of Conv2d(kernel 3, stride 2, padding 0): floor((L - 3) / 2) + 1."""
    return (frames - 3) // 2 + 1


def _tokens(frames: int, blocks: int = 2) -> int:
    """Expected token count: clips of 1..(2**(blocks+1) - 2) frames are padded to one token."""
    if frames == 0:
        return 0
    frames = max(frames, 2 ** (blocks + 1) - 1)
    for _ in range(blocks):
        frames = _conv_len(frames)
    return frames


def _batch(
    lengths: tuple[int, ...], frames: int | None = None, fill: float = 1e4, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(B, N_MELS, T)`` log-mels with ``fill`` in the padding, and the ``(B, T)`` mask."""
    frames = max(lengths) if frames is None else frames
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), N_MELS, frames, generator=g) * 3 - 5
    mask = torch.arange(frames)[None] < torch.tensor(lengths)[:, None]
    return x.masked_fill(~mask[:, None], fill), mask


def _encoders(dropout: float) -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        ConvTransformerEncoder(N_MELS, dim=16, layers=2, heads=2, dropout=dropout, channels=4),
        ConvBiGRUEncoder(N_MELS, dim=12, hidden=8, layers=2, dropout=dropout, channels=4),
    ]


def _randomize_norm(module: nn.Module) -> None:
    # Non-trivial running statistics, so eval mode does not hide padding effects.
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, MaskedMelNorm):
            m.running_mean.copy_(torch.rand(N_MELS, generator=g) * 4 - 6)
            m.running_var.copy_(torch.rand(N_MELS, generator=g) * 3 + 0.5)
            m.weight.data.copy_(torch.rand(N_MELS, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(N_MELS, generator=g) - 0.5)


ENCODER_IDS = ["transformer", "bigru"]


# ---- token counts -----------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 2, 6, 7, 8, 9, 10, 11, 50, 101, 1000])
def test_token_count_follows_the_conv_arithmetic(frames):
    sub = ConvSubsampling(N_MELS, dim=8, channels=2)
    assert sub.output_length(frames) == _tokens(frames)
    tokens, mask = sub(torch.randn(1, N_MELS, frames))  # unpadded: the convolutions decide N
    assert tokens.shape == (1, _tokens(frames), 8) and mask is None
    if frames >= 7:
        assert _tokens(frames) == ((frames - 1) // 2 - 1) // 2  # ESPnet's Conv2dSubsampling4


def test_token_mask_gives_each_clip_its_own_count():
    sub = ConvSubsampling(N_MELS, dim=8, channels=2)
    lengths = (101, 50, 11, 10, 9, 8, 7, 6, 3, 1, 0)
    x, mask = _batch(lengths)
    tokens, token_mask = sub(x, mask)
    assert token_mask.dtype == torch.bool and token_mask.shape == tokens.shape[:2]
    assert token_mask.sum(dim=1).tolist() == [_tokens(n) for n in lengths]
    assert sub.output_lengths(torch.tensor(lengths)).tolist() == [_tokens(n) for n in lengths]
    expected = torch.arange(tokens.shape[1])[None] < token_mask.sum(dim=1)[:, None]
    assert torch.equal(token_mask, expected)  # real tokens first, like the frames
    assert tokens[~token_mask].eq(0).all()


@pytest.mark.parametrize(("factor", "blocks"), [(2, 1), (8, 3)])
def test_other_factors(factor, blocks):
    sub = ConvSubsampling(N_MELS, dim=8, channels=2, factor=factor)
    assert len(sub.convs) == blocks and sub.min_frames == 2 ** (blocks + 1) - 1
    for frames in (1, sub.min_frames, 40, 83):
        assert sub(torch.randn(1, N_MELS, frames))[0].shape[1] == _tokens(frames, blocks)


# ---- numbers by hand --------------------------------------------------------------------------
def test_subsampling_matches_conv2d_by_hand():
    torch.manual_seed(0)
    n_mels, frames, channels, dim = 9, 11, 3, 5
    sub = ConvSubsampling(n_mels, dim=dim, channels=channels).eval()
    x = torch.randn(1, n_mels, frames)
    conv1, conv2 = sub.convs
    with torch.no_grad():
        image = x[0].T[None, None]  # (1, 1, T, F): time is the height
        h = F.relu(F.conv2d(image, conv1.weight, conv1.bias, stride=2))  # (1, C, 5, 4)
        h = F.relu(F.conv2d(h, conv2.weight, conv2.bias, stride=2))[0]  # (C, 2, 1)
        assert h.shape == (channels, 2, 1)
        # Each token: its channels x frequencies, channel-major, through the Linear.
        rows = [h[:, n, :].reshape(-1) for n in range(h.shape[1])]
        expected = torch.stack([sub.out.weight @ row + sub.out.bias for row in rows])  # (2, D)
        alone, _ = sub(x)
        # The same clip padded with garbage in a batch next to a longer one.
        batch = torch.full((2, n_mels, 23), float("nan"))
        batch[0, :, :frames], batch[1] = x[0], torch.randn(n_mels, 23)
        mask = torch.arange(23)[None] < torch.tensor([frames, 23])[:, None]
        padded, token_mask = sub(batch, mask)
    torch.testing.assert_close(alone[0], expected)
    torch.testing.assert_close(padded[0, :2], expected)
    assert token_mask[0].tolist() == [True, True, False, False, False]
    assert padded[0, 2:].eq(0).all()


def test_short_clip_is_zero_padded_to_one_token():
    torch.manual_seed(0)
    sub = ConvSubsampling(N_MELS, dim=6, channels=2)
    x = torch.randn(1, N_MELS, 4)
    with torch.no_grad():
        tokens, _ = sub(x)
        full, _ = sub(F.pad(x, (0, 3)))  # the 7 frames it is padded to
    assert tokens.shape == (1, 1, 6)
    torch.testing.assert_close(tokens, full)


def test_input_norm_uses_the_real_frames_only():
    norm = MaskedMelNorm(N_MELS, momentum=0.5)
    x, mask = _batch((9, 4, 0), frames=12, fill=float("nan"))
    out = norm(x, mask)  # training mode: batch statistics
    real = torch.cat([x[i, :, :n] for i, n in enumerate((9, 4))], dim=1)  # (F, 13)
    mean, var = real.mean(dim=1), real.var(dim=1, unbiased=False)
    expected = (x[0, :, :9] - mean[:, None]) / torch.sqrt(var[:, None] + 1e-5)
    torch.testing.assert_close(out[0, :, :9], expected)
    assert out[~mask[:, None].expand_as(out)].eq(0).all()
    torch.testing.assert_close(norm.running_mean, 0.5 * mean)
    torch.testing.assert_close(norm.running_var, 0.5 + 0.5 * real.var(dim=1, unbiased=True))
    # A batch without any real frame keeps and uses the running statistics.
    before = norm.running_mean.clone()
    assert torch.isfinite(norm(x, torch.zeros_like(mask))).all()
    assert torch.equal(norm.running_mean, before)


def test_sinusoidal_positions_by_formula():
    pe = sinusoidal_positions(6, 5)
    for pos in range(6):
        for i in range(5):
            angle = pos / 10000 ** ((i - i % 2) / 5)
            assert pe[pos, i].item() == pytest.approx(
                math.sin(angle) if i % 2 == 0 else math.cos(angle), abs=1e-6
            )


# ---- padding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 1], ids=ENCODER_IDS)
@pytest.mark.parametrize("fill", [0.0, 1e4, float("nan")], ids=["zeros", "large", "nan"])
def test_padded_and_unpadded_clips_give_the_same_tokens(index, fill):
    encoder = _encoders(dropout=0.5)[index].eval()  # eval: dropout off
    _randomize_norm(encoder)
    x, mask = _batch(LENGTHS, fill=fill)
    with torch.no_grad():
        batched = encoder(x, mask)
        assert batched.mask.dtype == torch.bool and batched.mask.shape == batched.tokens.shape[:2]
        assert torch.isfinite(batched.tokens).all()
        assert batched.tokens[~batched.mask].eq(0).all()
        for i, n in enumerate(LENGTHS):
            alone = encoder(x[i : i + 1, :, :n])  # no mask, no padding
            assert alone.mask is None and alone.tokens.shape[1] == _tokens(n)
            assert batched.mask[i].sum() == _tokens(n)
            torch.testing.assert_close(
                batched.tokens[i, : _tokens(n)], alone.tokens[0], atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("index", [0, 1], ids=ENCODER_IDS)
def test_more_padding_changes_nothing_in_training_mode(index):
    # No batch statistics see the padding (MaskedMelNorm), so without dropout the training
    # forward of a batch does not depend on how far it is padded, nor on what the padding holds.
    encoder = _encoders(dropout=0.0)[index].train()
    x, mask = _batch(LENGTHS)
    wide_x, wide_mask = _batch(LENGTHS, frames=60, fill=float("nan"))
    wide_x[:, :, : x.shape[2]] = torch.where(mask[:, None], x, wide_x[:, :, : x.shape[2]])
    narrow, wide = encoder(x, mask), encoder(wide_x, wide_mask)
    n = narrow.tokens.shape[1]
    torch.testing.assert_close(wide.tokens[:, :n], narrow.tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(wide.mask[:, :n], narrow.mask) and not wide.mask[:, n:].any()


# ---- absent audio, gradients, errors ---------------------------------------------------------
@pytest.mark.parametrize("index", [0, 1], ids=ENCODER_IDS)
@pytest.mark.parametrize("lengths", [(20, 0), (0, 0)], ids=["one_empty", "all_empty"])
def test_clip_without_real_frames_is_finite_and_masked(index, lengths):
    encoder = _encoders(dropout=0.1)[index]
    x, mask = _batch(lengths, frames=20, fill=float("nan"))
    for train in (True, False):
        encoder.train(train)
        encoder.zero_grad()
        feats = encoder(x, mask)
        assert torch.isfinite(feats.tokens).all()
        assert not feats.mask[1].any() and feats.tokens[1].eq(0).all()
        (feats.tokens.sum() + feats.tokens.pow(2).sum()).backward()
        grads = [p.grad for p in encoder.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("index", [0, 1], ids=ENCODER_IDS)
def test_gradient_reaches_every_parameter_and_no_padded_frame(index):
    encoder = _encoders(dropout=0.1)[index].train()
    x, mask = _batch(LENGTHS, fill=0.0)
    x.requires_grad_(True)
    feats = encoder(x, mask)
    loss = (feats.tokens.pow(2) * feats.mask[..., None]).sum()
    loss.backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad[~mask[:, None].expand_as(x)].eq(0).all()
    assert x.grad[0].abs().sum() > 0


def test_out_dims_and_unmasked_input():
    transformer, gru = _encoders(dropout=0.0)
    x = torch.randn(2, N_MELS, 30)
    for encoder, dim in ((transformer, 16), (gru, 16)):
        feats = encoder.eval()(x)
        assert encoder.out_dim == dim and feats.tokens.shape == (2, _tokens(30), dim)
        assert feats.mask is None


def test_errors_print_the_values():
    with pytest.raises(ValueError, match="factor must be a power of two.*got 3"):
        ConvSubsampling(N_MELS, dim=8, factor=3)
    with pytest.raises(ValueError, match="n_mels=6 is too few mel bins for factor=4.*7"):
        ConvSubsampling(6, dim=8)
    with pytest.raises(ValueError, match="sizes must be positive, got n_mels=16, dim=0"):
        ConvSubsampling(N_MELS, dim=0)
    with pytest.raises(ValueError, match="dim=10 must be divisible by num_heads=4"):
        ConvTransformerEncoder(N_MELS, dim=10, heads=4)
    with pytest.raises(ValueError, match="hidden=0"):
        ConvBiGRUEncoder(N_MELS, hidden=0)
    encoder = ConvBiGRUEncoder(N_MELS, dim=8, hidden=4, layers=1)
    with pytest.raises(ValueError, match=r"expected log-mels \(B, 16, T\), got shape \(2, 40, 9\)"):
        encoder(torch.randn(2, 40, 9))
    with pytest.raises(ValueError, match=r"bool mask of shape \(2, 9\), got torch.int64"):
        encoder(torch.randn(2, N_MELS, 9), torch.ones(2, 9, dtype=torch.long))
