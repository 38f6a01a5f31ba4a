"""The timm and open_clip encoders against the libraries themselves, on tiny random models saved
in the libraries' own folder formats (:mod:`helpers.tiny_vision`): shapes, masks and widths;
each ``layer`` and ``output`` equal to what the library computes; weights loaded exactly; the
freezing options; errors that name what to use instead; open_clip's tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_vision as tv
from safetensors.torch import load_file

from mmtrain.data.transforms.open_clip_tokenizer import OpenCLIPTokenizer
from mmtrain.encoders.openclip import OpenCLIPImageEncoder, OpenCLIPTextEncoder
from mmtrain.encoders.timm_image import TimmImageEncoder
from mmtrain.errors import MMTrainError
from mmtrain.utils import hub

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

TEXTS = ["a photo of a cat", "dog", "the red square is on the left of a small blue circle today"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models, each in its own folder."""
    root = tmp_path_factory.mktemp("tiny_vision")
    return {
        "vit": tv.timm_vit(root / "vit"),
        "cnn": tv.timm_cnn(root / "cnn"),
        "clip": tv.open_clip_model(root / "clip"),
    }


def _timm(folder: Path) -> Any:
    """The library's own model of a timm folder, without its classifier."""
    return timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()


def _clip(folder: Path) -> Any:
    """The library's own open_clip model of a folder."""
    return open_clip.create_model(f"local-dir:{folder}").eval()


def _images(size: int = tv.SIZE) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


def _ids(length: int = tv.CONTEXT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """open_clip's padded ids of :data:`TEXTS` ``(B, C)``, and the same cut to the longest text
    ``(B, L)`` with its mask (up to each end-of-text token)."""
    full = open_clip.get_tokenizer("ViT-B-32", context_length=length)(TEXTS)
    ends = (full == 49407).int().argmax(dim=1)  # the SimpleTokenizer's end-of-text id
    longest = int(ends.max()) + 1
    mask = torch.arange(longest).unsqueeze(0) <= ends.unsqueeze(1)
    return full, full[:, :longest], mask


def _trainable(encoder: torch.nn.Module) -> set[str]:
    return {n for n, p in encoder.named_parameters() if p.requires_grad}


# ---- timm ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_cls", [True, False])
def test_timm_vit_tokens_are_its_final_features(models, keep_cls):
    encoder = TimmImageEncoder(str(models["vit"]), keep_cls=keep_cls).eval()
    x = _images()
    with torch.no_grad():
        features = encoder(x)
        expected = _timm(models["vit"]).forward_features(x)  # (B, 1 + 16, 32)
    assert encoder.out_dim == tv.WIDTH and features.mask is None
    assert torch.equal(features.tokens, expected if keep_cls else expected[:, 1:])


@pytest.mark.parametrize(("name", "layer"), [("vit", 0), ("vit", -2), ("cnn", 0), ("cnn", 2)])
def test_timm_layer_is_that_level_of_forward_intermediates(models, name, layer):
    encoder = TimmImageEncoder(str(models[name]), layer=layer).eval()
    model = _timm(models[name])
    x = _images(64 if name == "cnn" else tv.SIZE)
    with torch.no_grad():
        tokens = encoder(x).tokens
        if name == "vit":
            ((spatial, prefix),) = model.forward_intermediates(
                x,
                indices=[layer],
                return_prefix_tokens=True,
                output_fmt="NLC",
                intermediates_only=True,
            )
            expected = torch.cat([prefix, spatial], dim=1)
        else:
            (grid,) = model.forward_intermediates(x, indices=[layer], intermediates_only=True)
            expected = grid.flatten(2).transpose(1, 2)  # (B, h*w, C)
    assert torch.allclose(tokens, expected, atol=1e-6)
    assert encoder.out_dim == expected.shape[-1]
    if name == "vit":  # the blocks after the layer are gone (no parameters without gradients)
        assert len(encoder.model.blocks) == 1


def test_timm_cnn_gives_its_last_feature_map_as_grid_tokens(models):
    encoder = TimmImageEncoder(str(models["cnn"]), keep_cls=False).eval()
    x = _images(64)
    with torch.no_grad():
        grid = _timm(models["cnn"]).forward_features(x)  # (B, 32, 2, 2)
        tokens = encoder(x).tokens
    assert tokens.shape == (3, 4, 32) and encoder.out_dim == 32
    assert torch.equal(tokens, grid.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("name", ["vit", "cnn"])
def test_timm_pooled_is_the_pre_logits_feature(models, name):
    encoder = TimmImageEncoder(str(models[name]), output="pooled").eval()
    model = _timm(models[name])
    x = _images(64 if name == "cnn" else tv.SIZE)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        features = encoder(x)
    assert features.tokens.shape == (3, 1, encoder.out_dim)
    assert torch.equal(features.tokens[:, 0], expected)


def test_timm_layer_out_of_range_names_the_range(models):
    with pytest.raises(ValueError, match=r"layer must be in \[-2, 1\].*got 2"):
        TimmImageEncoder(str(models["vit"]), layer=2)
    with pytest.raises(ValueError, match=r"layer must be -1"):
        TimmImageEncoder(str(models["vit"]), output="pooled", layer=0)


def test_timm_weights_come_from_the_folder_or_a_file_exactly(models, tmp_path):
    saved = load_file(models["vit"] / "model.safetensors")
    encoder = TimmImageEncoder(str(models["vit"]))
    state = encoder.model.state_dict()
    assert set(state) == {k for k in saved if not k.startswith("head.")}  # no classifier
    assert all(torch.equal(state[k], saved[k]) for k in state)
    # A weights file (pickled, read with weights_only) replaces the folder's own weights.
    other = tv.timm_vit(tmp_path / "other_vit")  # the same seed: perturb it
    weights = {k: v + 1 for k, v in load_file(other / "model.safetensors").items()}
    torch.save(weights, tmp_path / "weights.pth")
    loaded = TimmImageEncoder(str(models["vit"]), pretrained=str(tmp_path / "weights.pth"))
    assert all(torch.equal(v, weights[k]) for k, v in loaded.model.state_dict().items())
    # No weights: random init, not the saved ones.
    fresh = TimmImageEncoder(str(models["vit"]), pretrained=False).model.state_dict()
    assert not torch.equal(fresh["pos_embed"], saved["pos_embed"])
    with pytest.raises(ValueError, match="no such weights file"):
        TimmImageEncoder(str(models["vit"]), pretrained=str(tmp_path / "missing.pth"))


def test_timm_name_alone_builds_and_finds_weights_in_a_model_store(tmp_path, monkeypatch):
    encoder = TimmImageEncoder("vit_tiny_patch16_224", pretrained=False)
    assert encoder.out_dim == 192 and encoder.model_files == {}  # the name rebuilds it
    assert encoder(torch.zeros(1, 3, 224, 224)).tokens.shape == (1, 197, 192)
    # pretrained=true: the hub repository timm names for the weights, from a model store.
    hub_id = timm.models.get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    with torch.random.fork_rng():
        torch.manual_seed(1)
        source = timm.create_model("vit_tiny_patch16_224")
    (tmp_path / hub_id.replace("/", "--")).mkdir(parents=True)
    timm.models.save_for_hf(
        source, str(tmp_path / hub_id.replace("/", "--")), safe_serialization=True
    )
    loaded = TimmImageEncoder("vit_tiny_patch16_224", pretrained=True, model_dir=str(tmp_path))
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())
    # Offline and in no store: one error naming the repository.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMTrainError, match=hub_id):
        TimmImageEncoder("vit_tiny_patch16_224", pretrained=True, model_dir=str(tmp_path / "x"))


def test_timm_unknown_names_and_tags_say_what_exists():
    with pytest.raises(ValueError, match="did you mean vit_tiny_patch16_224"):
        TimmImageEncoder("vit_tiny_patch16_2244", pretrained=False)
    with pytest.raises(ValueError, match="augreg_in21k_ft_in1k"):
        TimmImageEncoder("vit_tiny_patch16_224.nope", pretrained=False)


def test_timm_freeze_and_unfreeze_last(models):
    frozen = TimmImageEncoder(str(models["vit"]), freeze=True).train()
    assert _trainable(frozen) == set() and not frozen.training
    partly = TimmImageEncoder(str(models["vit"]), freeze=True, unfreeze_last=1).train()
    trainable = _trainable(partly)
    assert trainable and all(n.startswith(("model.blocks.1.", "model.norm.")) for n in trainable)
    assert {n for n in trainable if n.startswith("model.norm.")}  # what follows the blocks
    assert partly.training and not partly.model.blocks[0].training  # frozen blocks: eval
    with pytest.raises(ValueError, match=r"unfreeze_last must be in \[0, 2\]"):
        TimmImageEncoder(str(models["vit"]), unfreeze_last=3)


def _gradients(encoder: torch.nn.Module, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    encoder.train()
    encoder(*inputs).tokens.square().sum().backward()
    return {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["vit", "cnn"])
def test_timm_gradient_checkpointing_gives_the_same_gradients(models, name):
    x = _images(64 if name == "cnn" else tv.SIZE)
    plain = _gradients(TimmImageEncoder(str(models[name])), x)
    checkpointed = _gradients(TimmImageEncoder(str(models[name]), gradient_checkpointing=True), x)
    assert plain.keys() == checkpointed.keys() and plain
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_timm_preprocessing_and_model_files(models, tmp_path):
    from mmtrain.utils.preprocessing import image_keys_from_timm

    keys = TimmImageEncoder.preprocessing(model_name_or_path=str(models["vit"]), layer=-1)
    data_config = timm.data.resolve_data_config({}, model=_timm(models["vit"]))
    assert keys == image_keys_from_timm(data_config) and keys["mean"] == list(tv.MEAN)
    # A checkpoint's model files rebuild the model without weights; its state_dict fills it.
    encoder = TimmImageEncoder(str(models["vit"]), layer=0).eval()
    assert set(encoder.model_files) == {"config.json"}
    folder = hub.materialize(encoder.model_files, tmp_path / "rebuilt")
    rebuilt = TimmImageEncoder(str(folder), pretrained=TimmImageEncoder.NO_WEIGHTS, layer=0)
    rebuilt.load_state_dict(encoder.state_dict())
    x = _images()
    assert torch.equal(rebuilt.eval()(x).tokens, encoder(x).tokens)


# ---- open_clip ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("layer", "keep_cls"), [(-1, True), (-1, False), (0, True), (-2, False)])
def test_open_clip_image_tokens_are_the_towers(models, layer, keep_cls):
    encoder = OpenCLIPImageEncoder(str(models["clip"]), layer=layer, keep_cls=keep_cls).eval()
    x = _images()
    with torch.no_grad():
        out = _clip(models["clip"]).visual.forward_intermediates(
            x,
            indices=[layer],
            normalize_intermediates=layer == -1,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        tokens = encoder(x).tokens
    patches, cls = out["image_intermediates"][0], out["image_intermediates_prefix"][0]
    expected = torch.cat([cls, patches], dim=1) if keep_cls else patches  # (B, 1 + 16, 32)
    assert encoder.out_dim == tv.WIDTH and tokens.shape == (3, 16 + keep_cls, tv.WIDTH)
    assert torch.allclose(tokens, expected, atol=1e-6)
    assert encoder.logit_scale is None and encoder.logit_bias is None  # tokens: no shared space


@pytest.mark.parametrize("layer", [-1, 0])
def test_open_clip_text_tokens_and_mask(models, layer):
    encoder = OpenCLIPTextEncoder(str(models["clip"]), layer=layer).eval()
    full, ids, mask = _ids()
    with torch.no_grad():
        out = _clip(models["clip"]).forward_intermediates(
            text=full,
            text_indices=[layer],
            normalize_intermediates=layer == -1,
            intermediates_only=True,
        )
        features = encoder(ids.masked_fill(~mask, 7), mask)  # the pad value does not matter
        derived = encoder(ids)  # no mask: up to the end-of-text token
    expected = out["text_intermediates"][0][:, : ids.shape[1]]
    assert encoder.out_dim == tv.WIDTH and features.tokens.shape == (3, ids.shape[1], tv.WIDTH)
    assert torch.allclose(features.tokens, expected, atol=1e-6)
    assert torch.equal(features.mask, mask) and torch.equal(derived.mask, mask)
    assert torch.allclose(derived.tokens, expected, atol=1e-6)
    with pytest.raises(ValueError, match="at most 16"):
        encoder(torch.zeros(1, 17, dtype=torch.long))


def test_open_clip_projected_embeddings_and_logit_scale_are_clips(models):
    images = OpenCLIPImageEncoder(str(models["clip"]), output="projected").eval()
    texts = OpenCLIPTextEncoder(str(models["clip"]), output="projected").eval()
    model = _clip(models["clip"])
    x = _images()
    full, ids, mask = _ids()
    with torch.no_grad():
        image = images(x).tokens  # (B, 1, 24)
        text = texts(ids, mask).tokens
        assert torch.allclose(image[:, 0], model.encode_image(x), atol=1e-6)
        assert torch.allclose(text[:, 0], model.encode_text(full), atol=1e-6)
        expected, _ = model.get_logits(x, full)
    assert images.out_dim == texts.out_dim == tv.OPEN_CLIP_CFG["embed_dim"]
    assert images.logit_scale == texts.logit_scale == 3.0 and images.logit_bias is None
    similarity = F.normalize(image[:, 0], dim=-1) @ F.normalize(text[:, 0], dim=-1).T
    assert torch.allclose(similarity * torch.tensor(images.logit_scale).exp(), expected, atol=1e-5)


def test_open_clip_towers_keep_only_their_half(models):
    image = OpenCLIPImageEncoder(str(models["clip"]), output="projected")
    text = OpenCLIPTextEncoder(str(models["clip"]), output="projected")
    full = _clip(models["clip"]).state_dict()
    assert all(k.startswith("tower.") for k in [*image.state_dict(), *text.state_dict()])
    assert {f"visual.{k[6:]}" for k in image.state_dict()} == {
        k for k in full if k.startswith("visual.")
    }
    text_keys = {k[6:] for k in text.state_dict()}
    assert text_keys == {k for k in full if not k.startswith("visual.") and k != "logit_scale"}


def test_open_clip_weights_come_from_the_folder_or_a_file_exactly(models, tmp_path):
    saved = load_file(models["clip"] / "open_clip_model.safetensors")
    image = OpenCLIPImageEncoder(str(models["clip"]))
    text = OpenCLIPTextEncoder(str(models["clip"]))
    assert all(torch.equal(v, saved[f"visual.{k[6:]}"]) for k, v in image.state_dict().items())
    assert all(torch.equal(v, saved[k[6:]]) for k, v in text.state_dict().items())
    # A weights file (pickled, read with weights_only) with the folder's config.
    weights = {k: v + 1 for k, v in saved.items()}
    torch.save(weights, tmp_path / "clip.pt")
    loaded = OpenCLIPTextEncoder(str(models["clip"]), pretrained=str(tmp_path / "clip.pt"))
    assert all(torch.equal(v, weights[k[6:]]) for k, v in loaded.state_dict().items())
    projected = OpenCLIPTextEncoder(
        str(models["clip"]), str(tmp_path / "clip.pt"), output="projected"
    )
    assert projected.logit_scale == 4.0
    fresh = OpenCLIPImageEncoder(str(models["clip"]), pretrained=None).state_dict()
    assert not torch.equal(fresh["tower.conv1.weight"], saved["visual.conv1.weight"])


def test_open_clip_name_alone_builds_without_weights_and_tags_stay_offline(monkeypatch):
    encoder = OpenCLIPTextEncoder("ViT-B-32", pretrained=None, output="projected")
    assert encoder.out_dim == 512 and encoder.context_length == 77
    assert encoder.logit_scale == pytest.approx(torch.tensor(1 / 0.07).log().item())
    assert set(encoder.model_files) == {"open_clip_config.json"}  # what the tag may change
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].rstrip("/")
    with pytest.raises(MMTrainError, match=repo):
        OpenCLIPTextEncoder("ViT-B-32", pretrained="openai")


def test_open_clip_tag_sets_the_activation_its_weights_were_trained_with():
    from mmtrain.encoders.openclip import effective_cfg, find_model, tag_cfg

    model = find_model("ViT-B-32", "key")
    assert "quick_gelu" not in model.model_cfg
    assert effective_cfg(model, tag_cfg(model, "openai", "key"))["quick_gelu"] is True


def test_open_clip_unknown_names_tags_and_layers(models):
    with pytest.raises(ValueError, match="did you mean ViT-B-32"):
        OpenCLIPImageEncoder("ViT-B-322", pretrained=None)
    with pytest.raises(ValueError, match="its tags: .*laion2b_s34b_b79k"):
        OpenCLIPImageEncoder("ViT-B-32", pretrained="opena1")
    with pytest.raises(ValueError, match=r"layer must be in \[-2, 1\]"):
        OpenCLIPTextEncoder(str(models["clip"]), layer=-3)
    with pytest.raises(ValueError, match="output must be one of"):
        OpenCLIPImageEncoder(str(models["clip"]), output="pooled")


def test_open_clip_freeze_unfreeze_last_and_gradient_checkpointing(models):
    partly = OpenCLIPImageEncoder(str(models["clip"]), freeze=True, unfreeze_last=1)
    trainable = _trainable(partly)
    assert trainable and all(
        n.startswith(("tower.transformer.resblocks.1.", "tower.ln_post.")) for n in trainable
    )
    text = OpenCLIPTextEncoder(str(models["clip"]), output="projected", unfreeze_last=1)
    assert "tower.text_projection" in _trainable(text)  # the projection follows the blocks
    assert "tower.token_embedding.weight" not in _trainable(text)
    x, (_, ids, mask) = _images(), _ids()
    for cls, inputs in ((OpenCLIPImageEncoder, (x,)), (OpenCLIPTextEncoder, (ids, mask))):
        plain = _gradients(cls(str(models["clip"])), *inputs)
        checkpointed = _gradients(cls(str(models["clip"]), gradient_checkpointing=True), *inputs)
        assert plain.keys() == checkpointed.keys() and plain
        assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_open_clip_preprocessing_and_model_files(models, tmp_path):
    from mmtrain.utils.preprocessing import image_keys_from_open_clip

    folder = str(models["clip"])
    keys = OpenCLIPImageEncoder.preprocessing(model_name_or_path=folder, pretrained="openai")
    expected = image_keys_from_open_clip(open_clip.get_model_preprocess_cfg(_clip(models["clip"])))
    assert keys == expected and keys["mean"] == list(tv.MEAN)
    assert OpenCLIPTextEncoder.preprocessing(model_name_or_path=folder) == {
        "tokenizer": f"open_clip:local-dir:{models['clip'].resolve()}",
        "max_length": tv.CONTEXT,
    }
    encoder = OpenCLIPImageEncoder(folder, output="projected").eval()
    rebuilt_folder = hub.materialize(encoder.model_files, tmp_path / "rebuilt")
    rebuilt = OpenCLIPImageEncoder(
        str(rebuilt_folder), pretrained=OpenCLIPImageEncoder.NO_WEIGHTS, output="projected"
    )
    rebuilt.load_state_dict(encoder.state_dict())
    x = _images()
    assert torch.equal(rebuilt.eval()(x).tokens, encoder(x).tokens)


def test_model_store_folders_are_found_by_name_and_hub_id(models, tmp_path):
    import shutil

    shutil.copytree(models["clip"], tmp_path / "org--tiny-clip")  # <store>/<org>--<name>
    shutil.copytree(models["vit"], tmp_path / "tiny-vit")  # <store>/<name>
    store = str(tmp_path)
    for name in ("hf-hub:org/tiny-clip", "org/tiny-clip"):
        encoder = OpenCLIPTextEncoder(name, model_dir=store, output="projected")
        assert encoder.logit_scale == 3.0  # the folder's own weights
        tokenizer = OpenCLIPTokenizer(name, model_dir=store)
        assert tokenizer.max_length == tv.CONTEXT
    vit = TimmImageEncoder("tiny-vit", model_dir=store)
    assert vit.out_dim == tv.WIDTH and set(vit.model_files) == {"config.json"}
    (tmp_path / "empty-clip").mkdir()
    shutil.copy(models["clip"] / "open_clip_config.json", tmp_path / "empty-clip")
    with pytest.raises(ValueError, match="holds none of the weights files"):
        OpenCLIPImageEncoder("empty-clip", model_dir=store)  # a tag means the folder's weights
    assert OpenCLIPImageEncoder("empty-clip", pretrained=None, model_dir=store).out_dim == 32


# ---- open_clip's tokenizer ----------------------------------------------------------------------
def test_open_clip_tokenizer_gives_open_clips_ids_without_padding(models):
    long_text = " ".join(["word"] * 100)  # truncated, the end-of-text token kept last
    texts = [*TEXTS, long_text, ""]
    for name, context in (("ViT-B-32", 77), (f"local-dir:{models['clip']}", tv.CONTEXT)):
        tokenizer = OpenCLIPTokenizer(name)
        reference = open_clip.get_tokenizer(name)(texts)  # (B, context), zero-padded
        encoded = [tokenizer.encode(t) for t in texts]
        for ids, row in zip(encoded, reference):
            assert torch.equal(ids, row[: len(ids)]) and not row[len(ids) :].any()
            assert ids[-1] == tokenizer.eot_id
        assert len(encoded[3]) == context == tokenizer.max_length
        assert tokenizer.count(texts) == [len(ids) for ids in encoded]
        padded, mask = tokenizer.pad(encoded)
        assert torch.equal(padded, reference[:, : padded.shape[1]]) and mask.sum(1).tolist() == [
            len(ids) for ids in encoded
        ]
        assert tokenizer.pad_id == 0 and tokenizer.vocab_size == tv.VOCAB
    short = OpenCLIPTokenizer("ViT-B-32", max_length=8)
    assert torch.equal(
        short.encode(long_text), open_clip.get_tokenizer("ViT-B-32")(long_text, 8)[0]
    )
    assert short.fingerprint() != OpenCLIPTokenizer("ViT-B-32").fingerprint()
    assert (
        OpenCLIPTokenizer("ViT-B-32").fingerprint() == OpenCLIPTokenizer("ViT-B/32").fingerprint()
    )
    with pytest.raises(ValueError, match=r"max_length must be in \[1, 77\]"):
        OpenCLIPTokenizer("ViT-B-32", max_length=78)
    with pytest.raises(ValueError, match="did you mean ViT-B-32"):
        OpenCLIPTokenizer("ViT-B-322")


def test_importing_the_modules_imports_neither_library():
    code = (
        "import sys, mmtrain.encoders.timm_image, mmtrain.encoders.openclip, "
        "mmtrain.data.transforms.open_clip_tokenizer; "
        "print(sorted(m for m in ('timm', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
