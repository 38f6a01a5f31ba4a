"""Encoders: one modality's batch tensor -> :class:`mmtrain.contracts.Features`."""

from __future__ import annotations

from torch import nn


class FreezableEncoder(nn.Module):
    """What every encoder shares: ``freeze=True`` (``encoder.<modality>.freeze=true``).

    A frozen encoder has every parameter fixed (``requires_grad=False``, so the optimizer never
    gets them) and stays in eval mode whatever ``train()`` is asked: BatchNorm uses and keeps
    its running statistics, dropout is off. Its output for an input is then the same every
    epoch, which is what the feature cache (``data.cache_features=true``) relies on. Freezing
    is useful with pretrained weights (``pretrained=true`` of the torchvision encoders, or
    ``init_from=<checkpoint>`` for any encoder).
    """

    freeze: bool = False

    def _set_frozen(self, freeze: bool) -> None:
        """Freeze the whole encoder if ``freeze``; subclasses call it last in ``__init__``
        (eval from the start: Lightning does not call ``train()`` before fitting)."""
        self.freeze = bool(freeze)
        if self.freeze:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> FreezableEncoder:
        """Set the training mode; a frozen encoder stays in eval mode."""
        return super().train(mode and not self.freeze)
