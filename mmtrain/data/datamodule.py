"""The Lightning data module: data set per split -> transforms -> collate -> loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmtrain.data.collate import collate
from mmtrain.data.transforms import AudioTransform, ImageTransform, WordTokenizer
from mmtrain.errors import MMTrainError

SPLIT_OF_STAGE = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class _Transformed(Dataset):
    """Applies the data module's preprocessing to the raw items of one split."""

    def __init__(self, raw: Dataset, encode: Callable[[dict[str, Any], bool], dict], train: bool):
        self.raw, self.encode, self.train = raw, encode, train

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.encode(self.raw[index], self.train)


class MultimodalDataModule(pl.LightningDataModule):
    """Loads the modalities that have an encoder and the targets that have a head.

    The vocabularies (of the text input and of each text target) and the class names of each
    classification target are built from the training split in :meth:`setup` and saved in
    :meth:`state_dict` (so a checkpoint carries them); a restored state is used as is.

    A task with a tokenizer in ``tokenizers`` is a text target (``caption``): it is encoded as
    ``<bos> ids <eos>`` and batched as ``caption (B, L)`` + ``caption_mask``; its raw strings go
    along as ``<task>_references`` (all references of an image when the data set gives them,
    under ``<task>_references``, else the one target string). Other tasks are class labels.

    Args:
        dataset: called as ``dataset(split=..., columns=..., root=...)`` for each split; a class
            may offer a static ``prepare_data(**kwargs)`` that writes or downloads files once.
        root: the data set's folder (``data.root=...``), handed to ``dataset``; None leaves
            the dataset's own ``root`` (if any) as configured.
        image: image preprocessing.
        text: the tokenizer for the ``text`` modality.
        tokenizers: ``{task: tokenizer}`` for text targets such as ``caption``.
        audio: audio preprocessing.
        modalities: the inputs to load (wired by build.py from the encoders).
        tasks: the targets to load (wired by build.py from the heads).
        batch_size: samples per batch (per device).
        num_workers: data-loader worker processes.
        pin_memory: pin host memory; None pins when CUDA is available.
        predict_split: the split that ``mmtrain predict`` runs on.

    Raises:
        ValueError: for a non-positive batch size or negative worker count.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        root: str | None = None,
        image: ImageTransform | None = None,
        text: WordTokenizer | None = None,
        audio: AudioTransform | None = None,
        tokenizers: dict[str, WordTokenizer] | None = None,
        modalities: list[str] = (),
        tasks: list[str] = (),
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        predict_split: str = "test",
    ) -> None:
        super().__init__()
        if batch_size <= 0 or num_workers < 0:
            raise ValueError(
                f"need batch_size > 0 and num_workers >= 0, got {batch_size}, {num_workers}"
            )
        self.dataset_factory = dataset
        self.root_kwargs = {} if root is None else {"root": str(root)}
        self.transforms = {"image": image, "text": text, "audio": audio}
        self.tokenizers = dict(tokenizers or {})
        self.modalities = list(modalities)
        self.tasks = list(tasks)
        missing = [m for m in self.modalities if self.transforms.get(m) is None]
        if missing:
            raise ValueError(
                f"modalities {missing} have an encoder but no data.{missing[0]} "
                "preprocessing config"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.predict_split = predict_split
        self.class_names: dict[str, list[str]] = {}
        self.datasets: dict[str, Dataset] = {}

    # ---- Lightning hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Run the data set's own ``prepare_data`` (generation, download) once."""
        factory = self.dataset_factory
        prepare = getattr(getattr(factory, "func", factory), "prepare_data", None)
        if prepare is not None:
            prepare(**{**getattr(factory, "keywords", {}), **self.root_kwargs})

    def setup(self, stage: str | None = None) -> None:
        """Open the splits of ``stage`` (all when None) and build vocabulary and classes."""
        if stage == "predict":  # inputs only; vocabularies and classes come from the checkpoint
            if self.predict_split not in self.datasets:
                self.datasets[self.predict_split] = self.dataset_factory(
                    split=self.predict_split, columns=self.modalities, **self.root_kwargs
                )
            return
        splits = {"train"} | set(SPLIT_OF_STAGE.get(stage or "", ("train", "val", "test")))
        for split in sorted(splits - set(self.datasets)):
            self.datasets[split] = self.dataset_factory(
                split=split, columns=self.modalities + self.tasks, **self.root_kwargs
            )
        train = self.datasets["train"]
        self._check_columns(train)
        tokenizer = self.transforms["text"]
        if "text" in self.modalities and not tokenizer.fitted:
            tokenizer.fit(train.values("text"))
        for task in self.tasks:
            if task in self.tokenizers:
                if not self.tokenizers[task].fitted:
                    self.tokenizers[task].fit(train.values(task))
            elif task not in self.class_names and self._is_categorical(train.values(task)):
                self.class_names[task] = sorted({str(v) for v in train.values(task)})

    def _check_columns(self, dataset: Dataset) -> None:
        columns = getattr(dataset, "columns", None)
        if columns is None:
            return
        for task in self.tasks:
            if task not in columns:
                raise MMTrainError(
                    f"head/{task} needs a {task!r} column, but the data has {columns}; "
                    f"remove the task with ~head/{task}"
                )
        for modality in self.modalities:
            if modality not in columns:
                raise MMTrainError(
                    f"encoder/{modality} needs a {modality!r} column, but the data has "
                    f"{columns}; remove the modality with ~encoder/{modality}"
                )

    @staticmethod
    def _is_categorical(values: list[Any]) -> bool:
        return all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry to rebuild the model, as plain types: the text input's
        tokenizer state, the class names and the text targets' tokenizer states."""
        tokenizer = self.transforms["text"]
        return {
            "text": tokenizer.state_dict() if tokenizer is not None and tokenizer.fitted else None,
            "class_names": {k: list(v) for k, v in self.class_names.items()},
            "targets": {k: t.state_dict() for k, t in self.tokenizers.items() if t.fitted},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use a saved vocabulary and class names instead of building them."""
        if state.get("text") and self.transforms["text"] is not None:
            self.transforms["text"].load_state_dict(state["text"])
        self.class_names.update({k: list(v) for k, v in state.get("class_names", {}).items()})
        for task, tokenizer_state in (state.get("targets") or {}).items():
            if task in self.tokenizers:
                self.tokenizers[task].load_state_dict(tokenizer_state)

    # ---- what build.py wires into the model -----------------------------------------------
    def facts(self) -> dict[str, Any]:
        """Sizes the model needs from the data (call after :meth:`setup`)."""
        facts: dict[str, Any] = {
            "class_names": dict(self.class_names),
            "tokenizers": dict(self.tokenizers),
        }
        if self.transforms["text"] is not None:
            facts["vocab_size"] = self.transforms["text"].vocab_size
            facts["pad_id"] = WordTokenizer.pad_id
        if self.transforms["audio"] is not None:
            facts["n_mels"] = self.transforms["audio"].n_mels
        return facts

    # ---- items and loaders ------------------------------------------------------------------
    def encode(self, item: dict[str, Any], train: bool) -> dict[str, Any]:
        """Preprocess one raw item into tensors keyed like the batch."""
        out: dict[str, Any] = {"id": item["id"]}
        # A modality or target the item lacks is left out (predict inputs have no targets).
        if "image" in self.modalities and "image" in item:
            out["image"] = self.transforms["image"](item["image"], train=train)
        if "text" in self.modalities and "text" in item:
            out["text"] = self.transforms["text"].encode(item["text"])
        if "audio" in self.modalities and "audio" in item:
            samples, rate = item["audio"]
            out["audio"] = self.transforms["audio"](samples, rate, train=train)
        for task in self.tasks:
            if task not in item:
                continue
            if task in self.tokenizers:
                out[task] = self.tokenizers[task].encode(str(item[task]), add_special=True)
                refs = item.get(f"{task}_references")
                out[f"{task}_references"] = list(refs) if refs else [str(item[task])]
            else:
                out[task] = self._encode_target(task, item[task], item["id"])
        return out

    def _encode_target(self, task: str, value: Any, sample_id: str) -> torch.Tensor:
        names = self.class_names.get(task)
        if names is None:
            raise MMTrainError(f"no encoding for target {task!r} of sample {sample_id}")
        try:
            return torch.tensor(names.index(str(value)))
        except ValueError:
            raise MMTrainError(
                f"sample {sample_id}: {task}={value!r} is not a class of the training split "
                f"({len(names)} classes)"
            ) from None

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if split not in self.datasets:
            self.setup(None)
        return DataLoader(
            _Transformed(self.datasets[split], self.encode, train),
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split)
