"""``ImageTransform(size="auto")``: fitting the size on the training images, the upscaling
warning, the fitted state in checkpoints, and the error before fitting."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from mmtrain.data.transforms import ImageTransform

LOGGER = "mmtrain.data.transforms.image"


def _image(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (120, 40, 200))


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(100, 60), (90, 70), (200, 75)], 72),  # median shorter side 70 -> nearest multiple of 8
        ([(32, 32)] * 5, 32),
        ([(640, 480), (500, 375), (800, 600)], 224),  # clamped to 224
        ([(8, 8), (8, 8)], 32),  # clamped to 32
        ([(33, 120), (47, 47), (300, 41)], 40),  # shorter sides 33, 47, 41: median 41 -> 40
    ],
)
def test_fit_size_picks_the_typical_shorter_side(sizes, expected):
    transform = ImageTransform(size="auto", augment=False)
    assert transform.fit_size(sizes) == expected
    assert transform.size == expected
    assert transform(_image(*sizes[0])).shape == (3, expected, expected)


def test_an_unfitted_auto_size_is_a_clear_error():
    transform = ImageTransform(size="auto")
    with pytest.raises(RuntimeError, match=r"size='auto'.*not fitted.*fit_size"):
        transform(_image(10, 10), train=True)


@pytest.mark.parametrize("sizes", [[], [(0, 10)], [(10, -1)]])
def test_fit_size_refuses_bad_sizes(sizes):
    with pytest.raises(ValueError, match="size"):
        ImageTransform(size="auto").fit_size(sizes)


def test_upscaling_more_than_2x_warns_once_naming_the_sizes(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ImageTransform(size=224).fit_size([(32, 32)] * 9 + [(300, 240)])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "9 of 10" in message and "224 px" in message and "32 to 32 px" in message


@pytest.mark.parametrize(
    ("size", "sizes", "warned"),
    [
        ("auto", [(64, 64)] * 4, False),
        ("auto", [(8, 8)] * 4, True),  # auto's floor of 32 is 4x an 8 px image
        (64, [(32, 40)] * 4, False),  # exactly 2x is not more than 2x
        (65, [(32, 40)] * 4, True),
    ],
)
def test_upscaling_warning_threshold(caplog, size, sizes, warned):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ImageTransform(size=size).fit_size(sizes)
    assert any(r.levelno == logging.WARNING for r in caplog.records) == warned


def test_the_fitted_size_round_trips_through_the_state():
    fitted = ImageTransform(size="auto", augment=False)
    fitted.fit_size([(96, 130)] * 3)
    state = fitted.state_dict()
    assert state == {"size": 96}
    rebuilt = ImageTransform(size="auto", augment=False)
    assert rebuilt.state_dict() == {"size": "auto"}
    rebuilt.load_state_dict(state)
    image = _image(150, 97)
    assert torch.equal(rebuilt(image), fitted(image))
    with pytest.raises(ValueError, match="size must be positive"):
        rebuilt.load_state_dict({"size": -3})


def test_a_fixed_size_is_kept_by_fit_size():
    transform = ImageTransform(size=48)
    assert transform.fit_size([(500, 400)]) == 48
    assert transform.state_dict() == {"size": 48}
