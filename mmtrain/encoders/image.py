"""Image encoders: ``(B, 3, H, W)`` float -> grid tokens ``(B, h*w, D)``."""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from mmtrain.contracts import Features
from mmtrain.encoders import FreezableEncoder
from mmtrain.utils.hub import offline


def pretrained_state(arch: str) -> dict[str, Tensor]:
    """torchvision's default ImageNet weights of ``arch``: from the torch hub cache
    (``<torch.hub.get_dir()>/checkpoints/``), downloaded there first on a machine with a network
    as torchvision does, unless offline (``HF_HUB_OFFLINE=1``, which mmtrain's tests set). Read
    with ``weights_only=True``, the file's hash checked on download.

    Raises:
        ValueError: naming the expected file and how to get it, when it is not there and
            cannot be downloaded.
    """
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if file.is_file():
        return torch.load(file, map_location="cpu", weights_only=True)
    how = (
        f"pretrained weights for {arch} not found at {file}; fetch them once on a machine "
        f'with internet (python -c "import torchvision; torchvision.models.get_model('
        f"'{arch}', weights='DEFAULT')\") and copy the file there, or set pretrained=false"
    )
    if offline():
        raise ValueError(f"{how} (offline: HF_HUB_OFFLINE=1)")
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError) as err:  # no network, a bad download
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{how} (the download failed: {reason})") from None


def _scaled(size: int, grid: int, side: int, power: float) -> int:
    """``ceil(size * (grid / side) ** power)``, exact at ``power=1`` (no float round-up)."""
    if power == 1:
        return -(-size * grid // side)
    return max(1, math.ceil(size * (grid / side) ** power - 1e-6))


def _grid_to_tokens(grid: Tensor) -> Features:
    # (B, D, h, w) -> (B, h*w, D): every spatial cell is a token, none is padding.
    return Features(grid.flatten(2).transpose(1, 2), None)


class SmallCNNEncoder(FreezableEncoder):
    """A few conv-BN-ReLU-max-pool blocks; cheap enough for CPU runs, at any image size.

    Up to ``grid * 2**len(channels)`` pixels a side (64 px with the preset's 4 blocks and
    ``grid=4``), each block halves the resolution: a ``(S/16) x (S/16)`` grid of tokens, each
    seeing about 46 px, most of a 64 px image. A larger image would leave each token a small
    fragment of it (a bag of local features once pooled), so there the blocks pool by the same
    larger factor ``(S / grid) ** (1 / len(channels))`` each (adaptive max pooling) instead:
    the grid stays ``grid x grid`` and the receptive field grows with the image (about half of
    a 224 px image for one output unit, the whole image for a token's neighbourhood of units).
    The weights do not depend on the size.

    Args:
        channels: output channels of each block; the last one is ``out_dim``.
        dropout: dropout on the output tokens.
        grid: the largest side of the output token grid; None halves in every block whatever
            the size.
        freeze: fix every weight and keep eval mode (see
            :class:`~mmtrain.encoders.FreezableEncoder`).

    Raises:
        ValueError: if ``channels`` is empty or has a non-positive entry, or ``grid < 1``.
    """

    def __init__(
        self,
        channels: list[int] = (32, 64, 128),
        dropout: float = 0.0,
        grid: int | None = 4,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if not channels or min(channels) <= 0:
            raise ValueError(f"channels must be non-empty and positive, got {channels}")
        if grid is not None and grid < 1:
            raise ValueError(f"grid must be at least 1 (or None), got {grid}")
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
        self.grid = grid
        self.blocks = len(channels)
        self.out_dim = channels[-1]
        self._set_frozen(freeze)

    def pool_sizes(self, height: int, width: int) -> list[tuple[int, int]] | None:
        """The output size of each block's pooling for an input of ``height x width``, or None
        when every block halves (the input is at most ``grid * 2**blocks`` a side)."""
        side = max(height, width)
        if self.grid is None or side <= self.grid * 2**self.blocks:
            return None
        # Block k pools to ceil(size * (grid / side) ** (k / blocks)): the same factor (> 2)
        # each time, and exactly ceil(size * grid / side) after the last block.
        powers = [k / self.blocks for k in range(1, self.blocks + 1)]
        return [
            (_scaled(height, self.grid, side, p), _scaled(width, self.grid, side, p))
            for p in powers
        ]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode images ``(B, 3, H, W)``; ``mask`` is unused (images have no padding)."""
        sizes = self.pool_sizes(*x.shape[-2:])
        if sizes is None:
            grid = self.net(x)  # (B, D, H / 2^k, W / 2^k)
        else:
            pools = iter(sizes)
            grid = x
            for layer in self.net:  # the same layers, each pooling to its size
                pooled = isinstance(layer, nn.MaxPool2d)
                grid = F.adaptive_max_pool2d(grid, next(pools)) if pooled else layer(grid)
        tokens, _ = _grid_to_tokens(grid)  # (B, h*w, D), h and w at most grid
        return Features(self.dropout(tokens), None)


class ResNetEncoder(FreezableEncoder):
    """A torchvision ResNet trunk (no pooling, no classifier) giving 2-D grid tokens.

    Args:
        arch: torchvision model name, ``resnet18``, ``resnet34`` or ``resnet50``.
        pretrained: load torchvision's ImageNet weights (see :func:`pretrained_state`: the
            torch hub cache, downloaded there with a network); off by default.
        freeze: keep the trunk's weights (and BatchNorm statistics) fixed.

    Raises:
        ValueError: for an unknown ``arch``.
    """

    _ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}

    def __init__(self, arch: str = "resnet18", pretrained: bool = False, freeze: bool = False):
        super().__init__()
        if arch not in self._ARCHS:
            raise ValueError(f"arch must be one of {sorted(self._ARCHS)}, got {arch!r}")
        net = torchvision.models.get_model(arch, weights=None)
        if pretrained:
            net.load_state_dict(pretrained_state(arch))
        self.trunk = nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc
        self.out_dim = self._ARCHS[arch]
        self._set_frozen(freeze)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode images; ``mask`` is unused."""
        return _grid_to_tokens(self.trunk(x))  # (B, D, H/32, W/32) -> (B, HW/1024, D)


class _ViTTokens(nn.Module):
    """A torchvision VisionTransformer without its classifier: every output token."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        vit.heads = nn.Identity()  # the ImageNet classifier is not used
        self.vit = vit

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.vit._process_input(x)  # (B, N, D) patch embeddings
        cls = self.vit.class_token.expand(x.shape[0], -1, -1)
        return self.vit.encoder(torch.cat([cls, tokens], dim=1))  # (B, 1 + N, D)


class ViTEncoder(FreezableEncoder):
    """A torchvision Vision Transformer (ViT-B/16 by default): the class token and one token per
    16x16 patch.

    Args:
        arch: ``vit_b_16``, ``vit_b_32``, ``vit_l_16`` or ``vit_l_32``.
        pretrained: load torchvision's ImageNet weights (see :func:`pretrained_state`; needs
            ``image_size=224``); off by default.
        freeze: keep the weights fixed (and dropout off).
        image_size: input height and width (``data.image.size`` must match).

    Raises:
        ValueError: for an unknown arch, or pretrained weights at another image size.
    """

    _ARCHS = {"vit_b_16": 768, "vit_b_32": 768, "vit_l_16": 1024, "vit_l_32": 1024}

    def __init__(
        self,
        arch: str = "vit_b_16",
        pretrained: bool = False,
        freeze: bool = False,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        if arch not in self._ARCHS:
            raise ValueError(f"arch must be one of {sorted(self._ARCHS)}, got {arch!r}")
        if pretrained and image_size != 224:
            raise ValueError(f"pretrained {arch} weights are for image_size=224, got {image_size}")
        net = torchvision.models.get_model(arch, weights=None, image_size=image_size)
        if pretrained:
            net.load_state_dict(pretrained_state(arch))
        self.trunk = _ViTTokens(net)
        self.out_dim = self._ARCHS[arch]
        self._set_frozen(freeze)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode images ``(B, 3, S, S)`` into ``(B, 1 + (S/16)^2, D)`` tokens."""
        return Features(self.trunk(x), None)
