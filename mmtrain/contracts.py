"""The data types and protocols shared by encoders, fusions, heads and loss weightings.

See ARCHITECTURE.md, "The parts and their contracts". Masks are ``True`` where a position holds
real data and ``False`` where it is padding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch-free at import: the CLI reads the names below
    from torch import Tensor

# A batch is a flat dict keyed by modality (image, text, text_mask, audio, audio_mask), by task
# (label, caption, caption_mask, ...) and "id" (a list of sample ids).
Batch = dict[str, Any]

MODALITIES = ("image", "text", "audio")
STAGES = ("fit", "validate", "test", "predict")  # mmtrain <stage>
SPLITS = ("train", "val", "test")  # the splits of every data set
REFERENCES = "_references"  # batch[<task> + REFERENCES]: the reference strings of text targets
FEATURES = "_features"  # batch[<modality> + FEATURES]: cached features (B, D, T) in its place
CHECKPOINT_KEY = "mmtrain"  # checkpoint[CHECKPOINT_KEY] = {"config": yaml, "data": state}


class Features(NamedTuple):
    """Token features of one modality, or of the fused modalities.

    Attributes:
        tokens: ``(B, N, D)`` float tensor; pooled-only encoders return ``N == 1``.
        mask: ``(B, N)`` bool tensor, ``True`` for real tokens, or ``None`` when all are real.
    """

    tokens: Tensor
    mask: Tensor | None = None

    def pooled(self) -> Tensor:
        """Masked mean over the token axis: ``(B, N, D) -> (B, D)``.

        A sample whose tokens are all masked pools to zeros rather than NaN.
        """
        if self.mask is None:
            return self.tokens.mean(dim=1)
        weights = self.mask.to(self.tokens.dtype).unsqueeze(-1)  # (B, N, 1)
        total = (self.tokens * weights).sum(dim=1)
        return total / weights.sum(dim=1).clamp_min(1.0)

    def present(self) -> Tensor:
        """``(B,)`` bool: which samples have at least one real token."""
        if self.mask is None:
            return self.tokens.new_ones(self.tokens.shape[0]).bool()
        return self.mask.any(dim=1)


@runtime_checkable
class Encoder(Protocol):
    """Maps one modality's batch tensor (and its mask) to :class:`Features`."""

    out_dim: int

    def __call__(self, x: Tensor, mask: Tensor | None = None) -> Features: ...


@runtime_checkable
class Fusion(Protocol):
    """Maps ``{modality: Features}`` to one :class:`Features`; absent modalities are allowed."""

    out_dim: int

    def __call__(self, features: dict[str, Features]) -> Features: ...


@runtime_checkable
class Head(Protocol):
    """Turns fused features into task outputs, computes its loss and metrics, decodes outputs.

    ``forward`` gives the training outputs (the target is there for teacher forcing), ``loss``
    their loss, ``predict`` the decoded predictions of a batch (class names, caption strings),
    generating them when the task needs it. ``make_metrics`` returns a torchmetrics object whose
    ``compute()`` is a ``{metric name: value}`` dict; ``update_metrics`` feeds it one batch, with
    the predictions and, where the batch has them, the ``<task>_references`` (e.g. all captions
    of an image).

    ``unfused`` heads read ``{modality: Features}`` of the encoders instead of the fused
    features (two-tower retrieval); ``modalities`` are those a head cannot do without (a batch
    that lacks one skips the head: segmentation needs the image).
    """

    unfused: bool
    modalities: tuple[str, ...] | list[str]

    def __call__(
        self, features: Features, target: Tensor | None = None, target_mask: Tensor | None = None
    ) -> Tensor: ...

    def loss(
        self, outputs: Tensor, target: Tensor, target_mask: Tensor | None = None
    ) -> Tensor: ...

    def make_metrics(self) -> Any: ...

    def update_metrics(
        self,
        metrics: Any,
        outputs: Tensor,
        target: Tensor,
        target_mask: Tensor | None = None,
        predictions: list[Any] | None = None,
        references: list[Any] | None = None,
    ) -> None: ...

    def predict(self, features: Features, outputs: Tensor | None = None) -> list[Any]: ...

    def decode(self, outputs: Tensor) -> list[Any]: ...


@runtime_checkable
class Tokenizer(Protocol):
    """What a head uses of its text target's tokenizer, fitted on the training split by the
    data side (``WordTokenizer``, ``CharTokenizer``, ``BPETokenizer``; wired by build.py): ids
    back to text, and the special ids. Heads depend on this, not on ``mmtrain.data``."""

    pad_id: int
    bos_id: int
    eos_id: int
    max_length: int  # ids kept per encoded text (longer ones are truncated)

    @property
    def vocab_size(self) -> int: ...

    def decode(self, ids: Iterable[int]) -> str: ...


@runtime_checkable
class Answers(Protocol):
    """What a head uses of a VQA target's answer classes (``AnswerVocabulary``): the answer of
    each class id, and the ids of padding and of answers outside the top K."""

    vocab: list[str]
    pad_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int: ...


class SharedParameters(NamedTuple):
    """The parameters every task shares, handed to gradient-based loss weightings.

    Attributes:
        all: the trainable parameters of the encoders and the fusion.
        last: those of the last shared layer (the fusion's; the encoders' when the fusion has
            none), where GradNorm measures gradient norms.
    """

    all: list[Tensor]
    last: list[Tensor]


@runtime_checkable
class LossWeighting(Protocol):
    """Combines per-task losses into one total; returns the weights it used for logging.

    A weighting that needs per-task gradients (GradNorm, PCGrad) also has
    ``backward(losses, total, shared: SharedParameters, backward, scale)``, which the module
    calls in place of backpropagating the total (see ``mmtrain/loss_weighting/base.py``).
    ``epoch_end`` is called after each training epoch (DWA keeps its loss history there).
    """

    def __call__(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...

    def epoch_end(self) -> None: ...
