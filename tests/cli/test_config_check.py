"""mmtrain.utils.config_check and the _target_ allow-list, on hand-made configs."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from mmtrain.build import task_targets
from mmtrain.cli import config_dir
from mmtrain.errors import MMTrainError
from mmtrain.utils.config_check import check_config, check_node
from mmtrain.utils.instantiate import safe_instantiate

HEAD = "mmtrain.heads.classification.ClassificationHead"
FUSION = "mmtrain.fusions.attention.AttentionFusion"


def _problems(node: dict, path: str = "x") -> list[str]:
    return check_node(OmegaConf.create(node), path)


def _error(cfg: dict, extra: list[str] | tuple[str, ...] = ()) -> str:
    with pytest.raises(MMTrainError) as info:
        check_config(OmegaConf.create(cfg), extra)
    return str(info.value)


# ---- keys ------------------------------------------------------------------------------------
def test_valid_nodes_have_no_problems():
    assert _problems({"_target_": FUSION, "dim": 64, "hidden_dim": 8}) == []
    assert (
        _problems({"_target_": HEAD, "hidden_dim": 0, "label_smoothing": 0}) == []
    )  # int -> float
    assert _problems({"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}) == []
    check_config(OmegaConf.create({"fusion": {"_target_": FUSION, "dim": 8}}))


def test_unknown_key_gets_did_you_mean():
    message = _error({"fusion": {"_target_": FUSION, "dimm": 64}})
    assert "fusion.dimm: unknown key" in message
    assert "did you mean 'dim'?" in message
    assert "hidden_dim" in message  # the valid keys are listed


def test_unknown_key_without_close_match_lists_valid_keys():
    (problem,) = _problems({"_target_": FUSION, "zzz": 1}, "fusion")
    assert problem.startswith("fusion.zzz: unknown key") and "did you mean" not in problem
    assert "in_dims" in problem and "dim" in problem


def test_open_kwargs_accept_any_key():
    assert _problems({"_target_": "argparse.Namespace", "anything": 1}) == []


def test_unimportable_target():
    (problem,) = _problems({"_target_": "mmtrain.fusions.nope.NopeFusion"}, "fusion")
    assert "fusion._target_: cannot import 'mmtrain.fusions.nope.NopeFusion'" in problem


# ---- types -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("node", "key"),
    [
        ({"_target_": HEAD, "hidden_dim": "big"}, "hidden_dim"),  # int given str
        ({"_target_": HEAD, "hidden_dim": 1.5}, "hidden_dim"),  # int given float
        ({"_target_": HEAD, "hidden_dim": True}, "hidden_dim"),  # int given bool
        ({"_target_": "mmtrain.encoders.image.ResNetEncoder", "pretrained": 1}, "pretrained"),
        ({"_target_": HEAD, "label_smoothing": "0.1"}, "label_smoothing"),  # float given str
        ({"_target_": "mmtrain.encoders.image.SmallCNNEncoder", "channels": 64}, "channels"),
        ({"_target_": "mmtrain.data.transforms.AudioTransform", "f_max": "high"}, "f_max"),
        (
            {
                "_target_": "torch.nn.Conv2d",
                "in_channels": 3,
                "out_channels": 4,
                "kernel_size": 3,
                "padding_mode": "mirror",
            },
            "padding_mode",
        ),  # Literal
    ],
    ids=[
        "int<-str",
        "int<-float",
        "int<-bool",
        "bool<-int",
        "float<-str",
        "list<-int",
        "optional<-str",
        "literal",
    ],
)
def test_wrong_primitive_type(node, key):
    problems = _problems(node)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"x.{key}=") and "expected" in problems[0]


@pytest.mark.parametrize(
    "node",
    [
        {"_target_": "mmtrain.data.transforms.AudioTransform", "f_max": None},  # Optional
        {"_target_": "mmtrain.data.transforms.AudioTransform", "f_max": 8000},  # float <- int
        {
            "_target_": "torch.nn.Conv2d",
            "in_channels": 3,
            "out_channels": 4,
            "kernel_size": 3,
            "padding_mode": "reflect",
        },
        {"_target_": "mmtrain.encoders.image.SmallCNNEncoder", "channels": [8, 16]},
    ],
    ids=["optional<-none", "float<-int", "literal", "list"],
)
def test_right_primitive_type(node):
    assert _problems(node) == []


def test_interpolations_are_checked_resolved():
    cfg = {
        "width": 8,
        "bad": "wide",
        "ok": {"_target_": HEAD, "hidden_dim": "${width}"},
        "no": {"_target_": HEAD, "hidden_dim": "${bad}"},
    }
    message = _error(cfg)
    assert "no.hidden_dim='wide'" in message and "ok.hidden_dim" not in message


def test_type_message_names_the_expected_type():
    # Optional[int] and Literal[...] have __name__ 'Optional' / 'Literal': the arguments must
    # still be shown ("expected Optional", without the type, was a bug).
    (optional,) = _problems({"_target_": "pytorch_lightning.Trainer", "max_epochs": "abc"})
    assert "int" in optional.split("expected", 1)[1], optional
    (literal,) = _problems(
        {
            "_target_": "torch.nn.Conv2d",
            "in_channels": 3,
            "out_channels": 4,
            "kernel_size": 3,
            "padding_mode": "mirror",
        }
    )
    assert "reflect" in literal, literal  # the allowed values are listed


# ---- missing values ----------------------------------------------------------------------------
def test_missing_values_are_reported_together():
    message = _error(
        {
            "root": "???",
            "data": {"split": "???"},
            "head": {"_target_": HEAD, "hidden_dim": "???", "dropout": "x"},
        }
    )
    assert message.startswith("invalid config:")
    line = next(ln for ln in message.splitlines() if "missing values" in ln)
    for key in ("root", "data.split", "head.hidden_dim"):
        assert key in line
    # Other problems are in the same error, each on its own line; ??? is not a type error.
    assert "head.dropout='x'" in message and "hidden_dim='???'" not in message


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"data": {"root": "???", "images": "${data.root}/images"}}, "data.root"),
        ({"data": {"images": "${data.nope}/images"}}, "data.images"),
    ],
    ids=["interpolates-missing", "dangling-interpolation"],
)
def test_interpolation_problems_are_config_errors(cfg, key):
    assert key in _error(cfg)


# ---- allow-list --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "subprocess.run",
        "torch.hub.load",
        "torch.load",
        "torch.jit.load",
        "mmtrainx.evil",
    ],
)
def test_disallowed_targets_are_refused(target, tmp_path):
    marker = tmp_path / "ran"
    node = {"evil": {"_target_": target, "_args_": [f"touch {marker}"]}}
    message = _error(node)
    assert f"evil._target_={target!r} is not allowed" in message
    assert "allowed_targets" in message
    with pytest.raises(MMTrainError, match="is not allowed"):
        safe_instantiate(OmegaConf.create(node["evil"]), "evil")
    assert not marker.exists()


def test_nested_and_listed_targets_are_checked():
    cfg = {"callbacks": [{"_target_": FUSION}, {"x": {"_target_": "os.system"}}]}
    assert "callbacks[1].x._target_='os.system' is not allowed" in _error(cfg)


@pytest.mark.parametrize(
    ("target", "kwargs"),
    [
        ("torch.utils.collect_env.run", {"command": "touch pwned"}),
        ("torch.serialization.load", {"f": "evil.pt", "weights_only": False}),
    ],
)
def test_code_execution_gadgets_under_torch_are_refused(target, kwargs):
    # Only checked, never instantiated: the first one really runs its command.
    _error({"encoder": {"image": {"_target_": target, **kwargs}}})


def test_allowed_targets_extends_the_list():
    node = {"decoder": {"_target_": "json.JSONDecoder", "strict": False}}
    assert "json.JSONDecoder" in _error(node)
    check_config(OmegaConf.create(node), ["json."])  # no error
    decoder = safe_instantiate(OmegaConf.create(node["decoder"]), "decoder", ["json."])
    assert decoder.decode('{"a": 1}') == {"a": 1} and decoder.strict is False
    # ...and the extension still binds keys.
    assert "did you mean 'strict'" in _error(
        {"d": {"_target_": "json.JSONDecoder", "strictt": 1}}, ["json."]
    )


def test_allowed_targets_from_the_composed_config(compose_config):
    cfg = compose_config("allowed_targets=[json.]", "+decoder._target_=json.JSONDecoder")
    check_config(cfg, list(cfg.allowed_targets))
    with pytest.raises(MMTrainError, match="json.JSONDecoder"):
        check_config(cfg, [])


def test_constructor_value_errors_become_config_errors():
    node = OmegaConf.create({"_target_": HEAD, "in_dim": 4, "num_classes": 1})
    with pytest.raises(MMTrainError, match=r"^head.label: num_classes must be >= 2, got 1$"):
        safe_instantiate(node, "head.label")


# ---- every preset of the config tree passes the check -------------------------------------------
CONFIG_DIR = config_dir()
PRESETS = sorted(
    f"{p.parent.relative_to(CONFIG_DIR).as_posix()}={p.stem}"
    for p in CONFIG_DIR.glob("**/*.yaml")
    if p.parent != CONFIG_DIR
    and not p.parent.relative_to(CONFIG_DIR).as_posix().startswith("hydra")
)


@pytest.mark.parametrize("override", PRESETS)
def test_every_preset_passes_the_check(override, compose_config, tmp_path):
    try:
        cfg = compose_config(override, output_dir=tmp_path)
    except ConfigCompositionException:  # a group the fit config lacks, e.g. head/transcript
        cfg = compose_config(f"+{override}", output_dir=tmp_path)
    for key in ("root", "train", "val"):  # data on the user's disk: data.root=???, data.train=???
        if OmegaConf.is_missing(cfg.data, key):
            cfg.data[key] = str(tmp_path / key)
    for node in (cfg.get("head") or {}).values():  # an LLM head's model: the user's to name
        if OmegaConf.is_missing(node, "model_name_or_path"):
            node.model_name_or_path = str(tmp_path / "lm")
    cfg = task_targets(cfg)  # as run() does first: a causal-LM head's task gets a ChatTarget
    check_config(cfg, list(cfg.get("allowed_targets") or []))
