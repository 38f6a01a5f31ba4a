"""CTC head: a transcript (``transcript``) from the fused token sequence (speech recognition).

Every fused token (an audio frame after the encoder's time subsampling) gets a distribution over
the target vocabulary, whose padding id doubles as the CTC blank. Trained with the CTC loss,
decoded greedily or by prefix beam search (:mod:`mmtrain.heads.ctc_decoding`). Metrics: word and
character error rates on normalised text.

The frame mask travels inside the outputs: a padding frame (mask ``False``) is a certain blank,
log-probability 0 for the blank and ``-inf`` for every other token. For any reader of the
outputs as CTC posteriors, trailing padding frames then change no labelling's probability; the
head's own loss and decoders go further and drop them wherever they are (the fused sequence of
a concatenating fusion has padding in the middle), so input lengths come from the mask.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.text import CharErrorRate, WordErrorRate

from mmtrain.contracts import Features, Tokenizer
from mmtrain.heads.ctc_decoding import (
    FlashlightCTCDecoder,
    collapse,
    ctc_prefix_beam_search,
    flashlight_available,
)


def default_normalize(text: str) -> str:
    """Lowercase and collapse whitespace: the metric normalisation of tokenizers without one."""
    return " ".join(text.lower().split())


class CTCHead(nn.Module):
    """Per-frame token log-probabilities trained with CTC; greedy or beam-search transcripts.

    Args:
        in_dim: width of the fused features (wired by build.py).
        vocab_size: target vocabulary size, the blank included (wired by build.py).
        tokenizer: the target's tokenizer (wired by build.py); ids back to text, and its
            ``normalize`` (when it has one) for the metrics.
        pad_id: the padding id, used as the CTC blank (wired by build.py).
        hidden_dim: hidden width of an MLP before the output layer; 0 gives a single linear
            layer.
        dropout: dropout before each linear layer.
        beam_size: prefixes kept by the beam search in :meth:`predict`; 1 is greedy decoding.
        blank_penalty: subtracted from the blank's log-probability at every frame when
            decoding (> 0: fewer deletions); used by greedy decoding too.
        length_bonus: added per emitted token when ranking beams (> 0: longer transcripts);
            beam search only.
        beam_size_token: tokens (most probable first) that may extend a beam at each frame;
            None considers all. A speed-up for large vocabularies.
        decoder: the beam search: ``prefix`` (pure Python, the default) or ``flashlight``
            (torchaudio's C++ decoder; needs ``pip install flashlight-text``).

    Raises:
        ValueError: for a vocabulary below 2 ids, a blank outside it, a negative width,
            dropout outside [0, 1), a non-positive beam size, an unknown decoder, or
            ``flashlight`` without its package.
    """

    unfused = False  # reads the fused features (contracts.Head)
    modalities: tuple[str, ...] = ()  # runs on every batch that has its target

    def __init__(
        self,
        in_dim: int,
        vocab_size: int,
        tokenizer: Tokenizer,
        pad_id: int = 0,
        hidden_dim: int = 0,
        dropout: float = 0.1,
        beam_size: int = 1,
        blank_penalty: float = 0.0,
        length_bonus: float = 0.0,
        beam_size_token: int | None = None,
        decoder: Literal["prefix", "flashlight"] = "prefix",
    ) -> None:
        super().__init__()
        if vocab_size < 2 or not 0 <= pad_id < vocab_size:
            raise ValueError(
                f"need vocab_size >= 2 and 0 <= pad_id < vocab_size, got {vocab_size}, {pad_id}"
            )
        if hidden_dim < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"need hidden_dim >= 0 and 0 <= dropout < 1, got {hidden_dim}, {dropout}"
            )
        if beam_size < 1 or (beam_size_token is not None and beam_size_token < 1):
            raise ValueError(
                f"beam_size and beam_size_token must be >= 1, got {beam_size}, {beam_size_token}"
            )
        if decoder not in ("prefix", "flashlight"):
            raise ValueError(f"decoder must be 'prefix' or 'flashlight', got {decoder!r}")
        if decoder == "flashlight" and not flashlight_available():
            raise ValueError(
                "decoder='flashlight' needs the flashlight-text package: "
                "pip install flashlight-text (or use decoder='prefix')"
            )
        if hidden_dim > 0:
            self.mlp = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(in_dim, hidden_dim),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, vocab_size),
            )
        else:
            self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, vocab_size))
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.blank = pad_id
        # A non-blank column: -inf there marks a padding frame (see the module docstring).
        self._probe = 1 if pad_id == 0 else 0
        self.beam_size = beam_size
        self.blank_penalty = blank_penalty
        self.length_bonus = length_bonus
        self.beam_size_token = beam_size_token
        self.decoder = decoder

    # ---- outputs and loss ---------------------------------------------------------------------
    def forward(
        self, features: Features, target: Tensor | None = None, target_mask: Tensor | None = None
    ) -> Tensor:
        """Per-frame log-probabilities ``(B, N, V)`` in float32; the target is not needed.

        Padding frames (``features.mask`` False) are certain blanks (see the module docstring).
        """
        logits = self.mlp(features.tokens)  # (B, N, V), half precision under autocast
        # float32 before the normalisation: CTC sums products of many small probabilities.
        log_probs = logits.float().log_softmax(dim=-1)
        if features.mask is None:
            return log_probs
        blank_frame = torch.full_like(log_probs[0, 0], float("-inf"))
        blank_frame[self.blank] = 0.0
        return torch.where(features.mask[..., None], log_probs, blank_frame)

    def frames(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """The real frames of each sample moved to the front, in order, and their number.

        Args:
            outputs: ``(B, N, V)`` log-probabilities from :meth:`forward`.

        Returns:
            ``(B, N, V)`` log-probabilities whose first ``lengths[b]`` frames are sample ``b``'s
            real ones (padding frames after them), and ``lengths`` ``(B,)`` long.

        Raises:
            ValueError: for outputs that are not ``(B, N, vocab_size)``.
        """
        if outputs.ndim != 3 or outputs.shape[-1] != self.vocab_size:
            raise ValueError(
                f"expected log-probs (B, N, {self.vocab_size}), got {tuple(outputs.shape)}"
            )
        real = ~torch.isneginf(outputs[..., self._probe])  # (B, N)
        lengths = real.sum(dim=1)
        # A stable sort of "is padding" keeps the real frames' order: a gather, differentiable.
        order = torch.sort((~real).to(torch.int32), dim=1, stable=True).indices
        return outputs.gather(1, order[..., None].expand_as(outputs)), lengths

    def ctc_targets(
        self, target: Tensor, target_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """CTC targets from encoded text targets: ``<bos>``, ``<eos>`` and padding dropped.

        Args:
            target: ``(B, L)`` long ids, ``<bos> ids <eos>`` padded (as the data module
                encodes text targets).
            target_mask: ``(B, L)`` bool, True on real positions; None: the non-padding ids.

        Returns:
            ``(B, S)`` long ids, each row's first ``lengths[b]`` being its tokens, and
            ``lengths`` ``(B,)`` long.

        Raises:
            ValueError: for a mask of another shape, or a real token equal to the blank.
        """
        if target_mask is not None and target_mask.shape != target.shape:
            raise ValueError(
                f"target {tuple(target.shape)} and target_mask {tuple(target_mask.shape)} differ"
            )
        keep = target != self.blank if target_mask is None else target_mask.bool()
        for name in ("bos_id", "eos_id"):
            special = getattr(self.tokenizer, name, None)
            if special is not None:
                keep = keep & (target != special)
        lengths = keep.sum(dim=1)
        # The kept ids moved to the front, in order (a stable sort of "is dropped").
        ids = target.gather(1, torch.sort((~keep).to(torch.int32), dim=1, stable=True).indices)
        width = max(int(lengths.max()) if lengths.numel() else 0, 1)  # ctc_loss wants S >= 1
        if ids.shape[1] < width:  # L == 0: no target position at all
            ids = F.pad(ids, (0, width - ids.shape[1]), value=self.blank)
        ids = ids[:, :width]
        real = torch.arange(width, device=ids.device) < lengths[:, None]  # (B, S)
        blank_tokens = (ids == self.blank) & real
        if bool(blank_tokens.any()):
            rows = blank_tokens.any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"the CTC blank id {self.blank} appears as a target token in samples {rows}: "
                "the tokenizer's padding id must not be a real token"
            )
        return ids.masked_fill(~real, self.blank), lengths

    def loss(self, outputs: Tensor, target: Tensor, target_mask: Tensor | None = None) -> Tensor:
        """CTC loss, each sample's divided by its target length, then the batch mean.

        Input lengths are the real frames of each sample. A sample that cannot be aligned
        (fewer frames than its target needs, e.g. a fully masked input) contributes 0 rather
        than ``inf`` (``zero_infinity``).
        """
        log_probs, input_lengths = self.frames(outputs)
        targets, target_lengths = self.ctc_targets(target, target_mask)
        return F.ctc_loss(
            log_probs.transpose(0, 1),  # (N, B, V): the layout ctc_loss takes
            targets,
            input_lengths,
            target_lengths,
            blank=self.blank,
            reduction="mean",
            zero_infinity=True,
        )

    # ---- decoding -----------------------------------------------------------------------------
    def _greedy(self, outputs: Tensor, blank_penalty: float) -> list[list[int]]:
        log_probs, lengths = self.frames(outputs.detach())
        if blank_penalty:
            log_probs = log_probs.clone()
            log_probs[..., self.blank] -= blank_penalty
        best = log_probs.argmax(dim=-1).tolist()  # (B, N): one transfer for the batch
        return [collapse(row[:n], self.blank) for row, n in zip(best, lengths.tolist())]

    def decode_ids(self, outputs: Tensor) -> list[list[int]]:
        """Token ids of each sample as :meth:`predict` decodes them (greedy or beam search)."""
        if self.beam_size == 1:
            return self._greedy(outputs, self.blank_penalty)
        if self.decoder == "flashlight":
            log_probs, lengths = self.frames(outputs.detach())
            decode = FlashlightCTCDecoder(
                self.vocab_size,
                self.beam_size,
                self.blank,
                self.blank_penalty,
                self.length_bonus,
                self.beam_size_token,
            )
            return decode(log_probs, lengths)
        log_probs, lengths = self.frames(outputs.detach())
        return [
            ctc_prefix_beam_search(
                log_probs[b, :n],
                self.beam_size,
                self.blank,
                self.blank_penalty,
                self.length_bonus,
                self.beam_size_token,
            )
            for b, n in enumerate(lengths.tolist())
        ]

    def decode(self, outputs: Tensor) -> list[str]:
        """Greedy transcripts: the best token of each real frame, repeats merged, blanks
        dropped (no penalty)."""
        return [self.tokenizer.decode(ids) for ids in self._greedy(outputs, 0.0)]

    @torch.no_grad()
    def predict(self, features: Features, outputs: Tensor | None = None) -> list[str]:
        """Transcripts, by beam search when ``beam_size > 1``; reuses ``outputs`` when given."""
        outputs = self(features) if outputs is None else outputs
        return [self.tokenizer.decode(ids) for ids in self.decode_ids(outputs)]

    # ---- metrics ------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """``text`` as the metrics compare it: the tokenizer's ``normalize`` when it has one."""
        return getattr(self.tokenizer, "normalize", default_normalize)(text)

    def make_metrics(self) -> MetricCollection:
        """Word and character error rates (``wer``, ``cer``) over a split."""
        return MetricCollection({"wer": WordErrorRate(), "cer": CharErrorRate()})

    def update_metrics(
        self,
        metrics: MetricCollection,
        outputs: Tensor,
        target: Tensor,
        target_mask: Tensor | None = None,
        predictions: list[Any] | None = None,
        references: list[Any] | None = None,
    ) -> None:
        """Accumulate one batch: hypotheses against each sample's first reference.

        Args:
            metrics: from :meth:`make_metrics`.
            outputs: the log-probabilities, decoded greedily when ``predictions`` is None.
            target: the encoded targets, decoded when ``references`` is None.
            target_mask: their mask.
            predictions: the transcripts from :meth:`predict`.
            references: ``<task>_references``: the reference strings of each sample.

        Raises:
            ValueError: when hypotheses and references differ in number.
        """
        hypotheses = self.decode(outputs) if predictions is None else list(predictions)
        if references is None:
            keep = target != self.blank if target_mask is None else target_mask.bool()
            rows = [row[real].tolist() for row, real in zip(target, keep)]
            bos = getattr(self.tokenizer, "bos_id", None)
            gold = [self.tokenizer.decode([i for i in row if i != bos]) for row in rows]
        else:
            gold = [r if isinstance(r, str) else r[0] for r in references]
        if len(hypotheses) != len(gold):
            raise ValueError(f"{len(hypotheses)} hypotheses for {len(gold)} references")
        metrics.update([self.normalize(h) for h in hypotheses], [self.normalize(g) for g in gold])
