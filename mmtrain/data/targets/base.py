"""What every target (one task's target on the data side) does unless it says otherwise.

A target is configured at ``data.targets.<task>``; a task with no entry gets a
:class:`~mmtrain.data.targets.LabelTarget`. See :class:`mmtrain.contracts.Target`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from mmtrain.contracts import REFERENCES, Column, PredictionFile
from mmtrain.data.collate import stacked
from mmtrain.errors import MMTrainError


def results_id(sample_id: Any) -> int | str:
    """A sample id as official results files want it: an integer when it is one."""
    text = str(sample_id)
    return int(text) if text.isdigit() else text


def references(item: dict[str, Any], task: str) -> list[str]:
    """All reference strings of ``task`` in a raw item (``<task>_references``, e.g. the five
    captions of an image), else the target itself."""
    refs = item.get(f"{task}{REFERENCES}")
    return [str(r) for r in refs] if refs else [str(item[task])]


class Target:
    """The defaults of a target: nothing to fit, a fixed-size tensor per sample (stacked),
    predictions written as ``<task>_<split>.jsonl`` lines ``{"id", "prediction"}`` (plus
    ``source`` with several data sets). Also the writer of tasks without a target (retrieval)."""

    name: str = ""
    inputs: tuple[str, ...] = ()  # the inputs it is encoded together with (a mask: image)
    bucketable = False  # has lengths() (token sequences)

    @property
    def columns(self) -> list[str]:
        """The data set columns it reads: its task's (a causal-LM target adds its prompt's)."""
        return [self.name]

    @property
    def fitted(self) -> bool:
        return True

    def fit(self, column: Column) -> None:
        """Learn from the training split (nothing by default)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use what :meth:`state_dict` saved (nothing by default)."""

    def encode(self, item: dict[str, Any], train: bool, inputs: dict[str, Any]) -> dict[str, Any]:
        """``{task: tensor}`` (plus ``<task>_references``...) of one raw item; ``inputs`` are
        the data module's, for a target encoded with one (a mask with its image). Every
        target with data defines it; the base class is also the writer of tasks that have
        none (retrieval), which never encode.

        Raises:
            MMTrainError: naming the task, for a target class that does not encode.
        """
        raise MMTrainError(f"the {self.name!r} target of {type(self).__name__} encodes nothing")

    def collate(self, values: list[Tensor]) -> dict[str, Tensor]:
        """Stack same-shaped tensors into ``{name: (B, ...)}``."""
        return stacked(self.name, values)

    def lengths(self, values: Callable[[str], list[Any]], base: Path | None) -> list[float]:
        raise MMTrainError(f"data.bucket_by={self.name!r}: the {self.name} target has no length")

    def facts(self) -> dict[str, Any]:
        """What the head of this task gets from the data (nothing by default)."""
        return {}

    def plain(self, value: Any, folder: Path, sample_id: str) -> Any:
        """One prediction as JSON can hold it (``folder``: where files of it may go)."""
        return value

    def write(
        self,
        rows: list[dict[str, Any]],
        folder: Path,
        split: str,
        normalize: Callable[[str], str] | None = None,
    ) -> PredictionFile:
        """``<task>_<split>.jsonl`` in ``folder``: ``{"id", "prediction"}`` a line."""
        lines = [
            {
                "id": r["id"],
                **({"source": r["source"]} if "source" in r else {}),
                "prediction": self.plain(r[self.name], folder / f"{self.name}s_{split}", r["id"]),
            }
            for r in rows
        ]
        return write_lines(folder / f"{self.name}_{split}.jsonl", lines, self.name, split)


def write_lines(
    path: Path, lines: list[dict[str, Any]], task: str, split: str, **keys: Any
) -> PredictionFile:
    """Write JSON Lines; the :class:`PredictionFile` that reads them (``keys``: its keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return PredictionFile(path, task, split, **keys)


def write_results(
    path: Path, results: list[dict[str, Any]], task: str, split: str, id_key: str, value_key: str
) -> PredictionFile:
    """Write an official results file (one JSON list, as COCO and VQA evaluate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return PredictionFile(path, task, split, id_key=id_key, value_key=value_key)


# The official results files (one JSON list): format -> (id key, value key) of each record.
OFFICIAL = {"coco": ("image_id", "caption"), "vqa": ("question_id", "answer")}


def write_official(
    rows: list[dict[str, Any]], folder: Path, split: str, task: str, results: str
) -> PredictionFile:
    """``<task>s_<split>.json`` in ``folder``, in an official ``results`` format
    (:data:`OFFICIAL`: COCO's captions, VQA's answers), the ids as integers where they are."""
    id_key, value_key = OFFICIAL[results]
    records = [{id_key: results_id(r["id"]), value_key: r[task]} for r in rows]
    path = folder / f"{task}s_{split}.json"
    return write_results(path, records, task, split, id_key, value_key)
