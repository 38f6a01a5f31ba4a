"""The ``mmtrain`` command, run as a user runs it: in subprocesses, in a scratch directory.

Each subprocess that imports torch costs ~5 s, so the heavy ones are few: one fit (shared by the
test and predict runs from its checkpoint), one two-job sweep, and one process that runs every
"bad input" command in turn (``_BAD_INPUTS``). The cheap ones (help, config errors) import no
torch and take well under a second each.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
import yaml
from conftest import QUIET, TINY_DATA
from helpers.cli import explain_run, mmtrain, run_dirs, run_mmtrain

from mmtrain.config import config_dir
from mmtrain.contracts import STAGES

HEAVY_MODULES = (
    "torch",
    "pytorch_lightning",
    "lightning",
    "torchvision",
    "torchaudio",
    "torchmetrics",
    "datasets",  # data=hf imports it when it opens a data set
    "transformers",
    "timm",
    "open_clip",
)
# What only the pretrained presets import (encoder/<modality>=hf, timm, open_clip). Not
# transformers itself: torchmetrics imports it (for its BERTScore) whenever it is installed.
PRETRAINED_MODULES = (
    "timm",
    "open_clip",
    "safetensors",
    "transformers.models.bert.modeling_bert",
    "transformers.models.clip.modeling_clip",
    "mmtrain.encoders.hf",
    "mmtrain.encoders.timm_image",
    "mmtrain.encoders.openclip",
)


# ---- cheap: no torch ---------------------------------------------------------------------------
def test_help_lists_the_stages(scratch):
    proc = mmtrain(scratch, "--help")
    assert proc.returncode == 0, explain_run(proc)
    assert proc.stdout.startswith("usage: mmtrain <stage>")
    for stage in STAGES:
        assert re.search(rf"^\s+{stage}\s", proc.stdout, re.M), stage
    bare = mmtrain(scratch)
    assert bare.returncode == 2 and bare.stdout == proc.stdout


def test_module_entry_point_exit_code(scratch):
    proc = run_mmtrain(
        [],
        scratch["cwd"],
        scratch["data"],
        scratch["out"],
        command=[sys.executable, "-m", "mmtrain.cli"],
    )
    assert proc.returncode == 2 and proc.stdout.startswith("usage: mmtrain")


def test_unknown_stage_gets_did_you_mean(scratch):
    proc = mmtrain(scratch, "fitt")
    assert proc.returncode == 2, explain_run(proc)
    assert "unknown stage 'fitt'; did you mean 'fit'?" in proc.stderr
    assert "Traceback" not in proc.stderr


_NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    heavy = json.loads(sys.argv[1])  # main() replaces sys.argv
    import mmtrain, mmtrain.cli
    from hydra import compose, initialize_config_dir

    def call(*argv):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                return mmtrain.cli.main(list(argv))
            except SystemExit as exit_:
                return exit_.code

    codes = [call("--help"), call("fit", "--cfg", "job"), call("fit", "--help"),
             call("fit", "paths.log_dirr=x"), call("fit", "fusion=nope"),
             call("fit", "experiment=hf_label", "data.root=x", "--cfg", "job")]
    with initialize_config_dir(str(mmtrain.cli.config_dir()), version_base="1.3"):
        compose("fit", overrides=["~encoder/audio"])
    print(json.dumps({"codes": codes, "heavy": [m for m in heavy if m in sys.modules]}))
    """
)


def test_help_and_config_composition_import_no_torch(scratch):
    """`import mmtrain`, --help, --cfg job, config errors: no torch, no Lightning (fast).

    (A key that the YAML does not list, under a node with a ``_target_``, imports that target
    to check its signature: ``trainer.max_steps=100`` imports Lightning, as the run will.)"""
    proc = run_mmtrain(
        [_NO_TORCH_SCRIPT, json.dumps(HEAVY_MODULES)],
        scratch["cwd"],
        scratch["data"],
        scratch["out"],
        command=[sys.executable, "-c"],
    )
    assert proc.returncode == 0, explain_run(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"imported without need: {result['heavy']}"
    codes = result["codes"]
    assert codes[:3] == [0, None, 0] and 0 not in codes[3:5] and codes[5] is None, result


_RUN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    watched = json.loads(sys.argv[1])
    argv = json.loads(sys.argv[2])
    import mmtrain.cli
    try:
        mmtrain.cli.main(argv)
    except SystemExit as exit_:
        assert not exit_.code, exit_.code
    print(json.dumps([m for m in watched if m in sys.modules]))
    """
)


def test_a_run_without_pretrained_presets_imports_none_of_their_libraries(scratch, tiny_data):
    """timm, open_clip and transformers' models are imported only when a preset uses them: a
    default fit never loads them."""
    from conftest import QUIET, TINY_DATA

    run_dir = scratch["out"] / "plain"
    fit = ["fit", *TINY_DATA, *QUIET, "debug=fdr", f"hydra.run.dir={run_dir}"]
    proc = run_mmtrain(
        [_RUN_SCRIPT, json.dumps(PRETRAINED_MODULES), json.dumps(fit)],
        scratch["cwd"],
        scratch["data"],
        scratch["out"],
        command=[sys.executable, "-c"],
    )
    assert proc.returncode == 0, explain_run(proc)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_stage_help_lists_the_config_groups(scratch):
    proc = mmtrain(scratch, "fit", "--help")
    assert proc.returncode == 0, explain_run(proc)
    groups = dict(re.findall(r"^([\w/]+): (.+)$", proc.stdout.split("== Composed config")[0], re.M))
    for group in (
        "data",
        "encoder/image",
        "encoder/text",
        "encoder/audio",
        "fusion",
        "head/label",
        "loss_weighting",
        "optimizer",
        "trainer",
        "debug",
        "experiment",
    ):
        assert group in groups, f"{group} missing from --help:\n{proc.stdout[:2000]}"
    # Every YAML file of the tree is listed as an option of its group.
    root = config_dir()
    for path in root.glob("*/**/*.yaml"):
        group = path.parent.relative_to(root).as_posix()
        if group.startswith("hydra"):
            continue
        assert path.stem in groups[group].split(", "), f"{group}={path.stem} not in --help"


def test_cfg_job_prints_the_composed_config(scratch):
    proc = mmtrain(
        scratch, "fit", "--cfg", "job", "fusion=concat", "~encoder/audio", "optimizer.lr=0.123"
    )
    assert proc.returncode == 0, explain_run(proc)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["fusion"]["_target_"] == "mmtrain.fusions.concat.ConcatFusion"
    assert sorted(cfg["encoder"]) == ["image", "text"]
    assert cfg["optimizer"]["lr"] == 0.123 and "hydra" not in cfg
    assert not any(scratch["cwd"].iterdir()), "--cfg job wrote files into the working directory"


# What Lightning users type: Trainer and optimizer arguments that the YAML does not list.
TARGET_ARGUMENTS = {
    "trainer.fast_dev_run": "true",
    "trainer.max_steps": "100",
    "trainer.limit_train_batches": "0.1",
    "trainer.val_check_interval": "0.5",
    "trainer.profiler": "simple",
    "optimizer.betas": "[0.9,0.95]",
}


def test_any_argument_of_a_target_is_set_without_plus(scratch):
    args = [f"{key}={value}" for key, value in TARGET_ARGUMENTS.items()]
    proc = mmtrain(scratch, "fit", "--cfg", "job", *args)
    assert proc.returncode == 0, explain_run(proc)
    cfg = yaml.safe_load(proc.stdout)
    for key, value in TARGET_ARGUMENTS.items():
        node, leaf = key.split(".")
        assert cfg[node][leaf] == yaml.safe_load(value), key


def test_an_unknown_argument_gets_a_did_you_mean_from_the_signature(scratch):
    proc = mmtrain(scratch, "fit", "--cfg", "job", "trainer.fast_dev_runn=true")
    assert proc.returncode != 0, explain_run(proc)
    assert "did you mean 'trainer.fast_dev_run'?" in proc.stderr, explain_run(proc)


def test_the_run_records_the_overrides_as_typed(scratch, tiny_data):
    run_dir = scratch["out"] / "typed"
    typed = ["trainer.fast_dev_run=true", "optimizer.betas=[0.9,0.95]", *TINY_DATA, *QUIET]
    proc = mmtrain(scratch, "fit", *typed, f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode == 0, explain_run(proc)
    recorded = yaml.safe_load((run_dir / ".hydra/overrides.yaml").read_text())
    assert recorded == typed, recorded  # hydra.run.dir is Hydra's own, in hydra.yaml
    config = yaml.safe_load((run_dir / ".hydra/config.yaml").read_text())
    assert config["trainer"]["fast_dev_run"] is True
    assert config["optimizer"]["betas"] == [0.9, 0.95]


def test_in_process_composition_takes_target_arguments_too(compose_config):
    cfg = compose_config("trainer.max_steps=7", "data.batch_size=3")
    assert cfg.trainer.max_steps == 7 and cfg.data.batch_size == 3


def test_override_typo_gets_did_you_mean(scratch):
    proc = mmtrain(scratch, "fit", "trainer.max_epochz=3")
    assert proc.returncode != 0, explain_run(proc)
    assert "did you mean 'trainer.max_epochs'?" in proc.stderr, explain_run(proc)
    assert "Traceback" not in proc.stderr + proc.stdout


def test_did_you_mean_knows_the_keys_of_the_chosen_presets():
    """A key of the experiment's data preset is known even when another override fails (the
    suggestions are then made on the config of the group choices alone)."""
    from mmtrain.cli import suggest_keys

    chosen = [
        "experiment=coco_caption",
        "data.root=/x",
        "data.targets.caption.tokenizer.min_freq=1",
    ]
    assert suggest_keys("fit", [*chosen, "data.image.augmentt=false"]) == [  # its signature's
        "mmtrain: unknown key 'data.image.augmentt'; did you mean 'data.image.augment'?"
    ]
    assert suggest_keys("fit", [*chosen[:2], "data.targets.caption.tokenizer.min_fre=1"]) == [
        "mmtrain: unknown key 'data.targets.caption.tokenizer.min_fre'; "
        "did you mean 'data.targets.caption.tokenizer.min_freq'?"
    ]


def test_unknown_group_option_lists_the_options(scratch):
    proc = mmtrain(scratch, "fit", "fusion=nope")
    assert proc.returncode != 0, explain_run(proc)
    assert "fusion/nope" in proc.stderr
    for option in (p.stem for p in (config_dir() / "fusion").glob("*.yaml")):
        assert option in proc.stderr, f"option {option} not listed:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["logger=null"], "mmtrain fit: logger=null: a config group is removed with ~logger"),
        (["encoder/audio=null"], "a config group is removed with ~encoder/audio"),
        (["-m", "seed=1,2", "--cfg", "job"], "--multirun and --cfg do not go together"),
    ],
)
def test_hydra_errors_that_would_be_tracebacks_are_one_line(scratch, args, says):
    proc = mmtrain(scratch, "fit", *args)
    assert proc.returncode == 2, explain_run(proc)
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and says in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ---- bad inputs that get past composition: one process runs them all ----------------------------
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, session_dirs, tiny_data) -> dict[str, dict]:
    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf

    tmp = tmp_path_factory.mktemp("bad")
    corrupt = tmp / "corrupt.ckpt"
    corrupt.write_bytes(bytes(range(256)) * 16)
    foreign = tmp / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    # An mmtrain checkpoint whose weights do not fit its model (e.g. the config changed since).
    mismatched = tmp / "mismatched.ckpt"
    stored = OmegaConf.load(config_dir() / "fit.yaml")  # any YAML text; only weights matter
    torch.save(
        {
            "state_dict": {"encoders.image.nope": torch.zeros(1)},
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": pl.__version__,
            "mmtrain": {"config": OmegaConf.to_yaml(stored), "data": {}},
        },
        mismatched,
    )
    run_dir = [f"hydra.run.dir={tmp}/runs/${{now:%H-%M-%S-%f}}"]
    cases = {
        "wrong_type": ["fit", "trainer.max_epochs=abc", *TINY_DATA, *run_dir],
        "test_without_ckpt": ["test", *run_dir],
        "corrupt_ckpt": ["test", f"ckpt_path={corrupt}", *run_dir],
        "missing_ckpt": ["test", f"ckpt_path={tmp / 'nope.ckpt'}", *run_dir],
        "foreign_ckpt": ["validate", f"ckpt_path={foreign}", *run_dir],
        "resume_mismatched_ckpt": [
            "fit",
            f"ckpt_path={mismatched}",
            "debug=fdr",
            *TINY_DATA,
            *QUIET,
            *run_dir,
        ],
    }
    from helpers.cases import run_cases  # the one-process harness

    named = [{"name": name, "argv": argv} for name, argv in cases.items()]
    results, _ = run_cases(named, tmp, session_dirs["data"], tmp / "outputs")
    results["_files"] = {
        "corrupt": str(corrupt),
        "foreign": str(foreign),
        "missing": str(tmp / "nope.ckpt"),
        "mismatched": str(mismatched),
    }
    return results


def _clean_failure(result: dict) -> str:
    """Assert a non-zero exit without traceback; return the error lines of stderr."""
    assert result["code"] not in (0, None), result
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    return result["stderr"]


def test_wrong_type_fails_with_one_message(bad_inputs):
    stderr = _clean_failure(bad_inputs["wrong_type"])
    lines = [ln for ln in stderr.splitlines() if "trainer.max_epochs" in ln]
    assert len(lines) == 1, stderr
    assert "'abc'" in lines[0] and "int" in lines[0], lines[0]


def test_test_without_checkpoint_fails_cleanly(bad_inputs):
    stderr = _clean_failure(bad_inputs["test_without_ckpt"])
    assert "mmtrain test: error:" in stderr and "needs ckpt_path=" in stderr


@pytest.mark.parametrize(
    ("case", "file", "says"),
    [
        ("corrupt_ckpt", "corrupt", "cannot load checkpoint"),
        ("missing_ckpt", "missing", "checkpoint not found"),
        ("foreign_ckpt", "foreign", "is not an mmtrain checkpoint"),
    ],
)
def test_bad_checkpoint_fails_cleanly_naming_the_file(bad_inputs, case, file, says):
    stderr = _clean_failure(bad_inputs[case])
    line = next((ln for ln in stderr.splitlines() if "error:" in ln), "")
    assert bad_inputs["_files"][file] in line and says in line and "ckpt_path" in line, stderr


def test_resume_from_a_mismatched_checkpoint_fails_cleanly(bad_inputs):
    stderr = _clean_failure(bad_inputs["resume_mismatched_ckpt"])
    assert bad_inputs["_files"]["mismatched"] in stderr


# ---- the real thing: fit, then test and predict from its checkpoint; a sweep --------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory, session_dirs, tiny_data) -> dict:
    """``mmtrain fit`` on tiny data with ``debug=limit``: its process and run directory."""
    tmp = tmp_path_factory.mktemp("fit")
    scratch = {"cwd": tmp / "cwd", "data": session_dirs["data"], "out": tmp / "outputs"}
    scratch["cwd"].mkdir()
    proc = mmtrain(scratch, "fit", *TINY_DATA, "debug=limit", *QUIET)
    assert proc.returncode == 0, explain_run(proc)
    runs = run_dirs(scratch["out"], "checkpoints/last.ckpt")
    assert len(runs) == 1, runs
    return {"proc": proc, "run": runs[0], "scratch": scratch}


def test_fit_writes_the_run_directory(fitted):
    run, out = fitted["run"], fitted["scratch"]["out"]
    # <paths.log_dir>/<name>/<date>/<time>, the root from MMTRAIN_OUTPUT_DIR
    assert re.fullmatch(r"shapes/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", run.relative_to(out).as_posix())
    assert f"run directory: {run.resolve()}" in fitted["proc"].stdout
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "checkpoints/best.ckpt",
        "csv/metrics.csv",
        "metrics.json",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"train/loss", "train/loss/label", "val/loss", "val/label/accuracy"} <= set(metrics)
    assert 0.0 <= metrics["val/label/accuracy"] <= 1.0
    # Nothing written into the working directory (data and outputs come from the env vars).
    assert not any(fitted["scratch"]["cwd"].iterdir())


def test_checkpoint_carries_config_and_data_state(fitted):
    import torch

    ckpt = torch.load(
        fitted["run"] / "checkpoints/last.ckpt", map_location="cpu", weights_only=True
    )
    stored = yaml.safe_load(ckpt["mmtrain"]["config"])
    assert stored["data"]["dataset"]["num_train"] == 24 and "fusion" in stored
    data = ckpt["mmtrain"]["data"]
    assert data["inputs"]["text"]["vocab"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert len(data["targets"]["label"]["classes"]) >= 2


def test_test_from_the_checkpoint(fitted, tmp_path, session_dirs):
    """Model and data settings come from the checkpoint alone: no data overrides given."""
    scratch = {"cwd": tmp_path, "data": session_dirs["data"], "out": tmp_path / "outputs"}
    ckpt = fitted["run"] / "checkpoints/last.ckpt"
    proc = mmtrain(scratch, "test", f"ckpt_path={ckpt}", *QUIET)
    assert proc.returncode == 0, explain_run(proc)
    (run,) = run_dirs(scratch["out"], "metrics.json")
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test/label/accuracy"] <= 1.0
    assert all(k.startswith("test/") for k in metrics), metrics
    rows = [
        json.loads(ln) for ln in (run / "predictions/label_test.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in rows] == [f"test_{i:05d}" for i in range(8)]
    import torch

    classes = torch.load(ckpt, weights_only=True)["mmtrain"]["data"]["targets"]["label"]["classes"]
    assert {r["prediction"] for r in rows} <= set(classes)
    assert not (run / "checkpoints").exists()


def test_predict_from_the_checkpoint(fitted, tmp_path, session_dirs):
    scratch = {"cwd": tmp_path, "data": session_dirs["data"], "out": tmp_path / "outputs"}
    proc = mmtrain(
        scratch, "predict", f"ckpt_path={fitted['run'] / 'checkpoints/last.ckpt'}", *QUIET
    )
    assert proc.returncode == 0, explain_run(proc)
    (run,) = run_dirs(scratch["out"], "predictions/label_test.jsonl")
    lines = (run / "predictions/label_test.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all(set(json.loads(ln)) == {"id", "prediction"} for ln in lines)


def test_multirun_gives_one_run_directory_per_job(scratch, tiny_data):
    proc = mmtrain(
        scratch, "fit", "-m", "optimizer.lr=1e-3,1e-4", *TINY_DATA, "debug=fdr", *QUIET, timeout=300
    )
    assert proc.returncode == 0, explain_run(proc)
    (sweep,) = {p.parent for p in run_dirs(scratch["out"], "metrics.json")}
    assert re.fullmatch(
        r"shapes/multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d",
        sweep.relative_to(scratch["out"]).as_posix(),
    )
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, lr in (("0", 1e-3), ("1", 1e-4)):
        assert (
            yaml.safe_load((sweep / job / ".hydra/config.yaml").read_text())["optimizer"]["lr"]
            == lr
        )
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert "train/loss" in metrics
