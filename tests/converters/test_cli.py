"""``python -m converters`` to-jax / to-torch / verify, vitjax checkpoint directories, streamed export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.numpy import load_file
from transformers import ViTModel

import vitjax
from converters import orbax_io
from converters.__main__ import EXIT_CHECKPOINT, EXIT_OK, EXIT_PARITY, EXIT_USAGE, main
from converters.io import SafetensorsFile
from converters.stream import save_torch
from tests.converters.helpers import fwd, hf_vit_config, image, nchw_to_nhwc, rel_err, save_sd
from tests.parity.reference import TOL, randomize

ROOT = Path(__file__).resolve().parents[2]
NAME = "test_vit_relpos"  # timm's own tiny test model (96 wide, 9 blocks, 160 px)


@pytest.fixture(scope="module")
def ref():
    return randomize(timm.create_model(NAME).eval(), seed=11)


def test_to_jax_to_torch_round_trip(tmp_path, ref, capsys):
    src = save_sd(ref.state_dict(), tmp_path / "src.safetensors")
    ckpt = tmp_path / "ckpt"
    assert main(["to-jax", "--model", NAME, "--src", str(src), "--out", str(ckpt)]) == EXIT_OK
    assert "peak RSS" in capsys.readouterr().out
    model = vitjax.create_model(NAME, pretrained=ckpt)  # the directory loads straight into the model
    x = image(160, 160)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL

    out = tmp_path / "back.safetensors"
    assert main(["to-torch", "--src", str(ckpt), "--out", str(out)]) == EXIT_OK
    back, orig = load_file(str(out)), load_file(str(src))
    assert set(back) == set(orig) and all(np.array_equal(back[k], orig[k]) for k in orig)  # bit-exact
    timm.create_model(NAME).load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)

    assert main(["verify", "--model", NAME, "--src", str(ckpt)]) == EXIT_OK
    table = capsys.readouterr().out
    assert NAME in table and "PASS" in table and "summary: 1 of 1 within tolerance" in table


def test_exit_codes_and_help(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    run = [sys.executable, "-m", "converters"]
    r = subprocess.run(
        [*run, "to-jax", "--model", NAME, "--src", str(bad), "--out", str(tmp_path / "o")],
        text=True,
        capture_output=True,
    )
    assert r.returncode == EXIT_CHECKPOINT and "not a safetensors file" in r.stderr
    assert not (tmp_path / "o").exists()
    r = subprocess.run([*run, "to-torch", "--help"], text=True, capture_output=True)
    assert r.returncode == 0 and "--naming" in r.stdout and "strict=True" in r.stdout
    r = subprocess.run([*run, "to-jax", "--model", NAME], text=True, capture_output=True)
    assert r.returncode == 2  # argparse: --out is required


def test_checkpoint_at_another_size_resamples(tmp_path):
    """A vitjax directory loaded into a model of another img_size goes through the timm filter: the result
    equals timm loading the same weights at that size."""
    name = "vit_tiny_patch16_224"
    ref = randomize(timm.create_model(name, depth=2).eval(), seed=12)
    src = save_sd(ref.state_dict(), tmp_path / "w.safetensors")
    orbax_io.save(vitjax.create_model(name, pretrained=src, depth=2), tmp_path / "ckpt")
    model = vitjax.create_model(name, pretrained=tmp_path / "ckpt", depth=2, img_size=256)
    timm_256 = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": str(src)}, depth=2, img_size=256
    )
    x = image(256, 256)
    with torch.no_grad():
        want = timm_256.eval()(x)
    assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL


def test_writes_are_atomic(tmp_path, ref, monkeypatch):
    src = save_sd(ref.state_dict(), tmp_path / "src.safetensors")
    other = tmp_path / "not_a_checkpoint"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert main(["to-jax", "--model", NAME, "--src", str(src), "--out", str(other)]) == EXIT_CHECKPOINT
    assert (other / "precious.txt").read_text() == "keep me"

    model = vitjax.create_model(NAME, pretrained=src)
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"old contents")

    class Boom(RuntimeError):
        pass

    def fail():
        raise Boom

    import converters.stream as stream

    tensors = stream.torch_tensors(model)
    key = sorted(tensors)[len(tensors) // 2]
    shape, dtype, _ = tensors[key]
    monkeypatch.setattr(stream, "torch_tensors", lambda *a, **k: {**tensors, key: (shape, dtype, fail)})
    with pytest.raises(Boom):
        save_torch(model, out)
    assert out.read_bytes() == b"old contents"  # the failed write left the old file alone
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_hf_export_loads_strictly_in_transformers(tmp_path):
    name = "google/vit-base-patch32-224-in21k"
    hf = randomize(ViTModel(hf_vit_config(name, depth=2), add_pooling_layer=True).eval(), seed=13)
    model = vitjax.create_model(name, pretrained=save_sd(hf.state_dict(), tmp_path / "hf.safetensors"), depth=2)
    out = save_torch(model, tmp_path / "export.safetensors", "hf")
    fresh = ViTModel(hf_vit_config(name, depth=2), add_pooling_layer=True)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(out)).items()}, strict=True)
    reader = SafetensorsFile(out)  # the streamed file reads back with vitjax's own reader too
    assert all(np.array_equal(reader[k], v.numpy()) for k, v in hf.state_dict().items())


def test_demo_command(tmp_path):
    """``python -m converters demo`` (``make demo``'s first command) on one small model: the parity table with
    PASS and exit code 0. The seed models themselves run under ``-m slow``."""
    r = subprocess.run(
        [sys.executable, "-m", "converters", "demo", "--models", NAME],
        text=True,
        capture_output=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == EXIT_OK, r.stderr[-3000:]
    assert NAME in r.stdout and "PASS" in r.stdout and "summary: 1 of 1 within tolerance" in r.stdout


@pytest.mark.slow
def test_demo_command_seed_models(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "converters", "demo"],
        text=True,
        capture_output=True,
        timeout=3600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == EXIT_OK, r.stdout[-3000:] + r.stderr[-3000:]


def test_verify_exit_codes(monkeypatch, capsys):
    """verify exits 1 with FAIL in the table when an output is off by more than the tolerance, and 2 for a
    model name it does not know."""
    from converters import verify as verify_lib

    outputs = verify_lib.jax_outputs

    def off(model, name, x):
        got = outputs(model, name, x)
        return {**got, "logits": np.asarray(got["logits"]) + 1e-3}

    monkeypatch.setattr(verify_lib, "jax_outputs", off)
    assert main(["verify", "--model", NAME]) == EXIT_PARITY
    out = capsys.readouterr().out
    assert "FAIL" in out and f"FAILED ['{NAME}']" in out
    monkeypatch.undo()
    assert main(["verify", "--model", NAME]) == EXIT_OK
    capsys.readouterr()
    assert main(["verify", "--model", "vit_no_such_model"]) == EXIT_USAGE
    assert "vit_no_such_model" in capsys.readouterr().err
