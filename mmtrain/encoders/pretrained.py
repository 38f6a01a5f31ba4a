"""What every pretrained tower shares (Hugging Face transformers, timm, open_clip).

A pretrained encoder wraps a library model and returns :class:`~mmtrain.contracts.Features`
like any encoder. This base owns the options that every such preset has:

- ``freeze`` and ``unfreeze_last: N``: fix the whole tower, or all of it but its last ``N``
  blocks and what follows them (the final norm, a pooler, a projection); frozen blocks stay in
  eval mode (no dropout) while the rest trains;
- ``blocks()``: the tower's blocks in order, for ``unfreeze_last`` and ``model.layer_decay``;
- ``model_files``: the files that rebuild the tower without its weights (config, tokenizer,
  processor). :class:`~mmtrain.module.MultimodalModule` stores them in every checkpoint, and
  ``mmtrain test|predict`` rebuilds from them (with ``pretrained`` set to :attr:`NO_WEIGHTS`),
  so a checkpoint never needs ``model_name_or_path`` again;
- ``preprocessing(...)``: the ``data.<modality>`` keys that make the input preprocess as the
  model was trained (build.py writes them into the data config before the data is built).

Subclasses build their model, then call :meth:`_finish`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mmtrain.encoders import FreezableEncoder


class PretrainedEncoder(FreezableEncoder):
    """The shared part of the pretrained towers (see the module docstring).

    Attributes:
        NO_WEIGHTS: the value of ``pretrained`` that builds the architecture only (what a
            checkpoint's rebuild uses: its state_dict holds the weights).
        model_files: ``{file name: content}`` of the files that rebuild the model.
        unfreeze_last: the blocks left trainable in a frozen tower.
    """

    NO_WEIGHTS: Any = False
    model_files: dict[str, bytes]
    unfreeze_last: int = 0

    @classmethod
    def preprocessing(cls, **node: Any) -> dict[str, Any]:
        """The ``data.<modality>`` keys of this model's preprocessing, from the preset's keys
        (``model_name_or_path``, ``revision``, ``model_dir``...); none by default."""
        return {}

    def blocks(self) -> list[nn.Module]:
        """The tower's repeated blocks (Transformer layers, ConvNet stages), input to output."""
        return []

    def after_blocks(self) -> list[nn.Module | nn.Parameter]:
        """What follows the last block (final norm, pooler, projection): it trains with
        ``unfreeze_last``."""
        return []

    def _finish(
        self, freeze: bool, unfreeze_last: int | str = 0, gradient_checkpointing: bool = False
    ) -> None:
        """Apply the freezing options; subclasses call it last in ``__init__``.

        Args:
            freeze: fix the whole tower.
            unfreeze_last: train only the last N blocks and what follows them; ``all``: every
                block, only the front (embeddings, a convolutional stem) stays fixed.
            gradient_checkpointing: recompute activations in backward.

        Raises:
            ValueError: for ``unfreeze_last`` outside ``[0, number of blocks]`` (or ``all``).
        """
        blocks = self.blocks()
        if unfreeze_last == "all":
            unfreeze_last = len(blocks)
        valid = isinstance(unfreeze_last, int) and not isinstance(unfreeze_last, bool)
        if not valid or not 0 <= unfreeze_last <= len(blocks):
            raise ValueError(
                f"unfreeze_last must be in [0, {len(blocks)}] (the tower's blocks) or all, "
                f"got {unfreeze_last!r}"
            )
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()
        self.unfreeze_last = int(unfreeze_last)
        if self.unfreeze_last == 0:
            self._set_frozen(freeze)
            return
        # Partly frozen: the tower as a whole trains (no feature cache), its front does not.
        self._set_frozen(False)
        self.requires_grad_(False)
        for part in [*blocks[-self.unfreeze_last :], *self.after_blocks()]:
            part.requires_grad_(True)
        self.train(self.training)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (less memory, more compute)."""
        raise ValueError(f"{type(self).__name__} has no gradient checkpointing")

    def train(self, mode: bool = True) -> PretrainedEncoder:
        """Set the training mode; frozen blocks of a partly frozen tower stay in eval mode."""
        super().train(mode)
        if self.unfreeze_last:
            for block in self.blocks()[: -self.unfreeze_last]:
                block.eval()
        return self
