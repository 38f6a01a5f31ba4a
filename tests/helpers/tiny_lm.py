"""Tiny random causal language models in their real folder layout, for the causal-LM head.

:func:`tiny_gpt2_lm` writes a GPT-2 style base LM (byte-level BPE, ``<|endoftext|>`` as bos,
eos and unk, no pad token, no chat template); :func:`tiny_llama_lm` a Llama-style one (a
SentencePiece-like BPE with ``<s>``, ``</s>``, ``<unk>``, ``<pad>``, and ChatML's
``<|im_start|>``/``<|im_end|>`` with a ChatML chat template). Each ``save_pretrained``s the model
(seeded weights, safetensors), its ``generation_config.json`` and its tokenizer into ``folder``
(created) and returns it; nothing is downloaded. The tokenizers are BPEs trained on a small
fixed corpus over :data:`helpers.tiny_hf.WORDS`, so a folder is the same every time it is
written. The LMs' vocabularies are the tokenizer's rounded up to a multiple of 8 (as real
checkpoints pad theirs), and their weights are drawn wider than transformers' default (std
``INIT``) so that greedy decoding has clear winners rather than near ties.

:class:`TinyChatTokenizer` is a test-local :class:`mmtrain.contracts.ChatTokenizer` on top of such
a folder's tokenizer (a plain ``USER: ...\\nASSISTANT:`` format with :data:`FEATURE_TOKEN`
first), and :func:`chat_batch` builds a causal-LM target's batch keys from
``(prompt, answer, features)`` samples with it, so that head tests need no data-side code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from helpers.tiny_hf import WORDS
from mmtrain.contracts import FEATURE_TOKEN, IGNORE_INDEX

HIDDEN = 32  # the LMs' width
LAYERS = 2
MAX_POSITIONS = 128
INIT = 0.3  # std of the random weights (transformers' default 0.02 gives near-uniform logits)
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + [
    "USER: describe the photo.\nASSISTANT: a red cat sat on the mat.",
    "what is on the mat? yes, no, 2 cats. user assistant system",
]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---- tokenizers --------------------------------------------------------------------------------
def gpt2_tokenizer() -> Any:
    """A GPT-2 style byte-level BPE (``PreTrainedTokenizerFast``): ``<|endoftext|>`` is bos,
    eos and unk; no pad token, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end, model_max_length=128
    )


def llama_tokenizer() -> Any:
    """A Llama-style BPE over characters with SentencePiece's ``▁`` word marks
    (``PreTrainedTokenizerFast``): ``<s>``, ``</s>``, ``<unk>``, ``<pad>``, and ChatML's
    ``<|im_start|>``/``<|im_end|>`` as special tokens; :data:`CHATML` as its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHATML,
        model_max_length=128,
    )


# ---- models ------------------------------------------------------------------------------------
def _rows(tokenizer: Any) -> int:
    """The LM's vocabulary: the tokenizer's, rounded up to a multiple of 8."""
    return -(-len(tokenizer) // 8) * 8


def _save(build: Any, config: Any, tokenizer: Any, folder: Path) -> Path:
    """Seeded weights of ``build(config)``, its generation config and ``tokenizer`` into
    ``folder``."""
    import torch
    from transformers import GenerationConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_gpt2_lm(folder: Path) -> Path:
    """A ``GPT2LMHeadModel`` (width 32, 2 layers, 2 heads, 128 positions, tied embeddings) with
    the :func:`gpt2_tokenizer`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = gpt2_tokenizer()
    end = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=_rows(tokenizer),
        n_positions=MAX_POSITIONS,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=2,
        initializer_range=INIT,
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=None,
    )
    return _save(GPT2LMHeadModel, config, tokenizer, folder)


def tiny_llama_lm(folder: Path) -> Path:
    """A ``LlamaForCausalLM`` (width 32, 2 layers, 4 heads sharing 2 key/value heads, RoPE,
    128 positions, untied output) with the :func:`llama_tokenizer` and its ChatML template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = llama_tokenizer()
    config = LlamaConfig(
        vocab_size=_rows(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save(LlamaForCausalLM, config, tokenizer, folder)


BUILDERS = {"gpt2": tiny_gpt2_lm, "llama": tiny_llama_lm}


def add_remote_code(folder: Path) -> Path:
    """Mark ``folder``'s ``config.json`` as needing remote code (an ``auto_map`` entry)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    path.write_text(json.dumps(config, indent=2))
    return folder


# ---- a chat tokenizer --------------------------------------------------------------------------
class TinyChatTokenizer:
    """A :class:`mmtrain.contracts.ChatTokenizer` over a tiny LM folder's tokenizer, for head
    tests: a prompt is ``[FEATURE_TOKEN] + ids("USER: <prompt>\\nASSISTANT:")``, an answer
    ``ids(" <answer>")`` and the eos id. Stops at eos and, when the tokenizer has it,
    ``<|im_end|>``; pads with the pad token, else eos.

    Args:
        folder: an LM folder from :func:`tiny_gpt2_lm` or :func:`tiny_llama_lm`.
        max_length: the most ids of a conversation.
    """

    def __init__(self, folder: Path, max_length: int = 64) -> None:
        from transformers import AutoTokenizer

        self._hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.eos_id = int(self._hf.eos_token_id)
        pad = self._hf.pad_token_id
        self.pad_id = self.eos_id if pad is None else int(pad)
        end = self._hf.get_vocab().get("<|im_end|>")
        self.stop_ids = [self.eos_id] + ([int(end)] if end is not None else [])
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return len(self._hf)

    @property
    def hf_tokenizer(self) -> Any:
        return self._hf

    def text_ids(self, text: str) -> list[int]:
        """The ids of ``text``, no special tokens added."""
        return list(self._hf.encode(text, add_special_tokens=False))

    def prompt_ids(self, prompt: str, features: bool = True) -> list[int]:
        """``[FEATURE_TOKEN]`` (with ``features``) and the ids of the one-turn prompt."""
        head = [FEATURE_TOKEN] if features else []
        return head + self.text_ids(f"USER: {prompt}\nASSISTANT:")

    def answer_ids(self, answer: str) -> list[int]:
        """The ids of an answer and the eos id that ends it."""
        return self.text_ids(f" {answer}") + [self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=True).strip()


def chat_batch(
    tokenizer: TinyChatTokenizer, samples: list[tuple[str, str, bool]], task: str = "caption"
) -> dict[str, Any]:
    """A causal-LM target's batch keys for ``(prompt, answer, features)`` samples.

    Returns:
        ``task`` (B, L) right-padded prompt + answer ids, ``task_mask``, ``task_labels`` (the
        answer ids and eos, :data:`IGNORE_INDEX` elsewhere), ``task_prompt`` (B, P) left-padded
        prompts, ``task_prompt_mask`` and ``task_references`` (the answers).
    """
    import torch

    rows, labels, prompts = [], [], []
    for prompt, answer, features in samples:
        asked, said = tokenizer.prompt_ids(prompt, features), tokenizer.answer_ids(answer)
        rows.append(asked + said)
        labels.append([IGNORE_INDEX] * len(asked) + said)
        prompts.append(asked)
    length, width = max(map(len, rows)), max(map(len, prompts))
    pad = tokenizer.pad_id

    def right(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (length - len(values))

    def left(values: list[int], fill: Any) -> list[Any]:
        return [fill] * (width - len(values)) + values

    return {
        task: torch.tensor([right(r, pad) for r in rows]),
        f"{task}_mask": torch.tensor([right([True] * len(r), False) for r in rows]),
        f"{task}_labels": torch.tensor([right(r, IGNORE_INDEX) for r in labels]),
        f"{task}_prompt": torch.tensor([left(p, pad) for p in prompts]),
        f"{task}_prompt_mask": torch.tensor([left([True] * len(p), False) for p in prompts]),
        f"{task}_references": [[answer] for _, answer, _ in samples],
    }


# shapes_llm's random LM shrunk (head.caption.config): grouped-query attention, so k/v are
# narrower than q/o; tied embeddings
SMALL_LM = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}
