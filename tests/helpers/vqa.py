"""VQA v2 in the official layout (questions and annotations JSON, COCO images), for tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

IMAGES = {"train2014": {9: "RGB", 25: "L"}, "val2014": {42: "RGB"}, "test2015": {77: "RGB"}}
# question id (image id * 1000 + k, as in the release) -> (question, answers, multiple choice)
QUESTIONS: dict[str, dict[int, tuple[str, list[str], str]]] = {
    "train2014": {
        9000: ("How many dogs are there?", ["2"] * 6 + ["two", "2", "3", "2"], "2"),
        9001: ("Is it raining?", ["yes"] * 10, "yes"),
        25000: ("What does the sign say?", ["STOP"] * 7 + ["stop", "Stop", "stop sign"], "STOP"),
        25001: (
            "What is the man holding?",
            ["frisbee", "a frisbee", "Frisbee", "frisbee", "disc"] + ["frisbee"] * 5,
            "frisbee",
        ),
    },
    "val2014": {
        42000: ("What color is the shirt?", ["red"] * 4 + ["Red.", "maroon"] + ["red"] * 4, "red"),
        42001: ("What time is it?", ["1:30", "1:30 pm", "1:30", "noon"] + ["1:30"] * 6, "1:30"),
    },
    "test-dev2015": {
        77000: ("What animal is this?", [], ""),
        77001: ("Is the sky blue?", [], ""),
    },
}


def write_jpeg(path: Path, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (12 + seed % 4, 20, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb.convert(mode).save(path, quality=90)


def write_vqa(root: Path) -> Path:
    """Write VQA v2 in the official layout under ``root`` (files out of question-id order)."""
    rng = random.Random(0)
    for subset, images in IMAGES.items():
        for image_id, mode in images.items():
            write_jpeg(root / subset / f"COCO_{subset}_{image_id:012d}.jpg", mode, image_id)
    for subset, table in QUESTIONS.items():
        info = {"description": "This is v2.0 of the VQA dataset.", "version": "2.0"}
        questions = [
            {"image_id": qid // 1000, "question": text, "question_id": qid}
            for qid, (text, _, _) in table.items()
        ]
        rng.shuffle(questions)
        (root / f"v2_OpenEnded_mscoco_{subset}_questions.json").write_text(
            json.dumps(
                {
                    "info": info,
                    "task_type": "Open-Ended",
                    "data_type": "mscoco",
                    "license": {"url": "http://creativecommons.org/licenses/by/4.0/"},
                    "data_subtype": subset,
                    "questions": questions,
                }
            )
        )
        if subset.startswith("test"):
            continue  # the test subsets have no annotations
        annotations = []
        for qid, (text, answers, multiple_choice) in table.items():
            records = [
                {"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                for k, answer in enumerate(answers)
            ]
            rng.shuffle(records)  # ordered by answer_id when read
            annotations.append(
                {
                    "question_type": " ".join(text.split()[:2]).lower(),
                    "multiple_choice_answer": multiple_choice,
                    "answers": records,
                    "image_id": qid // 1000,
                    "answer_type": "number" if text.startswith("How many") else "other",
                    "question_id": qid,
                }
            )
        rng.shuffle(annotations)
        (root / f"v2_mscoco_{subset}_annotations.json").write_text(
            json.dumps({"info": info, "data_subtype": subset, "annotations": annotations})
        )
    return root
