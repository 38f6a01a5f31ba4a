"""SegmentationHead: loss and metrics pinned on hand-computed examples, shapes, the grid rule."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmtrain.contracts import Features
from mmtrain.heads.segmentation import SegmentationHead

IGNORE = 255


def _head(num_classes: int = 2, **kwargs) -> SegmentationHead:
    torch.manual_seed(0)
    kwargs.setdefault("in_dim", 8)
    kwargs.setdefault("dim", 8)
    return SegmentationHead(num_classes=num_classes, **kwargs)


def _logits_of(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits ``(B, C, H, W)`` whose argmax is ``pred (B, H, W)``."""
    return 10.0 * torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()


# ---- loss ------------------------------------------------------------------------------------
# One image of 2x2 pixels, 2 classes. Logit pairs chosen for round probabilities:
#   pixel a: target 1, logits (0, ln 3) -> p = (1/4, 3/4), CE = -ln(3/4) = ln(4/3)
#   pixel b: target 0, logits (0, 0)    -> p = (1/2, 1/2), CE = ln 2
#   pixel c: target 0, logits (ln 3, 0) -> p = (3/4, 1/4), CE = ln(4/3)
#   pixel d: ignored (255), logits (5, -5): counts nowhere
LN3 = math.log(3.0)
LOGITS = torch.tensor([[[[0.0, 0.0], [LN3, 5.0]], [[LN3, 0.0], [0.0, -5.0]]]])  # (1, 2, 2, 2)
TARGET = torch.tensor([[[1, 0], [0, IGNORE]]])  # (1, 2, 2): a b / c d
# CE = mean over the 3 valid pixels = (2 ln(4/3) + ln 2) / 3
CE = (2 * math.log(4 / 3) + math.log(2)) / 3
# Dice_c = 2 sum(p_c y_c) / (sum p_c + sum y_c) over a, b, c:
#   class 0: p = (1/4, 1/2, 3/4), y = (0, 1, 1): 2 * (1/2 + 3/4) / (3/2 + 2) = (5/2) / (7/2) = 5/7
#   class 1: p = (3/4, 1/2, 1/4), y = (1, 0, 0): 2 * (3/4) / (3/2 + 1)       = (3/2) / (5/2) = 3/5
# mean Dice = (5/7 + 3/5) / 2 = 23/35, Dice loss = 1 - 23/35 = 12/35
DICE_LOSS = 12 / 35


def test_loss_is_hand_computed_ce_plus_dice() -> None:
    head = _head(ce_weight=1.0, dice_weight=1.0)
    assert head.loss(LOGITS, TARGET).item() == pytest.approx(CE + DICE_LOSS, abs=1e-6)
    only_ce = _head(ce_weight=1.0, dice_weight=0.0).loss(LOGITS, TARGET)
    only_dice = _head(ce_weight=0.0, dice_weight=2.0).loss(LOGITS, TARGET)
    assert only_ce.item() == pytest.approx(CE, abs=1e-6)
    assert only_dice.item() == pytest.approx(2 * DICE_LOSS, abs=1e-6)


def test_dice_averages_only_the_classes_present() -> None:
    # A third class, absent from the target and (almost) never predicted: Dice_2 would be 0 and
    # pull the mean down if it were averaged; it is not, so the loss is the 2-class one.
    logits = torch.cat([LOGITS, torch.full((1, 1, 2, 2), -100.0)], dim=1)  # (1, 3, 2, 2)
    loss = _head(num_classes=3).loss(logits, TARGET)
    assert loss.item() == pytest.approx(CE + DICE_LOSS, abs=1e-6)


def test_ignored_pixels_do_not_change_the_loss() -> None:
    head = _head()
    other = LOGITS.clone()
    other[0, :, 1, 1] = torch.tensor([-7.0, 9.0])  # pixel d's logits changed
    assert head.loss(other, TARGET).item() == pytest.approx(head.loss(LOGITS, TARGET).item())
    all_ignored = torch.full_like(TARGET, IGNORE)
    logits = LOGITS.clone().requires_grad_(True)
    loss = head.loss(logits, all_ignored)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_loss_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 2\) vs \(1, 3, 3\)"):
        _head().loss(LOGITS, torch.zeros(1, 3, 3, dtype=torch.long))


# ---- metrics ---------------------------------------------------------------------------------
# 3 classes, one image of 2x3 pixels, the last one ignored:
#   target [[0, 0, 1], [1, 2, 255]]
#   pred   [[0, 1, 1], [1, 1, 0  ]]
# Over the 5 valid pixels (p0..p4): pred (0, 1, 1, 1, 1), target (0, 0, 1, 1, 2).
#   class 0: pred {p0}, target {p0, p1}          -> IoU = 1 / 2
#   class 1: pred {p1, p2, p3, p4}, target {p2, p3} -> IoU = 2 / 4
#   class 2: pred {}, target {p4}                -> IoU = 0 / 1
# mIoU = (1/2 + 1/2 + 0) / 3 = 1/3; pixel accuracy = 3 right (p0, p2, p3) / 5 = 0.6.
# Were the ignored pixel counted, class 0's union would be 3 and pixel accuracy 3/6.
METRIC_TARGET = torch.tensor([[[0, 0, 1], [1, 2, IGNORE]]])
METRIC_PRED = torch.tensor([[[0, 1, 1], [1, 1, 0]]])


@pytest.mark.parametrize("num_classes", [3, 4])
def test_miou_and_pixel_accuracy_are_hand_computed(num_classes: int) -> None:
    # num_classes=4: class 3 is in neither target nor prediction. torchmetrics gives it weight 0
    # in the macro mean (neither IoU 0 nor 1), so mIoU stays 1/3.
    head = _head(num_classes=num_classes)
    metrics = head.make_metrics()
    head.update_metrics(metrics, _logits_of(METRIC_PRED, num_classes), METRIC_TARGET)
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["miou"] == pytest.approx(1 / 3, abs=1e-6)
    assert values["pixel_accuracy"] == pytest.approx(0.6, abs=1e-6)


def test_metrics_accumulate_over_batches() -> None:
    # The same image twice, in two updates: one confusion matrix, so the same numbers.
    head = _head(num_classes=3)
    metrics = head.make_metrics()
    for _ in range(2):
        head.update_metrics(metrics, _logits_of(METRIC_PRED, 3), METRIC_TARGET)
    values = metrics.compute()
    assert values["miou"].item() == pytest.approx(1 / 3, abs=1e-6)
    assert values["pixel_accuracy"].item() == pytest.approx(0.6, abs=1e-6)


# ---- shapes, the grid rule, gradients ---------------------------------------------------------
def _square(batch: int = 2, side: int = 3, width: int = 8) -> Features:
    return Features(torch.randn(batch, side * side, width), None)


def test_output_sizes() -> None:
    head = _head(num_classes=4, upsample=4).eval()
    feats = _square(side=3)
    assert head(feats).shape == (2, 4, 12, 12)  # grid * upsample without a target
    target = torch.zeros(2, 20, 30, dtype=torch.long)
    assert head(feats, target).shape == (2, 4, 20, 30)  # the target's size
    assert _head(upsample=1)(feats).shape == (2, 2, 3, 3)


def test_grid_key_reads_the_front_of_concatenated_tokens() -> None:
    # As fusion=concat gives: a 2x3 image grid first, then 5 padded text tokens.
    head = _head(grid=[2, 3], upsample=2).eval()
    tokens = torch.randn(2, 6 + 5, 8)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    out = head(Features(tokens, mask))
    assert out.shape == (2, 2, 4, 6)
    changed = tokens.clone()
    changed[:, 6:] = 100.0  # what follows the grid is not read
    assert torch.equal(head(Features(changed, mask)), out)
    with pytest.raises(ValueError, match=r"grid=\[4, 4\] needs 16 image tokens.* have 11"):
        _head(grid=[4, 4])(Features(tokens, mask))


def test_grid_is_row_major_and_padding_is_zeroed() -> None:
    head = _head(grid=[2, 3])
    tokens = torch.arange(6.0).reshape(1, 6, 1).expand(2, 6, 2).clone()  # token i = (i, i)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False  # sample 1's image was dropped
    grid = head.image_grid(Features(tokens, mask))  # (B, D, h, w)
    assert grid.shape == (2, 2, 2, 3)
    assert grid[0, 0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert not grid[1].any()


@pytest.mark.parametrize("count", [23, 1])
def test_no_image_grid_is_a_clear_error(count: int) -> None:
    with pytest.raises(ValueError, match=rf"got {count} fused tokens.*fusion=film"):
        _head()(Features(torch.randn(2, count, 8), None))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ignore_index": 1}, r"ignore_index=1 is a class id"),
        ({"upsample": 3}, r"power of 2.*got 3"),
        ({"ce_weight": 0.0, "dice_weight": 0.0}, r"not both 0"),
        ({"grid": [4]}, r"grid must be \[h, w\].*\[4\]"),
        ({"num_classes": 300}, r"\[2, 256\].*300"),
        ({"class_names": ["a"]}, r"1 class_names for num_classes=2"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    kwargs = {"num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        SegmentationHead(in_dim=8, **kwargs)


def test_predict_gives_uint8_masks() -> None:
    head = _head(num_classes=3, upsample=2).eval()
    feats = _square(side=4)
    with torch.no_grad():
        logits = head(feats)
        masks = head.predict(feats)
    assert len(masks) == 2
    assert all(isinstance(m, np.ndarray) and m.dtype == np.uint8 for m in masks)
    assert masks[0].shape == (8, 8)
    assert np.array_equal(np.stack(masks), logits.argmax(dim=1).numpy())
    assert np.array_equal(np.stack(head.predict(feats, logits)), np.stack(masks))


def test_gradients_reach_every_parameter_and_the_tokens() -> None:
    head = _head(num_classes=3)
    tokens = torch.randn(2, 9, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, 0] = IGNORE
    loss = head.loss(head(Features(tokens, None), target), target)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_text_guided_with_film_trains_one_step(compose_config, synth_batch, synth_facts) -> None:
    """The documented text-guided setup: FiLM keeps the 4x4 image grid, grid inferred."""
    from mmtrain.build import build_module

    torch.manual_seed(0)
    cfg = compose_config(
        "+head/mask=segmentation", "head.mask.grid=null", "fusion=film", "~head/caption"
    )
    module = build_module(cfg, synth_facts)
    batch = synth_batch(list(cfg.encoder), list(cfg.head), synth_facts)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    with torch.no_grad():
        logits = module.heads["mask"](module(batch), batch["mask"])
    assert logits.shape == (2, 4, 64, 64)


def test_predicted_masks_are_written_as_pngs(tmp_path) -> None:
    """run.py writes each predicted mask as predictions/masks_<split>/<id>.png (class ids)."""
    import json

    import numpy as np
    from PIL import Image

    from mmtrain.data.targets import MaskTarget
    from mmtrain.run import _write_predictions

    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    rows = [{"id": "images/a b.jpg", "mask": mask}, {"id": "7", "mask": mask[::-1]}]
    target = MaskTarget()
    target.name = "mask"
    _write_predictions(tmp_path, "test", rows, SimpleNamespace(targets={"mask": target}))
    index = json.loads((tmp_path / "predictions/index.json").read_text())
    assert index == [
        {
            "path": "mask_test.jsonl",
            "task": "mask",
            "split": "test",
            "id_key": "id",
            "value_key": "prediction",
            "reference_key": None,
        }
    ]
    first = np.asarray(Image.open(tmp_path / "predictions/masks_test/a_b.png"))
    assert first.tolist() == mask.tolist()
    lines = (tmp_path / "predictions/mask_test.jsonl").read_text().splitlines()
    assert [json.loads(x)["prediction"] for x in lines] == [
        "masks_test/a_b.png",
        "masks_test/7.png",
    ]


def test_the_head_is_skipped_without_an_image(compose_config, synth_batch, synth_facts) -> None:
    """robustness=missing takes modalities away: no image, nothing to segment, no mask loss."""
    import warnings

    from mmtrain.build import build_module

    module = build_module(compose_config("+head/mask=segmentation"), synth_facts).eval()
    batch = synth_batch(["image", "text", "audio"], ["label", "mask"], synth_facts)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        assert "mask" in module._task_losses(batch, "val")
        module.without = frozenset({"image"})
        losses = module._task_losses(batch, "val")
    assert "mask" not in losses and "label" in losses
