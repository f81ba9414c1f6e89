"""Parity of transformers' image towers (DINOv2 (+ registers), CLIP, SigLIP) against transformers itself.

References are built by transformers from the published configs (``tests/parity/hf_published.py``, never
vitjax's tables), every float tensor randomised. ``forward_features`` must equal ``last_hidden_state`` and
``model(x)`` the ``pooler_output``. The default suite runs a reduced copy (depth 2, width 32, 28-64 px) of each
kind; the published sizes are marked slow.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import converters
import vitjax
import vitjax.data
from tests.converters import test_hub
from tests.parity.hf_published import PUBLISHED, published_config, published_model
from tests.parity.reference import (
    FP32_TOL,
    TOL_F64,
    assert_round_trip,
    float64,
    nchw_to_nhwc,
    on_meta,
    randomize,
    record,
    rel_err,
    rel_err64,
)

TOL = FP32_TOL["hf_vit"]
offline_hub = test_hub.offline_hub  # the fixture: an empty hub cache in offline mode
FAMILIES = ("hf_dinov2", "hf_clip", "hf_siglip")
NAMES = sorted(n for f in FAMILIES for n in vitjax.list_models(family=f))

# the round trip loads into a meta-device model: strict about keys and shapes, no copies
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

# one reduced copy per kind: (id, overrides, input sizes other than the built one)
SMALL = dict(embed_dim=32, depth=2, num_heads=2)
KINDS = {
    "facebook/dinov2-small": (dict(SMALL, img_size=42), [(57, 28), (14, 126)]),
    "facebook/dinov2-with-registers-small": (dict(SMALL, img_size=42), [(57, 28), (14, 126)]),
    "facebook/dinov2-giant": (dict(SMALL, img_size=28, depth=1), [(42, 28)]),  # SwiGLU
    "openai/clip-vit-base-patch16": (dict(SMALL, img_size=32, patch_size=8), []),
    "google/siglip-so400m-patch14-384": (dict(SMALL, img_size=28), []),
}


def reference(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(published_model(name, **overrides).eval(), seed)


def outputs(ref: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        out = ref(pixel_values=x)
    return out.last_hidden_state, out.pooler_output


def compare(model, ref, x: torch.Tensor) -> dict[str, float]:
    hidden, pooled = outputs(ref, x)
    xj = nchw_to_nhwc(x)
    feats = model.forward_features(xj)
    return {"last_hidden_state": rel_err(feats, hidden), "pooler_output": rel_err(model.forward_head(feats), pooled)}


def test_ids_listed():
    assert NAMES == sorted(PUBLISHED), sorted(set(NAMES) ^ set(PUBLISHED))


@pytest.mark.parametrize("name", list(KINDS))
def test_parity_reduced(name, parity_results):
    """A reduced copy at its own size and at other input sizes (DINOv2 resamples its position table per call,
    as transformers' interpolate_pos_encoding), then the bit-exact round trip into a strict load."""
    overrides, sizes = KINDS[name]
    ref = reference(name, **overrides)
    sd = ref.state_dict()
    model = vitjax.create_model(name, abstract=True, **overrides)
    converters.from_torch(model, sd, source="hf")
    size = model.cfg.img_size
    x = torch.randn(2, 3, size, size)
    errs = {"model(x)": rel_err(model(nchw_to_nhwc(x)), outputs(ref, x)[1])}
    for hw in [(size, size), *sizes]:
        errs |= {f"{k}@{hw}": v for k, v in compare(model, ref, torch.randn(2, 3, *hw)).items()}
    record(parity_results, "hf towers", name, errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, sd, "hf", on_meta(published_model, name, **overrides))


@pytest.mark.parametrize("name", list(KINDS))
def test_parity_float64(name, parity_results):
    """float64 on both sides at the built size and at a model built for another size: within 1e-9 (a wrong eps,
    activation form or token order is 1e-7 and up)."""
    overrides, _ = KINDS[name]
    errs = {}
    p = overrides.get("patch_size", 14)
    for img in (overrides["img_size"], overrides["img_size"] + p):
        ov = dict(overrides, img_size=img)
        ref = reference(name, seed=2, **ov).double()
        x = torch.randn(2, 3, img, img, dtype=torch.float64)
        hidden, pooled = outputs(ref, x)
        with jax.enable_x64(True):
            model = float64(vitjax.create_model(name, abstract=True, **ov))
            converters.from_torch(model, ref.state_dict(), source="hf")
            feats = model.forward_features(nchw_to_nhwc(x))
            errs[f"last_hidden_state@{img}"] = rel_err64(feats, hidden)
            errs[f"pooler_output@{img}"] = rel_err64(model.forward_head(feats), pooled)
    record(parity_results, "hf towers (float64)", name, errs)
    assert max(errs.values()) <= TOL_F64, errs


@pytest.mark.parametrize("name", list(KINDS))
def test_overrides_build_the_matching_tower(name):
    """Every architecture override (width, depth, heads, MLP ratio, image and patch size) gives the tower that
    transformers builds from the same fields: the export loads strictly and the outputs agree."""
    overrides = dict(embed_dim=48, depth=1, num_heads=3, mlp_ratio=2, img_size=40, patch_size=8)
    ref = reference(name, seed=3, **overrides)
    cfg = published_config(name, **overrides)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, cfg.image_size) == (48, 1, 8, 40)
    model = vitjax.create_model(name, abstract=True, **overrides)
    assert_round_trip(converters.from_torch(model, ref.state_dict(), source="hf"), ref.state_dict(), "hf", ref)
    errs = compare(model, ref, torch.randn(1, 3, 40, 40))
    assert max(errs.values()) <= TOL, errs


def test_mask_token_survives():
    """DINOv2's mask token (masked-image pretraining only) is a parameter the forward ignores, kept through a
    round trip."""
    name = "facebook/dinov2-small"
    overrides = KINDS[name][0]
    ref = reference(name, seed=4, **overrides)
    model = converters.from_torch(vitjax.create_model(name, abstract=True, **overrides), ref.state_dict(), source="hf")
    want = ref.embeddings.mask_token.detach().numpy()
    assert np.array_equal(np.asarray(model.mask_token[...]), want)
    assert np.array_equal(converters.to_torch(model, target="hf")["embeddings.mask_token"], want)
    x = np.random.default_rng(0).normal(size=(1, 42, 42, 3)).astype(np.float32)
    before = np.asarray(model(x))
    model.mask_token.set_value(model.mask_token[...] + 1.0)
    assert np.array_equal(np.asarray(model(x)), before)


@pytest.mark.parametrize("name", list(KINDS))
def test_transformers_4_names_load_in_transformers(name, tmp_path):
    """Hub checkpoints use transformers-4 names (DINOv2's ``attention.attention.query``, ``mlp.weights_in``;
    CLIP / SigLIP under ``vision_model.``). Export with that table, then let transformers itself load the file:
    wrong v4 names would show as missing/unexpected keys. A full CLIPModel / SiglipModel file (text tower
    beside the vision one) loads too, its text weights left aside."""
    from safetensors.torch import save_file

    from converters.tables import tables_for

    overrides = KINDS[name][0]
    ref = reference(name, seed=5, **overrides)
    model = converters.from_torch(vitjax.create_model(name, abstract=True, **overrides), ref.state_dict(), source="hf")
    v4_table = tables_for(model, "hf")[1]
    v4 = {k: torch.from_numpy(np.array(v)) for k, v in converters.to_torch_with(model, v4_table).items()}
    assert set(v4) != set(ref.state_dict()), "the v4 table must name what transformers 5 renamed"
    full = dict(v4)
    if name.startswith(("openai/", "google/")):
        full |= {"text_model.embeddings.token_embedding.weight": torch.zeros(3, 2), "logit_scale": torch.ones(())}
    again = converters.from_torch(vitjax.create_model(name, abstract=True, **overrides), full, source="hf")
    size = model.cfg.img_size
    x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(again(x)), np.asarray(model(x)))

    published_config(name, **overrides).save_pretrained(tmp_path)
    save_file(v4, str(tmp_path / "model.safetensors"))
    loaded, info = type(ref).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    _, pooled = outputs(loaded.eval(), torch.from_numpy(x).permute(0, 3, 1, 2))
    assert rel_err(model(x), pooled) <= TOL


# -- the published sizes ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_parity_published(name, parity_results):
    """Each id at its published size (the 40-block giants at two blocks) and at its built input size."""
    overrides = dict(depth=2) if "giant" in name else {}
    ref = reference(name, seed=6, **overrides)
    sd = ref.state_dict()
    model = vitjax.create_model(name, abstract=True, **overrides)
    converters.from_torch(model, sd, source="hf")
    size = model.cfg.img_size
    errs = compare(model, ref, torch.randn(1, 3, size, size))
    if name.startswith("facebook/dinov2"):  # transformers' DINOv2 preprocessing crops to 224
        errs |= {f"{k}@224": v for k, v in compare(model, ref, torch.randn(1, 3, 224, 224)).items()}
    record(parity_results, "hf towers", name, errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, sd, "hf", on_meta(published_model, name, **overrides))


# -- transformers' former Flax checkpoints ------------------------------------------------------------------------
_FLAX_NORMS = ("norm1", "norm2", "layernorm", "pre_layrnorm", "post_layernorm", "layer_norm1", "layer_norm2")


def flax_tree(v4: dict[str, np.ndarray]) -> dict:
    """The parameter tree transformers 4's ``FlaxDinov2Model`` / ``FlaxCLIPModel`` ``save_pretrained`` wrote,
    from the torch model's transformers-4 state_dict: the same module names (``encoder/layer/0/attention/
    attention/query``, ``vision_model/encoder/layers/0/self_attn/q_proj``), Dense kernels ``[in, out]``, Conv
    kernels ``[kh, kw, in, out]``, LayerNorm ``scale``, ``nn.Embed`` tables as ``embedding``."""
    tree: dict = {}
    for key, a in v4.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "weight" and module.rsplit(".", 1)[-1] in _FLAX_NORMS:
            leaf = "scale"
        elif leaf == "weight" and module.endswith("position_embedding"):
            leaf = "embedding"
        elif leaf == "weight":
            leaf, a = "kernel", (a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T)
        node = tree
        for part in module.split(".") if module else ():
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(a)
    return tree


@pytest.mark.parametrize("name", ["facebook/dinov2-small", "facebook/dinov2-giant", "openai/clip-vit-base-patch16"])
def test_flax_msgpack_loads(name, tmp_path):
    """A ``flax_model.msgpack`` as transformers 4 saved it (FlaxDinov2Model; FlaxCLIPModel with its text tower
    and projections beside the vision tower) loads through ``create_model(..., pretrained=path)`` and matches
    transformers' torch model holding the same weights."""
    from flax import serialization

    from converters.tables import tables_for

    overrides = KINDS[name][0]
    ref = reference(name, seed=7, **overrides)
    model = converters.from_torch(vitjax.create_model(name, abstract=True, **overrides), ref.state_dict(), source="hf")
    v4 = converters.to_torch_with(model, tables_for(model, "hf")[1])
    tree = flax_tree(v4)
    if name.startswith("openai/"):  # FlaxCLIPModel's other parameters
        tree["text_model"] = {"final_layer_norm": {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}}
        tree["visual_projection"] = {"kernel": np.ones((32, 8), np.float32)}
        tree["logit_scale"] = np.float32(2.6592)
    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(serialization.msgpack_serialize({"params": tree}))
    loaded = vitjax.create_model(name, pretrained=str(path), **overrides)
    size = model.cfg.img_size
    x = torch.randn(1, 3, size, size)
    _, pooled = outputs(ref, x)
    assert rel_err(loaded(nchw_to_nhwc(x)), pooled) <= TOL
    for key, value in converters.to_torch(loaded, target="hf").items():
        assert np.array_equal(value, ref.state_dict()[key].numpy()), key


def test_pretrained_from_the_hub_cache(offline_hub):
    """``pretrained=True`` fetches the id's transformers repo (here an offline hub cache holding a full
    SiglipModel file, text tower included) and records transformers' preprocessing for the id."""
    from safetensors.torch import save_file

    from converters.tables import tables_for
    from tests.converters.helpers import write_hub_file

    name = "google/siglip-base-patch16-224"
    overrides = dict(SMALL, img_size=32, patch_size=16)
    ref = reference(name, seed=8, **overrides)
    model = converters.from_torch(vitjax.create_model(name, abstract=True, **overrides), ref.state_dict(), source="hf")
    v4 = {
        k: torch.from_numpy(np.array(v)) for k, v in converters.to_torch_with(model, tables_for(model, "hf")[1]).items()
    }
    v4["text_model.final_layer_norm.weight"] = torch.ones(4)
    write_hub_file(offline_hub, name, "model.safetensors", lambda p: save_file(v4, str(p)))
    loaded = vitjax.create_model(name, pretrained=True, **overrides)
    assert loaded.pretrained_cfg["source"] == f"hub {name}/model.safetensors"
    data = vitjax.data.resolve_model_data_config(loaded)
    assert (data["crop_mode"], data["mean"], data["interpolation"]) == ("squash", (0.5, 0.5, 0.5), "bicubic")
    x = torch.randn(1, 3, 32, 32)
    assert rel_err(loaded(nchw_to_nhwc(x)), outputs(ref, x)[1]) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_verify_reference_is_the_published_one(name):
    """``python -m converters verify`` builds its reference from vitjax's rows (``converters.verify.hf_tower``):
    every published field must come out equal, for every id."""
    from converters.verify import hf_tower

    with torch.device("meta"):
        ours = hf_tower(name).config.to_dict()
    for key, value in published_config(name).to_dict().items():
        if key not in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
            assert ours[key] == value, (key, ours[key], value)


def test_streamed_export_joins_the_fused_head(tmp_path):
    """``python -m converters to-torch`` writes tensor by tensor (``converters.stream``): SigLIP's MAP head is
    written as nn.MultiheadAttention's one ``in_proj_weight`` / ``in_proj_bias``, and the file loads strictly."""
    from safetensors.torch import load_file

    from converters.stream import save_torch

    name = "google/siglip-so400m-patch14-384"
    overrides = KINDS[name][0]
    ref = reference(name, seed=9, **overrides)
    model = converters.from_torch(vitjax.create_model(name, abstract=True, **overrides), ref.state_dict(), source="hf")
    sd = load_file(str(save_torch(model, tmp_path / "siglip.safetensors", target="hf")))
    assert set(sd) == set(ref.state_dict()) and "head.attention.in_proj_weight" in sd
    for key, value in ref.state_dict().items():
        assert torch.equal(sd[key], value), key
