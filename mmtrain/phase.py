"""Training phases (``phase=align|lora|finetune|full``): what trains in a run, set on the parts
after build.py has built them (and after ``peft`` has put adapters in).

A phase lists the kinds of weights that train; the rest is frozen:

- ``encoders``: the encoders' own weights (frozen ones through ``FreezableEncoder``, so they
  stay in eval mode and the feature cache can serve them);
- ``fusion``: the fusion (a token compressor: ``fusion=perceiver|qformer``);
- ``projector``: each causal-LM head's projector, and every head without an LM (new parts);
- ``lm``: each causal-LM head's language model;
- ``adapters``: the LoRA adapters (``peft=lora``) wherever they are.

This module also prints what trains: :func:`parameter_table`.
"""

from __future__ import annotations

from torch import nn

from mmtrain.adapters import is_adapter
from mmtrain.errors import MMTrainError

KINDS = ("encoders", "fusion", "projector", "lm", "adapters")


class Phase:
    """One training phase.

    Args:
        name: the phase's name (``align``, ``lora``, ``finetune``, ``full``), for messages.
        train: the kinds of weights that train (:data:`KINDS`).
        save_frozen: what ``model.save_frozen: null`` means in this phase: false keeps only
            the trained weights in checkpoints (see :class:`~mmtrain.module.MultimodalModule`).
        needs_adapters: the phase trains adapters, so ``peft`` must put some in.

    Raises:
        ValueError: naming an unknown kind.
    """

    def __init__(
        self,
        name: str,
        train: list[str],
        save_frozen: bool = True,
        needs_adapters: bool = False,
    ) -> None:
        unknown = [k for k in train if k not in KINDS]
        if unknown:
            raise ValueError(f"phase.train: unknown {unknown}; choose among {list(KINDS)}")
        self.name, self.train = name, frozenset(train)
        self.save_frozen, self.needs_adapters = bool(save_frozen), bool(needs_adapters)

    def apply(self, model: nn.Module) -> None:
        """Freeze and unfreeze the parts of ``model`` (a MultimodalModule) in place.

        Raises:
            MMTrainError: when the phase trains adapters and the model has none
                (``phase=lora`` with ``peft=none``).
        """
        adapters = [n for n, _ in model.named_parameters() if is_adapter(n)]
        if self.needs_adapters and not adapters:
            raise MMTrainError(
                f"phase={self.name} trains LoRA adapters and the model has none: peft=none was "
                f"set; drop it (phase={self.name} sets peft=lora) or choose phase=finetune"
            )
        for encoder in model.encoders.values():
            _set(encoder, "encoders" in self.train, "adapters" in self.train)
            frozen = not any(p.requires_grad for p in encoder.parameters())
            if hasattr(encoder, "_set_frozen"):  # eval mode while nothing in it trains
                encoder.freeze = frozen
                encoder.train(model.training)
        _set(model.fusion, "fusion" in self.train, "adapters" in self.train)
        for head in model.heads.values():
            lm = getattr(head, "lm", None)
            if lm is None:  # a head of its own (a label head next to the LLM): a new part
                _set(head, "projector" in self.train, "adapters" in self.train)
                continue
            _set(head, "projector" in self.train, "adapters" in self.train)
            _set(lm, "lm" in self.train, "adapters" in self.train)
            head.train(model.training)  # the head keeps a frozen LM in eval mode


def _set(module: nn.Module, base: bool, adapters: bool) -> None:
    """``requires_grad`` of ``module``'s weights: ``adapters`` for LoRA's, ``base`` for the rest."""
    for name, param in module.named_parameters():
        param.requires_grad_(adapters if is_adapter(name) else base)


def parameter_table(model: nn.Module) -> list[tuple[str, int, int]]:
    """``(part, trainable, total)`` parameter counts: each encoder, the fusion, each head and,
    in a causal-LM head, its projector, its LM and the LM's adapters, then the whole model."""
    rows: list[tuple[str, int, int]] = []

    def count(path: str, params: list[nn.Parameter]) -> None:
        trainable = sum(p.numel() for p in params if p.requires_grad)
        rows.append((path, trainable, sum(p.numel() for p in params)))

    for name, encoder in model.encoders.items():
        count(f"encoders.{name}", list(encoder.parameters()))
    count("fusion", list(model.fusion.parameters()))
    for task, head in model.heads.items():
        count(f"heads.{task}", list(head.parameters()))
        lm = getattr(head, "lm", None)
        if lm is not None:
            count(f"heads.{task}.projector", list(head.projector.parameters()))
            named = list(lm.named_parameters())
            count(f"heads.{task}.lm", [p for n, p in named if not is_adapter(n)])
            count(f"heads.{task}.lm (adapters)", [p for n, p in named if is_adapter(n)])
    count("loss_weighting", list(model.loss_weighting.parameters()))
    count("total", list(model.parameters()))
    return rows


def format_table(rows: list[tuple[str, int, int]]) -> str:
    """The parameter table as aligned text, with each part's trainable share."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'part':<{width}}  {'trainable':>13}  {'total':>13}  share"]
    for path, trainable, total in rows:
        share = f"{100 * trainable / total:.2f}%" if total else "-"
        lines.append(f"{path:<{width}}  {trainable:>13,}  {total:>13,}  {share}")
    return "\n".join(lines)
