"""Parameter-efficient fine-tuning: ``peft=lora`` puts LoRA adapters (the peft library) into
the parts of the model that ``apply_to`` names, after build.py has built them.

A part is named by its path in the model: ``heads.<task>`` (a causal-LM head: its LM, never
its projector), ``encoders.<modality>`` (a pretrained tower: its library model). peft freezes
the adapted module's own weights; the adapters train. ``phase`` (:mod:`mmtrain.phase`) then
says what else trains.
"""

from __future__ import annotations

from torch import nn

from mmtrain.errors import MMTrainError

ADAPTER = "lora_"  # in a parameter's name: a LoRA weight (lora_A, lora_B, lora_embedding_...)


def is_adapter(name: str) -> bool:
    """Whether the parameter or state_dict key ``name`` is an adapter's."""
    return ADAPTER in name


def adapted_module(part: nn.Module) -> nn.Module:
    """The module inside ``part`` that adapters go into: a head's LM (``lm``), a pretrained
    tower's library model (``model`` of the HF and timm encoders, ``tower`` of open_clip's),
    else the part itself."""
    for name in ("lm", "model", "tower"):
        inner = getattr(part, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return part


class LoRA:
    """LoRA adapters (Hu et al., 2021) through peft's ``inject_adapter_in_model``.

    Args:
        r: the rank of each adapter.
        alpha: the scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapters' input.
        target_modules: module names to adapt (``[q_proj, v_proj]``), or ``all-linear``: every
            linear layer but the LM's output layer.
        apply_to: paths of the parts to adapt; empty: every causal-LM head (every part with an
            ``lm``).
        bias: peft's ``bias``: ``none``, ``all`` or ``lora_only``.

    Raises:
        ValueError: for a non-positive rank or a dropout outside [0, 1).
    """

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.05,
        target_modules: list[str] | str = "all-linear",
        apply_to: list[str] | None = None,
        bias: str = "none",
    ) -> None:
        if r < 1:
            raise ValueError(f"peft.r must be a positive integer, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"peft.dropout must be in [0, 1), got {dropout}")
        self.r, self.alpha, self.dropout, self.bias = r, alpha, dropout, bias
        self.target_modules = (
            target_modules if isinstance(target_modules, str) else list(target_modules)
        )
        self.apply_to = list(apply_to or [])

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """``{path: part}`` of the parts ``apply_to`` names (or the causal-LM heads).

        Raises:
            MMTrainError: naming a path that is not a part of the model, or when no part is
                left to adapt.
        """
        parts = {f"encoders.{m}": e for m, e in model.encoders.items()}
        parts |= {f"heads.{t}": h for t, h in model.heads.items()}
        if not self.apply_to:
            chosen = {p: part for p, part in parts.items() if hasattr(part, "lm")}
            if not chosen:
                raise MMTrainError(
                    "peft=lora: no causal-LM head to adapt; name the parts in peft.apply_to "
                    f"(one of {', '.join(parts)})"
                )
            return chosen
        unknown = [p for p in self.apply_to if p not in parts]
        if unknown:
            raise MMTrainError(
                f"peft.apply_to: {', '.join(unknown)} is not a part of the model; its parts "
                f"are {', '.join(parts)}"
            )
        return {p: parts[p] for p in self.apply_to}

    def apply(self, model: nn.Module) -> dict[str, int]:
        """Put adapters into the chosen parts of ``model`` (a MultimodalModule), in place.

        Returns:
            ``{path: adapter parameters}`` of each adapted part.

        Raises:
            MMTrainError: naming the part, when peft finds none of ``target_modules`` in it.
        """
        from peft import LoraConfig, inject_adapter_in_model

        counts = {}
        for path, part in self.targets(model).items():
            config = LoraConfig(
                r=self.r,
                lora_alpha=self.alpha,
                lora_dropout=self.dropout,
                target_modules=self.target_modules,
                bias=self.bias,
            )
            inner = adapted_module(part)
            try:
                inject_adapter_in_model(config, inner)
            except ValueError as err:  # "Target modules ... not found in the base model"
                first = str(err).splitlines()[0][:300]
                raise MMTrainError(
                    f"peft.target_modules={self.target_modules} in {path}: {first}"
                ) from None
            counts[path] = sum(p.numel() for n, p in inner.named_parameters() if is_adapter(n))
        return counts


def merge(module: nn.Module) -> int:
    """Fold every LoRA adapter in ``module`` into its base weight (outputs stay the same; the
    adapters then add nothing until unmerged). Returns the number of layers merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for layer in module.modules():
        if isinstance(layer, LoraLayer) and not layer.merged:
            layer.merge()
            merged += 1
    return merged
