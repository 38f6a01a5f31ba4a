"""Image encoders: ``(B, 3, H, W)`` float -> grid tokens ``(B, h*w, D)``."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from mmtrain.contracts import Features


def _grid_to_tokens(grid: Tensor) -> Features:
    # (B, D, h, w) -> (B, h*w, D): every spatial cell is a token, none is padding.
    return Features(grid.flatten(2).transpose(1, 2), None)


class SmallCNNEncoder(nn.Module):
    """A few conv-BN-ReLU blocks, each halving the resolution; cheap enough for CPU runs.

    Args:
        channels: output channels of each block; the last one is ``out_dim``.
        dropout: dropout on the output tokens.

    Raises:
        ValueError: if ``channels`` is empty or has a non-positive entry.
    """

    def __init__(self, channels: list[int] = (32, 64, 128), dropout: float = 0.0) -> None:
        super().__init__()
        channels = list(channels)
        if not channels or min(channels) <= 0:
            raise ValueError(f"channels must be non-empty and positive, got {channels}")
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in channels:
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = out_ch
        self.net = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = channels[-1]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode images; ``mask`` is unused (images have no padding)."""
        grid = self.net(x)  # (B, D, H / 2^k, W / 2^k)
        tokens, _ = _grid_to_tokens(grid)
        return Features(self.dropout(tokens), None)


class ResNetEncoder(nn.Module):
    """A torchvision ResNet trunk (no pooling, no classifier) giving 2-D grid tokens.

    Args:
        arch: torchvision model name, ``resnet18``, ``resnet34`` or ``resnet50``.
        pretrained: load torchvision's ImageNet weights (downloads them once; off by default).
        freeze: keep the trunk's weights (and BatchNorm statistics) fixed.

    Raises:
        ValueError: for an unknown ``arch``.
    """

    _ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}

    def __init__(self, arch: str = "resnet18", pretrained: bool = False, freeze: bool = False):
        super().__init__()
        if arch not in self._ARCHS:
            raise ValueError(f"arch must be one of {sorted(self._ARCHS)}, got {arch!r}")
        weights = "DEFAULT" if pretrained else None
        net = torchvision.models.get_model(arch, weights=weights)
        self.trunk = nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc
        self.out_dim = self._ARCHS[arch]
        self.freeze = freeze
        if freeze:
            self.trunk.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetEncoder:
        """Keep a frozen trunk in eval mode so its BatchNorm statistics stay fixed."""
        super().train(mode)
        if self.freeze:
            self.trunk.eval()
        return self

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode images; ``mask`` is unused."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            grid = self.trunk(x)  # (B, D, H/32, W/32)
        return _grid_to_tokens(grid)
