"""Shared fixtures: tiny shapes data, config composition, synthetic batches.

Everything here is deterministic and small: the whole suite runs on 2 CPU cores.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mmtrain.config import config_dir  # cheap: no torch

CONFIG_DIR = config_dir()

# The tiny version of the default data set: generated once per session, shared by every test
# (and by the CLI subprocesses, through MMTRAIN_DATA_DIR).
SHAPES_SIZES = {"train": 24, "val": 8, "test": 8}
TINY_DATA = [
    f"data.dataset.num_train={SHAPES_SIZES['train']}",
    f"data.dataset.num_val={SHAPES_SIZES['val']}",
    f"data.dataset.num_test={SHAPES_SIZES['test']}",
    "data.batch_size=4",
]
# Less noise in captured output of in-process and subprocess runs.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def synth_caption_tokenizer() -> Any:
    """A word tokenizer fitted on a few captions (the caption head's data fact)."""
    from mmtrain.data.transforms.text import WordTokenizer

    captions = ["a large red circle in the top left", "a small blue square at the bottom"]
    return WordTokenizer(max_length=8, strip_punctuation=True).fit(captions)


def synth_transcript_tokenizer() -> Any:
    """A character tokenizer fitted on a few transcripts (the CTC head's data fact)."""
    from mmtrain.data.transforms.char import CharTokenizer

    transcripts = ["a red circle", "the blue square is small", "turn left"]
    return CharTokenizer(max_length=16).fit(transcripts)


def synth_answer_vocabulary() -> Any:
    """A VQA answer vocabulary fitted on a few answers (the VQA head's data fact)."""
    from mmtrain.data.transforms.answers import AnswerVocabulary

    return AnswerVocabulary(top_k=8).fit(["yes", "no", "2", "red", "yes", "circle"])


# Data facts (what build.py takes from the data module) for synthetic batches.
SYNTH_CLASSES = {
    "label": ["circle_high", "circle_low", "square_high", "square_low", "tri_high"],
    "mask": ["background", "circle", "square", "triangle"],  # segmentation class ids
}
SYNTH_INPUTS: dict[str, dict[str, Any]] = {  # {modality: what its input tells its encoder}
    "image": {"image_size": 64},
    "text": {"vocab_size": 32, "pad_id": 0},
    "audio": {"n_mels": 40},
    "tabular": {"num_features": 8},  # 4 columns and their missingness flags
}


# ---- scripts/ ----------------------------------------------------------------------------------
TESTS = Path(__file__).resolve().parent  # on sys.path: helpers, the probes
SCRIPTS = TESTS.parent / "scripts"


def load_script(name: str) -> Any:
    """``scripts/<name>.py`` as a module (the benchmarks import each other: ``scripts/`` goes
    on ``sys.path``, as when they run)."""
    import importlib.util
    import sys

    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive_number(value: object) -> bool:
    """A finite int or float above 0 (not a bool): a measured number in a benchmark's JSON."""
    import math

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


# ---- environment ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def session_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Session-wide data and output roots (nothing is written into the working directory)."""
    return {
        "data": tmp_path_factory.mktemp("data"),
        "outputs": tmp_path_factory.mktemp("outputs"),
    }


@pytest.fixture(scope="session", autouse=True)
def _mmtrain_env(session_dirs: dict[str, Path]) -> Iterator[None]:
    """Point ``paths.data_dir`` and ``paths.log_dir`` at session temp dirs for every test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMTRAIN_DATA_DIR", str(session_dirs["data"]))
        mp.setenv("MMTRAIN_OUTPUT_DIR", str(session_dirs["outputs"]))
        mp.delenv("HYDRA_FULL_ERROR", raising=False)
        # Tests never download: a hub id resolves through the cache or a model store only.
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def model_store_folder(session_dirs: dict[str, Path]) -> Path:
    """Tiny random models under the ids the pretrained presets and experiments name (see
    helpers/model_store.py), written once per session."""
    from helpers.model_store import write_model_store

    return write_model_store(session_dirs["data"].parent / "models")


@pytest.fixture
def model_store(model_store_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny models' store, found through ``MMTRAIN_MODEL_DIR`` (as a user's model store)
    in this test only: elsewhere a preset's model id is not available offline."""
    monkeypatch.setenv("MMTRAIN_MODEL_DIR", str(model_store_folder))
    return model_store_folder


LOOPBACK = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every test: a connection or name lookup outside this machine (in the test's process)
    fails it. Yields the attempts, for tests that check them as they go."""
    attempts: list[str] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo
    local = LOOPBACK | {socket.gethostname()}

    def remote(host: Any) -> bool:
        return host not in local and not str(host).startswith("127.")

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and remote(address[0]):
            attempts.append(f"connect {address}")
            raise OSError("network access in a test")
        return connect(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if remote(host):
            attempts.append(f"resolve {host}")
            raise socket.gaierror("network access in a test")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert attempts == [], f"network touched: {attempts}"


@pytest.fixture(autouse=True)
def _clean_hydra() -> Iterator[None]:
    """No Hydra global state leaks between tests."""
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Deterministic, fast CPU math in the test process (see the note at the top)."""
    import sys

    if "torch" in sys.modules:  # do not import torch for tests that do not need it
        sys.modules["torch"].set_num_threads(1)


@pytest.fixture
def scratch(tmp_path: Path, session_dirs: dict[str, Path]) -> dict[str, Path]:
    """A scratch working directory and output root for CLI runs; data is the session's."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return {"cwd": cwd, "data": session_dirs["data"], "out": tmp_path / "outputs"}


@pytest.fixture(scope="session")
def tiny_data(session_dirs: dict[str, Path]) -> Path:
    """The tiny shapes data set under ``$MMTRAIN_DATA_DIR/shapes``, generated once."""
    from mmtrain.data.shapes import generate_shapes

    return generate_shapes(session_dirs["data"] / "shapes", SHAPES_SIZES, seed=0)


@pytest.fixture
def two_sources(tmp_path: Path) -> dict[str, dict[str, Path]]:
    """Two manifest data sets with different columns (:mod:`helpers.multi`)."""
    from helpers.multi import write_two_sources

    return write_two_sources(tmp_path)


# ---- configs ----------------------------------------------------------------------------------
def compose_cfg(*overrides: str, stage: str = "fit", output_dir: Path | None = None) -> DictConfig:
    """Compose a stage's config as ``mmtrain <stage> overrides`` would hand it to ``run``
    (``paths.output_dir`` is ``output_dir``; see :func:`mmtrain.config.task_config`)."""
    from mmtrain.config import task_config

    return task_config(stage, overrides, output_dir)


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    """``compose_config(*overrides, stage="fit", output_dir=None) -> DictConfig``."""
    return compose_cfg


# ---- synthetic batches ------------------------------------------------------------------------
# One synthesizer per modality and per task: (batch_size, facts, generator) -> batch entries.
# A new modality or task needs an entry here; the generated model tests say so when it is missing.
def _image(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    size = facts["inputs"]["image"]["image_size"]
    return {"image": torch.randn(batch_size, 3, size, size, generator=g)}


def _lengths(batch_size: int, full: int, short: int) -> list[int]:
    # Sample 0 is full length, every other sample is padded: masks are exercised in each batch.
    return [full if i == 0 else short for i in range(batch_size)]


def _text(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    length, text = 7, facts["inputs"]["text"]
    ids = torch.randint(4, text["vocab_size"], (batch_size, length), generator=g)
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    for i, n in enumerate(_lengths(batch_size, length, 4)):
        mask[i, :n] = True
    ids[~mask] = text["pad_id"]
    return {"text": ids, "text_mask": mask}


def _audio(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    frames = 50
    mels = torch.randn(batch_size, facts["inputs"]["audio"]["n_mels"], frames, generator=g)
    mask = torch.zeros(batch_size, frames, dtype=torch.bool)
    for i, n in enumerate(_lengths(batch_size, frames, 30)):
        mask[i, :n] = True
    mels = mels * mask[:, None, :]  # collate pads with zeros
    return {"audio": mels, "audio_mask": mask}


def _label(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    num_classes = facts["targets"]["label"]["num_classes"]
    return {"label": torch.randint(0, num_classes, (batch_size,), generator=g)}


def _caption(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    tokenizer = facts["targets"]["caption"]["tokenizer"]
    length = 6  # <bos> w w w w <eos>; padded samples end earlier
    ids = torch.randint(4, tokenizer.vocab_size, (batch_size, length), generator=g)
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    for i, n in enumerate(_lengths(batch_size, length, 4)):
        mask[i, :n] = True
        ids[i, 0], ids[i, n - 1] = tokenizer.bos_id, tokenizer.eos_id
    ids[~mask] = tokenizer.pad_id
    refs = [[tokenizer.decode(row[1:])] for row in ids.tolist()]
    return {"caption": ids, "caption_mask": mask, "caption_references": refs}


def _transcript(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    tokenizer = facts["targets"]["transcript"]["tokenizer"]
    length = 7  # <bos> c c c c c <eos>; padded samples end earlier. Far fewer than the frames.
    ids = torch.randint(4, tokenizer.vocab_size, (batch_size, length), generator=g)
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    for i, n in enumerate(_lengths(batch_size, length, 4)):
        mask[i, :n] = True
        ids[i, 0], ids[i, n - 1] = tokenizer.bos_id, tokenizer.eos_id
    ids[~mask] = tokenizer.pad_id
    refs = [[tokenizer.decode(row[1:])] for row in ids.tolist()]
    return {"transcript": ids, "transcript_mask": mask, "transcript_references": refs}


def _mask(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    # Per-pixel class ids at the image size; the top two rows unlabelled (ignore_index 255).
    size = facts["inputs"]["image"]["image_size"]
    num_classes = facts["targets"]["mask"]["num_classes"]
    ids = torch.randint(0, num_classes, (batch_size, size, size), generator=g)
    ids[:, :2, :] = 255
    return {"mask": ids}


def _answer(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    vocab = facts["targets"]["answer"]["tokenizer"]
    # 10 human answers per question (ids, <unk> = 1 among them); padded samples have fewer.
    ids = torch.randint(1, vocab.vocab_size, (batch_size, 10), generator=g)
    mask = torch.zeros(batch_size, 10, dtype=torch.bool)
    for i, n in enumerate(_lengths(batch_size, 10, 6)):
        mask[i, :n] = True
    ids[~mask] = vocab.pad_id
    refs = [[vocab.vocab[j] for j in row[real].tolist()] for row, real in zip(ids, mask)]
    return {"answer": ids, "answer_mask": mask, "answer_references": refs}


def _tabular(batch_size: int, facts: dict[str, Any], g: Any) -> dict[str, Any]:
    import torch

    # standardised values, then 0/1 missingness flags (data.tabular.missing=mean)
    half = facts["inputs"]["tabular"]["num_features"] // 2
    values = torch.randn(batch_size, half, generator=g)
    flags = (torch.rand(batch_size, half, generator=g) < 0.2).float()
    return {"tabular": torch.cat([values * (1 - flags), flags], dim=1)}


MODALITY_SYNTHESIZERS: dict[str, Callable[..., dict[str, Any]]] = {
    "image": _image,
    "text": _text,
    "audio": _audio,
    "tabular": _tabular,
}
TARGET_SYNTHESIZERS: dict[str, Callable[..., dict[str, Any]]] = {
    "label": _label,
    "caption": _caption,
    "transcript": _transcript,
    "answer": _answer,
    # two-tower retrieval needs no target: it pairs each sample's image with its text
    "retrieval": lambda batch_size, facts, g: {},
    "mask": _mask,
}


def make_batch(
    modalities: list[str],
    tasks: list[str],
    facts: dict[str, Any] | None = None,
    batch_size: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """A synthetic batch following the batch contract of ARCHITECTURE.md.

    Raises:
        pytest.fail.Exception: for a modality or task without a synthesizer (add one above).
    """
    import torch

    facts = fresh_synth_facts() if facts is None else facts
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {"id": [f"sample_{i}" for i in range(batch_size)]}
    for kind, names, table, table_name in (
        ("modality", modalities, MODALITY_SYNTHESIZERS, "MODALITY_SYNTHESIZERS"),
        ("task", tasks, TARGET_SYNTHESIZERS, "TARGET_SYNTHESIZERS"),
    ):
        for name in names:
            if name not in table:
                pytest.fail(
                    f"no synthesizer for {kind} {name!r}: add one to {table_name} in "
                    f"tests/conftest.py (known: {sorted(table)})",
                    pytrace=False,
                )
            batch.update(table[name](batch_size, facts, g))
    return batch


# Raw values of a modality as data sets give them, for the inputs of pretrained encoders.
def _raw_images(n: int, rng: Any) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype="uint8")) for _ in range(n)]


RAW_VALUES: dict[str, Callable[[int, Any], list[Any]]] = {
    "image": _raw_images,
    "text": lambda n, rng: ["a photo of the cat on the mat", "a red dog"][:n] * (n // 2 + 1),
    "audio": lambda n, rng: [
        ((0.1 * rng.standard_normal((1, 4000 + 2000 * i))).astype("float32"), 16000)
        for i in range(n)
    ],
}


def pretrained_inputs(
    cfg: DictConfig, facts: dict[str, Any], batch_size: int = 2, seed: int = 0
) -> dict[str, Any]:
    """The batch entries of the modalities whose encoder is a pretrained tower, made as the
    data side makes them: the input with the model's preprocessing (``build.follow_models``:
    its size and mean/std, its tokenizer, its feature extractor) applied to raw values. Each
    such input's facts replace the synthetic ones in ``facts["inputs"]`` (vocabulary size,
    waveform or mel bins). Needs the ``model_store`` fixture for the presets' model ids."""
    import numpy as np
    from hydra.utils import get_object, instantiate

    from mmtrain.build import follow_models

    rng = np.random.default_rng(seed)
    data, out = None, {}
    for modality, node in cfg.encoder.items():
        if not hasattr(get_object(node._target_), "preprocessing"):
            continue
        data = data if data is not None else follow_models(cfg)
        part = instantiate(data[modality])
        part.name = modality
        values = RAW_VALUES[modality](batch_size, rng)[:batch_size]
        out.update(part.collate([part.encode(v, train=False) for v in values]))
        facts["inputs"][modality] = part.facts()
    return out


LM_ID = "Qwen/Qwen2.5-0.5B-Instruct"  # a causal-LM head's model when a preset leaves it to name
CHAT_ANSWERS = ["a red cat sat on the mat", "the blue dog"]


def lm_targets(cfg: DictConfig, facts: dict[str, Any], batch_size: int = 2) -> dict[str, Any]:
    """The batch entries of the tasks whose head is a causal LM, made as the data side makes
    them: ``build.task_targets`` gives the task its ChatTarget, ``build.follow_models`` the
    LM's tokenizer; answers from :data:`CHAT_ANSWERS`. Each such target's facts replace the
    synthetic ones. A head whose ``model_name_or_path`` is left to name gets :data:`LM_ID`
    (the tiny LM of the model store: needs the ``model_store`` fixture)."""
    from hydra.utils import get_object, instantiate
    from omegaconf import OmegaConf

    from mmtrain.build import follow_models, task_targets
    from mmtrain.contracts import REFERENCES, Column

    out: dict[str, Any] = {}
    for task, node in cfg.head.items():
        if getattr(get_object(node._target_), "TARGET", None) is None:
            continue
        if OmegaConf.is_missing(node, "model_name_or_path"):
            node.model_name_or_path = LM_ID
        data = follow_models(task_targets(cfg))
        target = instantiate(data.targets[task])
        target.name = task
        items = [
            {"id": f"sample_{i}", task: CHAT_ANSWERS[i % 2], f"{task}{REFERENCES}": ["a cat"]}
            for i in range(batch_size)
        ]
        turns = [target.read(item) for item in items]
        target.fit(Column(values=lambda turns=turns: turns, decoded=lambda n: []))
        encoded = [target.encode(item, False, {}) for item in items]
        out.update(target.collate([e[task] for e in encoded]))
        out[f"{task}{REFERENCES}"] = [e[f"{task}{REFERENCES}"] for e in encoded]
        facts["targets"][task] = target.facts()
    return out


def model_batch(cfg: DictConfig, facts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(module, batch)`` for a composed config: pretrained towers get their own inputs
    (:func:`pretrained_inputs`), causal-LM heads their targets (:func:`lm_targets`), every
    other modality and task a synthetic entry."""
    from mmtrain.build import build_module

    real = pretrained_inputs(cfg, facts)
    targets = lm_targets(cfg, facts)
    module = build_module(cfg, facts)
    synthetic = [m for m in cfg.encoder if m not in real]
    tasks = [t for t in cfg.head if t not in targets]
    batch = make_batch(synthetic, tasks, facts)
    return module, {**batch, **real, **targets}


@pytest.fixture
def synth_batch() -> Callable[..., dict[str, Any]]:
    """``synth_batch(modalities, tasks, facts=None, batch_size=2, seed=0) -> batch``."""
    return make_batch


def fresh_synth_facts() -> dict[str, Any]:
    """Data facts for synthetic batches (a fresh copy)."""

    def text(tokenizer: Any) -> dict[str, Any]:
        return {"tokenizer": tokenizer, "vocab_size": tokenizer.vocab_size, "pad_id": 0}

    def classes(names: list[str]) -> dict[str, Any]:
        return {"class_names": list(names), "num_classes": len(names)}

    return {
        "inputs": {m: dict(f) for m, f in SYNTH_INPUTS.items()},
        "targets": {
            **{task: classes(names) for task, names in SYNTH_CLASSES.items()},
            "caption": text(synth_caption_tokenizer()),
            "transcript": text(synth_transcript_tokenizer()),
            "answer": text(synth_answer_vocabulary()),
        },
    }


@pytest.fixture
def synth_facts() -> dict[str, Any]:
    """Data facts for synthetic batches (a fresh copy per test)."""
    return fresh_synth_facts()
