"""LLaVA instruction data: conversations about an image, as LLaVA's training code reads them.

A split is one JSON file, a list of entries (or JSON Lines, ``.jsonl``, one entry a line)::

    [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is the bus's colour?"},
                        {"from": "gpt", "value": "White and red."}, ...]},
     {"id": "i6IyJda_0", "conversations": [...]}]          # text only: no "image"

with the image paths relative to an image folder (LLaVA's ``--image_folder``), e.g. the layout of
LLaVA-1.5's mix665k: ``coco/train2017/``, ``gqa/images/``, ``ocr_vqa/images/``,
``textvqa/train_images/``, ``vg/VG_100K/`` under one folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from mmtrain.contracts import PLACEHOLDER
from mmtrain.data.io import load_image
from mmtrain.data.manifest import split_file
from mmtrain.data.targets.chat import ROLE_OF
from mmtrain.errors import MMTrainError

log = logging.getLogger(__name__)

# A text-only entry's image: black, small (the image input resizes it anyway). Its conversation
# has no placeholder, so no image features reach the LM for it (as in LLaVA's own data code).
BLANK_SIZE = (32, 32)
SHOWN = 5  # bad entries or missing images listed in one error
COLUMNS = ["chat", "image"]


def _kind(value: Any) -> str:
    """``list [1, 2]``: the JSON-ish type name and a short repr, for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _turn(turn: Any) -> tuple[str | None, Any]:
    """The (role, text) of one turn: ``{"from", "value"}`` or ``{"role", "content"}``."""
    if not isinstance(turn, dict):
        return None, None
    if "from" in turn or "value" in turn:
        return turn.get("from"), turn.get("value")
    return turn.get("role"), turn.get("content")


def check_entry(entry: dict[str, Any]) -> str | None:
    """What is wrong with one LLaVA entry, or None if it can be trained on.

    An entry needs ``conversations``: a list of turns ``{"from": "human" | "gpt" | "system",
    "value": str}`` (``{"role": "user" | "assistant" | "system", "content": str}`` too) with at
    least one assistant (``gpt``) turn. ``image``, if present and not null, is a file path; the
    ``<image>`` placeholder appears at most once and only in a user turn, and only when the
    entry has an image. An image without a placeholder is fine (:func:`with_placeholder`).

    Args:
        entry: one entry of the JSON list, as parsed.

    Returns:
        The first problem, as a phrase, or None.
    """
    image = entry.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        if isinstance(image, list):
            return (
                f"'image' is a list ({_kind(image)}): one image per entry; multi-image entries "
                "are not supported"
            )
        return f"'image' must be a file path (a non-empty string), got {_kind(image)}"
    if "conversations" not in entry:
        return f"no 'conversations' (the entry has {sorted(entry)})"
    turns = entry["conversations"]
    if not isinstance(turns, list):
        return f"'conversations' must be a list of turns, got {_kind(turns)}"
    placeholders, assistant = [], False
    for k, turn in enumerate(turns):
        role, text = _turn(turn)
        if not isinstance(role, str) or role not in ROLE_OF or not isinstance(text, str):
            return (
                f"conversations[{k}] is not a turn {{'from': 'human' | 'gpt' | 'system', "
                f"'value': str}}: got {_kind(turn)}"
            )
        assistant = assistant or ROLE_OF[role] == "assistant"
        count = text.count(PLACEHOLDER)
        if count and ROLE_OF[role] != "user":
            return (
                f"conversations[{k}] ({role}) has the {PLACEHOLDER} placeholder; it belongs in "
                "a user (human) turn"
            )
        placeholders += [k] * count
    if not assistant:
        return "the conversation has no assistant ('gpt') turn: nothing to learn from it"
    if image is None and placeholders:
        return (
            f"{PLACEHOLDER} in conversations[{placeholders[0]}], but the entry has no 'image' "
            "(a text-only entry has no placeholder)"
        )
    if len(placeholders) > 1:
        return (
            f"{len(placeholders)} {PLACEHOLDER} placeholders (in conversations"
            f"{sorted(set(placeholders))}) for the entry's one image"
        )
    return None


def with_placeholder(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns of an entry with an image, with ``"<image>\\n"`` in front of its first user
    turn when no turn has the placeholder (the features then come before the first question,
    where LLaVA puts them); the turns as they are otherwise.

    Args:
        turns: a valid conversation (:func:`check_entry`).

    Returns:
        ``turns`` itself, or a copy with the first user turn's text changed.
    """
    if any(PLACEHOLDER in _turn(turn)[1] for turn in turns):
        return turns
    for k, turn in enumerate(turns):
        role, text = _turn(turn)
        if ROLE_OF[role] == "user":
            key = "value" if "value" in turn else "content"
            return [*turns[:k], {**turn, key: f"{PLACEHOLDER}\n{text}"}, *turns[k + 1 :]]
    return turns


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a split: its id, image path as written (None: text only), conversation,
    where it is in the file (list index, or line of a JSON Lines file) and what is wrong
    with it (None: nothing)."""

    id: str
    image: str | None
    conversations: Any
    position: int
    problem: str | None


class LlavaDataset(Dataset):
    """LLaVA-format conversations (a JSON list, or JSON Lines), each about an image or text only.

    Items are dicts: ``id`` (the entry's ``id`` as a string, else its index), ``image`` (a PIL
    RGB image; a text-only entry gets a blank black 32x32 image so that batches stay uniform,
    and no placeholder, so no image features) and ``chat``: the entry's ``conversations`` list
    as given (the column a :class:`~mmtrain.data.targets.ChatTarget` reads), except that an
    entry with an image and no ``<image>`` placeholder gets one in front of its first user
    turn (:func:`with_placeholder`): only the data set knows whether an item's image is real
    or the blank of a text-only entry. Other keys of an entry (``model``...) are ignored.

    Which file: ``path`` if given, else the file of ``split`` among ``train``, ``val`` and
    ``test``; ``test=None`` tests on ``val`` (logged). A relative file is resolved against
    ``root`` if given, else the working directory. Image paths are relative to
    ``image_folder`` (LLaVA's ``--image_folder``; a relative one is resolved as the split
    files are), or, when it is None, to the folder of the JSON file; absolute paths are used
    as they are.

    Checks: a file that is not JSON (naming its line and column) or not a list of objects
    fails when the split is opened. With ``validate`` (the default), so does every bad entry
    (see :func:`check_entry`: no ``conversations``, no assistant turn, a misplaced or extra
    ``<image>`` placeholder...) and every image file that does not exist, each error listing
    the first few with their count, so that a long run does not stop at a bad sample hours
    in. An unreadable image is an :class:`MMTrainError` naming ``<json file>:id=<id>`` when its
    item loads, so that ``data.on_error=skip`` can skip it; with ``validate=False`` bad entries
    and missing images fail (or are skipped) there too.

    Args:
        path: the JSON or JSON Lines file.
        columns: the columns to load (set by the data module); None loads ``chat`` and
            ``image``.
        split: with ``path=None``, the split whose file to read: ``train``, ``val`` or ``test``.
        root: the folder that relative split files (and a relative ``image_folder``) are
            relative to; None: the working directory.
        train: the training file.
        val: the validation file.
        test: the test file; None uses ``val``.
        image_folder: the folder that the entries' image paths are relative to; None: the
            JSON file's folder.
        validate: check every entry and image file when the split is opened.

    Raises:
        ValueError: for an unknown split, or both ``path`` and split files.
        MMTrainError: for an unset or missing file or image folder, a file that is not JSON
            or not a list of objects, an empty file, and with ``validate`` a bad entry or a
            missing image file.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        columns: list[str] | None = None,
        split: str | None = None,
        root: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        image_folder: str | None = None,
        validate: bool = True,
    ) -> None:
        example = "file.json or file.jsonl"
        key, path = split_file(path, split, train, val, test, "a LLaVA JSON file", example)
        self.path = self._resolve(path, root)
        if not self.path.is_file():
            raise MMTrainError(f"{key}LLaVA JSON file not found: {self.path.absolute()}")
        if image_folder is None:
            self.base = self.path.parent
        else:
            self.base = self._resolve(image_folder, root)
            if not self.base.is_dir():
                raise MMTrainError(
                    f"data.dataset.image_folder={image_folder}: not a folder "
                    f"({self.base.absolute()})"
                )
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.columns = list(COLUMNS)
        self.load = list(COLUMNS if columns is None else columns)
        self.validate = validate
        self.entries = [self._entry(raw, position) for raw, position in self._read()]
        if not self.entries:
            raise MMTrainError(f"{key}{self.path}: the file has no entries")
        if validate:
            self._check_entries()
            if "image" in self.load:
                self._check_images()

    @staticmethod
    def _resolve(path: str | Path, root: str | None) -> Path:
        path = Path(path)
        return Path(root) / path if not path.is_absolute() and root is not None else path

    # ---- reading ------------------------------------------------------------------------------
    def _read(self) -> list[tuple[dict[str, Any], int]]:
        """The entries with their list index (JSON) or line number (JSON Lines).

        Raises:
            MMTrainError: naming the line and column of invalid JSON, or the first entry that is
                not an object (or a top level that is not a list).
        """
        # utf-8-sig: a byte-order mark is not part of the JSON.
        with self.path.open(encoding="utf-8-sig") as f:
            if self.jsonl:
                rows = []
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        rows.append((json.loads(line), line_no))
                    except json.JSONDecodeError as err:
                        raise MMTrainError(
                            f"{self.path}:{line_no}:{err.colno}: not valid JSON: {err.msg}"
                        ) from None
            else:
                text = f.read()
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as err:
                    hint = ""
                    if err.msg == "Extra data" and text.lstrip().startswith("{"):
                        hint = " (one object a line is JSON Lines: name the file .jsonl)"
                    raise MMTrainError(
                        f"{self.path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}{hint}"
                    ) from None
                if not isinstance(data, list):
                    raise MMTrainError(
                        f"{self.path}: expected a JSON list of entries (LLaVA's format: "
                        f'[{{"id", "image", "conversations"}}, ...]), got a '
                        f"{type(data).__name__} at the top level"
                    )
                rows = [(raw, index) for index, raw in enumerate(data)]
        for raw, position in rows:
            if not isinstance(raw, dict):
                raise MMTrainError(
                    f"{self.path}: {self._position(position)} is not an object: expected "
                    f'{{"id", "image", "conversations"}}, got {_kind(raw)}'
                )
        return rows

    def _entry(self, raw: dict[str, Any], position: int) -> Entry:
        image = raw.get("image")
        problem = check_entry(raw)
        raw_id = raw.get("id")
        turns = raw.get("conversations")
        if problem is None and image is not None:
            turns = with_placeholder(turns)
        return Entry(
            id=str(position if raw_id is None else raw_id),
            image=image if isinstance(image, str) else None,
            conversations=turns,
            position=position,
            problem=problem,
        )

    def _position(self, position: int) -> str:
        return f"line {position}" if self.jsonl else f"entry [{position}]"

    def where(self, index: int) -> str:
        """``<json file>:id=<id> (entry [i])`` of item ``index`` (``line n`` for JSON Lines),
        for error messages."""
        entry = self.entries[index]
        return f"{self.path}:id={entry.id} ({self._position(entry.position)})"

    def image_path(self, index: int) -> Path | None:
        """The image file of item ``index``; None for a text-only entry."""
        image = self.entries[index].image
        return None if image is None else self.base / image

    # ---- checks when the split is opened ------------------------------------------------------
    def _check_entries(self) -> None:
        bad = [i for i, entry in enumerate(self.entries) if entry.problem is not None]
        if bad:
            shown = "; ".join(
                f"id={self.entries[i].id} ({self._position(self.entries[i].position)}): "
                f"{self.entries[i].problem}"
                for i in bad[:SHOWN]
            )
            more = f" (the first {SHOWN} shown)" if len(bad) > SHOWN else ""
            raise MMTrainError(
                f"{self.path}: {len(bad)} of {len(self.entries)} entries are not valid LLaVA "
                f"conversations{more}: {shown}"
            )

    def _check_images(self) -> None:
        """Fail at once, listing the first few, when image files do not exist: each folder is
        listed once (a stat an image would take minutes on a network file system for LLaVA's
        665k images), and names not listed are checked one by one (case-insensitive file
        systems)."""
        listings: dict[Path, set[str]] = {}
        missing, with_image = [], 0
        for index in range(len(self.entries)):
            file = self.image_path(index)
            if file is None:
                continue
            with_image += 1
            folder = file.parent
            if folder not in listings:
                try:
                    listings[folder] = set(os.listdir(folder))
                except OSError:
                    listings[folder] = set()
            if file.name not in listings[folder] and not file.is_file():
                missing.append(index)
        if not missing:
            return
        shown = ", ".join(
            f"id={self.entries[i].id} ({self._position(self.entries[i].position)}): "
            f"{self.entries[i].image}"
            for i in missing[:SHOWN]
        )
        more = f" (the first {SHOWN} shown)" if len(missing) > SHOWN else ""
        if len(missing) == with_image:
            what = f"none of the {with_image} image files exist under {self.base}"
        else:
            what = f"{len(missing)} of {with_image} image files do not exist under {self.base}"
        raise MMTrainError(
            f"{self.path}: {what}{more}: {shown}; set data.dataset.image_folder=<the folder the "
            "image paths are relative to> (LLaVA's --image_folder), or skip the entries whose "
            "image is missing with data.dataset.validate=false data.on_error=skip"
        )

    # ---- the data set ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def values(self, column: str) -> list[Any]:
        """All values of a column over the split, without reading images.

        ``chat`` gives each entry's conversation (the list of turns of its items; None for
        an entry without one, which fails when loaded), ``image`` each image path (None for a
        text-only entry), ``id`` the ids.

        Raises:
            MMTrainError: for a column this data does not have.
        """
        if column == "chat":
            return [entry.conversations for entry in self.entries]
        if column == "image":
            return [
                None if (path := self.image_path(i)) is None else str(path)
                for i in range(len(self.entries))
            ]
        if column == "id":
            return [entry.id for entry in self.entries]
        raise MMTrainError(f"{self.path}: no column {column!r}; the data has {self.columns}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        if entry.problem is not None:
            raise MMTrainError(f"{self.where(index)}: {entry.problem}")
        item: dict[str, Any] = {"id": entry.id}
        for column in self.load:
            if column == "image":
                file = self.image_path(index)
                if file is None:
                    item["image"] = Image.new("RGB", BLANK_SIZE)
                    continue
                try:
                    item["image"] = load_image(file)
                except MMTrainError as err:
                    raise MMTrainError(f"{self.where(index)}: {err}") from None
            elif column == "chat":
                item["chat"] = [dict(turn) for turn in entry.conversations]
            else:
                raise MMTrainError(
                    f"{self.where(index)}: no column {column!r}; the data has {self.columns}"
                )
        return item
