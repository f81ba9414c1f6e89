"""Edge paths of the converters as a new user meets them: relative paths, a damaged or foreign classifier, the HF
pooler at another width, the closest-model hint on a failed load, and a quiet start on a machine without a TPU."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from transformers import ViTModel

import converters
import vitjax
from converters.__main__ import EXIT_CHECKPOINT, EXIT_OK, main
from converters.npz import save_npz
from tests.converters.helpers import fwd, image, nchw_to_nhwc, rel_err, save_sd
from tests.parity.reference import TOL, randomize

NAME = "test_vit_relpos"  # timm's own tiny test model (96 wide, 9 blocks, 160 px, 1000 classes)


@pytest.fixture(scope="module")
def ref():
    return randomize(timm.create_model(NAME).eval(), seed=5)


def test_relative_paths_everywhere(tmp_path, monkeypatch, ref, capsys):
    monkeypatch.chdir(tmp_path)
    save_sd(ref.state_dict(), tmp_path / "w.safetensors")
    assert main(["to-jax", "--model", NAME, "--src", "w.safetensors", "--out", "ckpt/a"]) == EXIT_OK
    assert main(["to-torch", "--src", "ckpt/a", "--out", "out/back.safetensors"]) == EXIT_OK
    assert main(["verify", "--model", NAME, "--src", "ckpt/a"]) == EXIT_OK
    assert "summary: 1 of 1 within tolerance" in capsys.readouterr().out
    x = image(160, 160)
    with torch.no_grad():
        want = ref(x)
    for src in ("ckpt/a", "w.safetensors", "out/back.safetensors", "./ckpt/a"):
        model = vitjax.create_model(NAME, pretrained=src)
        assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL, src


def _head_cases(sd):
    no_weight = {k: v for k, v in sd.items() if k != "head.weight"}
    wide = {**sd, "head.weight": torch.zeros(1000, 97)}  # the model's class count, another width
    extra = {**sd, "head.extra": torch.zeros(1000)}
    return {
        "bias without weight": (no_weight, "missing    head.weight (1000, 96)"),
        "weight of another width": (wide, "head.weight: checkpoint (1000, 97), model needs (1000, 96)"),
        "an extra head tensor": (extra, "unexpected head.extra (1000)"),
    }


@pytest.mark.parametrize("case", ["bias without weight", "weight of another width", "an extra head tensor"])
def test_damaged_head_is_reported_by_name(tmp_path, ref, case, capsys):
    sd, want = _head_cases(ref.state_dict())[case]
    path = save_sd(sd, tmp_path / "w.safetensors")
    with pytest.raises(converters.ConversionError) as e:
        vitjax.create_model(NAME, pretrained=path)
    assert want in str(e.value)
    assert main(["to-jax", "--model", NAME, "--src", str(path), "--out", str(tmp_path / "o")]) == EXIT_CHECKPOINT
    assert want in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_head_of_another_class_count_is_dropped_and_said(tmp_path, ref, caplog):
    sd = ref.state_dict()
    five = {**sd, "head.weight": sd["head.weight"][:5].clone(), "head.bias": sd["head.bias"][:5].clone()}
    path = save_sd(five, tmp_path / "five.safetensors")
    with caplog.at_level(logging.WARNING, logger="converters"):
        model = vitjax.create_model(NAME, pretrained=path)  # 1000 classes asked: a fresh head
    assert "a classifier for 5 classes, the model's for 1000" in caplog.text
    assert "model keeps a freshly initialised one" in caplog.text and str(path) in caplog.text
    assert model.head.kernel.shape == (96, 1000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="converters"):
        vitjax.create_model(NAME, pretrained=path, num_classes=5)  # its own count: taken, nothing said
        headless = vitjax.create_model(NAME, pretrained=path, num_classes=0)
    assert caplog.text.count("a classifier for") == 1 and "the model has none" in caplog.text
    assert headless.head is None or not converters.engine.weights(headless).get("head.kernel")


def test_npz_head_bias_without_kernel_is_reported(tmp_path):
    model = vitjax.create_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8)
    arrays = dict(np.load(save_npz(model, tmp_path / "full.npz")))
    del arrays["head/kernel"]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(converters.ConversionError, match="missing    head/kernel"):
        vitjax.create_model("vit_tiny_patch16_224", pretrained=tmp_path / "cut.npz", depth=1, img_size=32, patch_size=8)


def test_hf_pooler_follows_the_hidden_size(tmp_path):
    """Shrunk from the large id, the pooler is as wide as the hidden size (transformers' pooler_output_size
    default), so a transformers checkpoint of that shape loads; an explicit width still wins."""
    name, small = (
        "google/vit-large-patch16-224-in21k",
        dict(embed_dim=192, depth=3, num_heads=3, img_size=64, patch_size=8),
    )
    from transformers import ViTConfig

    from tests.parity.reference import HF_PUBLISHED_COMMON

    # the large id's published config, shrunk as the overrides shrink it (vitjax keeps mlp_ratio 4)
    shrunk = dict(hidden_size=192, num_hidden_layers=3, num_attention_heads=3, intermediate_size=768)
    cfg = ViTConfig(**(HF_PUBLISHED_COMMON | shrunk | dict(image_size=64, patch_size=8)))
    hf = randomize(ViTModel(cfg, add_pooling_layer=True).eval(), seed=2)
    assert hf.pooler.dense.weight.shape == (192, 192)
    path = save_sd(hf.state_dict(), tmp_path / "hf.safetensors")
    model = vitjax.create_model(name, pretrained=path, **small)
    x = image(64, 64)
    with torch.no_grad():
        want = hf(pixel_values=x).pooler_output
    assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL
    assert vitjax.create_model(name, abstract=True, representation_size=256, **small).cfg.representation_size == 256
    assert vitjax.create_model(name, abstract=True, representation_size=None, **small).pre_logits is None
    assert vitjax.create_model(name, abstract=True).cfg.representation_size == 1024


def test_closest_model_hint_builds_few_models(monkeypatch):
    """The hint on a failed load names the right model, choosing its candidates from the configs: only a few of
    the family's 30-odd models are built (here, those 12 blocks deep and 192 wide)."""
    sd = dict(timm.create_model("vit_tiny_patch16_224").state_dict())
    sd["blocks.3.norm1.weight"] = torch.zeros(5)
    built = []
    real = vitjax.create_model
    monkeypatch.setattr(vitjax, "create_model", lambda name, **kw: built.append(name) or real(name, **kw))
    converters._signature.cache_clear()
    model = real("vit_small_patch16_224", abstract=True)
    with pytest.raises(converters.ConversionError, match="looks like vit_tiny_patch16_224, not vit_small_patch16_224"):
        converters.from_torch(model, sd)
    family = vitjax.list_models(family="vision_transformer")
    assert "vit_tiny_patch16_224" in built and len(built) <= 8 < len(family), built
    for name in built:
        cfg = vitjax.get_spec(name).config()
        assert (cfg.depth, cfg.embed_dim) == (12, 192), name


NOISE = ("libtpu", "TPU", "E0000", "INVALID_ARGUMENT")


def test_cli_starts_quietly_without_a_tpu(tmp_path, ref):
    """libtpu (the `tpu` extra) is installed and this machine has no TPU: plain JAX prints libtpu's start-up
    errors (checked, so that this test sees what it guards against); the converters CLI prints none of them."""
    import libtpu  # noqa: F401  (the extra the noise comes from; missing, this test cannot see the noise)

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    plain = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True, text=True)
    assert any(n in plain.stderr for n in NOISE), plain.stderr
    src = save_sd(ref.state_dict(), tmp_path / "w.safetensors")
    cmd = [
        sys.executable,
        "-m",
        "converters",
        "to-jax",
        "--model",
        NAME,
        "--src",
        str(src),
        "--out",
        str(tmp_path / "o"),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == EXIT_OK, r.stderr[-2000:]
    assert not [n for n in NOISE if n in r.stderr], r.stderr
