"""Encoders of tabular data: ``tabular (B, F)`` standardised numbers -> one token."""

from __future__ import annotations

from torch import Tensor, nn

from mmtrain.contracts import Features
from mmtrain.encoders import FreezableEncoder


class MLPEncoder(FreezableEncoder):
    """A multilayer perceptron over a sample's numeric features: ``(B, F) -> (B, 1, D)``.

    Each hidden layer is Linear -> LayerNorm -> GELU -> Dropout; the last layer projects to
    ``out_dim``. The input is what :class:`~mmtrain.data.inputs.TabularInput` gives:
    standardised values and, with ``missing=mean``, one missingness flag per column.

    Args:
        num_features: input width (wired from the data's ``num_features``).
        hidden_dims: widths of the hidden layers; empty: one linear layer.
        out_dim: width of the output token.
        dropout: dropout after each hidden layer.
        freeze: fix the weights (see :class:`FreezableEncoder`).

    Raises:
        ValueError: for a non-positive size or a dropout outside [0, 1).
    """

    def __init__(
        self,
        num_features: int,
        hidden_dims: list[int] = (64, 64),
        out_dim: int = 64,
        dropout: float = 0.0,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        sizes = [int(num_features), *(int(h) for h in hidden_dims)]
        if min(*sizes, int(out_dim)) <= 0 or not 0 <= dropout < 1:
            raise ValueError(
                f"need positive sizes and 0 <= dropout < 1, got num_features={num_features}, "
                f"hidden_dims={list(hidden_dims)}, out_dim={out_dim}, dropout={dropout}"
            )
        layers: list[nn.Module] = []
        for width_in, width_out in zip(sizes[:-1], sizes[1:]):
            layers += [
                nn.Linear(width_in, width_out),
                nn.LayerNorm(width_out),
                nn.GELU(),
                nn.Dropout(dropout),
            ]
        layers.append(nn.Linear(sizes[-1], out_dim))
        self.net = nn.Sequential(*layers)
        self.num_features, self.out_dim = sizes[0], int(out_dim)
        self._set_frozen(freeze)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected tabular (B, {self.num_features}), got {tuple(x.shape)}: "
                "num_features must match data.tabular (columns, and their flags with "
                "missing=mean)"
            )
        return Features(self.net(x.float()).unsqueeze(1))
