"""Parity of the HF ``google/vit-*-in21k`` ids against transformers' own ``ViTModel`` (with pooler).

The reference is built by transformers from the published configs (the hub's config.json values, written out
in ``tests/parity/reference.py``, never vitjax's table), every float tensor randomised; ``forward_features``
must equal ``last_hidden_state``, ``model(x)`` the ``pooler_output``, and features_only maps the matching
``hidden_states`` (block outputs, before the final norm).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from transformers import ViTModel

import converters
import vitjax
from converters.verify import hf_config
from tests.parity.reference import (
    FP32_TOL,
    HF_PUBLISHED,
    HF_PUBLISHED_COMMON,
    TOL_F64,
    assert_round_trip,
    float64,
    hf_published_config,
    nchw_to_nhwc,
    randomize,
    record,
    rel_err,
    rel_err64,
)

TOL = FP32_TOL["hf_vit"]

# the round trip loads into a meta-device ViTModel: strict about keys and shapes, no copies
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

NAMES = vitjax.list_models(family="hf_vit")
SLOW = ("large", "huge")


def params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if any(s in n for s in SLOW) else n for n in names]


def reference(name: str, seed: int = 0, **overrides) -> ViTModel:
    torch.manual_seed(seed)
    return randomize(ViTModel(hf_published_config(name, **overrides), add_pooling_layer=True).eval(), seed)


def test_hf_ids_listed():
    assert NAMES == sorted(
        f"google/vit-{s}-224-in21k"
        for s in ("base-patch16", "base-patch32", "large-patch16", "large-patch32", "huge-patch14")
    )


@pytest.mark.parametrize("name", params(NAMES))
def test_parity(name, parity_results):
    ref = reference(name)
    sd = ref.state_dict()
    model = vitjax.create_model(name, abstract=True)
    converters.from_torch(model, sd, source="hf")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = ref(pixel_values=x)
    xj = nchw_to_nhwc(x)
    feats = model.forward_features(xj)
    errs = {
        "last_hidden_state": rel_err(feats, out.last_hidden_state),
        "pooler_output": rel_err(model(xj), out.pooler_output),
        "pre_logits": rel_err(model.forward_head(feats, pre_logits=True), out.pooler_output),
    }
    record(parity_results, "hf_vit", name, errs)
    assert max(errs.values()) <= TOL, errs
    with torch.device("meta"):
        fresh = ViTModel(hf_published_config(name), add_pooling_layer=True)
    assert_round_trip(model, sd, "hf", fresh)


@pytest.mark.parametrize("name", params(NAMES))
def test_features_only_other_size(name, parity_results):
    """Block outputs at a non-square size, against transformers' hidden_states (position table built for it)."""
    p = vitjax.get_spec(name).config().patch_size
    size = (224 - 2 * p, 224 - p)
    ref = reference(name, seed=1, img_size=size)
    model = vitjax.create_model(name, img_size=size, features_only=True, out_indices=(0, -1), abstract=True)
    converters.from_torch(model, ref.state_dict(), source="hf")
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        hidden = ref(pixel_values=x, output_hidden_states=True).hidden_states
    depth = len(hidden) - 1
    gh, gw = size[0] // p, size[1] // p
    got = model(nchw_to_nhwc(x))
    errs = {}
    for g, layer in zip(got, (0, depth - 1), strict=True):
        want = hidden[layer + 1][:, 1:].reshape(2, gh, gw, -1)  # B, Gh, Gw, C (class token dropped)
        errs[f"block{layer}"] = rel_err(g, want)
    record(parity_results, "hf_vit", f"{name} features_only {size}", errs)
    assert max(errs.values()) <= TOL, errs


def test_transformers_4_names_load_in_transformers(tmp_path):
    """Hub checkpoints use transformers-4 names. Export with that table, then let transformers itself load the
    file: if our v4 names were wrong, transformers would report missing/unexpected keys."""
    from safetensors.torch import save_file

    from converters.tables.hf_vit import HF4

    name = "google/vit-base-patch32-224-in21k"
    ref = reference(name, depth=2)
    model = vitjax.create_model(name, depth=2, abstract=True)
    converters.from_torch(model, ref.state_dict(), source="hf")
    v4 = {k: torch.from_numpy(np.array(v)) for k, v in converters.to_torch_with(model, HF4).items()}
    assert any(k.startswith("encoder.layer.0.attention.attention.query") for k in v4)
    # the vitjax side reads the v4 names too (and ViTForImageClassification's `vit.` prefix)
    again = vitjax.create_model(name, depth=2, abstract=True)
    converters.from_torch(again, {f"vit.{k}": v for k, v in v4.items()}, source="hf")
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(again(x)), np.asarray(model(x)))

    hf_published_config(name, depth=2).save_pretrained(tmp_path)
    save_file(v4, str(tmp_path / "model.safetensors"))
    loaded, info = ViTModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        want = loaded.eval()(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2)).pooler_output
    assert rel_err(model(x), want) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_parity_float64(name, parity_results):
    """Every id in float64 on both sides at two blocks (depth is covered by the parameter counts) and a
    non-square size: last_hidden_state and the pooler within 1e-9 (a wrong eps or activation form is ~1e-7)."""
    p = HF_PUBLISHED[name]["patch_size"]
    size = (4 * p, 3 * p)
    ref = reference(name, seed=2, depth=2, img_size=size).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        out = ref(pixel_values=x)
    with jax.enable_x64(True):
        model = float64(vitjax.create_model(name, depth=2, img_size=size, abstract=True))
        converters.from_torch(model, ref.state_dict(), source="hf")
        feats = model.forward_features(nchw_to_nhwc(x))
        errs = {
            "last_hidden_state": rel_err64(feats, out.last_hidden_state),
            "pooler_output": rel_err64(model.forward_head(feats), out.pooler_output),
        }
    record(parity_results, "hf_vit (float64)", name, errs)
    assert max(errs.values()) <= TOL_F64, errs


@pytest.mark.parametrize("name", NAMES)
def test_verify_config_is_the_published_one(name):
    """``python -m converters verify`` / ``demo`` build their reference from vitjax's table
    (``converters.verify.hf_config``): every field must equal the published config's."""
    ours = hf_config(name).to_dict()
    for key, value in (HF_PUBLISHED_COMMON | HF_PUBLISHED[name]).items():
        assert ours[key] == value, (key, ours[key], value)
