"""Conversations for a causal LM (``head/<task>=causal_lm``): ``<task> (B, L)`` the ids of
prompt and answers, ``<task>_labels``, the left-padded generation prompt ``<task>_prompt`` and
their masks (:class:`mmtrain.contracts.ChatTokenizer` describes the batch)."""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from mmtrain.contracts import (
    FEATURE_TOKEN,
    IGNORE_INDEX,
    PLACEHOLDER,
    REFERENCES,
    Column,
    PredictionFile,
)
from mmtrain.data.targets.base import OFFICIAL, Target, references, write_official
from mmtrain.data.targets.text import write_transcripts
from mmtrain.data.transforms.lm_tokenizer import LMTokenizer, Turn
from mmtrain.errors import MMTrainError
from mmtrain.utils.vqa_answers import normalize_answer

log = logging.getLogger(__name__)

RESULTS = ("coco", "jsonl", "vqa", "transcripts")
ANSWERS = ("first", "most_frequent")
# LLaVA's roles (``from``) and the chat templates' (``role``) -> the templates'.
ROLE_OF = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_NONE = -1  # pads the rows of one sample's packed tensor (no id, label or feature is -1)
_WORD = re.compile(r"\w+|[^\w\s]")


class ChatTarget(Target):
    """A conversation per sample, for a causal LM that answers after the fused features.

    ``item[task]`` is either a string (a caption, a transcript, an answer): one user turn (the
    prompt) and one assistant turn (the string); or a list of LLaVA turns
    ``[{"from": "human" | "gpt" | "system", "value": str}]`` (``role``/``content`` dicts
    too): the conversation as it is. The user turn of a string target is ``prompt`` (a fixed
    string, e.g. ``"Describe the image."``), the item's ``prompt_from`` column (VQA: ``text``,
    the question), or both: a prompt's ``{column}`` fields are formatted from the item's
    columns, and a prompt without a ``prompt_from`` field follows that column's text on a new
    line (LLaVA's ``"<question>\\nAnswer the question using a single word or phrase."``); with
    neither, the placeholder alone (LLaVA's plain alignment format: the features, then the
    answer). A user turn of a string target without the ``<image>`` placeholder gets
    ``"<image>\\n"`` in front
    (the fused features are always there); a conversation keeps its own placeholders (one at
    most: a sample without an image has none and gets no features).

    The batch (see :class:`~mmtrain.contracts.ChatTokenizer`): ``<task>`` the conversation's
    ids, right-padded with the tokenizer's ``pad_id``, :data:`FEATURE_TOKEN` at the
    placeholder; ``<task>_labels`` the ids each position is trained to predict (not shifted),
    :data:`IGNORE_INDEX` on prompts, system and user turns, features and padding: every
    answer and its end of turn are trained on; ``<task>_prompt`` the generation prompt (the
    conversation up to its last answer, ending with the assistant's opening), left-padded;
    the masks ``<task>_mask`` and ``<task>_prompt_mask``; ``<task>_references`` the reference
    strings of the last answer (every reference the data set gives, COCO's five captions,
    VQA's ten human answers; else the answer). The head gets the tokenizer, ``vocab_size``,
    ``pad_id`` and the fixed ``prompt``.

    Truncation: a conversation longer than the tokenizer's ``max_length`` ids (feature
    positions excluded) keeps its first ``max_length`` ids (one warning per process, for
    training and for evaluation, naming the first sample); a generation prompt longer than
    that keeps its last ``max_length`` ids. A prompt (everything before the first answer)
    that leaves no room for one id of its answer is an error naming the sample.

    Predictions are written as ``results``: ``coco`` (COCO's caption results
    ``[{"image_id": int, "caption": str}]`` in ``<task>s_<split>.json``), ``vqa`` (VQA's
    ``[{"question_id": int, "answer": str}]`` in ``<task>s_<split>.json``), ``transcripts``
    (as :class:`~mmtrain.data.targets.TextTarget`) or ``jsonl`` (``<task>_<split>.jsonl``,
    ``{"id", "prediction"}`` a line).

    Args:
        tokenizer: the LM's tokenizer and chat template (build.py sets its folder from the
            LM head); a word-level one trained on the training split when it names none.
        prompt: the user turn of a string target (``{column}`` fields are formatted from the
            item).
        prompt_from: the column whose text is the user turn of a string target.
        answer: the answer of a string target: ``first`` (the target column) or
            ``most_frequent`` (the most frequent of ``<task>_references``, normalised as the
            VQA evaluation does; ties: the first seen; the references stay the raw ones).
        results: the predictions file's format (above).

    Raises:
        ValueError: for an unknown ``answer`` or ``results``, an empty ``prompt_from``, or a
            prompt that is not a format string or has more than one placeholder.
    """

    bucketable = True

    def __init__(
        self,
        tokenizer: LMTokenizer,
        prompt: str | None = None,
        prompt_from: str | None = None,
        answer: Literal["first", "most_frequent"] = "first",
        results: Literal["coco", "jsonl", "vqa", "transcripts"] = "jsonl",
    ) -> None:
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {answer!r}")
        if results not in RESULTS:
            raise ValueError(f"results must be one of {RESULTS}, got {results!r}")
        if prompt_from is not None and not str(prompt_from).strip():
            raise ValueError("prompt_from is empty: name the column of the prompts, or null")
        self.fields: list[str] = []
        if prompt is not None:
            prompt = str(prompt)
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None]
            except ValueError as err:
                raise ValueError(f"prompt {prompt!r} is not a format string: {err}") from None
            if any(not f.isidentifier() for f in fields):
                raise ValueError(
                    f"prompt {prompt!r}: its fields must name columns, as {{text}} ({fields}); "
                    "write a literal brace twice ({{ or }})"
                )
            self.fields = list(dict.fromkeys(fields))
            if prompt.count(PLACEHOLDER) > 1:
                raise ValueError(f"prompt {prompt!r} has more than one {PLACEHOLDER} placeholder")
        self.tokenizer, self.prompt, self.prompt_from = tokenizer, prompt, prompt_from
        self.answer, self.results = answer, results
        self._warned: set[bool] = set()  # the truncation warning, once per process and mode

    @property
    def columns(self) -> list[str]:
        """The data set columns it reads: the task's, then ``prompt_from`` and the prompt's
        fields."""
        extra = [self.prompt_from] if self.prompt_from else []
        return list(dict.fromkeys([self.name, *extra, *self.fields]))

    # ---- fitting ----------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return bool(self.tokenizer.fitted)

    def read(self, item: dict[str, Any]) -> list[Turn] | None:
        """The conversation of ``item`` (its :attr:`columns`), or None when it has none or
        a bad one (its encoding says why): what the tokenizer is trained on."""
        if item.get(self.name) is None:
            return None
        try:
            return self.turns(item)
        except MMTrainError:
            return None

    def fit(self, column: Column) -> None:
        """Train the tokenizer on the training conversations' text, when it is trained."""
        if not self.fitted:
            texts = [t["content"] for turns in column.values() if turns for t in turns]
            self.tokenizer.fit(texts)

    def state_dict(self) -> dict[str, Any]:
        state = self.tokenizer.state_dict() if self.fitted else {}
        return {"tokenizer": state} if state.get("tokenizer") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tokenizer"):
            self.tokenizer.load_state_dict(state["tokenizer"])

    # ---- encoding ---------------------------------------------------------------------------
    def turns(self, item: dict[str, Any]) -> list[Turn]:
        """The conversation of ``item`` as the template takes it: ``[{"role", "content"}]``.

        Raises:
            MMTrainError: naming the sample, for a value that is neither text nor a list of
                turns, a turn with an unknown role or no text, an answer first or none, more
                than one placeholder or one in an answer, or a prompt column the item lacks.
        """
        value, sample = item.get(self.name), item.get("id")
        if isinstance(value, (list, tuple)):
            turns = [_turn(t, n, sample, self.name) for n, t in enumerate(value)]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            turns = [
                {"role": "user", "content": self.user_text(item)},
                {"role": "assistant", "content": self.answer_text(item)},
            ]
        else:
            raise MMTrainError(
                f"sample {sample}: {self.name} must be a string or a list of turns "
                f'[{{"from": "human" | "gpt" | "system", "value": str}}], got {value!r:.100}'
            )
        opening = next((t["role"] for t in turns if t["role"] != "system"), None)
        if opening == "assistant":
            raise MMTrainError(
                f"sample {sample}: the {self.name} conversation starts with an answer (a gpt "
                "turn): it has no prompt"
            )
        if not any(t["role"] == "assistant" for t in turns):
            raise MMTrainError(
                f"sample {sample}: the {self.name} conversation has no assistant (gpt) turn: "
                "nothing to train on"
            )
        places = sum(t["content"].count(PLACEHOLDER) for t in turns)
        if places > 1:
            raise MMTrainError(
                f"sample {sample}: the {self.name} conversation has {places} {PLACEHOLDER} "
                "placeholders; one at most (the fused features go there once)"
            )
        if any(PLACEHOLDER in t["content"] for t in turns if t["role"] == "assistant"):
            raise MMTrainError(
                f"sample {sample}: an assistant turn of the {self.name} conversation holds "
                f"the {PLACEHOLDER} placeholder; it belongs in a user turn"
            )
        return turns

    def user_text(self, item: dict[str, Any]) -> str:
        """The user turn of a string target: the prompt, formatted, after the
        ``prompt_from`` text, with the placeholder in front when it has none.

        Raises:
            MMTrainError: naming the sample, for a prompt column it lacks.
        """
        sample = item.get("id")
        for column in self.columns[1:]:
            if item.get(column) is None:
                raise MMTrainError(
                    f"sample {sample}: no {column!r} value for the prompt of {self.name} "
                    f"(data.targets.{self.name}.prompt/prompt_from)"
                )
        parts = []
        if self.prompt_from:
            parts.append(str(item[self.prompt_from]))
        if self.prompt is not None:
            prompt = self.prompt
            if self.fields:
                prompt = prompt.format_map({f: item[f] for f in self.fields})
                if self.prompt_from in self.fields:  # the prompt places that text itself
                    parts = []
            parts.append(prompt)
        text = "\n".join(parts)
        if not text:  # no prompt: the features alone (LLaVA's "plain" alignment format)
            return PLACEHOLDER
        return text if PLACEHOLDER in text else f"{PLACEHOLDER}\n{text}"

    def answer_text(self, item: dict[str, Any]) -> str:
        """The answer of a string target: the target, or the most frequent normalised
        reference (``answer="most_frequent"``, when the item has references)."""
        refs = item.get(f"{self.name}{REFERENCES}")
        if self.answer == "most_frequent" and refs:
            counts = Counter(normalize_answer(str(r)) for r in refs)
            return max(counts, key=lambda a: counts[a])  # the first seen of the most frequent
        return str(item[self.name])

    def encode(self, item: dict[str, Any], train: bool, inputs: dict[str, Any]) -> dict[str, Any]:
        """``{task: (3, M) ids, labels and prompt (-1 after each), <task>_references}``,
        unpacked by :meth:`collate`.

        Raises:
            MMTrainError: naming the sample, for what :meth:`turns` rejects, a conversation
                the template cannot render, or a prompt that leaves no room for its answer.
        """
        sample = item.get("id")
        turns = self.turns(item)
        tokenizer = self.tokenizer
        try:
            ids, labels = tokenizer.encode_chat(turns)
            prompt = tokenizer.encode_prompt(turns)
        except ValueError as err:
            raise MMTrainError(f"sample {sample}: {self.name}: {err}") from None
        limit = tokenizer.max_length
        first = next((n for n, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
        if _length(ids[:first]) >= limit:
            raise MMTrainError(
                f"sample {sample}: the prompt of {self.name} has {_length(ids[:first])} ids, "
                f"which leaves no room for its answer within the tokenizer's max_length={limit}"
            )
        if _length(ids) > limit or _length(prompt) > limit:
            if train not in self._warned:
                self._warned.add(train)
                log.warning(
                    "data.targets.%s: conversations longer than max_length=%d ids are "
                    "truncated (sample %s has %d%s); more are not reported",
                    self.name,
                    limit,
                    sample,
                    _length(ids),
                    " in training" if train else " in evaluation",
                )
            keep = _keep(ids, limit)
            ids, labels = ids[:keep], labels[:keep]
            prompt = prompt[len(prompt) - _keep(prompt[::-1], limit) :]
        refs = item.get(f"{self.name}{REFERENCES}")
        if refs:
            refs = [str(r) for r in refs]
        elif isinstance(item[self.name], (list, tuple)):
            refs = [next(t["content"] for t in reversed(turns) if t["role"] == "assistant")]
        else:
            refs = references(item, self.name)
        return {self.name: _pack(ids, labels, prompt), f"{self.name}{REFERENCES}": refs}

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
        """Unpack :meth:`encode`'s tensors: the conversation and labels right-padded, the
        prompt left-padded (with ``pad_id``; the masks mark real positions)."""
        name, pad = self.name, self.tokenizer.pad_id
        rows = [[row[row != _NONE] for row in value] for value in values]
        size = len(values)
        length = max(len(r[0]) for r in rows)
        width = max(len(r[2]) for r in rows)
        ids = torch.full((size, length), pad, dtype=torch.long)
        labels = torch.full((size, length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(size, length, dtype=torch.bool)
        prompt = torch.full((size, width), pad, dtype=torch.long)
        prompt_mask = torch.zeros(size, width, dtype=torch.bool)
        for i, (seq, lab, pro) in enumerate(rows):
            n, p = len(seq), len(pro)
            ids[i, :n], labels[i, :n], mask[i, :n] = seq, lab, True
            if p:
                prompt[i, width - p :], prompt_mask[i, width - p :] = pro, True
        return {
            name: ids,
            f"{name}_mask": mask,
            f"{name}_labels": labels,
            f"{name}_prompt": prompt,
            f"{name}_prompt_mask": prompt_mask,
        }

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]:
        """About the ids of each conversation: its words and punctuation marks (those of the
        prompt included), plus a few for the template, capped at ``max_length``."""
        prompts = values(self.prompt_from) if self.prompt_from else None
        fixed = _count(self.prompt or "")
        cap = self.tokenizer.max_length or math.inf
        out = []
        for n, value in enumerate(values(self.name)):
            if isinstance(value, (list, tuple)):
                texts = [_content(t) for t in value]
                size = sum(_count(t) + 4 for t in texts)  # about 4 ids of template a turn
            elif value is None:
                size = 0
            else:
                size = _count(str(value)) + fixed + 8
                if prompts is not None:
                    size += _count(str(prompts[n] or ""))
            out.append(float(min(size, cap)))
        return out

    def facts(self) -> dict[str, Any]:
        """The tokenizer, ``vocab_size``, ``pad_id`` and ``prompt``: the fixed user prompt
        when it needs nothing from the item ("" without one: the features alone; None when
        it needs the item), for generating without one in the batch."""
        fixed = not self.fields and not self.prompt_from
        return {
            "tokenizer": self.tokenizer,
            "vocab_size": self.tokenizer.vocab_size,
            "pad_id": self.tokenizer.pad_id,
            "prompt": (self.prompt or "") if fixed else None,
        }

    def write(
        self,
        rows: list[dict[str, Any]],
        folder: Path,
        split: str,
        normalize: Callable[[str], str] | None = None,
    ) -> PredictionFile:
        task = self.name
        if self.results in OFFICIAL:
            return write_official(rows, folder, split, task, self.results)
        if self.results == "transcripts":
            return write_transcripts(rows, folder, split, task, normalize)
        return super().write(rows, folder, split, normalize)


def _turn(turn: Any, n: int, sample: Any, task: str) -> Turn:
    """One turn of a conversation as ``{"role", "content"}``.

    Raises:
        MMTrainError: naming the sample and the turn, for a turn that is not a dict with a
            known role and a text.
    """
    if not isinstance(turn, dict):
        raise MMTrainError(f"sample {sample}: turn {n} of {task} is not a dict: {turn!r:.100}")
    role = turn.get("from", turn.get("role"))
    content = turn.get("value", turn.get("content"))
    if role not in ROLE_OF:
        raise MMTrainError(
            f"sample {sample}: turn {n} of {task} has the role {role!r}; roles are human/user, "
            "gpt/assistant and system"
        )
    if not isinstance(content, str):
        raise MMTrainError(
            f"sample {sample}: turn {n} of {task} has no text (value/content): {content!r:.100}"
        )
    return {"role": ROLE_OF[role], "content": content}


def _content(turn: Any) -> str:
    """A raw turn's text (for lengths; anything else counts as empty)."""
    if isinstance(turn, dict):
        content = turn.get("value", turn.get("content"))
        return content if isinstance(content, str) else ""
    return ""


def _count(text: str) -> int:
    """Words and punctuation marks of ``text``."""
    return len(_WORD.findall(text))


def _length(ids: list[int]) -> int:
    """Ids that count against ``max_length``: all but the feature positions."""
    return sum(1 for i in ids if i != FEATURE_TOKEN)


def _keep(ids: list[int], limit: int) -> int:
    """How many of the first ``ids`` hold ``limit`` ids that count (:func:`_length`)."""
    counted = 0
    for n, i in enumerate(ids):
        counted += i != FEATURE_TOKEN
        if counted > limit:
            return n
    return len(ids)


def _pack(ids: list[int], labels: list[int], prompt: list[int]) -> Tensor:
    """``(3, M)``: ids, labels and prompt, each followed by ``-1`` up to the longest."""
    width = max(len(ids), len(prompt))
    packed = torch.full((3, width), _NONE, dtype=torch.long)
    packed[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    packed[1, : len(labels)] = torch.tensor(labels, dtype=torch.long)
    packed[2, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    return packed
