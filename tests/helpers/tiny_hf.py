"""Tiny random Hugging Face models in their real folder layout, for tests.

Each function builds one model family at toy size (hidden 32, 2 layers, 2 heads, 32 px images
in 8 px patches, a vocabulary of a few dozen tokens), with the processor, tokenizer or feature
extractor the real checkpoints ship, and ``save_pretrained``s them into ``folder`` (created),
which it returns. Nothing is downloaded. Each takes a few hundredths of a second, once the
first call in a process has imported transformers' modules (about 2 s). Weights are seeded, so
a folder is the same every time it is written.

A model store for ``paths.model_dir`` lays these out as ``<store>/<hub id>/``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

SIZE = 32  # image side, pixels
PATCH = 8  # patch side: a 4 x 4 grid of patches
TOWER = {  # the shared toy Transformer size (the names most configs use)
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
}
WORDS = ["a", "the", "cat", "dog", "sat", "on", "mat", "red", "blue", "photo", "of", "is"]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # not ImageNet's: a test can tell which is used
# The raw-waveform models: strides 5, 2, 2 (20 samples a frame, plus the kernels' overlap).
CONV = {"conv_dim": (32, 32, 32), "conv_stride": (5, 2, 2), "conv_kernel": (10, 3, 3)}
WHISPER_MELS = 16  # Whisper's convolutions take any number of mel bins
AST_MELS, AST_FRAMES = 16, 64  # AST's 16 x 16 patches need at least 16 of each


def _save(model: Any, folder: Path, *processors: Any) -> Path:
    """Seeded weights and their processors into ``folder`` (safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for processor in processors:
        processor.save_pretrained(folder)
    return folder


def _seeded(build: Any, config: Any) -> Any:
    """``build(config)`` with weights that do not depend on the global random state."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build(config).eval()


# ---- tokenizers --------------------------------------------------------------------------------
def _bpe_files(folder: Path, specials: list[str]) -> Path:
    """``vocab.json`` and ``merges.txt`` of a byte-level BPE over :data:`WORDS`: every letter,
    with and without the end-of-word mark, then each word merged letter by letter."""
    letters = sorted({c for w in WORDS for c in w})
    vocab = specials + letters + [f"{c}</w>" for c in letters]
    merges = []
    for word in WORDS:
        if len(word) < 2:
            continue
        piece = word[0]
        for i, char in enumerate(word[1:], start=1):
            last = i == len(word) - 1
            right = f"{char}</w>" if last else char
            merges.append(f"{piece} {right}")
            piece = piece + right
            if piece not in vocab:
                vocab.append(piece)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return folder


def clip_tokenizer(folder: Path) -> Any:
    """A CLIP tokenizer (lower-cased byte-level BPE, ``<|startoftext|>``/``<|endoftext|>``)
    read from the ``vocab.json``/``merges.txt`` written into ``folder``."""
    from transformers import CLIPTokenizer

    _bpe_files(folder, ["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer.from_pretrained(folder, model_max_length=16)


def bert_tokenizer(folder: Path) -> Any:
    """A lower-cased WordPiece tokenizer read from the ``vocab.txt`` written into ``folder``."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer.from_pretrained(folder, model_max_length=32)


def t5_tokenizer() -> Any:
    """A T5 (unigram, ``</s>``-terminated) tokenizer over :data:`WORDS`, no sentinel ids."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -float(i + 3)) for i, w in enumerate(WORDS)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=32)


def siglip_tokenizer(folder: Path) -> Any:
    """A SigLIP tokenizer: a tiny SentencePiece unigram model trained on :data:`WORDS`."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    model = io.BytesIO()
    sentences = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=40,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=16)


# ---- vision ------------------------------------------------------------------------------------
def _vision(**extra: Any) -> dict[str, Any]:
    return {**TOWER, "image_size": SIZE, "patch_size": PATCH, **extra}


def _clip_image_processor() -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        image_mean=MEAN,
        image_std=STD,
    )


def tiny_clip(folder: Path, logit_scale: float = 3.0) -> Path:
    """A full ``CLIPModel`` (both towers, projections to 16, ``logit_scale`` set to a value
    other than the default) with its image processor and BPE tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    tokenizer = clip_tokenizer(folder)
    specials = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CLIPConfig(
        text_config={
            **TOWER,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 16,
            **specials,
        },
        vision_config=_vision(),
        projection_dim=16,
    )
    model = _seeded(CLIPModel, config)
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
    return _save(model, folder, _clip_image_processor(), tokenizer)


def tiny_clip_vision(folder: Path, projection: bool = False) -> Path:
    """A vision-only CLIP folder (``clip_vision_model``): ``CLIPVisionModel``, or
    ``CLIPVisionModelWithProjection`` with ``projection``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**_vision(), projection_dim=16)
    model = _seeded(CLIPVisionModelWithProjection if projection else CLIPVisionModel, config)
    return _save(model, folder, _clip_image_processor())


def tiny_siglip(folder: Path) -> Path:
    """A full ``SiglipModel`` (vision tower with its attention-pooling head, text tower with
    its head; ``logit_scale`` and ``logit_bias``) with its image processor and tokenizer."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tokenizer = siglip_tokenizer(folder)
    config = SiglipConfig(
        text_config={
            **TOWER,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 16,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,  # SigLIP's tokenizer adds no start token
        },
        vision_config=_vision(),
    )
    model = _seeded(SiglipModel, config)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
        model.logit_bias.fill_(-7.0)
    processor = SiglipImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=MEAN, image_std=STD
    )
    return _save(model, folder, processor, tokenizer)


def tiny_vit(folder: Path) -> Path:
    """A ``ViTModel`` (with its pooler) and its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    model = _seeded(ViTModel, ViTConfig(**_vision()))
    processor = ViTImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=MEAN, image_std=STD
    )
    return _save(model, folder, processor)


def tiny_dinov2(folder: Path, registers: int = 0) -> Path:
    """A ``Dinov2Model`` (``Dinov2WithRegistersModel`` with ``registers`` > 0) and its image
    processor (DINOv2 ships a ``BitImageProcessor``)."""
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    if registers:
        config = Dinov2WithRegistersConfig(**_vision(num_register_tokens=registers))
        model = _seeded(Dinov2WithRegistersModel, config)
    else:
        model = _seeded(Dinov2Model, Dinov2Config(**_vision()))
    processor = BitImageProcessor(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        image_mean=MEAN,
        image_std=STD,
    )
    return _save(model, folder, processor)


# ---- text --------------------------------------------------------------------------------------
def tiny_bert(folder: Path) -> Path:
    """A ``BertModel`` (with its pooler) and its WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    tokenizer = bert_tokenizer(folder)
    config = BertConfig(**TOWER, vocab_size=len(tokenizer), max_position_embeddings=32)
    return _save(_seeded(BertModel, config), folder, tokenizer)


def tiny_roberta(folder: Path) -> Path:
    """A ``RobertaModel`` (with its pooler) and its byte-level BPE tokenizer."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    _bpe_files(folder, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = RobertaTokenizer.from_pretrained(folder, model_max_length=30)
    config = RobertaConfig(
        **TOWER,
        vocab_size=len(tokenizer),
        max_position_embeddings=32,  # RoBERTa's positions start after the padding id
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save(_seeded(RobertaModel, config), folder, tokenizer)


def tiny_t5(folder: Path) -> Path:
    """A ``T5ForConditionalGeneration`` (encoder and decoder, as t5-small ships) and its
    unigram tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return _save(_seeded(T5ForConditionalGeneration, config), folder, tokenizer)


# ---- audio -------------------------------------------------------------------------------------
def _wave_extractor() -> Any:
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


def _wave(**extra: Any) -> dict[str, Any]:
    return {
        **TOWER,
        **CONV,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "vocab_size": 8,  # unused by the base model; CTC heads read it
        "layerdrop": 0.0,  # every block runs in training (the real models skip 10% at random)
        **extra,
    }


def tiny_wav2vec2(folder: Path, norm: str = "layer") -> Path:
    """A ``Wav2Vec2ForCTC`` (the base model under ``wav2vec2.``, as fine-tuned checkpoints
    ship) and its feature extractor; ``norm="layer"`` is the pre-norm (large, "lv60")
    variant trained with attention masks, ``"group"`` the base one."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    stable = norm == "layer"
    config = Wav2Vec2Config(**_wave(feat_extract_norm=norm, do_stable_layer_norm=stable))
    return _save(_seeded(Wav2Vec2ForCTC, config), folder, _wave_extractor())


def tiny_hubert(folder: Path) -> Path:
    """A ``HubertModel`` (the base, group-norm variant) and its feature extractor."""
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(**_wave(feat_extract_norm="group"))
    return _save(_seeded(HubertModel, config), folder, _wave_extractor())


def tiny_wavlm(folder: Path) -> Path:
    """A ``WavLMModel`` and its feature extractor."""
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(**_wave(feat_extract_norm="layer", do_stable_layer_norm=True))
    return _save(_seeded(WavLMModel, config), folder, _wave_extractor())


def tiny_whisper(folder: Path) -> Path:
    """A ``WhisperForConditionalGeneration`` (encoder and decoder under ``model.``, as the
    hub's checkpoints) at Whisper's real geometry, 30 s = 3000 log-mel frames -> 1500 tokens,
    with :data:`WHISPER_MELS` mel bins and its feature extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=16,
        num_mel_bins=WHISPER_MELS,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_source_positions=1500,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    extractor = WhisperFeatureExtractor(feature_size=WHISPER_MELS)
    return _save(_seeded(WhisperForConditionalGeneration, config), folder, extractor)


def tiny_ast(folder: Path) -> Path:
    """An ``ASTModel`` over :data:`AST_MELS` x :data:`AST_FRAMES` filter banks and its
    feature extractor."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    config = ASTConfig(
        **TOWER,
        patch_size=16,
        frequency_stride=10,
        time_stride=10,
        num_mel_bins=AST_MELS,
        max_length=AST_FRAMES,
    )
    extractor = ASTFeatureExtractor(num_mel_bins=AST_MELS, max_length=AST_FRAMES)
    return _save(_seeded(ASTModel, config), folder, extractor)


# The builders by the name a test or a model store uses.
BUILDERS = {
    "clip": tiny_clip,
    "clip_vision": tiny_clip_vision,
    "siglip": tiny_siglip,
    "vit": tiny_vit,
    "dinov2": tiny_dinov2,
    "bert": tiny_bert,
    "roberta": tiny_roberta,
    "t5": tiny_t5,
    "wav2vec2": tiny_wav2vec2,
    "hubert": tiny_hubert,
    "wavlm": tiny_wavlm,
    "whisper": tiny_whisper,
    "ast": tiny_ast,
}
