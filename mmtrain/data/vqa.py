"""VQA v2 (visualqa.org), read as released: questions, ten human answers each, and COCO images.

The layout after extracting the archives::

    <root>/v2_OpenEnded_mscoco_<subset>_questions.json   {"questions": [{image_id, question,
                                                            question_id}]}
    <root>/v2_mscoco_<subset>_annotations.json           {"annotations": [{question_id, image_id,
                                                            answers: [{answer, answer_confidence,
                                                            answer_id}], multiple_choice_answer,
                                                            answer_type, question_type}]}
    <root>/<images>/COCO_<images>_<image_id:012d>.jpg    the COCO 2014/2015 images

with ``<subset>`` one of ``train2014``, ``val2014``, ``test2015``, ``test-dev2015``; the images
folder ``<images>`` is the subset's name (``test2015`` for ``test-dev2015``, a subset of it),
directly under ``root`` or under ``root/images/``. The test subsets have no annotations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.contracts import SPLITS
from mmtrain.data.io import load_image
from mmtrain.errors import MMTrainError
from mmtrain.utils.vqa_answers import normalize_answer

# Subsets whose images live in another subset's folder.
IMAGE_SUBSETS = {"test-dev2015": "test2015"}


@dataclass(frozen=True)
class Question:
    """One question: its ids, text, image file and, where annotated, its answers."""

    id: int
    image_id: int
    text: str
    path: Path
    answer: str | None  # multiple_choice_answer, normalised
    references: tuple[str, ...] | None  # the human answers, raw, by answer_id


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise MMTrainError(f"{path}: not valid JSON: {err}") from None


class VQADataset(Dataset):
    """VQA v2 questions about COCO images, with their answers.

    Items are dicts with ``id`` (the question id, as a string) and the requested columns:
    ``image`` (a PIL RGB image; grayscale JPEGs are converted), ``text`` (the question) and
    ``answer``: the question's ``multiple_choice_answer`` normalised as the VQA evaluation does
    (:func:`mmtrain.utils.vqa_answers.normalize_answer`), with ``answer_references``, the ten human
    answers as released (raw, by ``answer_id``), for the soft targets and the VQA accuracy.
    Questions are sorted by question id. The test subsets (``test-dev2015``, ``test2015``) have
    no annotations: their columns are ``image`` and ``text`` only.

    A missing or unreadable image is an :class:`MMTrainError` naming
    ``<questions json>:question_id=<id>`` when its item is loaded, so that
    ``data.on_error=skip`` can skip it.

    Args:
        root: the folder with the question and annotation files and the image folders.
        split: ``train``, ``val`` or ``test``.
        columns: the columns to load (set by the data module); None loads all there are.
        train: the subset read for ``train``.
        val: the subset read for ``val``.
        test: the subset read for ``test``; ``val2014`` by default, since the test answers are
            not public (``test-dev2015`` for predictions to submit to the evaluation server).

    Raises:
        ValueError: for an unknown split or an empty subset name.
        MMTrainError: for a missing root, question file, annotation file (of a subset that has
            one) or image folder, or a file that is not in the official layout.
    """

    def __init__(
        self,
        root: str,
        split: str,
        columns: list[str] | None = None,
        train: str = "train2014",
        val: str = "val2014",
        test: str = "val2014",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        subset = {"train": train, "val": val, "test": test}[split]
        if not isinstance(subset, str) or not subset.strip():
            raise ValueError(f"the subset of split {split!r} must be a name, got {subset!r}")
        self.root, self.split, self.subset = Path(root), split, subset
        if not self.root.is_dir():
            raise MMTrainError(
                f"VQA v2 not found: data.root={self.root} is not a folder ({self._hint()})"
            )
        self.source = self.root / f"v2_OpenEnded_mscoco_{subset}_questions.json"
        self.annotation_file = self.root / f"v2_mscoco_{subset}_annotations.json"
        if not self.source.is_file():
            raise MMTrainError(
                f"VQA v2 questions not found: expected {self.source} ({self._hint()})"
            )
        annotated = self.annotation_file.is_file()
        if not annotated and not subset.startswith("test"):
            raise MMTrainError(
                f"VQA v2 annotations not found: expected {self.annotation_file} for "
                f"{self.source.name} ({self._hint()}); only the test subsets have none"
            )
        self.questions = self._read(self._image_folder(), annotated)
        self.columns = ["answer", "image", "text"] if annotated else ["image", "text"]
        self.load = list(self.columns) if columns is None else list(columns)

    def _hint(self) -> str:
        return (
            f"set data.root=<folder with v2_OpenEnded_mscoco_{self.subset}_questions.json and "
            f"{IMAGE_SUBSETS.get(self.subset, self.subset)}/>, as released on visualqa.org"
        )

    def _image_folder(self) -> Path:
        name = IMAGE_SUBSETS.get(self.subset, self.subset)
        candidates = [self.root / name, self.root / "images" / name]
        for folder in candidates:
            if folder.is_dir():
                return folder
        raise MMTrainError(
            f"VQA v2 images not found: expected the folder {candidates[0]} or {candidates[1]} "
            f"for {self.source.name} ({self._hint()})"
        )

    def _read_answers(self) -> dict[int, tuple[str, tuple[str, ...]]]:
        """question_id -> (normalised multiple_choice_answer, raw answers by answer_id)."""
        data = _read_json(self.annotation_file)
        answers: dict[int, tuple[str, tuple[str, ...]]] = {}
        try:
            for annotation in data["annotations"]:
                records = annotation["answers"]
                if all("answer_id" in record for record in records):
                    records = sorted(records, key=lambda record: int(record["answer_id"]))
                answers[int(annotation["question_id"])] = (
                    normalize_answer(str(annotation["multiple_choice_answer"])),
                    tuple(str(record["answer"]) for record in records),
                )
        except (KeyError, TypeError, ValueError) as err:
            raise MMTrainError(
                f"{self.annotation_file}: not the official VQA annotations JSON "
                f"({type(err).__name__}: {err}); expected annotations[] with question_id/"
                "answers[].answer/multiple_choice_answer"
            ) from None
        return answers

    def _read(self, folder: Path, annotated: bool) -> list[Question]:
        answers = self._read_answers() if annotated else {}
        data = _read_json(self.source)
        try:
            raw = [
                (int(q["question_id"]), int(q["image_id"]), str(q["question"]))
                for q in data["questions"]
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise MMTrainError(
                f"{self.source}: not the official VQA questions JSON ({type(err).__name__}: "
                f"{err}); expected questions[] with question_id/image_id/question"
            ) from None
        image_name = f"COCO_{folder.name}_{{:012d}}.jpg"
        questions = []
        for question_id, image_id, text in sorted(raw):
            answer, references = None, None
            if annotated:
                if question_id not in answers:
                    raise MMTrainError(
                        f"{self.annotation_file}: no annotation for question_id={question_id} "
                        f"of {self.source.name}"
                    )
                answer, references = answers[question_id]
            path = folder / image_name.format(image_id)
            questions.append(Question(question_id, image_id, text, path, answer, references))
        return questions

    def __len__(self) -> int:
        return len(self.questions)

    def where(self, index: int) -> str:
        """``<questions json>:question_id=<id>`` of item ``index``, for error messages."""
        return f"{self.source}:question_id={self.questions[index].id}"

    def values(self, column: str) -> list[Any]:
        """All values of a column over the split, without reading images.

        ``answer`` gives the normalised ``multiple_choice_answer`` of each question,
        ``answer_references`` its human answers (e.g. to build the answer vocabulary with
        :func:`mmtrain.utils.vqa_answers.answer_vocabulary`), ``text`` the questions, ``image`` the
        image paths, ``id`` the question ids.

        Raises:
            MMTrainError: for a column this data does not have.
        """
        if column == "id":
            return [str(q.id) for q in self.questions]
        if column == "image":
            return [str(q.path) for q in self.questions]
        if column == "text":
            return [q.text for q in self.questions]
        if "answer" in self.columns and column == "answer":
            return [q.answer for q in self.questions]
        if "answer" in self.columns and column == "answer_references":
            return [list(q.references or ()) for q in self.questions]
        raise MMTrainError(f"{self.source}: no column {column!r}; the data has {self.columns}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        question = self.questions[index]
        item: dict[str, Any] = {"id": str(question.id)}
        for column in self.load:
            if column == "image":
                try:
                    item["image"] = load_image(question.path)
                except MMTrainError as err:
                    raise MMTrainError(f"{self.where(index)}: {err}") from None
            elif column == "text":
                item["text"] = question.text
            elif column in ("answer", "answer_references") and question.references is not None:
                if column == "answer":
                    item["answer"] = question.answer
                item["answer_references"] = list(question.references)
            else:
                raise MMTrainError(
                    f"{self.where(index)}: no column {column!r}; the data has {self.columns}"
                )
        return item
