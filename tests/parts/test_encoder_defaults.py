"""The default encoders see what tells classes apart: the small image CNN most of the image
at any size (its receptive field), the log-mel CNN where in frequency a pattern is."""

from __future__ import annotations

import pytest
import torch

from mmtrain.encoders.audio import MelCNNEncoder
from mmtrain.encoders.image import SmallCNNEncoder

PRESET = [16, 32, 64, 64]  # configs/encoder/image/cnn.yaml


def _spans(
    encoder: SmallCNNEncoder, size: int, which: list[int] | None = None
) -> tuple[list[float], torch.Tensor]:
    """The receptive field of each output token (of those in ``which``) as a fraction of the
    image side (the smaller of its row and column extent), and the input-pixel mask that the
    pooled output depends on."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size, requires_grad=True)
    tokens = encoder(x).tokens  # (1, N, D)
    spans = []
    for n in range(tokens.shape[1]) if which is None else which:
        (grad,) = torch.autograd.grad(tokens[0, n].sum(), x, retain_graph=True)
        reached = grad.abs().sum(dim=(0, 1)) > 0  # (H, W)
        rows, cols = reached.any(dim=1).nonzero(), reached.any(dim=0).nonzero()
        extent = min(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        spans.append(float(extent) / size)
    (grad,) = torch.autograd.grad(tokens.mean(dim=1).sum(), x)
    return spans, grad.abs().sum(dim=(0, 1)) > 0


@pytest.mark.parametrize("size", [32, 64, 224])
def test_every_token_sees_a_large_part_of_the_image(size):
    encoder = SmallCNNEncoder(PRESET).eval()
    spans, reached = _spans(encoder, size)
    assert len(spans) == min(size // 16, 4) ** 2  # a grid of at most 4x4 tokens
    assert min(spans) >= 0.4, spans
    # The pooled output depends on every region of the image (an 8x8 partition).
    cells = reached.reshape(8, size // 8, 8, size // 8).any(dim=3).any(dim=1)
    assert cells.all()


def test_halving_only_leaves_tokens_a_fragment_of_a_large_image():
    encoder = SmallCNNEncoder(PRESET, grid=None).eval()
    assert encoder(torch.zeros(1, 3, 224, 224)).tokens.shape[1] == 14 * 14
    spans, _ = _spans(encoder, 224, which=[0, 7 * 14 + 7])  # a corner and a central token
    assert max(spans) < 0.25  # what the grid fixes: 46 px of 224


def test_small_images_take_the_plain_halving_path():
    encoder = SmallCNNEncoder(PRESET).eval()
    assert encoder.pool_sizes(64, 64) is None
    x = torch.randn(2, 3, 64, 64)
    expected = encoder.net(x).flatten(2).transpose(1, 2)  # (B, 16, 64)
    assert torch.equal(encoder(x).tokens, expected)


def test_large_and_non_square_images_keep_the_grid():
    encoder = SmallCNNEncoder(PRESET).eval()
    assert encoder.pool_sizes(224, 224)[-1] == (4, 4)
    assert encoder.pool_sizes(128, 128)[-1] == (4, 4)
    assert encoder.pool_sizes(100, 150)[-1] == (3, 4)
    assert encoder(torch.randn(1, 3, 100, 150)).tokens.shape == (1, 12, 64)


def test_grid_must_be_positive():
    with pytest.raises(ValueError, match="grid must be at least 1"):
        SmallCNNEncoder(PRESET, grid=0)


def _tone(row: int) -> torch.Tensor:
    """A ``(1, 64, 32)`` log-mel image: silence with a 3-bin band at ``row`` in the middle."""
    x = torch.full((1, 64, 32), -4.0)
    x[0, row : row + 3, 8:24] = 2.0
    return x


def test_mel_cnn_speech_keeps_where_in_frequency_a_pattern_is():
    torch.manual_seed(0)
    kept = MelCNNEncoder(64, channels=[16, 32, 64], freq_pool="flatten").eval()
    assert kept.out_dim == 64 * 8
    assert kept(_tone(16)).tokens.shape == (1, 4, 64 * 8)
    low, high = kept(_tone(16)).tokens, kept(_tone(40)).tokens  # 24 bins apart: 3 x 2**3
    assert (low - high).abs().max() > 1e-3
    # mel_cnn's frequency mean cannot tell the two apart: the blocks shift with the band.
    torch.manual_seed(0)
    averaged = MelCNNEncoder(64, channels=[16, 32, 64], freq_pool="mean").eval()
    assert torch.allclose(averaged(_tone(16)).tokens, averaged(_tone(40)).tokens, atol=1e-6)


def test_freq_pool_must_be_known():
    with pytest.raises(ValueError, match="freq_pool must be 'mean' or 'flatten'"):
        MelCNNEncoder(64, freq_pool="max")
