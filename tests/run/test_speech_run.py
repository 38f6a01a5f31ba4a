"""Speech recognition end to end: fit, test (transcripts file, WER/CER), predict on audio files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jiwer
import pytest
from conftest import QUIET
from helpers.speech import write_librispeech

from mmtrain.run import run

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.num_workers=0"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import compose_cfg

    tmp = tmp_path_factory.mktemp("speech")
    root = write_librispeech(tmp / "librispeech")
    experiment = ["experiment=librispeech_ctc", f"data.root={root}", "data.batch_size=2"]
    small = ["encoder.audio.dim=32", "encoder.audio.layers=1", "fusion.dim=32"]
    run("fit", compose_cfg(*experiment, *small, *SHORT, *QUIET, output_dir=tmp / "fit"))
    return {"root": root, "tmp": tmp, "ckpt": tmp / "fit/checkpoints/last.ckpt"}


def test_test_writes_transcripts_and_wer(fitted, compose_config) -> None:
    out = fitted["tmp"] / "test"
    cfg = compose_config(
        "experiment=librispeech_ctc",
        f"data.root={fitted['root']}",
        f"ckpt_path={fitted['ckpt']}",
        "head.transcript.beam_size=4",
        *QUIET,
        stage="test",
        output_dir=out,
    )
    metrics = run("test", cfg)
    lines = [
        json.loads(x)
        for x in (out / "predictions/transcripts_test.jsonl").read_text().split("\n")
        if x
    ]
    assert len(lines) == 4  # test-clean: 2 speakers x 2 chapters x 1 utterance
    for line in lines:
        assert set(line) == {"id", "reference", "hypothesis", "reference_raw"}
        assert line["reference_raw"].isupper()  # LibriSpeech's transcripts, as written
        assert line["reference"] == " ".join(line["reference_raw"].lower().split())
    # Any WER scorer on the file reproduces the logged numbers (the strings as scored).
    references = [line["reference"] for line in lines]
    hypotheses = [line["hypothesis"] for line in lines]
    written = json.loads((out / "metrics.json").read_text())
    for name, score in (("wer", jiwer.wer), ("cer", jiwer.cer)):
        expected = score(references, hypotheses)
        assert metrics[f"test/transcript/{name}"] == pytest.approx(expected, rel=1e-5), name
        assert written[f"test/transcript/{name}"] == pytest.approx(expected, rel=1e-5), name


def test_predict_transcribes_audio_files(fitted, compose_config) -> None:
    inputs = fitted["tmp"] / "inputs"
    inputs.mkdir()
    flacs = sorted((fitted["root"] / "test-clean").rglob("*.flac"))[:3]
    for flac in flacs:
        shutil.copy(flac, inputs / flac.name)
    out = fitted["tmp"] / "predict"
    cfg = compose_config(
        f"ckpt_path={fitted['ckpt']}", f"input={inputs}", *QUIET, stage="predict", output_dir=out
    )
    run("predict", cfg)
    lines = [
        json.loads(x) for x in (out / "predictions/predict.jsonl").read_text().split("\n") if x
    ]
    assert [Path(line["file"]).name for line in lines] == [f.name for f in flacs]
    assert all(set(line) == {"file", "transcript"} for line in lines)


def test_predict_input_without_audio_files_is_a_clear_error(
    fitted, compose_config, tmp_path
) -> None:
    from mmtrain.errors import MMTrainError

    (tmp_path / "notes.txt").write_text("no audio here")
    cfg = compose_config(
        f"ckpt_path={fitted['ckpt']}",
        f"input={tmp_path}",
        *QUIET,
        stage="predict",
        output_dir=tmp_path / "out",
    )
    with pytest.raises(MMTrainError, match=r"input: no audio files \(.wav, .flac"):
        run("predict", cfg)


def test_manifest_transcripts_train_a_ctc_head(compose_config, tmp_path) -> None:
    """data=manifest carries `transcript` targets: audio + transcript columns -> CTC."""
    from helpers.manifest import write_rows, write_wav

    rows = []
    for i, words in enumerate(["red", "blue circle", "green", "left square"] * 2):
        write_wav(tmp_path / "audio" / f"{i}.wav", 300.0 + 50 * i, seconds=0.1 * len(words))
        rows.append({"id": str(i), "audio": f"audio/{i}.wav", "transcript": words})
    train = write_rows(tmp_path / "train.jsonl", rows)
    cfg = compose_config(
        "experiment=manifest_label",
        f"data.train={train}",
        f"data.val={train}",
        "~encoder/image",
        "~encoder/text",
        "~head/label",
        "+head/transcript=ctc",
        "encoder/audio=conv_bigru",
        "optimized_metric=val/transcript/cer",
        "callbacks.model_checkpoint.mode=min",
        "data.batch_size=4",
        "data.num_workers=0",
        "debug=fdr",
        *QUIET,
        output_dir=tmp_path / "run",
    )
    metrics = run("fit", cfg)
    assert {"val/transcript/wer", "val/transcript/cer", "train/loss/transcript"} <= set(metrics)


def test_audio_visual_ctc_keeps_the_audio_token_sequence(compose_config, synth_batch, synth_facts):
    """fusion=film fusion.target=audio: the image modulates every audio token; CTC reads them."""
    import torch

    from mmtrain.build import build_module

    cfg = compose_config(
        "experiment=librispeech_ctc",
        "data.root=unused",
        "encoder/image=cnn",
        "fusion=film",
        "fusion.target=audio",
    )
    module = build_module(cfg, synth_facts)
    batch = synth_batch(["image", "audio"], ["transcript"], synth_facts)
    module.train()
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert module.encoders["image"].parameters().__next__().grad is not None  # the image counts
    module.eval()
    with torch.no_grad():
        fused = module(batch)
        audio = module.encoders["audio"](batch["audio"], batch["audio_mask"])
    assert fused.tokens.shape[1] == audio.tokens.shape[1]  # one token per audio frame
    assert torch.equal(fused.mask, audio.mask)


def test_padding_does_not_change_a_transcript_end_to_end(compose_config, synth_facts) -> None:
    """The whole model (encoder, fusion, CTC head) on a clip alone and padded in a batch."""
    import torch

    from mmtrain.build import build_module
    from mmtrain.data.collate import collate

    cfg = compose_config("experiment=librispeech_ctc", "data.root=unused", "encoder.audio.layers=2")
    synth_facts["inputs"]["audio"]["n_mels"] = 80
    module = build_module(cfg, synth_facts).eval()
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(80, n, generator=g) for n in (120, 57)]
    alone = collate([{"id": "a", "audio": clips[1]}])
    padded = collate([{"id": str(i), "audio": c} for i, c in enumerate(clips)])
    head = module.heads["transcript"]
    with torch.no_grad():
        out_alone = head(module(alone))[0]
        out_padded = head(module(padded))[1]
        n = out_alone.shape[0]
        assert torch.allclose(out_padded[:n], out_alone, atol=1e-5)
        assert head.predict(module(alone))[0] == head.predict(module(padded))[1]


def test_subword_transcripts(fitted, compose_config, tmp_path) -> None:
    """BPE output units instead of characters: data.targets.transcript.tokenizer=BPETokenizer."""
    cfg = compose_config(
        "experiment=librispeech_ctc",
        f"data.root={fitted['root']}",
        "data.targets.transcript.tokenizer._target_=mmtrain.data.transforms.bpe.BPETokenizer",
        "data.targets.transcript.tokenizer.vocab_size=300",
        "data.targets.transcript.tokenizer.min_frequency=1",
        "encoder.audio.dim=32",
        "encoder.audio.layers=1",
        "fusion.dim=32",
        "data.batch_size=2",
        "data.num_workers=0",
        "debug=fdr",
        *QUIET,
        output_dir=tmp_path,
    )
    metrics = run("fit", cfg)
    assert {"val/transcript/wer", "train/loss/transcript"} <= set(metrics)
    state = json.loads((tmp_path / "data_state.json").read_text())
    assert "transcript" in state["targets"]


def test_transcripts_are_written_as_scored(tmp_path) -> None:
    """Reference and hypothesis go to the file normalised as the head scores them (a raw
    LibriSpeech reference is in capitals: scored raw, no word would match)."""
    from mmtrain.data.targets import TextTarget
    from mmtrain.data.transforms import CharTokenizer
    from mmtrain.heads.ctc import default_normalize
    from mmtrain.run import _write_predictions

    target = TextTarget(CharTokenizer(), results="transcripts")
    target.name = "transcript"
    data = SimpleNamespace(targets={"transcript": target})
    rows = [
        {"id": "a", "transcript": "missus  b", "transcript_references": ["MISSUS A"]},
        {"id": "b", "transcript": "rachel lynde", "transcript_references": ["Rachel Lynde"]},
    ]
    (path,) = _write_predictions(tmp_path, "test", rows, data, {"transcript": default_normalize})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["reference_raw"] for x in lines] == ["MISSUS A", "Rachel Lynde"]
    wer = jiwer.wer([x["reference"] for x in lines], [x["hypothesis"] for x in lines])
    assert wer == pytest.approx(1 / 4)  # one word of four is wrong
