"""The character tokenizer: vocabulary order, normalisation, round trips, saved state."""

from __future__ import annotations

import json
import pickle
import random

import pytest
import torch

from mmtrain.data.transforms import CharTokenizer
from mmtrain.data.transforms.text import WordTokenizer

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
TEXTS = ["Turn  LEFT at the light", "the light is red\tnow", " stop here "]


def test_specials_and_ids_match_the_word_tokenizer():
    tok = CharTokenizer()
    assert tok.vocab == SPECIALS and tok.vocab_size == 4 and not tok.fitted
    for name in ("pad_id", "unk_id", "bos_id", "eos_id"):
        assert getattr(CharTokenizer, name) == getattr(WordTokenizer, name)


def test_vocabulary_is_characters_by_frequency_then_character():
    tok = CharTokenizer().fit(["ba  b\n", "c a"])
    # normalised: "ba b", "c a": ' ' x2, a x2, b x2, c x1; ties in character order
    assert tok.vocab == [*SPECIALS, " ", "a", "b", "c"]
    assert tok.fitted and tok.vocab_size == 8


def test_vocabulary_does_not_depend_on_text_order():
    shuffled = list(TEXTS)
    random.Random(0).shuffle(shuffled)
    assert CharTokenizer().fit(TEXTS).vocab == CharTokenizer().fit(shuffled).vocab


def test_whitespace_runs_are_one_space_token_and_ends_are_stripped():
    tok = CharTokenizer().fit(TEXTS)
    assert tok.normalize("  Turn\t\tLEFT \n now ") == "turn left now"
    space = tok.vocab.index(" ")
    ids = tok.encode("a  \t s").tolist()
    assert ids == [tok.vocab.index("a"), space, tok.vocab.index("s")]


def test_round_trip_gives_the_normalised_text():
    tok = CharTokenizer().fit(TEXTS)
    for text in [*TEXTS, "Red LIGHT", ""]:
        assert tok.decode(tok.encode(text).tolist()) == tok.normalize(text)
        assert tok.decode(tok.encode(text, add_special=True).tolist()) == tok.normalize(text)


def test_add_special_wraps_and_truncation_keeps_eos():
    tok = CharTokenizer(max_length=5).fit(["abcdef"])
    ids = tok.encode("abcdef", add_special=True).tolist()
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == 5
    assert tok.decode(ids) == "abc"
    assert len(tok.encode("abcdef")) == 5
    assert tok.encode("abcdef").dtype == torch.long


def test_unknown_characters_and_ids():
    tok = CharTokenizer().fit(["ab"])
    assert tok.encode("axb").tolist() == [4, tok.unk_id, 5]
    # specials and ids beyond the vocabulary are skipped; <eos> ends the text
    assert tok.decode([tok.bos_id, 4, tok.unk_id, 99, 5, tok.eos_id, 4]) == "ab"
    assert tok.decode([0, 0]) == ""


def test_decode_normalises_whitespace_from_a_decoder():
    tok = CharTokenizer().fit(["a b"])
    space, a, b = tok.vocab.index(" "), tok.vocab.index("a"), tok.vocab.index("b")
    assert tok.decode([space, a, space, space, b, space]) == "a b"


def test_case_is_kept_without_lowercase():
    tok = CharTokenizer(lowercase=False).fit(["Ab a"])
    assert "A" in tok.vocab and tok.decode(tok.encode("Ab").tolist()) == "Ab"
    assert tok.normalize(" A  b ") == "A b"


def test_min_freq_and_max_vocab():
    tok = CharTokenizer(min_freq=2).fit(["aab", "a"])
    assert tok.vocab == [*SPECIALS, "a"]
    assert tok.encode("b").tolist() == [tok.unk_id]
    assert CharTokenizer(max_vocab=1).fit(["aab"]).vocab == [*SPECIALS, "a"]


def test_state_dict_is_plain_and_restores_the_ids():
    tok = CharTokenizer(lowercase=False).fit(TEXTS)
    state = json.loads(json.dumps(tok.state_dict()))  # plain types only
    fresh = CharTokenizer()  # lowercase=True until the saved state says otherwise
    fresh.load_state_dict(state)
    assert fresh.vocab == tok.vocab and fresh.lowercase is False
    assert torch.equal(fresh.encode("Turn here"), tok.encode("Turn here"))
    clone = pickle.loads(pickle.dumps(tok))  # DataLoader workers under spawn
    assert torch.equal(clone.encode("the light"), tok.encode("the light"))


def test_bad_arguments_and_vocabularies_are_errors():
    with pytest.raises(ValueError, match="must be positive, got 0, 1"):
        CharTokenizer(max_length=0)
    with pytest.raises(ValueError, match="must be positive, got 5, 0"):
        CharTokenizer(max_length=5, min_freq=0)
    with pytest.raises(ValueError, match="max_vocab"):
        CharTokenizer(max_vocab=0)
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="must start with"):
        tok.set_vocab(["a", "<pad>"])
    with pytest.raises(ValueError, match=r"entries \['ab'\]"):
        tok.set_vocab([*SPECIALS, "ab"])
    with pytest.raises(ValueError, match=r"repeats \['a'\]"):
        tok.set_vocab([*SPECIALS, "a", "a"])
