"""Where pretrained models come from (mmtrain/utils/hub.py): offline by design.

A local folder, ``paths.model_dir`` / ``MMTRAIN_MODEL_DIR`` stores and the Hugging Face cache
are found without a network; a model that is nowhere is one line naming the id, the folders
searched and the command that fetches it. The session runs with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmtrain.errors import MMTrainError
from mmtrain.utils import hub


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return folder


def _cached(cache: Path, repo: str, commit: str = "0" * 40) -> Path:
    """A model in the Hugging Face cache layout (``models--org--name``), as a download leaves
    it."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return _model(root / "snapshots" / commit)


def test_a_local_folder_is_used_as_it_is(tmp_path: Path) -> None:
    folder = _model(tmp_path / "my model")
    assert hub.resolve(str(folder)) == folder


def test_model_dir_is_searched_first_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = _model(tmp_path / "own" / "org" / "name")
    shared = _model(tmp_path / "shared" / "org--name")
    monkeypatch.setenv(hub.MODEL_DIR_ENV, str(tmp_path / "shared"))
    assert hub.resolve("org/name", model_dir=str(tmp_path / "own")) == own
    assert hub.resolve("org/name") == shared  # <store>/<org>--<name> works too


def test_a_hub_id_resolves_through_the_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    snapshot = _cached(tmp_path / "hub", "org/tiny")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub.offline()
    assert hub.resolve("org/tiny").resolve() == snapshot.resolve()


def test_a_missing_model_is_one_line_naming_id_folders_and_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv(hub.MODEL_DIR_ENV, str(tmp_path / "store"))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(MMTrainError) as err:
        hub.resolve("org/absent", key="encoder.image.model_name_or_path", revision="v2")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("encoder.image.model_name_or_path=org/absent: model not found")
    assert f"{tmp_path / 'store'}/org/absent" in message
    assert str(tmp_path / "hub") in message
    assert "hf download org/absent --revision v2" in message
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_a_path_that_is_not_there_is_never_looked_up_on_the_hub(tmp_path: Path) -> None:
    with pytest.raises(MMTrainError, match="no such folder"):
        hub.resolve(str(tmp_path / "absent"), key="encoder.text.model_name_or_path")
    with pytest.raises(MMTrainError, match="neither a folder nor a Hugging Face hub id"):
        hub.resolve("not a valid id!")


def test_model_files_leave_weights_out_and_materialize_back(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    files = hub.model_files(folder)
    assert set(files) == {"config.json", "vocab.txt"}
    out = hub.materialize(files, tmp_path / "copy")
    assert (out / "config.json").read_text() == '{"model_type": "bert"}'
    with pytest.raises(MMTrainError, match="not a plain file name"):
        hub.materialize({"../evil": b"x"}, tmp_path / "copy2")
