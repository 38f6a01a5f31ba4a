"""Helpers for tests of the model parts."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(module: nn.Module) -> None:
    """Non-trivial running statistics and affine weights for every ``BatchNorm2d`` in
    ``module``, so that "eval mode" does not hide padding effects."""
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
