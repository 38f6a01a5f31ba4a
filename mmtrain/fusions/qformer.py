"""A token compressor: BLIP-2's querying transformer (Li et al., 2023), its query branch.

Learned queries read every modality's tokens through cross-attention: hundreds of encoder tokens
become ``num_queries`` (BLIP-2: 32). Flamingo's Perceiver resampler is the other compressor
(:mod:`mmtrain.fusions.perceiver`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmtrain.contracts import Features
from mmtrain.fusions.concat import ConcatFusion
from mmtrain.fusions.perceiver import check_sizes, joined_tokens
from mmtrain.utils import hub

# The BERT-style encoders whose layers can start a Q-Former (same layer layout).
BERT_STYLE = {"bert": "BertModel", "roberta": "RobertaModel"}


class QFormerFusion(nn.Module):
    """BLIP-2's Q-Former, its query branch: ``num_queries`` learned queries pass through
    ``num_layers`` BERT-style (post-norm) layers of self-attention among the queries,
    cross-attention to the tokens of all modalities and a feed-forward block
    (``nn.TransformerDecoderLayer`` without a causal mask); the output is the queries,
    ``(B, num_queries, dim)``.

    Each modality's tokens are first projected to ``dim`` with a learned modality embedding
    (:class:`~mmtrain.fusions.concat.ConcatFusion`).

    Starting from BERT (BLIP-2 starts from BERT-base): with ``model_name_or_path``, a BERT or
    RoBERTa folder or hub id (found offline as the encoders' are), its first ``num_layers``
    layers give each layer's self-attention, feed-forward block and their norms, and its
    embedding norm the queries' norm; the cross-attention starts random, as in BLIP-2. Its
    sizes must be the Q-Former's (``dim`` its hidden size, ``num_heads``, ``ff_mult * dim``
    its intermediate size, ``layer_norm_eps``). Its config files go into checkpoints
    (``model_files``), so ``test``/``predict`` rebuild without the folder.

    Missing modalities: an absent modality contributes no tokens and a fully masked one is
    ignored by the cross-attention; a sample with no real token at all reads its zeroed
    padding, so the output stays finite. The output has no mask.

    Args:
        in_dims: ``{modality: out_dim}`` of the encoders (wired by build.py).
        dim: width, ``out_dim`` (BLIP-2: 768, BERT-base's).
        num_queries: the number of queries (BLIP-2: 32).
        num_layers: layers (BLIP-2: 12, cross-attention in every other one).
        num_heads: attention heads; must divide ``dim``.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout in attention and feed-forward.
        layer_norm_eps: the layer norms' epsilon (BERT's: 1e-12).
        model_name_or_path: a BERT-style model to start from, or None (random).
        revision: pins a hub model.
        pretrained: false: check the model's config only, no weights (a checkpoint's
            rebuild: its state_dict has them).
        model_dir: ``paths.model_dir`` (wired by build.py).

    Raises:
        ValueError: for an empty ``in_dims``, non-positive sizes, or a model that is not
            BERT-style or whose sizes differ, naming the key to set.
    """

    NO_WEIGHTS = False  # ``pretrained`` of a checkpoint's rebuild

    def __init__(
        self,
        in_dims: dict[str, int],
        dim: int = 128,
        num_queries: int = 32,
        num_layers: int = 2,
        num_heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-5,
        model_name_or_path: str | None = None,
        revision: str | None = None,
        pretrained: bool = True,
        model_dir: str | None = None,
    ) -> None:
        super().__init__()
        check_sizes(dim, num_queries, num_layers, num_heads, ff_mult)
        self.embed = ConcatFusion(in_dims, dim)
        self.queries = nn.Parameter(0.02 * torch.randn(num_queries, dim))
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)  # BERT's embedding norm, on queries
        layer = nn.TransformerDecoderLayer(
            dim,
            num_heads,
            ff_mult * dim,
            dropout,
            activation="gelu",
            batch_first=True,
            layer_norm_eps=layer_norm_eps,
        )
        self.layers = nn.TransformerDecoder(layer, num_layers)
        self.out_dim = dim
        self.model_files: dict[str, bytes] | None = None
        if model_name_or_path is not None:
            folder = hub.resolve(model_name_or_path, revision=revision, model_dir=model_dir)
            self._start_from(folder, ff_mult * dim, layer_norm_eps, pretrained)
            self.model_files = hub.model_files(folder)

    def _start_from(self, folder: Path, ff_dim: int, eps: float, pretrained: bool) -> None:
        """Copy a BERT-style model's layers (see the class docstring)."""
        import transformers

        config = json.loads((folder / "config.json").read_text())
        kind = config.get("model_type")
        if kind not in BERT_STYLE:
            raise ValueError(
                f"model_name_or_path={folder}: a Q-Former starts from a BERT-style encoder "
                f"({', '.join(BERT_STYLE)}), not a {kind!r}"
            )
        first = self.layers.layers[0]
        ours = {
            "dim": (config.get("hidden_size"), self.out_dim),
            "num_heads": (config.get("num_attention_heads"), first.self_attn.num_heads),
            "ff_mult": (config.get("intermediate_size"), ff_dim),
            "layer_norm_eps": (config.get("layer_norm_eps"), eps),
        }
        for key, (theirs, mine) in ours.items():
            if theirs != mine:
                raise ValueError(
                    f"model_name_or_path={folder}: its {key} gives {theirs}, the Q-Former's is "
                    f"{mine}: set fusion.{key} to the model's"
                )
        if config.get("num_hidden_layers", 0) < len(self.layers.layers):
            raise ValueError(
                f"model_name_or_path={folder}: {config.get('num_hidden_layers')} layers, fewer "
                f"than fusion.num_layers={len(self.layers.layers)}"
            )
        if not pretrained:
            return
        model = getattr(transformers, BERT_STYLE[kind]).from_pretrained(
            folder, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
        with torch.no_grad():
            self.norm.load_state_dict(model.embeddings.LayerNorm.state_dict())
            for ours_layer, bert in zip(self.layers.layers, model.encoder.layer):
                attention = bert.attention
                q, k, v = attention.self.query, attention.self.key, attention.self.value
                ours_layer.self_attn.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
                ours_layer.self_attn.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
                ours_layer.self_attn.out_proj.load_state_dict(attention.output.dense.state_dict())
                ours_layer.norm1.load_state_dict(attention.output.LayerNorm.state_dict())
                ours_layer.linear1.load_state_dict(bert.intermediate.dense.state_dict())
                ours_layer.linear2.load_state_dict(bert.output.dense.state_dict())
                ours_layer.norm3.load_state_dict(bert.output.LayerNorm.state_dict())

    def forward(self, features: dict[str, Features]) -> Features:
        """``(B, num_queries, dim)`` queries, no mask."""
        media, ignore = joined_tokens(self.embed, features)  # (B, N, D), (B, N)
        queries = self.norm(self.queries).expand(media.shape[0], -1, -1)  # (B, Q, D)
        out = self.layers(queries, media, memory_key_padding_mask=ignore)
        return Features(out, None)
