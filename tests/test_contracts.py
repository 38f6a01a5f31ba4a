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
