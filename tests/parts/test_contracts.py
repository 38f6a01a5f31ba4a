"""The data side's tokenizers and answer classes are what the heads ask of them
(:class:`mmtrain.contracts.Tokenizer`, :class:`mmtrain.contracts.Answers`): heads depend on
these Protocols, not on ``mmtrain.data`` (the import boundaries in pyproject.toml)."""

from __future__ import annotations

from conftest import synth_answer_vocabulary, synth_caption_tokenizer, synth_transcript_tokenizer

from mmtrain.contracts import Answers, Tokenizer
from mmtrain.data.transforms.bpe import BPETokenizer


def test_every_tokenizer_is_a_tokenizer_and_the_answers_are_answers():
    bpe = BPETokenizer(vocab_size=300).fit(["a red circle", "a small blue square"] * 4)
    for tokenizer in (synth_caption_tokenizer(), synth_transcript_tokenizer(), bpe):
        assert isinstance(tokenizer, Tokenizer), type(tokenizer).__name__
        assert tokenizer.vocab_size > 4 and tokenizer.max_length > 0
    answers = synth_answer_vocabulary()
    assert isinstance(answers, Answers) and not isinstance(answers, Tokenizer)
    assert answers.vocab[answers.unk_id] and answers.vocab_size == len(answers.vocab)


def test_a_part_without_a_member_of_its_protocol_is_named_when_built():
    import pytest

    from mmtrain.build import follows
    from mmtrain.contracts import Head
    from mmtrain.errors import MMTrainError
    from mmtrain.heads.classification import ClassificationHead

    head = ClassificationHead(in_dim=4, num_classes=3)
    assert follows(head, Head, "head.label") is head and not head.unfused

    class MyHead(ClassificationHead):  # a head of one's own that hides the flag
        def __getattribute__(self, name):
            if name == "unfused":
                raise AttributeError(name)
            return super().__getattribute__(name)

    with pytest.raises(MMTrainError, match=r"head\.mine: MyHead lacks unfused of .*\.Head"):
        follows(MyHead(in_dim=4, num_classes=3), Head, "head.mine")
