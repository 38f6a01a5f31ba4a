"""The BPE tokenizer: training, encode/decode, saved state, the data module and a caption head."""

from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path

import pytest
import torch

from mmtrain.contracts import Features
from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.inputs import ImageInput
from mmtrain.data.shapes import ShapesDataset
from mmtrain.data.targets import TextTarget
from mmtrain.data.transforms.bpe import BPETokenizer
from mmtrain.heads.caption import TransformerCaptionHead
from mmtrain.utils.config_check import check_config
from mmtrain.utils.instantiate import safe_instantiate

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "A man riding a surfboard on a big wave.",
    "Two dogs playing with a frisbee in the park.",
    "A dog catching a frisbee in a grassy park.",
    "A red double decker bus driving down a street.",
    "A bus parked on the side of the street.",
    "A plate of food with broccoli and carrots.",
    "A white plate with a sandwich and some broccoli!",
    "Two men playing tennis on a court.",
    "A woman holding a tennis racket on the court.",
]


def _fit(**kwargs) -> BPETokenizer:
    # Training stops at ~340 ids: no pair of symbols is seen twice any more (min_frequency=2).
    return BPETokenizer(**{"vocab_size": 1000, **kwargs}).fit(CAPTIONS)


def _ids(tok: BPETokenizer, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t, add_special=True).tolist() for t in texts]


# ---- training and the vocabulary ---------------------------------------------------------------
def test_vocabulary_starts_with_the_specials_and_is_deterministic():
    tok = _fit()
    assert tok.fitted and not BPETokenizer().fitted and BPETokenizer().vocab == SPECIALS
    assert tok.vocab[:4] == SPECIALS
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == len(tok.vocab) and 300 < tok.vocab_size < 1000
    assert len(set(tok.vocab)) == tok.vocab_size
    # Frequent words are single tokens (byte-level: "Ġ" is the leading space).
    assert {"Ġa", "Ġman", "Ġriding", "Ġtennis"} <= set(tok.vocab)
    # Same texts, in any order, fitted again: the same vocabulary and ids.
    again = BPETokenizer(vocab_size=1000).fit(list(reversed(CAPTIONS)))
    assert again.vocab == tok.vocab and _ids(again, CAPTIONS) == _ids(tok, CAPTIONS)


def test_min_frequency_and_vocab_size_limit_the_merges():
    assert len(_fit(min_frequency=100).vocab) == 260  # no pair is that frequent: bytes only
    assert len(_fit(vocab_size=270).vocab) == 270
    assert len(_fit(min_frequency=3).vocab) < len(_fit().vocab)
    assert _fit(min_freq=100).vocab == _fit(min_frequency=100).vocab  # WordTokenizer's name


def test_preprocessing_options_are_applied():
    assert _fit().normalize("A dog, running!") == "a dog , running !"
    assert _fit(strip_punctuation=True).normalize("A dog, running!") == "a dog running"
    cased = _fit(lowercase=False)
    assert cased.normalize("A Dog") == "A Dog" and "ĠA" in cased.vocab
    assert "." not in _fit(strip_punctuation=True).vocab[260:]  # no merge with punctuation


# ---- encode / decode -------------------------------------------------------------------------
def test_seen_text_round_trips_to_the_normalised_text():
    for strip in (False, True):
        tok = _fit(strip_punctuation=strip)
        for text in CAPTIONS:
            ids = tok.encode(text)
            assert ids.dtype == torch.long and ids.dim() == 1
            assert tok.decode(ids.tolist()) == tok.normalize(text)
    tok = _fit(strip_punctuation=True)
    assert (
        tok.decode(tok.encode(CAPTIONS[0]).tolist()) == "a man riding a wave on top of a surfboard"
    )
    assert tok.encode("a man riding").tolist() == [
        tok.vocab.index(w) for w in ("Ġa", "Ġman", "Ġriding")
    ]


def test_unseen_words_split_into_known_subwords():
    tok = _fit()
    words = ["surfers", "parking", "broccolis", "frisbees"]  # seen characters, unseen words
    for word in words:
        ids = tok.encode(word).tolist()
        assert len(ids) > 1 and tok.unk_id not in ids, (word, [tok.vocab[i] for i in ids])
        assert tok.decode(ids) == word
    # Even characters never seen in training encode (byte-level), without <unk>.
    ids = tok.encode("Zebra über 42").tolist()
    assert tok.unk_id not in ids and tok.decode(ids) == "zebra über 42"


def test_add_special_truncation_and_decode_stops_at_eos():
    tok = _fit(max_length=5)
    full = _fit().encode(CAPTIONS[2]).tolist()
    assert len(full) > 5
    assert tok.encode(CAPTIONS[2]).tolist() == full[:5]
    assert tok.encode(CAPTIONS[2], add_special=True).tolist() == [2, *full[:3], 3]
    assert tok.encode("").tolist() == [] and tok.encode("", add_special=True).tolist() == [2, 3]
    assert tok.encode("!?", add_special=True).tolist() == [2, *tok.encode("!?").tolist()[:3], 3]
    # <eos> ends the text; specials and out-of-range ids are skipped.
    two = _fit().encode("two dogs").tolist()  # Ġtwo Ġdog s
    assert tok.decode([2, *two, 3, *two]) == "two dogs"
    assert tok.decode([0, 1, *two, 0, tok.vocab_size + 7]) == "two dogs"
    assert tok.decode([]) == "" and tok.decode([3, *two]) == ""
    assert tok.decode(torch.tensor([2, *two, 3])) == "two dogs"
    # Half of a two-byte character (as a model may generate it) is dropped, not shown.
    e_acute = _fit().encode("é").tolist()  # Ġ, then its two bytes: Ã ©
    assert len(e_acute) == 3 and tok.decode([*two, e_acute[-1]]) == "two dogs"


# ---- saved state -------------------------------------------------------------------------------
def test_state_dict_through_json_restores_identical_encodings():
    tok = _fit(strip_punctuation=True)
    state = json.loads(json.dumps(tok.state_dict()))
    assert state == tok.state_dict() and isinstance(state["tokenizer"], str)
    restored = BPETokenizer()  # default normalisation: the state's replaces it
    restored.load_state_dict(state)
    assert restored.fitted and restored.vocab == tok.vocab and restored.strip_punctuation
    texts = [*CAPTIONS, "Surfers, parking über 42!"]
    assert _ids(restored, texts) == _ids(tok, texts)
    assert restored.decode(restored.encode(texts[-1]).tolist()) == "surfers parking über 42"
    # An unfitted tokenizer's state round-trips too.
    empty = BPETokenizer()
    empty.load_state_dict(json.loads(json.dumps(BPETokenizer().state_dict())))
    assert not empty.fitted and empty.vocab == SPECIALS


def test_pickles_for_data_loader_workers():
    tok = _fit(max_length=12)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.vocab == tok.vocab and clone.max_length == 12
    assert _ids(clone, CAPTIONS) == _ids(tok, CAPTIONS)
    assert not pickle.loads(pickle.dumps(BPETokenizer())).fitted


def test_bad_values_and_use_before_fit():
    for kwargs, match in (
        ({"vocab_size": 100}, r"vocab_size must be at least 260.*got 100"),
        ({"max_length": 0}, r"must be positive, got 0, 2"),
        ({"min_frequency": 0}, r"must be positive, got 32, 0"),
        ({"min_freq": 3, "min_frequency": 4}, r"alias of min_frequency.*both: 3, 4"),
    ):
        with pytest.raises(ValueError, match=match):
            BPETokenizer(**kwargs)
    with pytest.raises(ValueError, match="no words"):
        BPETokenizer(strip_punctuation=True).fit(["", "?!"])
    with pytest.raises(RuntimeError, match=r"fit\(\) or load_state_dict\(\)"):
        BPETokenizer().encode("a dog")


def test_coco_caption_bpe_preset(compose_config, tmp_path):
    # The preset's caption node keeps coco_caption's WordTokenizer keys (min_freq): it must
    # still pass the config check and build, also with the usual min_freq override.
    for extra in ([], ["data.targets.caption.tokenizer.min_freq=1"]):
        cfg = compose_config(
            "experiment=coco_caption",
            "data=coco_caption_bpe",
            f"data.root={tmp_path}",
            *extra,
            output_dir=tmp_path,
        )
        check_config(cfg)
        tok = safe_instantiate(cfg.data.targets.caption.tokenizer, "data.targets.caption.tokenizer")
        assert isinstance(tok, BPETokenizer) and tok.target_vocab_size == 8000
        assert tok.strip_punctuation and tok.min_frequency == (1 if extra else 2)


# ---- with the data module and a caption head --------------------------------------------------
def _datamodule(tiny_data: Path) -> MultimodalDataModule:
    dataset = functools.partial(
        ShapesDataset, root=str(tiny_data), num_train=24, num_val=8, num_test=8
    )
    caption = BPETokenizer(vocab_size=1000, max_length=16, strip_punctuation=True)
    return MultimodalDataModule(
        dataset=dataset,
        image=ImageInput(),
        targets={"caption": TextTarget(caption)},
        modalities=["image"],
        tasks=["caption"],
        batch_size=4,
    )


def test_data_module_batches_and_restores_bpe_captions(tiny_data):
    dm = _datamodule(tiny_data)
    dm.setup("fit")
    tok = dm.targets["caption"].tokenizer
    assert tok.fitted and tok.vocab_size > 260
    batch = next(iter(dm.val_dataloader()))
    caption, mask = batch["caption"], batch["caption_mask"]
    assert caption.dtype == torch.long and mask.dtype == torch.bool and caption.shape == mask.shape
    assert caption.shape[0] == 4 and caption.shape[1] <= 16
    assert caption[:, 0].eq(tok.bos_id).all() and caption[~mask].eq(tok.pad_id).all()
    for row, refs in zip(caption.tolist(), batch["caption_references"]):
        assert tok.unk_id not in row and tok.decode(row[1:]) == tok.normalize(refs[0])

    state = json.loads(json.dumps(dm.state_dict()))
    assert state["targets"]["caption"]["tokenizer"]
    restored = _datamodule(tiny_data)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    restored.setup("test")  # a restored tokenizer is used as is
    assert restored.targets["caption"].tokenizer.vocab == tok.vocab
    dm.setup("test")
    for a, b in zip(dm.test_dataloader(), restored.test_dataloader()):
        assert torch.equal(a["caption"], b["caption"])


def test_transformer_caption_head_with_bpe(tiny_data):
    dm = _datamodule(tiny_data)
    dm.setup("fit")
    tok = dm.targets["caption"].tokenizer
    torch.manual_seed(0)
    head = TransformerCaptionHead(
        in_dim=8, vocab_size=tok.vocab_size, tokenizer=tok, pad_id=tok.pad_id, dim=16, num_heads=2
    )
    batch = next(iter(dm.train_dataloader()))
    features = Features(torch.randn(4, 3, 8))
    logits = head(features, batch["caption"], batch["caption_mask"])
    assert logits.shape == (*batch["caption"][:, 1:].shape, tok.vocab_size)
    assert head.loss(logits, batch["caption"], batch["caption_mask"]).isfinite()
    generated = head(features)
    assert generated.shape[0] == 4 and generated.shape[1] <= 16
    captions = head.decode(generated)
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    targets = [[tok.normalize(r) for r in refs] for refs in batch["caption_references"]]
    assert [[c] for c in head.decode(batch["caption"][:, 1:])] == targets
