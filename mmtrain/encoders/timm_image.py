"""timm image models as encoders: ``(B, 3, H, W)`` float -> tokens ``(B, N, D)``.

A ViT gives its tokens (the class and register tokens first, kept or dropped with
``keep_cls``), a CNN its last feature map as a grid of tokens ``(B, h*w, C)``. The weights are
found offline by design (:mod:`mmtrain.utils.hub`): a timm name's pretrained weights are the
Hugging Face repository its ``pretrained_cfg`` names (``hf_hub_id``), looked up in
``paths.model_dir`` and the Hugging Face cache, and downloaded only on a connected machine.

timm is imported inside functions: importing this module does not import it.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmtrain.contracts import Features
from mmtrain.encoders.pretrained import PretrainedEncoder
from mmtrain.errors import MMTrainError
from mmtrain.utils import hub
from mmtrain.utils.hub import did_you_mean

KEY = "encoder.image.model_name_or_path"
OUTPUTS = ("tokens", "pooled")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt")  # what timm's file loader reads
HUB_PREFIX = "hf-hub:"


def safe_alternative(filename: str) -> str:
    """The safetensors file a hub repository holds beside a pickled one (what timm and
    open_clip prefer): ``pytorch_model.bin`` -> ``model.safetensors``, ``x.bin`` ->
    ``x.safetensors``, ``open_clip_pytorch_model.bin`` -> ``open_clip_model.safetensors``."""
    known = {
        "pytorch_model.bin": "model.safetensors",
        "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
    }
    if filename in known:
        return known[filename]
    stem, dot, _ = filename.rpartition(".")
    return f"{stem}.safetensors" if dot else filename


def hub_weights(
    hub_id: str,
    filenames: list[str],
    key: str,
    revision: str | None = None,
    model_dir: str | Path | None = None,
) -> Path:
    """The weights file of a Hugging Face repository, through :func:`mmtrain.utils.hub.resolve`
    (a model store, the cache, a download on a connected machine): the safetensors copy of one
    of ``filenames`` if the repository has one, else the pickled file itself.

    Raises:
        MMTrainError: naming the repository, when it (or its weights) is not available.
    """
    wanted = [*dict.fromkeys(safe_alternative(f) for f in filenames), *filenames]
    folder = hub.resolve(hub_id, key, revision, model_dir)
    for name in wanted:
        if (folder / name).is_file():
            return folder / name
    # Pickled weights only: fetch them too (read with weights_only=True).
    folder = hub.resolve(hub_id, key, revision, model_dir, pickled=True)
    for name in wanted:
        if (folder / name).is_file():
            return folder / name
    raise MMTrainError(f"{key}: {hub_id} ({folder}) has none of the weights files {wanted}")


def weights_file(pretrained: str, key: str = "encoder.image.pretrained") -> Path:
    """``pretrained`` as a weights file that exists (``.safetensors``, ``.pth``, ``.bin``).

    Raises:
        ValueError: for a missing file or another format.
    """
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ValueError(f"{key}={pretrained}: no such weights file")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"{key}={pretrained}: a weights file ends in one of {WEIGHT_SUFFIXES}")
    return path


def timm_folder(
    name: str, revision: str | None = None, model_dir: str | Path | None = None, key: str = KEY
) -> Path | None:
    """The local folder (timm's hub format: config.json) that ``name`` stands for, or None for
    a name of timm's registry.

    A folder, ``<store>/<name>`` in a model store, ``hf-hub:<org/name>`` or a hub id
    (``timm/resnet50.a1_in1k``) resolved through :func:`mmtrain.utils.hub.resolve`.

    Raises:
        MMTrainError: for a path that does not exist or a hub id that is not available.
        ValueError: for a folder without timm's config.json.
    """
    folder = hub.local_model(name, model_dir)
    if folder is None and (name.startswith(HUB_PREFIX) or "/" in name):
        folder = hub.resolve(name.removeprefix(HUB_PREFIX), key, revision, model_dir)
    if folder is not None and not (folder / "config.json").is_file():
        raise ValueError(f"{key}={name}: {folder} has no config.json (timm's model folder)")
    return folder


def check_timm_name(name: str, key: str = KEY) -> None:
    """Check that ``name`` (``arch`` or ``arch.tag``) is in timm's registry.

    Raises:
        ValueError: for an unknown architecture (with a did-you-mean) or an unknown tag (with
            the architecture's tags).
    """
    import timm
    from timm.models import get_pretrained_cfg, is_model, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        choices = timm.list_models() + timm.list_models(pretrained=True)
        raise ValueError(f"{key}={name}: not a timm model{did_you_mean(name, choices)}")
    if tag:
        try:
            get_pretrained_cfg(name)
        except RuntimeError:
            tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
            raise ValueError(
                f"{key}={name}: timm has no weights tagged {tag!r} for {arch}; its tags: {tags}"
            ) from None


def timm_blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """A timm model's blocks in order (a ViT's ``blocks``, a CNN's ``stages``/``layerN``), and
    the top-level modules that follow the last one (final norm, head): what ``unfreeze_last``
    trains. Modules without parameters are left out."""

    def has_params(module: nn.Module) -> bool:
        return any(True for _ in module.parameters())

    blocks: list[nn.Module] = []
    for attr in ("blocks", "stages", "layers"):
        seq = getattr(model, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq):
            blocks = list(seq)
            break
    else:  # ResNet and its kin: layer1..layer4 as attributes
        names = [n for n, _ in model.named_children() if re.fullmatch(r"layer\d+", n)]
        blocks = [getattr(model, n) for n in sorted(names, key=lambda n: int(n[5:]))]
    blocks = [b for b in blocks if has_params(b)]
    if not blocks:
        return [], []
    children = [child for _, child in model.named_children()]
    holder = next(i for i, c in enumerate(children) if any(m is blocks[-1] for m in c.modules()))
    return blocks, [c for c in children[holder + 1 :] if has_params(c)]


def _as_tokens(features: Tensor, fmt: str) -> Tensor:
    """A timm feature output as tokens: ``(B, N, D)`` as it is, a ``(B, C, h, w)`` map (or
    ``(B, h, w, C)`` for NHWC models such as Swin) as ``(B, h*w, C)``."""
    if features.ndim == 3:
        return features
    if fmt == "NHWC":
        return features.flatten(1, 2)  # (B, h, w, C) -> (B, h*w, C)
    return features.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)


class TimmImageEncoder(PretrainedEncoder):
    """A timm image model (no classifier) as an encoder.

    ``layer=-1`` gives the model's final features (``forward_features``: a ViT's normed tokens,
    a CNN's last feature map); another layer gives the raw output of that level of timm's
    ``forward_intermediates`` (a ViT's blocks; a CNN's stem and stages, as its
    ``feature_info`` lists them), and the levels after it are removed from the model (they
    would hold parameters without gradients).

    Args:
        model_name_or_path: a timm model name (``vit_base_patch16_224.augreg2_in21k_ft_in1k``,
            ``resnet50.a1_in1k``), a folder in timm's hub format (``config.json`` with
            ``architecture`` and ``model_args``, ``model.safetensors``: what
            ``timm.models.save_for_hf`` writes), ``<store>/<name>`` in a model store,
            or a hub id (``timm/resnet50.a1_in1k``, ``hf-hub:timm/...``).
        pretrained: True: the name's pretrained weights (a timm name: the hub repository of its
            ``pretrained_cfg``; a folder: its own weights); False: random init; a string: a
            weights file (``.safetensors``, or ``.pth``/``.bin`` read with
            ``weights_only=True``).
        revision: the hub revision of the weights' repository.
        model_dir: ``paths.model_dir``, searched first (wired by build.py).
        layer: the level whose output is used, in ``[-n, n-1]`` (``n`` levels of
            ``forward_intermediates``); -1 the final (normed) features.
        keep_cls: keep a ViT's class and register tokens (first); CNNs have none.
        output: ``tokens``, or ``pooled``: timm's pooled pre-logits feature as one token
            ``(B, 1, D)`` (``forward_head(pre_logits=True)``; ``layer`` must be -1).
        freeze: fix every weight (see :class:`~mmtrain.encoders.FreezableEncoder`).
        unfreeze_last: with ``freeze``, leave the last N blocks (and what follows) trainable.
        gradient_checkpointing: recompute activations in the backward pass.

    Raises:
        ValueError: for an unknown model name or tag (with a did-you-mean), a bad ``output``,
            a ``layer`` out of range, a missing weights file, or a name without hub weights.
        MMTrainError: for weights that are neither in a model store nor in the cache offline.
    """

    NO_WEIGHTS = False

    def __init__(
        self,
        model_name_or_path: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        pretrained: bool | str = True,
        revision: str | None = None,
        model_dir: str | None = None,
        layer: int = -1,
        keep_cls: bool = True,
        output: str = "tokens",
        freeze: bool = False,
        unfreeze_last: int | str = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if output == "pooled" and layer != -1:
            raise ValueError(
                f"output=pooled is the final pooled feature; layer must be -1, got {layer}"
            )
        folder = timm_folder(model_name_or_path, revision, model_dir)
        self.model = build_timm_model(model_name_or_path, pretrained, folder, revision, model_dir)
        # A folder's config.json rebuilds the model; a timm name rebuilds it by itself.
        self.model_files = hub.model_files(folder) if folder is not None else {}
        self.output, self.keep_cls = output, bool(keep_cls)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        self.fmt = str(getattr(self.model, "output_fmt", "NCHW"))
        levels = list(getattr(self.model, "feature_info", None) or [])
        method = getattr(self.model, "forward_intermediates", None)
        n = len(levels) if method is not None else 0
        if output == "tokens" and layer != -1 and not -n <= layer < n:
            span = f"in [{-n}, {n - 1}]" if n else "-1 (it has no forward_intermediates)"
            raise ValueError(
                f"layer must be {span} ({model_name_or_path} has {n} levels in "
                f"forward_intermediates; -1 the final features), got {layer}"
            )
        self.layer = int(layer)
        self.index = self.layer % n if n else -1  # the level of forward_intermediates
        if output == "pooled":
            self.out_dim = int(
                getattr(self.model, "head_hidden_size", 0) or self.model.num_features
            )
        elif self.layer == -1:
            self.out_dim = int(self.model.num_features)
        else:
            self.out_dim = int(levels[self.index]["num_chs"])
        # forward_intermediates of ViT-like models gives tokens and their prefix tokens apart.
        self.options: dict[str, Any] = {}
        if method is not None and "return_prefix_tokens" in inspect.signature(method).parameters:
            self.options = {"output_fmt": "NLC", "return_prefix_tokens": self.keep_cls}
        if output == "tokens" and hasattr(self.model, "prune_intermediate_layers") and n:
            # Tokens never use the pooling head; a lower layer not the levels above it either.
            self.model.prune_intermediate_layers(
                [self.index], prune_norm=self.layer != -1, prune_head=True
            )
        self._finish(freeze, unfreeze_last, gradient_checkpointing)

    @classmethod
    def preprocessing(cls, **node: Any) -> dict[str, Any]:
        """The ``data.image`` keys of the model's own data config (size, crop, interpolation,
        mean/std), read from its ``pretrained_cfg`` (a folder's config.json) without building
        the model.

        Args:
            **node: the preset's keys (``model_name_or_path``, ``revision``, ``model_dir``...).

        Returns:
            What :func:`mmtrain.utils.preprocessing.image_keys_from_timm` makes of it.
        """
        import timm.data
        from timm.models import get_pretrained_cfg
        from timm.models._hub import load_model_config_from_path

        from mmtrain.utils.preprocessing import image_keys_from_timm

        default = inspect.signature(cls.__init__).parameters["model_name_or_path"].default
        name = str(node.get("model_name_or_path") or default)
        folder = timm_folder(name, node.get("revision"), node.get("model_dir"))
        if folder is not None:
            pretrained_cfg, _, _ = load_model_config_from_path(folder)
        else:
            check_timm_name(name)
            found = get_pretrained_cfg(name)  # None for an architecture without weights
            pretrained_cfg = found.to_dict() if found is not None else {}
        return image_keys_from_timm(timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg))

    def blocks(self) -> list[nn.Module]:
        return timm_blocks(self.model)[0]

    def after_blocks(self) -> list[nn.Module | nn.Parameter]:
        return list(timm_blocks(self.model)[1])

    def enable_gradient_checkpointing(self) -> None:
        self.model.set_grad_checkpointing(True)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Features:
        """Encode images ``(B, 3, H, W)``; ``mask`` is unused (images have no padding)."""
        if self.output == "pooled":
            pooled = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            return Features(pooled.unsqueeze(1), None)  # (B, 1, D)
        if self.layer == -1:
            features = self.model.forward_features(x)
            prefix = self.num_prefix_tokens if features.ndim == 3 else 0  # a map has none
            tokens = _as_tokens(features, self.fmt)  # (B, P + N, D)
            return Features(tokens if self.keep_cls else tokens[:, prefix:], None)
        return Features(self._intermediate(x), None)

    def _intermediate(self, x: Tensor) -> Tensor:
        """The raw output of level ``self.index`` as tokens ``(B, N, D)``."""
        (out,) = self.model.forward_intermediates(
            x, indices=[self.index], stop_early=True, intermediates_only=True, **self.options
        )
        if isinstance(out, tuple):  # (spatial (B, N, D), prefix (B, P, D))
            spatial, prefix = out
            return torch.cat([prefix, spatial], dim=1)  # (B, P + N, D): prefix tokens first
        return _as_tokens(out, "NCHW")


def build_timm_model(
    name: str,
    pretrained: bool | str,
    folder: Path | None = None,
    revision: str | None = None,
    model_dir: str | Path | None = None,
    key: str = KEY,
) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``), with the weights
    ``pretrained`` asks for (see :class:`TimmImageEncoder`).

    Args:
        name: ``model_name_or_path``.
        pretrained: True, False or a weights file.
        folder: the model's folder (:func:`timm_folder`), None for a name of timm's registry.
        revision: the hub revision of the weights.
        model_dir: ``paths.model_dir``.
        key: the config key, for the messages.

    Returns:
        The model, in train mode.

    Raises:
        ValueError: for an unknown name or tag, a missing weights file, or a timm name whose
            weights are not on the Hugging Face hub.
        MMTrainError: for weights that are not available offline.
    """
    import timm

    if not isinstance(pretrained, (bool, str)) or pretrained == "":
        raise ValueError(f"pretrained: true, false or a weights file, got {pretrained!r}")
    if folder is None:
        check_timm_name(name, key)
    overlay: dict[str, Any] = {}
    if isinstance(pretrained, str):
        # The file replaces the source's weights; "timm" as the source makes timm read the file
        # rather than a folder's own weights.
        overlay = {"file": str(weights_file(pretrained)), "source": "timm"}
    elif pretrained and folder is None:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id:
            raise ValueError(
                f"{key}={name}: timm has no Hugging Face hub weights for it; download its "
                "weights once and set pretrained to the file, or pretrained=false"
            )
        hub_id, _, pinned = cfg.hf_hub_id.partition("@")
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["pytorch_model.bin"]
        file = hub_weights(hub_id, files, key, revision or pinned or None, model_dir)
        overlay = {"file": str(file)}
    source = f"local-dir:{folder}" if folder is not None else name
    try:
        return timm.create_model(
            source,
            pretrained=bool(pretrained),
            pretrained_cfg_overlay=overlay or None,
            num_classes=0,
        )
    except RuntimeError as err:  # no weights in a folder, a state_dict that does not fit
        raise ValueError(f"{key}={name}: timm could not build it: {err}") from None
