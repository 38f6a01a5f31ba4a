"""The pieces of a CLIP-style contrastive image-text head: projection, temperature, loss.

``clip_loss`` is the symmetric InfoNCE loss of CLIP (Radford et al., 2021) over the batch of
every DDP rank (``gather_with_grad``, as OpenCLIP's ``gather_with_grad=True, local_loss=False``),
with ALBEF/BLIP's multi-positive targets when several texts of a batch describe the same image.
``ContrastiveProjection`` maps a tower's pooled features to the joint embedding space and
``LogitScale`` holds the learnable temperature.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmtrain.contracts import Features

LOSSES = ("infonce", "sigmoid")


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every DDP rank along dim 0, keeping the autograd graph.

    With ``torch.distributed`` initialised and a world size > 1 this is
    ``torch.distributed.nn.functional.all_gather`` (rank order); otherwise ``x`` itself.

    How the gradient works out (as OpenCLIP with ``gather_with_grad=True``): every rank computes
    the same full-batch loss ``L`` on the gathered embeddings. The backward of the all-gather
    sums, over the ranks, the gradient each rank's loss sends to a row, so a rank's local rows
    receive ``world_size * dL/d(rows)``; DDP then averages parameter gradients over the ranks,
    which divides by ``world_size`` again: every parameter gets exactly the single-process
    gradient of the full-batch loss, while each rank only back-propagates through its own
    towers. Every rank must pass the same shape (same local batch size: ``drop_last=True`` or
    equal shards).

    Args:
        x: ``(B, ...)`` local tensor (any dtype; integer tensors such as ids carry no gradient).

    Returns:
        ``(world_size * B, ...)`` gathered tensor, or ``x`` when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather  # not importable everywhere

    return torch.cat(all_gather(x), dim=0)


def clip_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor,
    image_ids: Tensor | None = None,
    max_scale: float = 100.0,
) -> Tensor:
    """Symmetric InfoNCE of CLIP over the batch gathered from every rank.

    The embeddings are L2-normalised, gathered (:func:`gather_with_grad`), and the logits are
    ``exp(logit_scale).clamp(max=max_scale) * cosine``, ``(N, N)`` with images as rows. The loss
    is the mean of the image -> text cross-entropy (over the rows) and the text -> image one
    (over the columns).

    Without ``image_ids``, pair ``i``'s only positive is text ``i`` (CLIP). With ``image_ids``,
    the texts of the same image are not negatives of each other (COCO has 5 captions per image,
    and a batch may hold two of them): the target of a row is spread evenly over its positives,
    ``positive[i, j] = (id_i == id_j) / #{j: id_j == id_i}`` (ALBEF/BLIP's ``sim_targets``), and
    the cross-entropy is taken against these soft targets, both ways. With all ids distinct this
    is exactly the CLIP loss.

    Args:
        image_emb: ``(B, E)`` local image embeddings (not necessarily normalised).
        text_emb: ``(B, E)`` local text embeddings of the same pairs.
        logit_scale: scalar tensor, the log of the inverse temperature (:class:`LogitScale`).
        image_ids: ``(B,)`` integer image id of each pair, or ``None`` (every pair its own
            image).
        max_scale: upper bound of ``exp(logit_scale)`` (CLIP: 100).

    Returns:
        The scalar loss.

    Raises:
        ValueError: for shapes that do not match, or a ``logit_scale`` that is not a scalar.
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            "image_emb and text_emb must both be (B, E), got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    if image_ids is not None and image_ids.shape != (image_emb.shape[0],):
        raise ValueError(
            f"image_ids must have shape ({image_emb.shape[0]},), got {tuple(image_ids.shape)}"
        )
    images = gather_with_grad(F.normalize(image_emb, dim=-1))  # (N, E)
    texts = gather_with_grad(F.normalize(text_emb, dim=-1))  # (N, E)
    scale = logit_scale.exp().clamp(max=max_scale).reshape(())
    logits = scale * images @ texts.T  # (N, N): image i vs text j

    if image_ids is None:
        labels = torch.arange(logits.shape[0], device=logits.device)  # (N,)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    ids = gather_with_grad(image_ids)  # (N,)
    positive = (ids.unsqueeze(0) == ids.unsqueeze(1)).to(logits.dtype)  # (N, N), symmetric
    targets = positive / positive.sum(dim=1, keepdim=True)  # rows sum to 1
    # cross_entropy with probability targets: -(targets * log_softmax).sum(1).mean()
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def sigmoid_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    image_ids: Tensor | None = None,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al., 2023) over the batch gathered from every
    rank: each (image, text) pair of the ``(N, N)`` matrix is a binary decision, positive when
    both show the same image (``image_ids``; without them, the diagonal),
    ``-sum_ij log sigmoid(z_ij * (exp(logit_scale) * cos_ij + logit_bias)) / N`` with
    ``z_ij = +1`` for a positive pair and ``-1`` otherwise. The sum is the one SigLIP's
    chunked implementation computes across devices; gathering gives the same value and, as
    for :func:`clip_loss`, the single-process gradient under DDP.

    Args:
        image_emb: ``(B, E)`` local image embeddings (not necessarily normalised).
        text_emb: ``(B, E)`` local text embeddings of the same pairs.
        logit_scale: scalar tensor, the log of the multiplier of the cosines.
        logit_bias: scalar tensor, the bias added to every logit.
        image_ids: ``(B,)`` integer image id of each pair, or ``None``.

    Returns:
        The scalar loss.

    Raises:
        ValueError: for shapes that do not match.
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            "image_emb and text_emb must both be (B, E), got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    images = gather_with_grad(F.normalize(image_emb, dim=-1))  # (N, E)
    texts = gather_with_grad(F.normalize(text_emb, dim=-1))  # (N, E)
    logits = logit_scale.exp().reshape(()) * images @ texts.T + logit_bias.reshape(())
    if image_ids is None:
        positive = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    else:
        ids = gather_with_grad(image_ids)  # (N,)
        positive = ids.unsqueeze(0) == ids.unsqueeze(1)  # (N, N)
    signs = positive.to(logits.dtype) * 2 - 1  # +1 positive, -1 negative
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


class ContrastiveProjection(nn.Module):
    """Projects a tower's features into the joint embedding space.

    ``Linear -> GELU -> Linear -> Dropout``, plus a residual from the first linear layer, then
    ``LayerNorm`` (the ``ProjectionHead`` of the common CLIP re-implementations; CLIP and ALBEF
    use the first linear layer alone). The output is not L2-normalised: :func:`clip_loss` and
    the retrieval metric do that.

    Args:
        in_dim: width of the tower's (pooled) features.
        out_dim: width of the joint embedding space.
        dropout: dropout after the second linear layer.

    Raises:
        ValueError: for non-positive widths or a dropout outside [0, 1).
    """

    def __init__(self, in_dim: int, out_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"in_dim and out_dim must be >= 1, got {in_dim} and {out_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(..., in_dim)`` features to ``(..., out_dim)`` embeddings.

        Raises:
            ValueError: when the last dimension is not ``in_dim``.
        """
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected (..., {self.in_dim}) features, got {tuple(x.shape)}")
        projected = self.projection(x)  # (..., D)
        x = self.dropout(self.fc(F.gelu(projected)))  # (..., D)
        return self.norm(x + projected)


class LogitScale(nn.Module):
    """The learnable log inverse temperature of the contrastive logits (CLIP).

    Holds ``log(1 / init_temperature)`` (CLIP: ``log(1 / 0.07)``). Calling the module returns
    that log scale, which :func:`clip_loss` exponentiates and clamps at ``max_scale``;
    :meth:`scale` gives the clamped multiplier itself, for logging.

    Args:
        init_temperature: the initial temperature, > 0.
        max_scale: the largest multiplier ``exp(log_scale)`` used (CLIP: 100).
        learnable: train the temperature (``False`` keeps it fixed, as a buffer).

    Raises:
        ValueError: for a non-positive temperature or ``max_scale``.
    """

    def __init__(
        self, init_temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True
    ) -> None:
        super().__init__()
        if init_temperature <= 0 or max_scale <= 0:
            raise ValueError(
                "init_temperature and max_scale must be > 0, got "
                f"{init_temperature} and {max_scale}"
            )
        value = torch.tensor(math.log(1.0 / init_temperature))
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)
        self.max_scale = max_scale

    def forward(self) -> Tensor:
        """The log scale, a scalar tensor: the ``logit_scale`` argument of :func:`clip_loss`."""
        return self.log_scale

    def scale(self) -> Tensor:
        """The multiplier of the cosine similarities, ``exp(log_scale)`` clamped at max_scale."""
        return self.log_scale.exp().clamp(max=self.max_scale)


class ContrastiveHead(nn.Module):
    """Two-tower image-text retrieval (CLIP): each modality's own features, not the fused ones.

    The module hands this head ``{modality: Features}`` of the encoders (``unfused``): each of
    the two modalities is mean-pooled over its real tokens, projected
    (:class:`ContrastiveProjection`) into a joint space and L2-normalised. The loss is
    :func:`clip_loss` with a learnable temperature (:class:`LogitScale`); across DDP ranks the
    embeddings are gathered with their gradients, so the negatives are those of the global
    batch. The target is the image id of each pair (:meth:`target_from_ids`, from the batch's
    ``id``): pairs of the same image (several captions) are not each other's negatives, and
    recall counts any caption of the image. Metrics: recall@K both ways over the whole split
    (:class:`~mmtrain.metrics.retrieval.RetrievalRecall`: ``i2t_r1``... ``t2i_r10``). The head
    runs on the batches that have both modalities; it needs no target column.

    Args:
        in_dims: ``{modality: encoder out_dim}`` (wired by build.py).
        modalities: the two towers, ``(query side, gallery side)``: image and text.
        dim: joint embedding width.
        init_temperature: starting temperature (CLIP: 0.07).
        dropout: dropout in the projections.
        ks: the K of recall@K.
        projection: project each tower with a new :class:`ContrastiveProjection`; false uses
            the towers' own embeddings as they are (pretrained CLIP towers with
            ``output: projected``: they already share a space, and a new projection would lose
            their zero-shot ability at step 0); their widths must then be equal.
        logit_scale: the starting log scale (wired by build.py from pretrained towers that
            report one, e.g. CLIP's learned ``logit_scale``); None starts from
            ``init_temperature`` (``loss: sigmoid``: from SigLIP's scale of 10).
        loss: ``infonce`` (CLIP's :func:`clip_loss`) or ``sigmoid`` (SigLIP's
            :func:`sigmoid_loss`, with a learned bias).
        logit_bias: with ``loss: sigmoid``, the starting bias (wired by build.py from SigLIP
            towers that report one); None starts from SigLIP's -10.

    Raises:
        ValueError: for other than two modalities, one without an encoder, towers of
            different widths without a projection, or an unknown ``loss``.
    """

    unfused = True  # gets the encoders' features, not the fusion's (contracts.Head)

    def __init__(
        self,
        in_dims: dict[str, int],
        modalities: list[str] = ("image", "text"),
        dim: int = 256,
        init_temperature: float = 0.07,
        dropout: float = 0.1,
        ks: list[int] = (1, 5, 10),
        projection: bool = True,
        logit_scale: float | None = None,
        loss: str = "infonce",
        logit_bias: float | None = None,
    ) -> None:
        super().__init__()
        modalities = list(modalities)
        missing = [m for m in modalities if m not in in_dims]
        if len(modalities) != 2 or missing:
            raise ValueError(
                f"modalities must be two modalities with an encoder, got {modalities} "
                f"(encoders: {sorted(in_dims)})"
            )
        widths = [in_dims[m] for m in modalities]
        if not projection and widths[0] != widths[1]:
            raise ValueError(
                f"projection=false needs towers of one width, got {dict(zip(modalities, widths))}"
                " (use output: projected on pretrained CLIP towers, or projection=true)"
            )
        self.modalities = modalities
        self.projections = nn.ModuleDict(
            {
                m: ContrastiveProjection(in_dims[m], dim, dropout) if projection else nn.Identity()
                for m in modalities
            }
        )
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if logit_scale is None and loss == "sigmoid":
            logit_scale = math.log(10.0)  # SigLIP's start: scale 10, bias -10
        temperature = init_temperature if logit_scale is None else math.exp(-logit_scale)
        self.logit_scale = LogitScale(temperature)
        # SigLIP's learned bias (the sigmoid loss only): the towers' pretrained one, else -10.
        start = -10.0 if logit_bias is None else float(logit_bias)
        self.logit_bias = nn.Parameter(torch.tensor(start)) if loss == "sigmoid" else None
        self.ks = tuple(ks)

    @staticmethod
    def target_from_ids(ids: list[str], device: torch.device | None = None) -> Tensor:
        """``(B,)`` long image ids from the batch's sample ids (equal ids: the same image)."""
        from mmtrain.metrics.retrieval import id_to_int

        return torch.tensor([id_to_int(i) for i in ids], dtype=torch.long, device=device)

    def forward(
        self,
        features: dict[str, Features],
        target: Tensor | None = None,
        target_mask: Tensor | None = None,
    ) -> Tensor:
        """``(B, 2, dim)``: the normalised embeddings of the two towers, stacked."""
        embeddings = [
            F.normalize(self.projections[m](features[m].pooled()), dim=-1) for m in self.modalities
        ]
        return torch.stack(embeddings, dim=1)

    def loss(self, outputs: Tensor, target: Tensor, target_mask: Tensor | None = None) -> Tensor:
        """:func:`clip_loss` of the two towers' embeddings; ``target``: the image ids."""
        if self.logit_bias is not None:  # loss: sigmoid
            return sigmoid_loss(
                outputs[:, 0], outputs[:, 1], self.logit_scale(), self.logit_bias, target
            )
        return clip_loss(
            outputs[:, 0], outputs[:, 1], self.logit_scale(), target, self.logit_scale.max_scale
        )

    def make_metrics(self) -> Any:
        from mmtrain.metrics.retrieval import RetrievalRecall

        return RetrievalRecall(ks=self.ks)

    def update_metrics(
        self,
        metrics: Any,
        outputs: Tensor,
        target: Tensor,
        target_mask: Tensor | None = None,
        predictions: list[Any] | None = None,
        references: list[Any] | None = None,
    ) -> None:
        """Collect the split's embeddings and image ids; recall is computed over all of them."""
        metrics.update(outputs[:, 0], outputs[:, 1], target)

    def predict(self, features: dict[str, Features], outputs: Tensor | None = None) -> list:
        """The two embeddings of each sample, as lists (for indexing a gallery)."""
        outputs = self(features) if outputs is None else outputs
        return [
            {m: row[i].tolist() for i, m in enumerate(self.modalities)} for row in outputs.detach()
        ]

    def decode(self, outputs: Tensor) -> list:
        return [
            {m: row[i].tolist() for i, m in enumerate(self.modalities)} for row in outputs.detach()
        ]
