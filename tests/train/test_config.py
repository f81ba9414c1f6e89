"""The command line: timm-style flags, model overrides, the mesh spec, and a YAML config file under the flags."""

from __future__ import annotations

import pytest

from train.config import parse_args, parse_mesh


def test_flags_file_and_overrides(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: vit_tiny_patch16_224\nlr: 0.01\nsteps: 7\nmodel_args: {depth: 3}\nscale: [0.5, 1.0]\n")
    cfg = parse_args(
        ["--config", str(cfg_file), "--lr", "0.002", "--embed-dim", "64", "--drop-path", "0.1",
         "--mesh", "data=2,fsdp=2,tensor=2", "--no-model-ema-warmup", "--precision", "bf16", "--img-size", "64"]
    )  # fmt: skip
    assert cfg.lr == 0.002 and cfg.steps == 7 and cfg.scale == (0.5, 1.0)
    assert cfg.mesh == {"data": 2, "fsdp": 2, "tensor": 2}
    assert cfg.model_ema_warmup is False and cfg.precision == "bf16"
    assert cfg.model_overrides() == {"depth": 3, "embed_dim": 64, "drop_path_rate": 0.1, "img_size": 64}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="--steps or --epochs"):
        parse_args(["--model", "vit_tiny_patch16_224"])
    with pytest.raises(Exception, match="bad mesh entry"):
        parse_mesh("data=2,pipeline=4")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("precision", "fp16"), ("nan_policy", "ignore"), ("opt", "adam"), ("sched", "tanh"), ("sharding", "zero")],
)
def test_values_outside_choices_are_command_line_errors(tmp_path, capsys, flag, value):
    """``--precision fp16`` once ran fp32 and ``--nan-policy ignore`` acted as ``skip``: a flag or a config-file
    value outside its field's choices now stops the command line (argparse's exit 2), naming the field."""
    base = ["--model", "vit_tiny_patch16_224", "--steps", "1"]
    with pytest.raises(SystemExit) as e:
        parse_args([*base, "--" + flag.replace("_", "-"), value])
    assert e.value.code == 2
    assert f"invalid choice: '{value}'" in capsys.readouterr().err
    path = tmp_path / "run.yaml"
    path.write_text(f"{flag}: {value}\n")
    with pytest.raises(SystemExit) as e:
        parse_args([*base, "--config", str(path)])
    assert e.value.code == 2
    assert f"{path}: {flag}: invalid choice '{value}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not one of"):  # and the dataclass itself refuses it
        parse_args(base).__class__(model="m", steps=1, **{flag: value})


def test_config_file_unknown_key(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model: vit_tiny_patch16_224\nsteps: 1\nprecison: bf16\n")
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(path)])
    assert "run.yaml: unknown fields ['precison']" in str(e.value)
