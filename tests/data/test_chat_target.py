"""Causal-LM targets: LMTokenizer (an LM's tokenizer and chat template, or a trained
word-level one) and ChatTarget (conversations to ids, labels and generation prompts).

The pretrained tokenizers are built here, tiny and exact: byte-level BPEs (GPT-2's pre-
tokenizer) whose merges spell whole words, so that every expected id sequence below is written
by hand as token strings. One has no chat template (a base LM: mmtrain's fallback template),
the other ChatML's (``<|im_start|>``/``<|im_end|>``, as Qwen's).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from mmtrain.contracts import FEATURE_TOKEN, IGNORE_INDEX, ChatTokenizer, Column
from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.targets import ChatTarget
from mmtrain.data.transforms import LMTokenizer
from mmtrain.errors import MMTrainError

F, X = FEATURE_TOKEN, IGNORE_INDEX
EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Pieces the tokenizers know whole (Ġ: a leading space; Ċ: a newline, a byte symbol).
WORDS = [
    "USER", "ASSISTANT", "Describe", "Ġthe", "Ġimage", "What", "Ġis", "Ġit", "Ġcolor",
    "Ġcat", "Ġdog", "Ġa", "Ġred", "red", "user", "assistant", "system", "Be", "Ġbrief",
    "Answer", "Ġin", "Ġone", "Ġword",
]  # fmt: skip
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _byte_level_bpe(folder: Path, specials: list[str], **kwargs: Any) -> Path:
    """A GPT-2 style tokenizer: the specials, the 256 byte symbols, then :data:`WORDS` merged
    letter by letter; ``kwargs`` go to the transformers tokenizer (special tokens, template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = [*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())]
    merges = []
    for word in WORDS:
        piece = word[0]
        for char in word[1:]:
            merges.append((piece, char))
            piece += char
            if piece not in vocab:
                vocab.append(piece)
    model = models.BPE({t: i for i, t in enumerate(vocab)}, list(dict.fromkeys(merges)))
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **kwargs).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    """A base LM's tokenizer: ``<|endoftext|>`` as bos, eos and unk, no pad, no template."""
    folder = tmp_path_factory.mktemp("gpt2")
    return _byte_level_bpe(folder, [EOT], bos_token=EOT, eos_token=EOT, unk_token=EOT)


@pytest.fixture(scope="module")
def chatml(tmp_path_factory) -> Path:
    """A chat LM's tokenizer (Qwen-like): eos ``<|im_end|>``, pad ``<|endoftext|>``."""
    folder = tmp_path_factory.mktemp("chatml")
    return _byte_level_bpe(
        folder,
        [EOT, IM_START, IM_END],
        eos_token=IM_END,
        pad_token=EOT,
        additional_special_tokens=[IM_START],
        chat_template=CHATML,
    )


def ids_of(tokenizer: LMTokenizer, tokens: list[str | int]) -> list[int]:
    """Token strings to ids (ints, the feature token, pass)."""
    hf = tokenizer.hf_tokenizer
    out = [t if isinstance(t, int) else hf.convert_tokens_to_ids(t) for t in tokens]
    unknown = [t for t, i in zip(tokens, out) if i == hf.unk_token_id and t != hf.unk_token]
    assert not unknown, unknown  # every piece is a token
    return out


def encode(target: ChatTarget, *items: dict[str, Any]) -> dict[str, Any]:
    """Encode and collate ``items`` as the data module does."""
    encoded = [target.encode(item, train=True, inputs={}) for item in items]
    batch = target.collate([e[target.name] for e in encoded])
    batch[f"{target.name}_references"] = [e[f"{target.name}_references"] for e in encoded]
    return batch


def chat_target(tokenizer: LMTokenizer, name: str = "caption", **kwargs: Any) -> ChatTarget:
    target = ChatTarget(tokenizer, **kwargs)
    target.name = name
    return target


LLAVA = [
    {"from": "human", "value": "<image>\nWhat is it?"},
    {"from": "gpt", "value": "a cat"},
    {"from": "human", "value": "What color is it?"},
    {"from": "gpt", "value": "red"},
]


# ---- pretrained tokenizers ---------------------------------------------------------------------
def test_caption_with_the_fallback_template(gpt2):
    tokenizer = LMTokenizer(str(gpt2))
    assert isinstance(tokenizer, ChatTokenizer)
    assert tokenizer.template_name == "mmtrain's fallback template"
    assert tokenizer.eos_id == tokenizer.pad_id == 0 and tokenizer.stop_ids == [0]  # no pad: eos
    assert tokenizer.max_length == 2048  # the tokenizer names no real limit
    target = chat_target(tokenizer, prompt="Describe the image.", results="coco")
    item = {"id": "5", "caption": "a cat", "caption_references": ["a cat", "one cat"]}
    batch = encode(target, item)
    # <|endoftext|>USER: <image>\nDescribe the image.\nASSISTANT: a cat<|endoftext|>\n
    prompt = [EOT, "USER", ":", "Ġ", F, "Ċ", "Describe", "Ġthe", "Ġimage", ".", "Ċ"]
    prompt += ["ASSISTANT", ":"]
    answer = ["Ġa", "Ġcat", EOT]
    assert batch["caption"].tolist() == [ids_of(tokenizer, [*prompt, *answer, "Ċ"])]
    labels = [X] * len(prompt) + ids_of(tokenizer, answer) + [X]
    assert batch["caption_labels"].tolist() == [labels]
    assert batch["caption_mask"].all()
    assert batch["caption_prompt"].tolist() == [ids_of(tokenizer, prompt)]
    assert batch["caption_prompt_mask"].all()
    assert batch["caption_references"] == [["a cat", "one cat"]]
    assert tokenizer.prompt_ids("Describe the image.") == ids_of(tokenizer, prompt)
    assert tokenizer.decode(ids_of(tokenizer, [*answer, "Ġdog"])) == "a cat"  # stops at eos
    facts = target.facts()
    assert facts["prompt"] == "Describe the image." and facts["pad_id"] == 0
    assert facts["vocab_size"] == len(tokenizer.hf_tokenizer) and facts["tokenizer"] is tokenizer


def test_results_files(gpt2, tmp_path):
    rows = [{"id": "5", "caption": "a cat", "caption_references": ["A cat."]}]
    for results, name, text in [
        ("coco", "captions_val.json", '[{"image_id": 5, "caption": "a cat"}]'),
        ("jsonl", "caption_val.jsonl", '{"id": "5", "prediction": "a cat"}\n'),
    ]:
        target = chat_target(LMTokenizer(str(gpt2)), prompt="Describe.", results=results)
        written = target.write(rows, tmp_path, "val")
        assert written.path.name == name and written.path.read_text() == text
    target = chat_target(LMTokenizer(str(gpt2)), prompt="Describe.", results="transcripts")
    written = target.write(rows, tmp_path, "val", normalize=str.lower)
    assert written.path.name == "captions_val.jsonl" and written.value_key == "hypothesis"
    assert '"reference": "a cat.", "hypothesis": "a cat"' in written.path.read_text()


def test_llava_conversation_with_the_chat_template(chatml):
    tokenizer = LMTokenizer(str(chatml))
    assert tokenizer.template_name == f"the chat template of {chatml}"
    im_end, eot = ids_of(tokenizer, [IM_END, EOT])
    assert tokenizer.eos_id == im_end and tokenizer.pad_id == eot
    assert tokenizer.stop_ids == [im_end]  # eos is the end of turn
    target = chat_target(tokenizer, name="conversation")
    batch = encode(target, {"id": "7", "conversation": LLAVA})
    turn1 = [IM_START, "user", "Ċ", F, "Ċ", "What", "Ġis", "Ġit", "?", IM_END, "Ċ"]
    open_ = [IM_START, "assistant", "Ċ"]
    answer1 = ["a", "Ġcat", IM_END]
    turn2 = ["Ċ", IM_START, "user", "Ċ", "What", "Ġcolor", "Ġis", "Ġit", "?", IM_END, "Ċ"]
    answer2 = ["red", IM_END]
    tokens = [*turn1, *open_, *answer1, *turn2, *open_, *answer2, "Ċ"]
    assert batch["conversation"].tolist() == [ids_of(tokenizer, tokens)]
    labels = [X] * len(turn1 + open_) + ids_of(tokenizer, answer1)
    labels += [X] * len(turn2 + open_) + ids_of(tokenizer, answer2) + [X]
    assert batch["conversation_labels"].tolist() == [labels]
    # the generation prompt: up to the last answer, with the assistant's opening
    prompt = [*turn1, *open_, *answer1, *turn2, *open_]
    assert batch["conversation_prompt"].tolist() == [ids_of(tokenizer, prompt)]
    assert batch["conversation_references"] == [["red"]]  # the last answer
    assert tokenizer.decode(ids_of(tokenizer, answer1)) == "a cat"


def test_prompt_is_the_templates_generation_prompt(chatml):
    tokenizer = LMTokenizer(str(chatml))
    hf = tokenizer.hf_tokenizer
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is it? <image>"},
        {"role": "assistant", "content": "a cat"},
    ]
    text = hf.apply_chat_template(turns[:2], tokenize=False, add_generation_prompt=True)
    before, after = text.split("<image>")
    expected = [
        *hf(before, add_special_tokens=False)["input_ids"],
        F,
        *hf(after, add_special_tokens=False)["input_ids"],
    ]
    assert tokenizer.encode_prompt(turns) == expected
    ids, labels = tokenizer.encode_chat(turns)
    assert ids[: len(expected)] == expected  # training sees the prompt generation gets
    assert labels[len(expected) :] == ids_of(tokenizer, ["a", "Ġcat", IM_END, X])[:3] + [X]
    # prompt_ids: one user turn; the placeholder goes first when the prompt has none
    user = {"role": "user", "content": "<image>\nWhat is it?"}
    assert tokenizer.prompt_ids("What is it?") == tokenizer.encode_prompt([user])
    assert F not in tokenizer.prompt_ids("What is it? <image>", features=False)
    with pytest.raises(ValueError, match="more than one"):
        tokenizer.prompt_ids("<image> <image>")


def test_collate_pads_conversations_right_and_prompts_left(chatml):
    tokenizer = LMTokenizer(str(chatml))
    target = chat_target(tokenizer, name="conversation")
    short = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "a cat"}]
    batch = encode(target, {"id": "1", "conversation": LLAVA}, {"id": "2", "conversation": short})
    pad = tokenizer.pad_id
    long_ids, long_prompt = batch["conversation"][0], batch["conversation_prompt"][0]
    n = int(batch["conversation_mask"][1].sum())
    assert batch["conversation_mask"][0].all() and n < len(long_ids)
    assert (batch["conversation"][1, n:] == pad).all()
    assert (batch["conversation_labels"][1, n:] == X).all()
    p = int(batch["conversation_prompt_mask"][1].sum())
    width = len(long_prompt)
    assert batch["conversation_prompt_mask"][1].tolist() == [False] * (width - p) + [True] * p
    assert (batch["conversation_prompt"][1, : width - p] == pad).all()
    # no image: no feature token
    expected = [IM_START, "user", "Ċ", "What", "Ġis", "Ġit", "?", IM_END, "Ċ"]
    expected += [IM_START, "assistant", "Ċ"]
    assert batch["conversation_prompt"][1, width - p :].tolist() == ids_of(tokenizer, expected)
    assert F in batch["conversation"][0].tolist() and F not in batch["conversation"][1].tolist()


def test_configured_template_and_inconsistent_ones(chatml, gpt2):
    tokenizer = LMTokenizer(str(chatml), template=CHATML.replace("\\n' }}{% endif", "' }}{% endif"))
    assert tokenizer.template_name == "the configured template"
    assert (
        tokenizer.encode_prompt([{"role": "user", "content": "red"}])[-1]
        == (ids_of(tokenizer, ["assistant"])[0])
    )
    # the generation prompt is not the start of the rendered answer
    bad = CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>model\\n'")
    with pytest.raises(ValueError, match="the configured template does not render"):
        LMTokenizer(str(chatml), template=bad)
    with pytest.raises(ValueError, match="leaves the answer out"):
        LMTokenizer(str(gpt2), template="{% for m in messages %}{{ m['role'] }}{% endfor %}")


def test_bad_tokenizer_folders_and_arguments(tmp_path):
    with pytest.raises(MMTrainError, match="holds no tokenizer"):
        LMTokenizer(str(tmp_path))
    for bad in ({"max_length": 0}, {"vocab_size": 0}, {"min_freq": 0}, {"template": " "}):
        with pytest.raises(ValueError):
            LMTokenizer(**bad)


# ---- the trained word-level tokenizer ----------------------------------------------------------
def test_trained_word_level_tokenizer():
    tokenizer = LMTokenizer(vocab_size=14, max_length=32)
    assert not tokenizer.fitted and tokenizer.state_dict() == {"tokenizer": None}
    target = chat_target(tokenizer, prompt="Describe the image.")
    values = ["A cat.", "a dog", "A cat on a mat", None]
    target.fit(Column(lambda: [target.read({"caption": v}) for v in values], lambda n: []))
    assert tokenizer.fitted and tokenizer.max_length == 32
    vocab = tokenizer.hf_tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
    # the specials, the template's words, then by frequency (ties alphabetically), 14 in all:
    # the prompt's words count once per conversation
    assert vocab == [
        "<pad>", "<unk>", "<s>", "</s>", "user", ":", "assistant",
        ".", "a", "describe", "image", "the", "cat", "dog",
    ]  # fmt: skip
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.stop_ids) == (0, 3, [3])
    batch = encode(target, {"id": "1", "caption": "A cat on the mat."})
    tokens = ["<s>", "user", ":", F, "describe", "the", "image", ".", "assistant", ":"]
    answer = ["a", "cat", "<unk>", "the", "<unk>", ".", "</s>"]
    assert batch["caption"].tolist() == [ids_of(tokenizer, [*tokens, *answer])]
    assert batch["caption_labels"].tolist() == [[X] * 10 + ids_of(tokenizer, answer)]
    assert tokenizer.decode(batch["caption_labels"][0]) == "a cat the ."
    # the checkpoint carries it: the same ids after a reload
    state = target.state_dict()
    assert set(state) == {"tokenizer"} and state["tokenizer"]["tokenizer"].startswith("{")
    restored = chat_target(LMTokenizer(vocab_size=14, max_length=32), prompt="Describe the image.")
    restored.load_state_dict(state)
    assert restored.fitted and restored.tokenizer.vocab_size == 14
    again = encode(restored, {"id": "1", "caption": "A cat on the mat."})
    assert all(torch.equal(batch[k], again[k]) for k in batch if k != "caption_references")
    clone = pickle.loads(pickle.dumps(target))  # DataLoader workers under spawn
    dog = {"id": "2", "caption": "a dog"}
    assert torch.equal(encode(clone, dog)["caption"], encode(target, dog)["caption"])
    with pytest.raises(ValueError, match="no words"):
        LMTokenizer().fit(["<image>", " "])


# ---- string targets: prompts, answers, results -------------------------------------------------
def test_vqa_most_frequent_answer_and_prompt_from(chatml, tmp_path):
    tokenizer = LMTokenizer(str(chatml))
    target = chat_target(
        tokenizer, name="answer", prompt_from="text", prompt="Answer in one word.",
        answer="most_frequent", results="vqa",
    )  # fmt: skip
    assert target.columns == ["answer", "text"]
    refs = ["Red", "blue", "red!", "blue", "red."]  # normalised: red x3, blue x2
    item = {"id": "42", "text": "What color is it?", "answer": "blue", "answer_references": refs}
    turns = target.turns(item)
    assert turns == [
        {"role": "user", "content": "<image>\nWhat color is it?\nAnswer in one word."},
        {"role": "assistant", "content": "red"},
    ]
    batch = encode(target, item)
    assert batch["answer_references"] == [refs]  # raw
    assert [i for i in batch["answer_labels"][0].tolist() if i != X] == ids_of(
        tokenizer, ["red", IM_END]
    )
    tie = {**item, "answer_references": ["blue", "red"]}
    assert target.turns(tie)[1]["content"] == "blue"  # ties: the first seen
    assert target.turns({**item, "answer_references": []})[1]["content"] == "blue"
    assert target.facts()["prompt"] is None  # it needs the question
    # a prompt with fields is formatted from the item's columns
    fields = chat_target(tokenizer, name="answer", prompt="Q: {text} ({id}) A:")
    assert fields.columns == ["answer", "text", "id"]
    assert fields.turns(item)[0]["content"] == "<image>\nQ: What color is it? (42) A:"
    with pytest.raises(MMTrainError, match="sample 42: no 'text' value"):
        fields.turns({"id": "42", "answer": "red"})
    # results: the VQA file
    rows = [{"id": "42", "answer": "red"}]
    written = target.write(rows, tmp_path, "val")
    assert written.path.name == "answers_val.json" and written.id_key == "question_id"
    assert written.path.read_text() == '[{"question_id": 42, "answer": "red"}]'


def test_bad_arguments(chatml):
    tokenizer = LMTokenizer(str(chatml))
    with pytest.raises(ValueError, match="answer must be"):
        ChatTarget(tokenizer, answer="last")
    with pytest.raises(ValueError, match="results must be"):
        ChatTarget(tokenizer, results="csv")
    with pytest.raises(ValueError, match="fields must name columns"):
        ChatTarget(tokenizer, prompt="{0} a")
    with pytest.raises(ValueError, match="more than one"):
        ChatTarget(tokenizer, prompt="<image> and <image>")


def test_a_text_target_without_a_prompt_is_the_features_alone(chatml):
    """LLaVA's "plain" alignment format: the user turn holds the placeholder only."""
    tokenizer = LMTokenizer(str(chatml))
    target = chat_target(tokenizer)  # text target, no prompt
    assert target.user_text({"id": "3", "caption": "a cat"}) == "<image>"
    assert target.facts()["prompt"] == ""
    assert tokenizer.prompt_ids("") == tokenizer.encode_prompt(
        [{"role": "user", "content": "<image>"}]
    )


# ---- truncation and bad samples ---------------------------------------------------------------
def test_truncation_warns_once_and_a_too_long_prompt_is_an_error(chatml, caplog):
    tokenizer = LMTokenizer(str(chatml), max_length=20)
    target = chat_target(tokenizer, name="conversation")
    item = {"id": "9", "conversation": LLAVA}  # 33 ids and the feature position
    with caplog.at_level(logging.WARNING, logger="mmtrain.data.targets.chat"):
        batch = encode(target, item, {**item, "id": "10"})
    assert caplog.text.count("truncated") == 1 and "sample 9 has 33" in caplog.text
    assert batch["conversation"].shape == (2, 21)  # 20 ids and the feature position
    # the first answer and the start of the second user turn are left
    labels = ids_of(tokenizer, ["a", "Ġcat", IM_END]) + [X] * 4
    assert batch["conversation_labels"][:, 14:].tolist() == [labels, labels]
    assert batch["conversation_prompt_mask"].sum(dim=1).tolist() == [20, 20]  # the last 20
    assert F not in batch["conversation_prompt"][0].tolist()
    assert batch["conversation_prompt"][0, -3:].tolist() == ids_of(
        tokenizer, [IM_START, "assistant", "Ċ"]
    )
    short = LMTokenizer(str(chatml), max_length=13)  # the first prompt has 13 ids
    with pytest.raises(MMTrainError, match="sample 9: the prompt of conversation has 13 ids"):
        chat_target(short, name="conversation").encode(item, True, {})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([{"from": "human", "value": "<image>\nhi"}], "has no assistant"),
        (
            [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "a"}],
            "has 2 <image> placeholders",
        ),
        (
            [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "<image>"}],
            "holds the <image> placeholder",
        ),
        ([{"from": "bot", "value": "hi"}, {"from": "gpt", "value": "a"}], "the role 'bot'"),
        ([{"role": "user"}, {"role": "assistant", "content": "a"}], "turn 0 .* has no text"),
        (["hi"], "turn 0 of conversation is not a dict"),
        ({"a": 1}, "must be a string or a list of turns"),
        ([{"from": "system", "value": "hi"}, {"from": "gpt", "value": "a"}], "starts with an"),
    ],
)
def test_bad_conversations_name_the_sample(chatml, value, message):
    target = chat_target(LMTokenizer(str(chatml)), name="conversation")
    with pytest.raises(MMTrainError, match=f"sample 11: .*{message}"):
        target.encode({"id": "11", "conversation": value}, True, {})
    assert target.read({"conversation": value}) is None  # left out of fitting


def test_lengths_are_about_the_ids(chatml):
    target = chat_target(LMTokenizer(str(chatml), max_length=30), prompt_from="text")
    columns = {"caption": ["a cat", LLAVA, None], "text": ["What is it?", None, None]}
    assert target.bucketable
    # words and marks (2 + 4) and 8 for the template; LLaVA's: 4 a turn, 31 capped at 30
    assert target.lengths(columns.__getitem__, None) == [2 + 4 + 8, 30.0, 0.0]


# ---- the data module opens the target's columns ------------------------------------------------
class _Rows:
    """A data set of dict rows that records the columns it is opened with."""

    opened: list[list[str]] = []

    def __init__(self, split: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        _Rows.opened.append(list(columns))
        self.rows, self.columns = rows, sorted({k for r in rows for k in r} - {"id"})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def values(self, column: str) -> list[Any]:
        return [r.get(column) for r in self.rows]


def test_data_module_opens_and_checks_the_prompt_column(chatml):
    rows = [{"id": "1", "answer": "red", "text": "What color is it?", "other": 1}]
    target = ChatTarget(LMTokenizer(), prompt_from="text")
    datamodule = MultimodalDataModule(
        lambda split, columns: _Rows(split, columns, rows),
        targets={"answer": target},
        tasks=["answer"],
        batch_size=1,
    )
    datamodule.setup("fit")
    assert _Rows.opened[-1] == ["answer", "text"]
    assert target.tokenizer.fitted
    vocab = target.tokenizer.hf_tokenizer.get_vocab()
    assert {"what", "color", "red", "?"} <= set(vocab)  # questions and answers
    batch = next(iter(datamodule.train_dataloader()))
    assert {"answer", "answer_labels", "answer_prompt", "answer_prompt_mask"} <= set(batch)
    lacking = [{"id": "1", "answer": "red"}]
    datamodule = MultimodalDataModule(
        lambda split, columns: _Rows(split, columns, lacking),
        targets={"answer": ChatTarget(LMTokenizer(), prompt_from="text")},
        tasks=["answer"],
    )
    with pytest.raises(MMTrainError, match=r"head/answer needs a 'text' column \(data.targets"):
        datamodule.setup("fit")
