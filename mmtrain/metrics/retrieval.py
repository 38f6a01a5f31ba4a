"""Image-text retrieval recall (R@K both ways), as CLIP, ALBEF and BLIP report it on COCO/Flickr.

``RetrievalRecall`` accumulates every (image, text) pair of a split and ranks over the whole
split at ``compute()``: each unique image against every text (image -> text), each text against
every unique image (text -> image). A dataset with several captions per image feeds one pair per
caption, all carrying the image's id; the image's embedding is taken from its first pair.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def id_to_int(image_id: str | int) -> int:
    """A process-independent int64 key for an image id.

    Integers are kept; strings are hashed with BLAKE2b (8 bytes). Python's ``hash()`` is salted
    per process, so it would give different keys on different DDP ranks.

    Args:
        image_id: the image id, a string or an integer.

    Returns:
        A signed 64-bit integer.

    Raises:
        ValueError: for an id that is neither a string nor an integer.
    """
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        raise ValueError(f"an image id must be a string or an int, got {image_id!r}")
    if isinstance(image_id, int):
        return image_id
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class RetrievalRecall(Metric):
    """Recall@K of image -> text and text -> image retrieval over a whole split.

    ``compute()`` L2-normalises the embeddings and scores every unique image against every text
    by cosine similarity:

    - image -> text: an image is a hit at K when ANY of its texts (those whose pair has its image
      id; COCO and Flickr30k have 5 per image) is among its K most similar texts;
    - text -> image: a text is a hit at K when its image is among its K most similar images.

    Ties are broken pessimistically: the rank of the (best) positive counts every negative whose
    similarity is greater than OR EQUAL to it, so a constant embedding scores no hits rather than
    all of them. A K at least the number of candidates is a hit whenever a match exists (always
    here), i.e. recall 1. Ranks are counted from the similarities directly (no top-k), in chunks
    of ``chunk_size`` rows, so memory stays at ``chunk_size x max(texts, images)`` similarities
    (5k images x 25k texts fits easily).

    States are lists of tensors with ``dist_reduce_fx="cat"``: in DDP, ``compute()`` gathers the
    pairs of every rank (in rank order, so "first pair of an image" means the lowest rank's
    first). A ``DistributedSampler`` that pads the last batch repeats a few pairs; a repeated
    text is then ranked twice, which moves the text -> image recall slightly. String image ids
    are hashed to int64 (:func:`id_to_int`) so that they can be gathered; integer ids are used
    as they are (do not mix both kinds in one split).

    ``compute()`` returns ``{"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}``
    (for the default ``ks``), float scalars in [0, 1].

    Args:
        ks: the cut-offs K, positive integers.
        chunk_size: rows of the similarity matrix computed at once.
        **kwargs: passed to ``torchmetrics.Metric`` (``process_group``, ``compute_on_cpu``...).

    Raises:
        ValueError: for empty, non-positive or repeated ``ks``, or ``chunk_size < 1``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    image_emb: list[Tensor]
    text_emb: list[Tensor]
    image_ids: list[Tensor]

    def __init__(
        self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        ks = tuple(ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
        if len(set(ks)) != len(ks):
            raise ValueError(f"ks must not repeat a value, got {ks!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.ks = ks
        self.chunk_size = chunk_size
        self.add_state("image_emb", default=[], dist_reduce_fx="cat")
        self.add_state("text_emb", default=[], dist_reduce_fx="cat")
        self.add_state("image_ids", default=[], dist_reduce_fx="cat")

    def update(
        self, image_emb: Tensor, text_emb: Tensor, image_ids: Sequence[str | int] | Tensor
    ) -> None:
        """Add a batch of (image, text) pairs.

        Args:
            image_emb: ``(B, E)`` image embeddings, one per pair (the same image may repeat).
            text_emb: ``(B, E)`` text embeddings.
            image_ids: the image id of each pair: ``B`` strings or ints, or a ``(B,)`` integer
                tensor.

        Raises:
            ValueError: for shapes that do not match each other or earlier batches, or ids of
                the wrong length or type.
        """
        if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape != text_emb.shape:
            raise ValueError(
                "image_emb and text_emb must both be (B, E), got "
                f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
            )
        if self.image_emb and image_emb.shape[1] != self.image_emb[0].shape[1]:
            raise ValueError(
                f"embedding width {image_emb.shape[1]} differs from the earlier batches' "
                f"{self.image_emb[0].shape[1]}"
            )
        if isinstance(image_ids, Tensor):
            if image_ids.dtype.is_floating_point or image_ids.dtype.is_complex:
                raise ValueError(f"image_ids must be an integer tensor, got {image_ids.dtype}")
            ids = image_ids.to(device=self.device, dtype=torch.long)
        else:
            if isinstance(image_ids, str):
                raise ValueError(f"image_ids must be a sequence of ids, got {image_ids!r}")
            ids = torch.tensor([id_to_int(i) for i in image_ids], dtype=torch.long)
            ids = ids.to(self.device)
        if ids.shape != (image_emb.shape[0],):
            raise ValueError(
                f"image_ids must have shape ({image_emb.shape[0]},), got {tuple(ids.shape)}"
            )
        self.image_emb.append(image_emb.detach())
        self.text_emb.append(text_emb.detach())
        self.image_ids.append(ids)

    def compute(self) -> dict[str, Tensor]:
        """Recall@K both ways over every pair accumulated (on every process).

        Returns:
            ``{"i2t_r<K>": ..., "t2i_r<K>": ...}``, float32 scalars.

        Raises:
            ValueError: when no pair was accumulated, or an embedding is not finite.
        """
        if isinstance(self.image_ids, list) and not self.image_ids:
            raise ValueError("RetrievalRecall.compute() called before any update()")
        image_emb = dim_zero_cat(self.image_emb)  # (N, E)
        text_emb = dim_zero_cat(self.text_emb)  # (N, E)
        ids = dim_zero_cat(self.image_ids).long()  # (N,)
        for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
            bad = (~torch.isfinite(emb).all(dim=1)).nonzero().flatten()
            if bad.numel():
                raise ValueError(f"{name} holds NaN/inf in pairs {bad[:10].tolist()}")
        # at least float32 (bf16/fp16 ties would be common), float64 kept
        dtype = torch.promote_types(text_emb.dtype, torch.float32)

        # unique images, each from its first pair; text_image[j] = image index of text j
        unique_ids, text_image = torch.unique(ids, return_inverse=True)  # (M,), (N,)
        num_pairs, num_images = ids.shape[0], unique_ids.shape[0]
        positions = torch.arange(num_pairs, device=ids.device)
        first = torch.full((num_images,), num_pairs, dtype=torch.long, device=ids.device)
        first = first.scatter_reduce(0, text_image, positions, reduce="amin")  # (M,)
        images = F.normalize(image_emb[first].to(dtype), dim=-1)  # (M, E)
        texts = F.normalize(text_emb.to(dtype), dim=-1)  # (N, E)

        i2t_rank = torch.empty(num_images, dtype=torch.long, device=ids.device)
        for start in range(0, num_images, self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            sim = images[rows] @ texts.T  # (c, N)
            row_ids = torch.arange(num_images, device=ids.device)[rows]
            positive = text_image.unsqueeze(0) == row_ids.unsqueeze(1)  # (c, N)
            best = sim.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (c, 1)
            # 0-based rank of the best positive text: negatives scoring >= it (pessimistic)
            i2t_rank[rows] = ((sim >= best) & ~positive).sum(dim=1)

        t2i_rank = torch.empty(num_pairs, dtype=torch.long, device=ids.device)
        for start in range(0, num_pairs, self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            sim = texts[rows] @ images.T  # (c, M)
            target = text_image[rows].unsqueeze(1)  # (c, 1)
            positive = sim.gather(1, target)  # (c, 1)
            others = torch.ones_like(sim, dtype=torch.bool).scatter(1, target, False)
            t2i_rank[rows] = ((sim >= positive) & others).sum(dim=1)

        result: dict[str, Tensor] = {}
        for name, rank in (("i2t", i2t_rank), ("t2i", t2i_rank)):
            for k in self.ks:
                result[f"{name}_r{k}"] = (rank < k).float().mean()
        return result
