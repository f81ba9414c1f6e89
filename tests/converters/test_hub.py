"""create_model(name, pretrained=...) from the hub (offline, from a cache the test writes) and from local files.

timm names read ``timm/<name>.<tag>``'s ``model.safetensors`` (else ``pytorch_model.bin``); HF ids read the
transformers repo's ``model.safetensors``, else ``pytorch_model.bin``, else ``flax_model.msgpack``, with or
without ViTForImageClassification's ``vit.`` prefix. Each load is compared with the reference library's own
model holding the same random weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from transformers import ViTForImageClassification, ViTModel

import converters
import vitjax
from converters.io import CheckpointError
from tests.converters.helpers import (
    fwd,
    hf_vit_config,
    image,
    nchw_to_nhwc,
    rel_err,
    save_sd,
    write_hub_file,
)
from tests.parity.reference import TOL, randomize
from vitjax.pretrained import get_pretrained_cfg

TIMM_NAME = "vit_tiny_patch16_224"
HF_NAME = "google/vit-base-patch32-224-in21k"
DEPTH = 2  # the checkpoints written here have two blocks (models built with depth=2 on both sides)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache in offline mode (HF_HUB_OFFLINE=1); huggingface_hub read its settings at import, so
    its constants are patched as well as the environment."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def timm_ref():
    return randomize(timm.create_model(TIMM_NAME, depth=DEPTH).eval(), seed=3)


@pytest.fixture(scope="module")
def hf_ref():
    return randomize(ViTModel(hf_vit_config(HF_NAME, depth=DEPTH), add_pooling_layer=True).eval(), seed=4)


def _hf_err(model, ref, x) -> float:
    with torch.no_grad():
        out = ref(pixel_values=x)
    feats = fwd(model, nchw_to_nhwc(x), "forward_features")
    return max(rel_err(feats, out.last_hidden_state), rel_err(model.forward_head(feats), out.pooler_output))


def test_timm_default_tag_from_the_hub_cache(offline_hub, timm_ref):
    cfg = get_pretrained_cfg(TIMM_NAME)
    assert cfg["tag"] == timm.models.get_pretrained_cfg(TIMM_NAME).tag  # timm's default tag
    write_hub_file(offline_hub, cfg["hf_hub_id"], "model.safetensors", lambda p: save_sd(timm_ref.state_dict(), p))
    model = vitjax.create_model(TIMM_NAME, pretrained=True, depth=DEPTH)
    x = image(224, 224)
    with torch.no_grad():
        want = timm_ref(x)
    assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL
    assert model.pretrained_cfg["tag"] == cfg["tag"]
    assert model.pretrained_cfg["source"].startswith(f"hub {cfg['hf_hub_id']}/model.safetensors")


def test_timm_tag_selects_repo_and_classes_and_falls_back_to_bin(offline_hub):
    """``name.tag`` brings the tag's num_classes (as timm does) and its repo; a repo with only
    pytorch_model.bin is read from that."""
    name, tag = "vit_tiny_patch16_224", "augreg_in21k"
    ref = randomize(timm.create_model(f"{name}.{tag}", depth=DEPTH).eval(), seed=5)
    assert ref.num_classes == 21843
    repo = get_pretrained_cfg(name, tag)["hf_hub_id"]
    write_hub_file(offline_hub, repo, "pytorch_model.bin", lambda p: torch.save(ref.state_dict(), p))
    for model in (
        vitjax.create_model(f"{name}.{tag}", pretrained=True, depth=DEPTH),
        vitjax.create_model(name, pretrained=f"{name}.{tag}", depth=DEPTH),
    ):
        assert model.cfg.num_classes == 21843
        assert model.pretrained_cfg["tag"] == tag
        x = image(224, 224, seed=1)
        with torch.no_grad():
            want = ref(x)
        assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL


def test_missing_hub_files_are_reported(offline_hub):
    with pytest.raises(CheckpointError, match="model.safetensors"):
        vitjax.create_model(TIMM_NAME, pretrained=True)
    with pytest.raises(CheckpointError, match="no pretrained weights on the hub"):
        vitjax.create_model("vit_relpos_base_patch16_cls_224", pretrained=True)  # only an 'untrained' tag
    with pytest.raises(ValueError, match="known tags"):
        vitjax.create_model(f"{TIMM_NAME}.no_such_tag", pretrained=True)
    with pytest.raises(CheckpointError, match="no such file"):
        vitjax.create_model(TIMM_NAME, pretrained="/no/such/file.safetensors")


def _hf4_state_dict(ref: ViTModel) -> dict[str, torch.Tensor]:
    """ref's weights under the transformers-4 names that hub checkpoints use (transformers 5 renames them at
    load time, conversion_mapping.py)."""
    ren = [
        ("layers.", "encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]
    out = {}
    for k, v in ref.state_dict().items():
        for a, b in ren:
            k = k.replace(a, b)
        out[k] = v
    return out


def _flax_tree(sd: dict[str, torch.Tensor]) -> dict:
    """The parameter tree FlaxViTModel.save_pretrained wrote: Dense kernels [in, out], Conv kernels
    [kh, kw, in, out], LayerNorm ``scale``, module names as in transformers-4's torch model."""
    tree: dict = {}
    for key, t in sd.items():
        module, leaf = key.rsplit(".", 1)
        a = t.numpy()
        if leaf == "weight" and "layernorm" in module.rsplit(".", 1)[-1]:
            leaf = "scale"
        elif leaf == "weight":
            leaf, a = "kernel", (a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T)
        node = tree
        for part in module.split("."):
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(a)
    return tree


@pytest.mark.parametrize("fmt", ["model.safetensors", "pytorch_model.bin", "flax_model.msgpack"])
def test_hf_id_reads_whichever_file_the_repo_has(offline_hub, hf_ref, fmt):
    from flax import serialization

    sd = _hf4_state_dict(hf_ref)
    writers = {
        "model.safetensors": lambda p: save_sd(sd, p),
        "pytorch_model.bin": lambda p: torch.save(sd, p),
        "flax_model.msgpack": lambda p: p.write_bytes(serialization.msgpack_serialize(_flax_tree(sd))),
    }
    write_hub_file(offline_hub, HF_NAME, fmt, writers[fmt])
    model = vitjax.create_model(HF_NAME, pretrained=True, depth=DEPTH)
    assert model.pretrained_cfg["source"] == f"hub {HF_NAME}/{fmt}"
    assert _hf_err(model, hf_ref, image(224, 224)) <= TOL


def test_hf_classification_checkpoint_with_vit_prefix(tmp_path):
    """ViTForImageClassification (``vit.*`` + ``classifier.*``, no pooler): loads into the HF architecture
    built without the pooler and with a head; into the default (pooler) model it fails saying so."""
    cfg = hf_vit_config(HF_NAME, depth=DEPTH)
    cfg.num_labels = 5
    ref = randomize(ViTForImageClassification(cfg).eval(), seed=6)
    path = save_sd(ref.state_dict(), tmp_path / "cls.safetensors")
    model = vitjax.create_model(HF_NAME, pretrained=path, depth=DEPTH, representation_size=None, num_classes=5)
    x = image(224, 224)
    with torch.no_grad():
        want = ref(pixel_values=x).logits
    assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL
    with pytest.raises(converters.ConversionError, match="representation_size=None"):
        vitjax.create_model(HF_NAME, pretrained=path, depth=DEPTH)


def test_other_num_classes_gets_a_fresh_head(tmp_path, timm_ref):
    """As timm: a classifier of another size is dropped and the model keeps its own (seeded) initialisation
    for it; everything else comes from the checkpoint. num_classes=0 drops it altogether."""
    path = save_sd(timm_ref.state_dict(), tmp_path / "w.safetensors")
    model = vitjax.create_model(TIMM_NAME, pretrained=path, num_classes=7, seed=3, depth=DEPTH)
    kernel, bias = np.asarray(model.head.kernel[...]), np.asarray(model.head.bias[...])
    assert kernel.shape == (192, 7) and np.isfinite(kernel).all() and 0 < kernel.std() < 0.1
    again = vitjax.create_model(TIMM_NAME, pretrained=path, num_classes=7, seed=3, depth=DEPTH)
    np.testing.assert_array_equal(np.asarray(again.head.kernel[...]), kernel)  # seeded: reproducible
    assert bias.shape == (7,)
    np.testing.assert_array_equal(np.asarray(model.pos_embed[...]), timm_ref.pos_embed.detach().numpy())
    headless = vitjax.create_model(TIMM_NAME, pretrained=path, num_classes=0, depth=DEPTH)
    x = image(224, 224)
    with torch.no_grad():
        want = timm_ref.forward_head(timm_ref.forward_features(x), pre_logits=True)
    assert rel_err(fwd(headless, nchw_to_nhwc(x)), want) <= TOL


def test_features_only_from_a_full_checkpoint(tmp_path, timm_ref):
    path = save_sd(timm_ref.state_dict(), tmp_path / "w.safetensors")
    kw = {"features_only": True, "out_indices": (0,), "depth": DEPTH}
    feats = vitjax.create_model(TIMM_NAME, pretrained=path, **kw)
    ref = timm.create_model(TIMM_NAME, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kw).eval()
    x = image(224, 224)
    with torch.no_grad():
        want = ref(x)
    got = fwd(feats, nchw_to_nhwc(x))
    assert max(rel_err(g, w.permute(0, 2, 3, 1)) for g, w in zip(got, want, strict=True)) <= TOL
