"""Length bucketing of training batches (``data.bucket_by``, ``data.bucket_pool``).

The sampler's bucketed order must keep what exact resume needs (an order drawn from seed,
epoch and lengths only; whole batches; each sample's own augmentation seed; DistributedSampler's
split), cut padding, and come from lengths read without loading a sample. Bad settings are one
clear error line.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUIET, TINY_DATA
from helpers.cli import explain_run, mmtrain
from helpers.multi import multi_datamodule
from torch.utils.data import DistributedSampler

from mmtrain.data.datamodule import MultimodalDataModule
from mmtrain.data.inputs import AudioInput, TextInput
from mmtrain.data.manifest import ManifestDataset
from mmtrain.data.sampling import POSITION, ResumableSampler, bucket_order
from mmtrain.data.targets import TextTarget
from mmtrain.data.transforms import WordTokenizer
from mmtrain.errors import MMTrainError

N, BATCH, POOL = 1003, 8, 10  # an odd size: 2 ranks need DistributedSampler's padding


def _wide_lengths(n: int = N, seed: int = 0) -> np.ndarray:
    """Token counts from 1 to ~500, log-normal: the wide spread of real captions/utterances."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(3.5, 0.9, n), 1, 500).round()


def _batches(indices: list[int], batch_size: int = BATCH) -> list[list[int]]:
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def _padding(indices: list[int], lengths: np.ndarray, batch_size: int = BATCH) -> float:
    """The fraction of padded positions when each batch is padded to its longest sample."""
    padded = real = 0.0
    for batch in _batches(indices, batch_size):
        padded += lengths[batch].max() * len(batch)
        real += lengths[batch].sum()
    return 1 - real / padded


def _keys(sampler: ResumableSampler, epoch: int = 0) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


# ---- the sampler -------------------------------------------------------------------------------
def test_bucketed_batches_pad_far_less_and_keep_every_sample_and_its_seed() -> None:
    lengths = _wide_lengths()
    data = list(range(N))
    plain = ResumableSampler(data, BATCH, seed=3)
    bucketed = ResumableSampler(data, BATCH, seed=3, lengths=lengths, bucket_pool=POOL)
    for epoch in (0, 1):
        ref, keys = _keys(plain, epoch), _keys(bucketed, epoch)
        indices = [k.index for k in keys]
        assert sorted(indices) == data  # every sample exactly once
        assert set(keys) == set(ref)  # and each with the seed it has without bucketing
        before, after = _padding([k.index for k in ref], lengths), _padding(indices, lengths)
        assert after < 0.5 * before, (before, after)  # ~0.45 -> ~0.05
        # whole sorted batches (the last, shorter one at the end), in a shuffled batch order
        batches = _batches(indices)
        assert all(len(b) == BATCH for b in batches[:-1]) and len(batches[-1]) == N % BATCH
        assert all(list(lengths[b]) == sorted(lengths[b]) for b in batches)
        longest = [lengths[b].max() for b in batches[:-1]]
        assert longest != sorted(longest)
    assert _keys(bucketed, 1) == _keys(bucketed, 1)  # (seed, epoch) decide the order
    assert _keys(bucketed, 0) != _keys(bucketed, 1)
    other = ResumableSampler(data, BATCH, seed=4, lengths=lengths, bucket_pool=POOL)
    assert _keys(other, 0) != _keys(bucketed, 0)


def test_pools_bound_how_far_a_sample_moves() -> None:
    """A pool of P batches is sorted on its own: P=1 only sorts within each batch, and a pool
    larger than the data sorts all of it (the least padding)."""
    lengths = _wide_lengths()
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0)).tolist()
    within = bucket_order(order, lengths, BATCH, 1)  # no generator: batches stay in place
    assert [sorted(b) for b in _batches(within)] == [sorted(b) for b in _batches(order)]
    whole = bucket_order(order, lengths, BATCH, N)
    assert list(lengths[whole]) == sorted(lengths)
    pooled = _padding(bucket_order(order, lengths, BATCH, POOL), lengths)
    assert _padding(whole, lengths) <= pooled < _padding(within, lengths)


def test_two_ranks_split_like_distributed_sampler_with_similar_lengths_per_step() -> None:
    lengths = _wide_lengths()
    data = list(range(N))
    ranks, theirs, plain = [], [], []
    for rank in (0, 1):
        sampler = ResumableSampler(data, BATCH, 2, rank, seed=5, lengths=lengths, bucket_pool=POOL)
        ranks.append([k.index for k in _keys(sampler, 2)])
        reference = DistributedSampler(data, num_replicas=2, rank=rank, seed=5)
        reference.set_epoch(2)
        theirs.append(list(reference))
        plain.append([k.index for k in _keys(ResumableSampler(data, BATCH, 2, rank, seed=5), 2)])
    assert len(ranks[0]) == len(ranks[1]) == len(theirs[0])  # every rank as long
    for mine, reference in zip(ranks, theirs):  # each rank buckets its own share
        assert Counter(mine) == Counter(reference)
    counts = Counter(ranks[0] + ranks[1])  # every sample once, plus the one padded duplicate
    assert set(counts) == set(data) and sum(counts.values()) == N + 1

    # The ranks shuffle their batches alike: each step's batches are of similar length.
    def step_gap(pair: list[list[int]]) -> float:
        a, b = (_batches(r) for r in pair)
        return float(np.mean([abs(lengths[x].max() - lengths[y].max()) for x, y in zip(a, b)]))

    assert step_gap(ranks) < 0.3 * step_gap(plain), (step_gap(ranks), step_gap(plain))


@pytest.mark.parametrize("ranks", [1, 2])
def test_resume_yields_the_tail_of_the_epoch_from_a_batch_on(ranks: int) -> None:
    lengths = _wide_lengths()
    for rank in range(ranks):
        sampler = ResumableSampler(
            range(N), BATCH, ranks, rank, seed=9, lengths=lengths, bucket_pool=3
        )
        full = _keys(sampler, 4)
        for k in (0, 1, 7, len(full) // BATCH, len(full) // BATCH + 1):
            sampler.resume(epoch=4, batches=k)
            assert list(sampler) == full[k * BATCH :], k
        sampler.set_epoch(0)
        assert list(sampler) != full  # a resume applies to one pass only


def test_bad_sampler_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="bucket_pool must be an integer >= 1, got 0"):
        ResumableSampler(range(10), 2, lengths=[1.0] * 10, bucket_pool=0)
    with pytest.raises(ValueError, match="9 lengths for 10 samples"):
        ResumableSampler(range(10), 2, lengths=[1.0] * 9)


# ---- the data module ---------------------------------------------------------------------------
def _padding_of(batches: list[dict], key: str) -> float:
    masks = [b[f"{key}_mask"] for b in batches]
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def test_bucket_by_audio_groups_the_shapes_clips_by_duration(compose_config, tiny_data) -> None:
    """The shapes clips last 0.3-0.6 s; their lengths come from the WAV headers (paths relative
    to the manifest). Validation stays in order, and a resumed loader continues the epoch."""
    from mmtrain.build import build_datamodule

    def epoch(*overrides: str, resume: int | None = None) -> tuple[list[dict], list[dict]]:
        datamodule = build_datamodule(compose_config(*TINY_DATA, "seed=5", *overrides))
        datamodule.setup("fit")
        if resume is not None:
            datamodule.resume(1, resume, {"": resume})
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(1)
        return list(loader), list(datamodule.val_dataloader())

    (plain, plain_val), (bucketed, val) = epoch(), epoch("data.bucket_by=audio")
    assert _padding_of(bucketed, "audio") < 0.5 * _padding_of(plain, "audio")
    assert sorted(i for b in bucketed for i in b["id"]) == sorted(i for b in plain for i in b["id"])
    assert [b["id"] for b in val] == [b["id"] for b in plain_val]  # validation: unbucketed
    resumed, _ = epoch("data.bucket_by=audio", resume=2)
    assert [b[POSITION] for b in resumed] == [3, 4, 5, 6]
    for a, b in zip(bucketed[2:], resumed, strict=True):
        assert a["id"] == b["id"] and torch.equal(a["audio"], b["audio"])  # augmentation too


def _caption_manifest(folder: Path) -> dict[str, Path]:
    """Manifests of texts and captions of 1 to 24 words (the shapes captions all have 8)."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 48), ("val", 4)):
        rows = [
            {
                "id": f"{split}_{i}",
                "text": "a shape",
                "label": "ab"[i % 2],
                "caption": " ".join(
                    ["a", *rng.choice(["red", "big", "round"], rng.integers(0, 24))]
                ),
            }
            for i in range(n)
        ]
        files[split] = folder / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def _caption_module(folder: Path, tasks=("caption",), **kwargs) -> MultimodalDataModule:
    files = _caption_manifest(folder)
    return MultimodalDataModule(
        dataset=partial(ManifestDataset),
        train=str(files["train"]),
        val=str(files["val"]),
        text=TextInput(max_length=8),
        targets={"caption": TextTarget(WordTokenizer(max_length=32, strip_punctuation=True))},
        modalities=["text"],
        tasks=list(tasks),
        batch_size=4,
        **kwargs,
    )


def test_bucket_by_caption_groups_caption_lengths(tmp_path: Path) -> None:
    def train_batches(**kwargs) -> tuple[list[dict], MultimodalDataModule]:
        datamodule = _caption_module(tmp_path, **kwargs)
        datamodule.setup("fit")
        return list(datamodule.train_dataloader()), datamodule

    def spread(batches: list[dict]) -> float:
        lengths = [b["caption_mask"].sum(1) for b in batches]
        return float(np.mean([int(n.max() - n.min()) for n in lengths]))

    (plain, _), (bucketed, datamodule) = train_batches(), train_batches(bucket_by="caption")
    assert _padding_of(bucketed, "caption") < 0.5 * _padding_of(plain, "caption")
    assert spread(bucketed) < 0.3 * spread(plain)
    # The lengths it sorts by are the encoded lengths (<bos> words <eos>), read from values().
    raw = datamodule.datasets["train"]
    length_of = dict(zip(raw.values("id"), datamodule._lengths(raw), strict=True))
    for batch in bucketed:
        assert [length_of[i] for i in batch["id"]] == batch["caption_mask"].sum(1).tolist()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"bucket_by": "nosuch"}, "data.bucket_by='nosuch' is not a column that the training"),
        ({"bucket_by": "label"}, "data.bucket_by='label' has no length"),
    ],
)
def test_bad_bucketing_settings_are_clear_errors(tmp_path: Path, kwargs, says) -> None:
    # label: a class target, loaded but without a length
    datamodule = _caption_module(tmp_path, tasks=("caption", "label"), **kwargs)
    datamodule.setup("fit")
    with pytest.raises(MMTrainError, match=says) as err:
        datamodule.train_dataloader()
    assert "bucket by one of ['caption', 'text']" in str(err.value)


def test_a_bucket_pool_below_one_is_refused_when_the_data_module_is_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bucket_pool must be an integer >= 1, got 0"):
        _caption_module(tmp_path, bucket_by="caption", bucket_pool=0)


def test_data_sets_without_per_sample_values_are_refused(tmp_path: Path) -> None:
    class Captions(ManifestDataset):  # one value per image, as COCO's val split: not per sample
        def values(self, column: str) -> list:
            return super().values(column) * 2

    datamodule = _caption_module(tmp_path, bucket_by="caption")
    datamodule.dataset_factory = partial(Captions)
    datamodule.setup("fit")
    with pytest.raises(MMTrainError, match=r"Captions gives 96 'caption' values for 48 samples"):
        datamodule.train_dataloader()


def test_audio_lengths_come_from_headers_or_a_duration_column(tmp_path: Path) -> None:
    import soundfile as sf
    from helpers.speech import write_librispeech

    from mmtrain.data.librispeech import LibriSpeechDataset

    def module(dataset, **kwargs) -> MultimodalDataModule:
        datamodule = MultimodalDataModule(
            dataset=dataset,
            audio=AudioInput(sample_rate=16000, n_mels=16, **kwargs),
            modalities=["audio"],
            bucket_by="audio",
            batch_size=2,
        )
        datamodule.setup("fit")
        return datamodule

    # LibriSpeech: absolute FLAC paths; seconds from the headers, capped at max_seconds.
    libri = module(partial(LibriSpeechDataset, root=str(write_librispeech(tmp_path / "ls"))))
    raw = libri.datasets["train"]
    seconds = [sf.info(p).duration for p in raw.values("audio")]
    assert libri._lengths(raw) == pytest.approx(seconds) and max(seconds) > 1.0
    capped = module(partial(LibriSpeechDataset, root=str(tmp_path / "ls")), max_seconds=1.0)
    assert capped._lengths(raw) == pytest.approx([min(s, 1.0) for s in seconds])
    batches = list(libri.train_dataloader())
    assert all(
        b["audio_mask"].sum(1).tolist() == sorted(b["audio_mask"].sum(1).tolist()) for b in batches
    )
    # A manifest with a duration column: no file is opened (these do not exist).
    rows = [{"id": str(i), "audio": f"gone/{i}.wav", "duration": 9.0 - i} for i in range(6)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    timed = module(
        partial(ManifestDataset, train="train.jsonl", val="train.jsonl", root=str(tmp_path))
    )
    assert timed._lengths(timed.datasets["train"]) == [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]

    class Decoded(ManifestDataset):  # audio only as decoded samples: no lengths without them
        def values(self, column: str) -> list:
            return [None] * len(self) if column == "audio" else super().values(column)

    rows = [{"id": str(i), "audio": f"{i}.wav"} for i in range(4)]
    (tmp_path / "decoded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    decoded = module(
        partial(Decoded, train="decoded.jsonl", val="decoded.jsonl", root=str(tmp_path))
    )
    with pytest.raises(MMTrainError, match=r"gives no audio file paths .*\(the data set Decoded\)"):
        decoded.train_dataloader()


def test_multi_buckets_each_data_set_that_has_the_column(two_sources, caplog) -> None:
    datamodule = multi_datamodule(
        two_sources, bucket_by="caption", bucket_pool=2, sampling="sequential"
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    samplers = {name: inner.sampler for name, inner in loader.loaders.items()}
    assert samplers["captions"].lengths is not None and samplers["labels"].lengths is None
    assert "data.sources.labels has no 'caption' column" in caplog.text
    ids = [i for batch in loader for i in batch["id"]]
    assert len(ids) == len(set(ids)) == 15  # every training sample of both, once


# ---- the command line --------------------------------------------------------------------------
def test_an_unknown_bucket_column_is_one_error_line(scratch, tiny_data) -> None:
    proc = mmtrain(scratch, "fit", *TINY_DATA, *QUIET, "data.bucket_by=nosuch", "debug=fdr")
    assert proc.returncode == 1, explain_run(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, explain_run(proc)
    lines = [ln for ln in proc.stderr.splitlines() if "data.bucket_by" in ln]
    assert lines == [
        "mmtrain fit: error: data.bucket_by='nosuch' is not a column that the training data "
        "loads; bucket by one of ['audio', 'caption', 'text'] or set data.bucket_by=null"
    ], explain_run(proc)


@pytest.mark.slow
def test_a_bucketed_run_stopped_and_resumed_is_bit_for_bit_the_same(session_dirs, tmp_path):
    import signal

    from helpers.resume import assert_same_run, explain_exit, fit

    data, bucket = session_dirs["data"], ["data.bucket_by=audio", "data.bucket_pool=2"]
    reference = tmp_path / "reference"
    code, out, err = fit(reference, data, *bucket)
    assert code == 0, explain_exit(code, out, err)
    stopped, last = tmp_path / "stopped", tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    code, out, err = fit(stopped, data, *bucket, "+callbacks.probe.signal_at=[8]")
    assert code == 128 + signal.SIGTERM, explain_exit(code, out, err)
    code, out, err = fit(stopped, data, *bucket, f"ckpt_path={last}")
    assert code == 0, explain_exit(code, out, err)
    assert_same_run(reference, stopped)
