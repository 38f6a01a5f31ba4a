"""Hugging Face speech and audio towers as encoders (see :mod:`mmtrain.encoders.hf`).

Three kinds of input, as each model's feature extractor gives them:

- wav2vec2, HuBERT, WavLM: raw 16 kHz waveforms ``(B, T)`` + ``(B, T)`` mask; their
  convolutional front end gives one token per 20 ms, the output mask from the model's own
  length formula (``_get_feat_extract_output_lengths``);
- Whisper (its encoder only): log-mels ``(B, n_mels, 3000)`` (30 s, padded) + mask; 1500
  tokens, the mask halved by the stride-2 convolution;
- AST: filter banks ``(B, n_mels, frames)`` (the feature extractor's ``(B, frames, n_mels)``
  transposed, as mmtrain batches mels); every token is real (no mask).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmtrain.encoders.hf import Family, HFEncoder

_WAVE = Family("Wav2Vec2Model", layers="encoder.layers", pooled=False)


class HFAudioEncoder(HFEncoder):
    """A Hugging Face speech/audio tower: waveforms or mels (see the module docstring) ->
    ``(B, N, D)`` tokens and their mask.

    wav2vec2-style models whose feature extractor normalises with a layer norm
    (``feat_extract_norm="layer"``: the large ones) were trained with attention masks and get
    one; the group-norm (base) ones were trained on zero-padded batches without one, and get
    the padding zeroed instead (Hugging Face's advice for them). Their configs usually have
    LayerDrop (``layerdrop: 0.1``), their fine-tuning recipe: in training a block is skipped at
    random and gets no gradient that step, so a DDP run needs
    ``trainer.strategy=ddp_find_unused_parameters_true``.

    Args:
        model_name_or_path, revision, model_dir, pretrained, safetensors, layer, keep_cls,
            output, freeze, unfreeze_last, gradient_checkpointing: see
            :class:`~mmtrain.encoders.hf.HFEncoder` (``keep_cls=false`` drops AST's two prefix
            tokens; ``output=pooled`` is AST's mean of them, the others have none).
        n_mels: the mel bins of the data (wired by build.py); checked against Whisper's and
            AST's, unused for waveforms.

    Raises:
        ValueError: as :class:`~mmtrain.encoders.hf.HFEncoder`, and for mel bins the model
            does not take.
    """

    modality = "audio"
    keys_from_hf = "audio_keys_from_hf"
    families: ClassVar[dict[str, Family]] = {
        "wav2vec2": _WAVE,
        "hubert": dataclasses.replace(_WAVE, model_class="HubertModel"),
        "wavlm": dataclasses.replace(_WAVE, model_class="WavLMModel"),
        "whisper": Family(
            "WhisperModel",
            submodule="encoder",
            layers="layers",
            final=("layer_norm",),
            pooled=False,
        ),
        "audio-spectrogram-transformer": Family(
            "ASTModel", layers="layers", final=("layernorm",), prefix=2
        ),
    }

    def __init__(
        self,
        model_name_or_path: str,
        revision: str | None = None,
        model_dir: str | None = None,
        pretrained: bool = True,
        safetensors: bool = True,
        layer: int = -1,
        keep_cls: bool = True,
        output: str = "tokens",
        freeze: bool = False,
        unfreeze_last: int | str = 0,
        gradient_checkpointing: bool = False,
        n_mels: int | None = None,
    ) -> None:
        super().__init__(
            model_name_or_path,
            revision,
            model_dir,
            pretrained,
            safetensors,
            layer,
            keep_cls,
            output,
            freeze,
            unfreeze_last,
            gradient_checkpointing,
        )
        config = self.model.config
        self.kind = {"whisper": "whisper", "audio-spectrogram-transformer": "ast"}.get(
            self.model_type, "wave"
        )
        self.n_mels = None if self.kind == "wave" else int(config.num_mel_bins)
        if n_mels is not None and self.n_mels is not None and n_mels != self.n_mels:
            raise ValueError(
                f"{self.key}={self.name}: the data has {n_mels} mel bins, the model takes "
                f"{self.n_mels}; use the model's feature extractor"
            )
        # AST's positions are fixed: its input has exactly max_length frames.
        self.frames = int(config.max_length) if self.kind == "ast" else None
        # Layer-norm feature encoders were trained with attention masks, group-norm ones not.
        self.masked = getattr(config, "feat_extract_norm", "") == "layer"
        self.adapter = bool(getattr(config, "add_adapter", False))  # wav2vec2's: fewer tokens

    @classmethod
    def _specialise(cls, family: Family, config: Any) -> Family:
        if family.model_class in ("Wav2Vec2Model", "HubertModel", "WavLMModel"):
            # The pre-norm variants end with the encoder's norm (the others start with it),
            # then the adapter where there is one.
            final = ("encoder.layer_norm",) if config.do_stable_layer_norm else ()
            adapter = ("adapter",) if getattr(config, "add_adapter", False) else ()
            return dataclasses.replace(family, final=final + adapter)
        return family

    def _run(self, x: Tensor, mask: Tensor | None, hidden: bool) -> tuple[Any, Tensor | None]:
        core = self._core()
        if self.kind == "wave":
            if x.ndim != 2:
                raise ValueError(f"expected waveforms (B, T), got shape {tuple(x.shape)}")
            if mask is not None:
                x = x * mask.to(x.dtype)  # padding as the feature extractor pads: zeros
            attention = mask.long() if mask is not None and self.masked else None
            out = core(input_values=x, attention_mask=attention, output_hidden_states=hidden)
            lengths = None if mask is None else mask.sum(1)
            size = (out.hidden_states[self.layer] if hidden else out.last_hidden_state).shape[1]
            return out, self._length_mask(lengths, size, hidden)
        if x.ndim != 3 or x.shape[1] != self.n_mels:
            raise ValueError(f"expected mels (B, {self.n_mels}, T), got shape {tuple(x.shape)}")
        if self.kind == "ast":
            if x.shape[2] != self.frames:
                raise ValueError(
                    f"{self.model_type} takes exactly {self.frames} frames (its feature "
                    f"extractor's max_length), got {x.shape[2]}"
                )
            # (B, n_mels, frames) -> (B, frames, n_mels), the feature extractor's layout
            return core(input_values=x.transpose(1, 2), output_hidden_states=hidden), None
        out = core(input_features=x, output_hidden_states=hidden)  # (B, T / 2, D)
        lengths = None if mask is None else mask.sum(1)
        return out, self._length_mask(lengths, out.last_hidden_state.shape[1])

    def _length_mask(
        self, lengths: Tensor | None, size: int, hidden: bool = False
    ) -> Tensor | None:
        """``(B, size)`` bool: the first ``f(length)`` tokens of each row are real, ``f`` the
        model's own frame-length formula; None without input lengths."""
        if lengths is None:
            return None
        core = self._core()
        if self.adapter:  # hidden states come before the adapter, which shortens the sequence
            out = core._get_feat_extract_output_lengths(lengths, add_adapter=not hidden)
        else:
            out = core._get_feat_extract_output_lengths(lengths)
        positions = torch.arange(size, device=lengths.device)
        return positions[None, :] < out[:, None]  # (B, size)
