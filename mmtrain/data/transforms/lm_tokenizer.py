"""A causal LM's tokenizer and chat template, as causal-LM targets use it
(``data.targets.<task>.tokenizer``; :class:`mmtrain.contracts.ChatTokenizer`).

transformers is imported when a tokenizer is built, never at import: the CLI imports this
module without it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from mmtrain.contracts import FEATURE_TOKEN, IGNORE_INDEX, PLACEHOLDER
from mmtrain.errors import MMTrainError
from mmtrain.utils.preprocessing import VERY_LARGE_LENGTH, preprocessing_digest, tokenizer_folder

DEFAULT_MAX_LENGTH = 2048  # the context when the tokenizer names none (or "no limit")
# The trained word-level tokenizer's specials, ids 0..3 (pad, unknown, bos, eos).
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
ROLES = ("system", "user", "assistant")  # the roles a template renders
# mmtrain's template for LMs without one (a base LM, or the trained word-level tokenizer):
# ``{bos}[system text\n]USER: {prompt}\nASSISTANT: {answer}{eos}\nUSER: ...``; the generation
# prompt ends with ``ASSISTANT:``, so each answer starts with its own leading space.
FALLBACK_TEMPLATE = (  # newlines as expressions: transformers renders with trim_blocks
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\\n' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'] }}"
    "{% if eos_token %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_PROBE_QUESTION, _PROBE_ANSWER = "probe question", "probe answer"  # finds the end-of-turn token

Turn = dict[str, str]  # {"role": system | user | assistant, "content": text}


class LMTokenizer:
    """The tokenizer of a causal LM with its chat template: conversations to ids and labels.

    Either the LM's own tokenizer (``name_or_path``: a local folder; build.py writes the LM
    head's resolved folder there) or, with ``name_or_path=None``, a word-level tokenizer
    trained on the training split in :meth:`fit` (lower-cased words and punctuation; ids 0..3
    ``<pad> <unk> <s> </s>``, then the template's words, then the training words by
    decreasing frequency, ties alphabetically; kept in :meth:`state_dict`), for LMs built
    from scratch.

    A conversation is rendered by the chat template (``template`` if given, else the
    tokenizer's own, else mmtrain's :data:`FALLBACK_TEMPLATE` for base LMs:
    ``{bos}USER: {prompt}\\nASSISTANT: {answer}{eos}\\n...``, system text first), then split at
    each ``<image>`` placeholder, and the pieces are tokenised without special tokens (the
    template writes them), :data:`~mmtrain.contracts.FEATURE_TOKEN` going where the
    placeholder was. The text of assistant answer ``i`` is what the rendering that includes
    it (``render(turns[:i + 1])``) adds to the rendering of the conversation before it with
    the generation prompt (``render(turns[:i], add_generation_prompt=True)``), trailing
    whitespace left out: the answer and the template's end of turn (``<|im_end|>``,
    ``<|eot_id|>``, ``</s>``). Both renderings must be the start of the whole conversation's
    (checked). The whole conversation is tokenised once, and the tokens whose characters fall
    in an answer's text are its labels (a token's offsets; the same ids as tokenising the
    prefixes one by one, without relying on that); everything else is
    :data:`~mmtrain.contracts.IGNORE_INDEX`. The generation prompt is tokenised on its own,
    as it is at prediction time.

    Args:
        name_or_path: a local folder with a Hugging Face tokenizer (loaded offline, never
            running code from the folder); None trains a word-level one in :meth:`fit`.
        max_length: the most ids of a conversation (feature positions excluded); None: the
            tokenizer's ``model_max_length`` when it names a real one, at most 2048.
        template: a Jinja chat template that replaces the tokenizer's own.
        vocab_size: the trained tokenizer's most ids, specials and template words included.
        min_freq: training words seen fewer times map to ``<unk>``.

    Raises:
        MMTrainError: naming the folder, when it holds no tokenizer or transformers cannot
            load it; when the tokenizer is not a fast one (no token offsets) or has neither an
            end-of-text token nor a template with an end-of-turn token (answers never end).
        ValueError: for a non-positive ``max_length``, ``vocab_size`` or ``min_freq``, or a
            template that does not render conversations prefix by prefix.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        max_length: int | None = None,
        template: str | None = None,
        vocab_size: int = 2000,
        min_freq: int = 1,
    ) -> None:
        for key, value in (("vocab_size", vocab_size), ("min_freq", min_freq)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0
        ):
            raise ValueError(f"max_length must be a positive integer or null, got {max_length!r}")
        if template is not None and not str(template).strip():
            raise ValueError("template is empty: give a Jinja chat template, or null")
        self.name_or_path = None if name_or_path is None else str(name_or_path)
        self.target_vocab_size, self.min_freq = vocab_size, min_freq
        self.given_max_length = max_length
        self.given_template = None if template is None else str(template)
        self._digest = ""
        if self.name_or_path is None:
            self._fitted = False
            self._use(_word_level(list(SPECIALS)))
        else:
            self._fitted = True
            self._load(self.name_or_path)

    # ---- building ------------------------------------------------------------------------
    def _load(self, folder: str) -> None:
        """Load the tokenizer in ``folder`` (offline, no remote code)."""
        path = tokenizer_folder(folder)
        from transformers import AutoTokenizer  # lazily: only runs with an LM import it

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MMTrainError(f"cannot load the tokenizer in {folder}: {first[:300]}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise MMTrainError(
                f"the tokenizer in {folder} is not a fast (tokenizers) one: a causal-LM target "
                "needs its token offsets; give a folder with a tokenizer.json"
            )
        self._digest = preprocessing_digest(path)
        self._use(tokenizer)

    def _use(self, tokenizer: Any) -> None:
        """Make ``tokenizer`` (a transformers tokenizer) the one used, with its template."""
        self._tokenizer = tokenizer
        if self.given_template is not None:
            self.template, self.template_name = self.given_template, "the configured template"
        elif self.name_or_path is not None and tokenizer.chat_template:
            try:
                self.template = tokenizer.get_chat_template()
            except ValueError as err:  # several named templates, none the default
                raise MMTrainError(f"the tokenizer in {self.name_or_path}: {err}") from None
            self.template_name = f"the chat template of {self.name_or_path}"
        else:
            self.template, self.template_name = FALLBACK_TEMPLATE, "mmtrain's fallback template"
        model_max = getattr(tokenizer, "model_max_length", None)
        sane = isinstance(model_max, int) and 0 < model_max < VERY_LARGE_LENGTH
        self.max_length = self.given_max_length or min(
            model_max if sane else DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH
        )
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        end = self._end_of_turn()
        if eos is None:
            eos = end
        if eos is None:
            where = self.name_or_path or "the trained tokenizer"
            raise MMTrainError(
                f"the tokenizer of {where} has no end-of-text token and {self.template_name} "
                "no end-of-turn token: answers would never end; give a tokenizer with one"
            )
        self.eos_id = int(eos)
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.stop_ids = list(dict.fromkeys(i for i in (self.eos_id, end) if i is not None))

    def _end_of_turn(self) -> int | None:
        """The id of the single added token that ends an assistant turn in the template (the
        end of text for :data:`FALLBACK_TEMPLATE`), or None.

        Raises:
            ValueError: naming the template, when it does not render a probe conversation
                prefix by prefix or leaves its answer out.
        """
        turns = [
            {"role": "user", "content": _PROBE_QUESTION},
            {"role": "assistant", "content": _PROBE_ANSWER},
        ]
        (start, end), text = self._answer_spans(turns)[0], self.render(turns)
        piece = text[start:end]
        at = piece.rfind(_PROBE_ANSWER)
        if at < 0:
            raise ValueError(
                f"{self.template_name} leaves the answer out of an assistant turn: it cannot "
                "train a causal LM; set the tokenizer's template to one that renders it"
            )
        suffix = piece[at + len(_PROBE_ANSWER) :].strip()
        return self._tokenizer.get_added_vocab().get(suffix) if suffix else None

    # ---- the trained word-level tokenizer ------------------------------------------------
    @property
    def fitted(self) -> bool:
        """Whether the ids are settled: a pretrained tokenizer, or one trained (:meth:`fit`)
        or restored (:meth:`load_state_dict`)."""
        return self._fitted

    def fit(self, texts: Iterable[str]) -> LMTokenizer:
        """Train the word-level tokenizer on ``texts`` (the training split's prompts and
        answers; placeholders are left out). A pretrained tokenizer is left as it is.

        Args:
            texts: the training strings.

        Returns:
            This tokenizer, fitted.

        Raises:
            ValueError: if ``texts`` hold no word at all.
        """
        if self.name_or_path is not None:
            return self
        split = self._tokenizer.backend_tokenizer
        words: Counter[str] = Counter()
        for text in texts:
            words.update(_words(split, str(text).replace(PLACEHOLDER, " ")))
        if not words:
            raise ValueError("LMTokenizer.fit got no words to train on (empty texts)")
        template = self.render([{"role": r, "content": ""} for r in ROLES], generation=True)
        for special in SPECIALS:
            template = template.replace(special, " ")
        vocab = list(dict.fromkeys([*SPECIALS, *_words(split, template)]))
        known = set(vocab)
        ranked = sorted(
            (w for w, n in words.items() if n >= self.min_freq and w not in known),
            key=lambda w: (-words[w], w),
        )
        vocab += ranked[: max(self.target_vocab_size - len(vocab), 0)]
        self._use(_word_level(vocab))
        self._fitted = True
        return self

    def state_dict(self) -> dict[str, Any]:
        """The trained tokenizer (its ``tokenizer.json`` text; None before :meth:`fit` and for
        a pretrained one, whose folder the checkpoint's model files carry)."""
        trained = self.name_or_path is None and self._fitted
        return {"tokenizer": self._tokenizer.backend_tokenizer.to_str() if trained else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s trained tokenizer (nothing for a pretrained one)."""
        saved = state.get("tokenizer")
        if saved is None or self.name_or_path is not None:
            return
        from tokenizers import Tokenizer

        self._use(_wrap(Tokenizer.from_str(saved)))
        self._fitted = True

    # ---- what heads use (contracts.ChatTokenizer) ------------------------------------------
    @property
    def hf_tokenizer(self) -> Any:
        """The transformers tokenizer."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(tokenizer)``)."""
        return len(self._tokenizer)

    def prompt_ids(self, prompt: str, features: bool = True) -> list[int]:
        """Ids of a one-user-turn conversation ready for generation (the template's opening
        of the assistant turn at the end).

        Args:
            prompt: the user turn.
            features: the fused features go in: a prompt without the ``<image>`` placeholder
                gets ``"<image>\\n"`` in front; False: any placeholder is left out.

        Raises:
            ValueError: for a prompt with more than one placeholder.
        """
        text = str(prompt)
        if not features:
            text = text.replace(PLACEHOLDER, "")
        elif PLACEHOLDER not in text:
            text = f"{PLACEHOLDER}\n{text}" if text else PLACEHOLDER
        if text.count(PLACEHOLDER) > 1:
            raise ValueError(f"the prompt {prompt!r} has more than one {PLACEHOLDER} placeholder")
        return self.encode_prompt([{"role": "user", "content": text}])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of an answer's ``ids``: up to the first stop id, special tokens (and ids that
        are not tokens: padding, features) skipped, stripped."""
        size, stops, kept = len(self._tokenizer), set(self.stop_ids), []
        for i in ids:
            i = int(i)
            if i in stops:
                break
            if 0 <= i < size:
                kept.append(i)
        return self._tokenizer.decode(kept, skip_special_tokens=True).strip()

    # ---- conversations -------------------------------------------------------------------
    def render(self, turns: Sequence[Turn], generation: bool = False) -> str:
        """The template's text of ``turns`` (``generation``: with the assistant's opening).

        Raises:
            ValueError: naming the template, when it fails on the conversation (a template
                that raises, e.g. on roles that do not alternate).
        """
        from jinja2 import TemplateError  # transformers' dependency

        try:
            return self._tokenizer.apply_chat_template(
                list(turns),
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=generation,
            )
        except TemplateError as err:
            raise ValueError(f"{self.template_name} fails on the conversation: {err}") from None

    def _answer_spans(self, turns: Sequence[Turn]) -> list[tuple[int, int]]:
        """``(start, end)`` in ``render(turns)`` of each assistant answer's labelled text.

        Raises:
            ValueError: for a conversation that starts with an answer, or naming the template
                when it does not render the conversation prefix by prefix.
        """
        text, spans = self.render(turns), []
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            if i == 0:
                raise ValueError("the conversation starts with an answer: it has no prompt")
            before = self.render(turns[:i], generation=True)
            upto = self.render(turns[: i + 1])
            if not (upto.startswith(before) and text.startswith(upto)):
                raise ValueError(
                    f"{self.template_name} does not render conversations prefix by prefix (the "
                    f"text up to answer {len(spans) + 1} is not the start of the whole "
                    "conversation's), so answers cannot be told from prompts; set the "
                    "tokenizer's template to one that does"
                )
            spans.append((len(before), len(upto.rstrip())))
        return spans

    def _tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of ``text`` split at its placeholders (:data:`FEATURE_TOKEN` for each) and the
        character span of each id in ``text`` (a placeholder's for a feature token)."""
        pieces = text.split(PLACEHOLDER)
        encoded = self._tokenizer(  # verbose=False: the target truncates, and says so
            pieces, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        start = 0
        for n, (piece_ids, offsets) in enumerate(
            zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
        ):
            if n:
                ids.append(FEATURE_TOKEN)
                spans.append((start - len(PLACEHOLDER), start))
            ids.extend(piece_ids)
            spans.extend((start + a, start + b) for a, b in offsets)
            start += len(pieces[n]) + len(PLACEHOLDER)
        return ids, spans

    def encode_chat(self, turns: Sequence[Turn]) -> tuple[list[int], list[int]]:
        """The ids of a whole conversation and the labels to train on (not truncated).

        Args:
            turns: ``[{"role": "system" | "user" | "assistant", "content": str}]``.

        Returns:
            ``(ids, labels)``, as long as each other: :data:`FEATURE_TOKEN` at each
            placeholder; labels are the ids of each answer and its end of turn,
            :data:`IGNORE_INDEX` elsewhere.

        Raises:
            ValueError: what :meth:`render` raises, for a conversation that starts with an
                answer, or naming the template when it does not render the conversation
                prefix by prefix.
        """
        answers = self._answer_spans(turns)
        ids, spans = self._tokens(self.render(turns))
        labels = [
            i if i != FEATURE_TOKEN and any(s < b and e > a for a, b in answers) else IGNORE_INDEX
            for i, (s, e) in zip(ids, spans, strict=True)
        ]
        return ids, labels

    def encode_prompt(self, turns: Sequence[Turn]) -> list[int]:
        """Ids of the generation prompt of a conversation: its turns up to (not including)
        its last answer, rendered with the assistant's opening (all turns when it has no
        answer), :data:`FEATURE_TOKEN` at each placeholder.

        Raises:
            ValueError: what :meth:`render` raises.
        """
        turns = list(turns)
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
        return self._tokens(self.render(turns if last is None else turns[:last], True))[0]

    # ---- identity ------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What the ids depend on: the tokenizer (its folder's files hashed, or the trained
        one's hash), the template's hash and ``max_length``."""
        source = self._digest
        if self.name_or_path is None:
            state = self.state_dict()["tokenizer"] or ""
            source = hashlib.sha256(state.encode()).hexdigest()[:16]
        return {
            "tokenizer": source,
            "template": hashlib.sha256(self.template.encode()).hexdigest()[:16],
            "max_length": self.max_length,
            "vocab_size": self.vocab_size,
        }

    def fingerprint(self) -> str:
        """A hash of :meth:`settings`."""
        text = repr(sorted(self.settings().items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        where = self.name_or_path or f"trained word-level, {self.vocab_size} ids"
        return f"LMTokenizer({where}, max_length={self.max_length})"


def _words(tokenizer: Any, text: str) -> list[str]:
    """The words of ``text`` as the trained tokenizer splits them (a ``tokenizers`` object:
    its normaliser, then its pre-tokenizer)."""
    normalized = tokenizer.normalizer.normalize_str(text)
    return [w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]


def _word_level(vocab: list[str]) -> Any:
    """A transformers tokenizer over ``vocab`` (the specials first): lower-cased, split into
    words and punctuation, unknown words to ``<unk>``."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    tokenizer.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    return _wrap(tokenizer)


def _wrap(tokenizer: Any) -> Any:
    """``tokenizer`` (a ``tokenizers`` object) as a transformers tokenizer with the specials
    and the fallback template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        chat_template=FALLBACK_TEMPLATE,
    )
