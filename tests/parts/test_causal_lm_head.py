"""The causal-LM head (``mmtrain/heads/causal_lm.py``) on tiny random LMs (:mod:`helpers.tiny_lm`,
GPT-2 and Llama style, in their real folder layout) against plain transformers: the splice and
its labels against hand-built sequences, the loss against the LM called directly on them, and
batched generation against ``generate`` run on each sample alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_lm
from helpers.tiny_lm import TinyChatTokenizer

from mmtrain.contracts import FEATURE_TOKEN, IGNORE_INDEX, ChatTokenizer, Features, Head
from mmtrain.heads.causal_lm import CausalLMHead
from mmtrain.metrics.caption import CaptionMetrics
from mmtrain.utils.hub import materialize

transformers = pytest.importorskip("transformers")

IN_DIM = 16  # the fused width
LMS = ["gpt2", "llama"]
# (prompt, answer, features): prompts of different lengths, one sample without features
SAMPLES = [
    ("describe the photo.", "a red cat", True),
    ("what is on the mat?", "the dog sat on the mat", True),
    ("is the cat red?", "no", False),
]
FEATURE_MASK = [[1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0]]  # row 1: not a prefix


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tiny LMs, written once for the module."""
    root = tmp_path_factory.mktemp("lms")
    return {name: build(root / name) for name, build in tiny_lm.BUILDERS.items()}


@pytest.fixture(scope="module")
def tokenizers(lms: dict[str, Path]) -> dict[str, TinyChatTokenizer]:
    return {name: TinyChatTokenizer(folder) for name, folder in lms.items()}


def make_head(folder: Path, tokenizer: Any = None, **kwargs: Any) -> CausalLMHead:
    """The head of an LM folder, its projector seeded (the same whatever ran before)."""
    tokenizer = tokenizer or TinyChatTokenizer(folder)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return CausalLMHead(IN_DIM, tokenizer, str(folder), **kwargs)


def features(n: int = 3, seed: int = 0) -> Features:
    generator = torch.Generator().manual_seed(seed)
    return Features(
        torch.randn(n, 4, IN_DIM, generator=generator), torch.tensor(FEATURE_MASK[:n]).bool()
    )


def hand_rows(
    head: CausalLMHead,
    tok: TinyChatTokenizer,
    samples: list[tuple[str, str, bool]],
    feats: Features,
    answers: bool = True,
) -> list[tuple[torch.Tensor, list[int]]]:
    """Each sample's LM inputs built by hand: its real projected feature tokens, then the
    embedded prompt and (with ``answers``) answer ids; and its labels (the answer ids and
    eos)."""
    embed = head.lm.get_input_embeddings()
    projected = head.projector(feats.tokens)
    rows = []
    for b, (prompt, answer, has) in enumerate(samples):
        text = tok.text_ids(f"USER: {prompt}\nASSISTANT:")
        said = tok.answer_ids(answer) if answers else []
        parts, labels = [], []
        if has:
            parts.append(projected[b, feats.mask[b]])
            labels += [IGNORE_INDEX] * int(feats.mask[b].sum())
        parts.append(embed(torch.tensor(text + said)))
        labels += [IGNORE_INDEX] * len(text) + said
        rows.append((torch.cat(parts), labels))
    return rows


# ---- splicing and the loss ---------------------------------------------------------------------
def test_splice_masks_exactly(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]
) -> None:
    """A hand-built batch: features in the middle of row 0, masked feature tokens dropped in row
    1, none in row 2; labels only on the answers, padding on the right (left for prompts)."""
    tok = tokenizers["gpt2"]
    head = make_head(lms["gpt2"], tok).eval()
    # (ids before the features, features?, prompt ids after them, answer ids and eos)
    rows = [
        (
            tok.text_ids("USER:"),
            True,
            tok.text_ids(" the photo.\nASSISTANT:"),
            tok.answer_ids("a cat"),
        ),
        ([], True, tok.text_ids("USER: what is on the mat?\nASSISTANT:"), tok.answer_ids("a dog")),
        ([], False, tok.text_ids("USER: is it?\nASSISTANT:"), tok.answer_ids("no")),
    ]
    seqs = [a + [FEATURE_TOKEN] * f + b + c for a, f, b, c in rows]
    width = max(map(len, seqs))
    ids = torch.full((3, width), tok.pad_id)
    mask = torch.zeros(3, width, dtype=torch.bool)
    labels = torch.full((3, width), IGNORE_INDEX)
    for i, (seq, (*_, answer)) in enumerate(zip(seqs, rows)):
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), True
        labels[i, len(seq) - len(answer) : len(seq)] = torch.tensor(answer)
    feats = features()  # real feature tokens: row 0 all 4, row 1 the 1st and 3rd
    with torch.no_grad():
        spliced = head.splice(feats, ids, mask, labels)
        embed = head.lm.get_input_embeddings()
        projected = head.projector(feats.tokens)
        real = [projected[0], projected[1, [0, 2]], projected[2, :0]]
        expected = [
            torch.cat(
                [embed(torch.tensor(a, dtype=torch.long)), real[i], embed(torch.tensor(b + c))]
            )
            for i, (a, _, b, c) in enumerate(rows)
        ]
        pad = embed(torch.tensor(tok.pad_id))
    expected_labels = [
        [IGNORE_INDEX] * (len(a) + len(r) + len(b)) + c for (a, _, b, c), r in zip(rows, real)
    ]
    size = max(map(len, expected))
    assert spliced.embeds.shape == (3, size, head.lm.config.hidden_size)
    assert spliced.spliced == 2
    for i, (embeds, row_labels) in enumerate(zip(expected, expected_labels)):
        n = len(embeds)
        assert torch.allclose(spliced.embeds[i, :n], embeds, atol=1e-6)
        assert torch.allclose(spliced.embeds[i, n:], pad.expand(size - n, -1))
        assert spliced.labels[i].tolist() == row_labels + [IGNORE_INDEX] * (size - n)
        assert spliced.attention_mask[i].tolist() == [1] * n + [0] * (size - n)
        assert spliced.position_ids[i, :n].tolist() == list(range(n))
    # Generation prompts: padded on the left, positions counted from the first real one.
    prompts = tiny_lm.chat_batch(tok, SAMPLES)
    with torch.no_grad():
        left = head.splice(
            feats, prompts["caption_prompt"], prompts["caption_prompt_mask"], left=True
        )
    lengths = [  # the prompt's ids, FEATURE_TOKEN replaced by the real feature tokens
        len(tok.prompt_ids(p, features=False)) + (int(feats.mask[i].sum()) if has else 0)
        for i, (p, _, has) in enumerate(SAMPLES)
    ]
    size = max(lengths)
    for i, n in enumerate(lengths):
        assert left.attention_mask[i].tolist() == [0] * (size - n) + [1] * n
        assert left.position_ids[i].tolist() == [0] * (size - n) + list(range(n))
    assert left.labels is None


def test_loss_is_the_lms_on_hand_spliced_inputs(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]
) -> None:
    tok = tokenizers["llama"]
    head = make_head(lms["llama"], tok).eval()
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    feats = features()
    with torch.no_grad():
        outputs = head(
            feats, batch["caption"], batch["caption_mask"], labels=batch["caption_labels"]
        )
        rows = hand_rows(head, tok, SAMPLES, feats)
        size = max(len(e) for e, _ in rows)
        embeds = torch.zeros(3, size, head.lm.config.hidden_size)
        attention = torch.zeros(3, size, dtype=torch.long)
        labels = torch.full((3, size), IGNORE_INDEX)
        for b, (row, row_labels) in enumerate(rows):
            embeds[b, : len(row)], attention[b, : len(row)] = row, 1
            labels[b, : len(row)] = torch.tensor(row_labels)
        logits = head.lm(inputs_embeds=embeds, attention_mask=attention).logits
    expected = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    loss = head.loss(outputs, batch["caption"], batch["caption_mask"])
    assert torch.allclose(loss, expected, atol=1e-5)
    real = attention.bool()
    assert torch.allclose(outputs.logits[real], logits[real], atol=1e-5)


def test_batch_without_labels_or_features(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]
) -> None:
    """Nothing labelled: a zero loss, not nan; no feature token spliced anywhere (no
    placeholder, or all feature tokens masked): the projector still gets a (zero) gradient, so
    DDP sees every parameter used."""
    tok = tokenizers["gpt2"]
    head = make_head(lms["gpt2"], tok)
    samples = [(p, a, False) for p, a, _ in SAMPLES]
    batch = tiny_lm.chat_batch(tok, samples)
    outputs = head(
        features(), batch["caption"], batch["caption_mask"], labels=batch["caption_labels"]
    )
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)
    assert all(p.grad is not None and not p.grad.any() for p in head.projector.parameters())
    head.zero_grad(set_to_none=True)  # placeholders whose feature tokens are all masked
    batch_with = tiny_lm.chat_batch(tok, SAMPLES)
    masked = Features(features().tokens, torch.zeros(3, 4, dtype=torch.bool))
    loss = head(
        masked,
        batch_with["caption"],
        batch_with["caption_mask"],
        labels=batch_with["caption_labels"],
    ).loss
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in head.projector.parameters())
    nothing = torch.full_like(batch["caption_labels"], IGNORE_INDEX)
    outputs = head(features(), batch["caption"], batch["caption_mask"], labels=nothing)
    assert outputs.loss.item() == 0.0
    with pytest.raises(ValueError, match="labels"):
        head.loss(head(features(), batch["caption"], batch["caption_mask"]), batch["caption"])


# ---- generation --------------------------------------------------------------------------------
@pytest.mark.parametrize("beams", [1, 2])
@pytest.mark.parametrize("lm", LMS)
def test_batched_generation_equals_per_sample_generate(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer], lm: str, beams: int
) -> None:
    """Left-padded batched generation gives what HF ``generate`` gives each sample alone (its
    own hand-spliced inputs_embeds, no padding)."""
    tok = tokenizers[lm]
    head = make_head(lms[lm], tok, max_new_tokens=6, beam_size=beams).eval()
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    feats = features()
    ids = head.generate(feats, batch["caption_prompt"], batch["caption_prompt_mask"])
    texts = head.predict(
        feats, prompt=batch["caption_prompt"], prompt_mask=batch["caption_prompt_mask"]
    )
    with torch.no_grad():
        rows = hand_rows(head, tok, SAMPLES, feats, answers=False)
    assert len({len(embeds) for embeds, _ in rows}) == 3  # padded to the longest
    for b, (embeds, _) in enumerate(rows):
        embeds = embeds[None]
        alone = head.lm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=6,
            num_beams=beams,
            do_sample=False,
            eos_token_id=tok.stop_ids,
            pad_token_id=tok.pad_id,
        )[0].tolist()
        got = ids[b].tolist()
        assert got[: len(alone)] == alone
        assert all(i == tok.pad_id for i in got[len(alone) :])
        end = next((i for i, t in enumerate(alone) if t in tok.stop_ids), len(alone))
        assert texts[b] == tok.decode(alone[:end])


def test_stop_strings_end_generation(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]
) -> None:
    tok = tokenizers["llama"]
    head = make_head(lms["llama"], tok, max_new_tokens=8, prompt="describe the photo.").eval()
    feats = features(1)
    free = head.generate(feats)[0].tolist()
    words = [(tok.hf_tokenizer.convert_ids_to_tokens(i) or "").lstrip("▁") for i in free]
    at = next(
        j
        for j in range(2, len(free))
        if words[j].isalpha() and words[j] not in tok.hf_tokenizer.decode(free[:j])
    )
    head.stop = [words[at]]
    stopped = head.generate(feats)[0].tolist()
    assert stopped == free[: at + 1]
    assert head.predict(feats) == [tok.decode(free[:at])]


def test_contracts(lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]) -> None:
    assert isinstance(tokenizers["llama"], ChatTokenizer)
    head = make_head(lms["llama"], tokenizers["llama"])
    assert isinstance(head, Head) and not head.unfused
    assert head.batch_keys == ("labels", "prompt", "prompt_mask")
    assert head.NO_WEIGHTS is False and len(head.blocks()) == 2


def test_sampling(lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]) -> None:
    """Sampling with a temperature and nucleus, no top-k cut; the same under the same seed."""
    tok = tokenizers["llama"]
    head = make_head(lms["llama"], tok, do_sample=True, temperature=0.7, top_p=0.9).eval()
    kwargs = head.generation_kwargs()
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"]) == (0.7, 0.9, 0)
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    prompt = (batch["caption_prompt"], batch["caption_prompt_mask"])
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        runs.append(head.generate(features(), *prompt))
    assert torch.equal(*runs)


def test_prompt_is_needed(lms: dict[str, Path]) -> None:
    head = make_head(lms["gpt2"]).eval()
    with pytest.raises(ValueError, match="give prompt="):
        head.predict(features())
    head.prompt = "describe the photo."
    assert len(head.predict(features())) == 3


# ---- training modes ----------------------------------------------------------------------------
def test_frozen_lm_trains_only_the_projector(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]
) -> None:
    tok = tokenizers["gpt2"]
    head = make_head(lms["gpt2"], tok).train()
    assert head.lm.training  # trainable: dropout on
    head.lm.requires_grad_(False)
    head.train()
    assert not head.lm.training and head.projector.training
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    args = (features(), batch["caption"], batch["caption_mask"])
    outputs = head(*args, labels=batch["caption_labels"])
    outputs.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.projector.parameters())
    assert all(p.grad is None for p in head.lm.parameters())
    # a frozen LM has no dropout: the same logits twice in training mode
    again = head(*args, labels=batch["caption_labels"])
    assert torch.equal(outputs.logits, again.logits)


def test_projector_learns_a_batch(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]
) -> None:
    """A few steps on the projector alone (frozen LM) lower the loss of a batch."""
    tok = tokenizers["llama"]
    head = make_head(lms["llama"], tok, projector="linear")
    head.lm.requires_grad_(False)
    head.train()
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    optimizer = torch.optim.Adam(head.projector.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        loss = head(
            features(), batch["caption"], batch["caption_mask"], labels=batch["caption_labels"]
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_gradient_checkpointing_of_a_frozen_lm(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]
) -> None:
    """The frozen LM's layers are recomputed in backward (their sub-modules run again; the
    recompute stops early, so a pre-hook counts them), with the same loss and projector
    gradients as without checkpointing."""
    tok = tokenizers["llama"]
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    grads, losses = [], []
    for checkpointing in (False, True):
        head = make_head(lms["llama"], tok, gradient_checkpointing=checkpointing)
        head.lm.requires_grad_(False)
        head.train()
        calls: list[int] = []
        head.blocks()[0].mlp.register_forward_pre_hook(lambda *_, c=calls: c.append(1))
        outputs = head(
            features(), batch["caption"], batch["caption_mask"], labels=batch["caption_labels"]
        )
        outputs.loss.backward()
        assert len(calls) == (2 if checkpointing else 1)
        losses.append(outputs.loss.detach())
        grads.append([p.grad for p in head.projector.parameters()])
    assert torch.allclose(losses[0], losses[1])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


# ---- errors ------------------------------------------------------------------------------------
def test_remote_code_is_refused(lms: dict[str, Path], tmp_path: Path) -> None:
    folder = tiny_lm.add_remote_code(Path(shutil.copytree(lms["gpt2"], tmp_path / "remote")))
    with pytest.raises(ValueError, match="trust_remote_code.*never runs code"):
        make_head(folder, TinyChatTokenizer(lms["gpt2"]))


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message of a machine without CUDA"
)
def test_quantize_without_cuda(lms: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="quantize=4bit needs a CUDA GPU"):
        make_head(lms["llama"], quantize="4bit")


class _BigTokenizer(TinyChatTokenizer):
    @property
    def vocab_size(self) -> int:
        return 10_000


def test_bad_settings(lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]) -> None:
    with pytest.raises(ValueError, match="tokenizer has 10000 ids but the LM's embeddings have"):
        make_head(lms["gpt2"], _BigTokenizer(lms["gpt2"]))
    with pytest.raises(ValueError, match="quantize must be"):
        make_head(lms["gpt2"], quantize="2bit")
    with pytest.raises(ValueError, match="projector must be"):
        make_head(lms["gpt2"], projector="mlp3")
    with pytest.raises(ValueError, match="metrics must be"):
        make_head(lms["gpt2"], metrics="bleu")
    with pytest.raises(ValueError, match=r"transformer.wte.weight is \(320, 32\) in the weights"):
        make_head(lms["gpt2"], config={"vocab_size": 400})
    with pytest.raises(ValueError, match="not keys of a gpt2 config"):
        make_head(lms["gpt2"], config={"hiden_size": 8})
    with pytest.raises(ValueError, match="set model_name_or_path"):
        CausalLMHead(IN_DIM, tokenizers["gpt2"])
    with pytest.raises(ValueError, match="model_type must be"):
        CausalLMHead(IN_DIM, tokenizers["gpt2"], config={"model_type": "no_such_lm"})
    tok = tokenizers["gpt2"]
    head = make_head(lms["gpt2"], tok)
    two = torch.tensor([[FEATURE_TOKEN, 5, FEATURE_TOKEN, 6]])
    with pytest.raises(ValueError, match="row 0 of the batch has 2 feature positions"):
        head.splice(features(1), two)


def test_sequences_beyond_the_lms_positions(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer], caplog
) -> None:
    """RoPE weights fit any length, so config may shorten the context: a spliced training
    sequence beyond it is truncated from the end with one warning naming the lengths (the
    labels cut with it); a prompt beyond it is an error, in generation too."""
    tok = tokenizers["llama"]
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    head = make_head(lms["llama"], tok, config={"max_position_embeddings": 8})
    args = (features(), batch["caption"], batch["caption_mask"])
    spliced = head.splice(*args, labels=batch["caption_labels"])
    full = make_head(lms["llama"], tok).splice(*args, labels=batch["caption_labels"])
    assert spliced.embeds.shape[1] == 8 < full.embeds.shape[1]
    torch.testing.assert_close(spliced.embeds, full.embeds[:, :8])
    assert torch.equal(spliced.labels, full.labels[:, :8])
    assert "truncated from the end" in caplog.text and "max_position_embeddings=8" in caplog.text
    with caplog.at_level("WARNING"):
        caplog.clear()
        head.splice(*args, labels=batch["caption_labels"])
    assert "truncated" not in caplog.text  # warned once
    with pytest.raises(
        ValueError,
        match=r"has \d+ positions \(\d+ ids and \d feature tokens\).* max_position_embeddings=8",
    ):
        head.splice(*args)  # no labels: a prompt, not cut
    prompt = batch["caption_prompt"][:, -5:]  # 5 ids, no features: 5 + 8 > 12
    head = make_head(lms["llama"], tok, config={"max_position_embeddings": 12}, max_new_tokens=8)
    with pytest.raises(ValueError, match="max_new_tokens=8 exceed .* max_position_embeddings=12"):
        head.generate(features(), prompt)


# ---- rebuilding --------------------------------------------------------------------------------
@pytest.mark.parametrize("lm", LMS)
def test_model_files_rebuild_the_head(
    lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer], lm: str, tmp_path: Path
) -> None:
    """A checkpoint's rebuild: the model files written to a folder, pretrained=False, then the
    state_dict: the same logits and the same generations."""
    tok = tokenizers[lm]
    head = make_head(lms[lm], tok, max_new_tokens=4).eval()
    files = head.model_files
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= set(files)
    assert not any(name.endswith(".safetensors") for name in files)
    folder = materialize(files, tmp_path / "rebuilt")
    rebuilt = CausalLMHead(
        IN_DIM,
        TinyChatTokenizer(folder),
        str(folder),
        pretrained=CausalLMHead.NO_WEIGHTS,
        max_new_tokens=4,
    ).eval()
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    args = (features(), batch["caption"], batch["caption_mask"])
    with torch.no_grad():
        assert not torch.allclose(head(*args).logits, rebuilt(*args).logits)  # random weights
        rebuilt.load_state_dict(head.state_dict())
        assert torch.equal(head(*args).logits, rebuilt(*args).logits)
    assert rebuilt.lm.generation_config.eos_token_id == head.lm.generation_config.eos_token_id
    prompt = (batch["caption_prompt"], batch["caption_prompt_mask"])
    assert torch.equal(head.generate(features(), *prompt), rebuilt.generate(features(), *prompt))


def test_preprocessing_names_the_lm_folder(lms: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(lms["llama"], store / "org" / "tiny-llama")
    keys = CausalLMHead.preprocessing(
        model_name_or_path="org/tiny-llama", model_dir=str(store), beam_size=2
    )
    assert keys == {"tokenizer": {"name_or_path": str(store / "org" / "tiny-llama")}}
    assert CausalLMHead.preprocessing(model_name_or_path=None, config={"model_type": "llama"}) == {}


def test_random_lm_from_config(tokenizers: dict[str, TinyChatTokenizer]) -> None:
    tok = tokenizers["llama"]
    sizes = {
        "hidden_size": 48,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    head = CausalLMHead(
        IN_DIM,
        tok,
        config={"model_type": "llama", **sizes},
        vocab_size=tok.vocab_size,
        projector="linear",
        max_new_tokens=3,
    )
    assert head.lm.get_input_embeddings().num_embeddings == tok.vocab_size
    assert head.lm.config.head_dim == 12  # derived from the given sizes
    assert len(head.blocks()) == 2 and head.model_files == {}
    assert isinstance(head.projector, torch.nn.Linear) and head.projector.out_features == 48
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    outputs = head(
        features(), batch["caption"], batch["caption_mask"], labels=batch["caption_labels"]
    )
    assert torch.isfinite(outputs.loss)
    assert (
        head.eval()
        .generate(features(), batch["caption_prompt"], batch["caption_prompt_mask"])
        .shape[0]
        == 3
    )
    bigger = CausalLMHead(IN_DIM, tok, config={"model_type": "llama", **sizes, "vocab_size": 256})
    assert bigger.lm.get_input_embeddings().num_embeddings == 256


def test_bfloat16_lm(lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]) -> None:
    tok = tokenizers["llama"]
    head = make_head(lms["llama"], tok, dtype="bfloat16")
    assert head.lm.dtype == torch.bfloat16 and head.projector[0].weight.dtype == torch.float32
    batch = tiny_lm.chat_batch(tok, SAMPLES)
    outputs = head(
        features(), batch["caption"], batch["caption_mask"], labels=batch["caption_labels"]
    )
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss) and head.projector[0].weight.grad is not None


# ---- metrics -----------------------------------------------------------------------------------
def test_metrics(lms: dict[str, Path], tokenizers: dict[str, TinyChatTokenizer]) -> None:
    tok, folder = tokenizers["gpt2"], lms["gpt2"]
    empty = torch.zeros(2, 1, dtype=torch.long)
    caption = make_head(folder, tok)
    metrics = caption.make_metrics()
    assert isinstance(metrics, CaptionMetrics)
    caption.update_metrics(
        metrics,
        None,
        empty,
        predictions=["a red cat", "a dog"],
        references=[["a red cat", "a cat"], "a dog"],
    )
    assert metrics.compute()["bleu1"] == pytest.approx(1.0)
    vqa = make_head(folder, tok, metrics="vqa")
    metrics = vqa.make_metrics()
    vqa.update_metrics(
        metrics,
        None,
        empty,
        predictions=["Yes", "two"],  # normalised: the humans disagree
        references=[["yes"] * 4 + ["no"] * 6, ["2"] * 9 + ["3"]],
    )
    assert metrics.compute()["vqa_accuracy"].item() == pytest.approx(1.0)
    wer = make_head(folder, tok, metrics="wer")
    metrics = wer.make_metrics()
    wer.update_metrics(
        metrics,
        None,
        empty,
        predictions=["The  Cat sat", "a dog"],
        references=[["the cat sat", "x"], ["a dog"]],
    )
    assert metrics.compute()["wer"].item() == pytest.approx(0.0)
    none = make_head(folder, tok, metrics="none")
    metrics = none.make_metrics()
    none.update_metrics(metrics, None, empty, predictions=["a"], references=[["b"]])
    assert metrics.compute() == {}
    with pytest.raises(ValueError, match="references"):
        caption.update_metrics(caption.make_metrics(), None, empty, predictions=["a", "b"])
