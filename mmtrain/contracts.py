"""The data types and protocols shared by encoders, fusions, heads and loss weightings.

See ARCHITECTURE.md, "The parts and their contracts". Masks are ``True`` where a position holds
real data and ``False`` where it is padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch-free at import: the CLI reads the names below
    from pathlib import Path

    from torch import Tensor

# A batch is a flat dict keyed by modality (image, text, text_mask, audio, audio_mask), by task
# (label, caption, caption_mask, ...) and "id" (a list of sample ids).
Batch = dict[str, Any]

MODALITIES = ("image", "text", "audio", "tabular")  # the data module's input keys
STAGES = ("fit", "validate", "test", "predict")  # mmtrain <stage>
SPLITS = ("train", "val", "test")  # the splits of every data set
REFERENCES = "_references"  # batch[<task> + REFERENCES]: the reference strings of text targets
FEATURES = "_features"  # batch[<modality> + FEATURES]: cached features (B, D, T) in its place
CHECKPOINT_KEY = "mmtrain"  # checkpoint[CHECKPOINT_KEY] = {"config": yaml, "data": state}
# Causal-LM targets (``head/<task>=causal_lm``): in token ids, the position where the fused
# feature tokens go (an ``<image>`` placeholder; LLaVA's IMAGE_TOKEN_INDEX); in labels, the
# positions not trained on (prompt, features, padding; PyTorch's and HF's ignore_index).
FEATURE_TOKEN = -200
IGNORE_INDEX = -100
PLACEHOLDER = "<image>"  # the placeholder in prompts and conversations


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
class ChatTokenizer(Protocol):
    """What a causal-LM head uses of its target's tokenizer (``LMTokenizer``, wired by
    build.py): the LM's own tokenizer with its chat template (or mmtrain's fallback template
    for a base LM without one). Heads depend on this, not on ``mmtrain.data``.

    A causal-LM target's batch carries, for task ``T``: ``T (B, L)`` the conversation's ids,
    right-padded with ``pad_id``, with :data:`FEATURE_TOKEN` where the fused features go;
    ``T_mask (B, L)``; ``T_labels (B, L)`` the ids to predict, :data:`IGNORE_INDEX` elsewhere;
    ``T_prompt (B, P)`` the generation prompt (the conversation up to its last answer, ending
    with the assistant's turn opening), left-padded, and ``T_prompt_mask (B, P)``;
    ``T_references``: the reference answers of the last turn.
    """

    pad_id: int
    eos_id: int
    stop_ids: list[int]  # ids that end an answer (end of text, the template's end of turn)
    max_length: int  # the LM's context: most ids of a conversation, feature positions excluded

    @property
    def vocab_size(self) -> int: ...

    @property
    def hf_tokenizer(self) -> Any: ...  # the transformers tokenizer (generate's stop strings)

    def prompt_ids(self, prompt: str, features: bool = True) -> list[int]: ...

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


# ---- the data side: one Input per modality, one Target per task ---------------------------------
@dataclass
class Column:
    """One column of the training split, handed to :meth:`Input.fit` and :meth:`Target.fit`.

    Attributes:
        values: the raw values as the data set lists them, without decoding any sample (strings,
            numbers, file paths; ``None`` for an absent value).
        decoded: ``decoded(n)``: the values of up to ``n`` samples spread over the split,
            decoded as items give them (PIL images, ``(samples, rate)``...).
        classes: the class names the data set declares for the column, in id order (a
            Hugging Face ``ClassLabel``), or None.
    """

    values: Callable[[], list[Any]]
    decoded: Callable[[int], list[Any]]
    classes: list[str] | None = None


@runtime_checkable
class Input(Protocol):
    """One modality on the data side (``mmtrain/data/inputs/``), configured at ``data.<name>``.

    It fits on the training split (a vocabulary, statistics, an ``auto`` size) and keeps that
    in ``state_dict`` (the checkpoint carries it); ``encode`` preprocesses one sample's value
    (``train``: with augmentation); ``collate`` batches encoded values as ``{name: (B, ...)}``
    plus ``{name}_mask`` for padded ones; ``lengths`` gives each sample's length for bucketing
    from the data set's raw values; ``facts`` is what its encoder gets (vocab_size, pad_id,
    n_mels...); ``fingerprint`` is its part of the feature-cache key. ``name`` is set by the
    data module. ``columns`` are the data set columns it reads (``read`` gives a sample's
    value from them, None when the sample lacks the modality), ``optional`` those a sample
    may lack, and ``bucketable`` says whether it has ``lengths``.
    """

    name: str
    bucketable: bool

    @property
    def columns(self) -> list[str]: ...

    @property
    def optional(self) -> list[str]: ...

    def read(self, item: dict[str, Any]) -> Any: ...

    @property
    def fitted(self) -> bool: ...

    def fit(self, column: Column) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def encode(self, value: Any, train: bool) -> Tensor: ...

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]: ...

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]: ...

    def facts(self) -> dict[str, Any]: ...

    def fingerprint(self) -> str: ...


@runtime_checkable
class Target(Protocol):
    """One task's target on the data side (``mmtrain/data/targets/``), configured at
    ``data.targets.<task>`` (a class label when absent).

    It fits on the training split (class names, a vocabulary) and keeps that in
    ``state_dict``; ``encode`` turns a raw item into ``{task: tensor}`` plus what the metrics
    need (``{task}_references``), using ``inputs`` where the target is transformed with one
    (a mask with its image); ``collate`` batches them; ``facts`` is what its head gets
    (class_names, num_classes, tokenizer, vocab_size, pad_id); ``write`` saves a split's
    predictions in the task's official format and says how to read them back
    (:class:`PredictionFile`), ``plain`` one prediction as JSON can hold it (a mask: the path
    of its PNG). ``name`` (the task) is set by the data module; ``inputs`` are the inputs it is
    encoded with; ``bucketable`` says whether it has ``lengths`` (token sequences).
    """

    name: str
    inputs: tuple[str, ...]
    bucketable: bool

    @property
    def fitted(self) -> bool: ...

    def fit(self, column: Column) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def encode(
        self, item: dict[str, Any], train: bool, inputs: dict[str, Any]
    ) -> dict[str, Any]: ...

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]: ...

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]: ...

    def facts(self) -> dict[str, Any]: ...

    def write(
        self,
        rows: list[dict[str, Any]],
        folder: Path,
        split: str,
        normalize: Callable[[str], str] | None = None,
    ) -> PredictionFile: ...

    def plain(self, value: Any, folder: Path, name: str) -> Any: ...


@dataclass
class PredictionFile:
    """A predictions file a target wrote, and how to read it back (``mmtrain report``).

    Attributes:
        path: the file, in the run's ``predictions/`` folder.
        task: the task.
        split: the split.
        id_key: the key of the sample id in each record.
        value_key: the key of the prediction.
        reference_key: the key of the reference the prediction was scored against, if any.
    """

    path: Path
    task: str
    split: str
    id_key: str = "id"
    value_key: str = "prediction"
    reference_key: str | None = None
