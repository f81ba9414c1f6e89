"""Parity of the ViT switches the zoo needs (MAP / PRR pools, QuickGELU, SwiGLU, RmsNorm, the patch-embedding
norm, DeiT's distillation token, BEiT3's scale norms, the parallel blocks) against timm itself.

Each case builds timm's ``VisionTransformer`` (or deit.py's ``VisionTransformerDistilled``) with the switch's
timm kwargs on a tiny two-block net, randomises every float tensor, converts it into a vitjax ViT built with
the matching ``ViTConfig`` fields, and compares features, logits and pre-logits in float32 and float64; the
float32 model round-trips bit-exactly and loads into timm with ``strict=True``. Full-size names are h26b's
rows and the all-names sweep.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest
import timm.layers
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import ParallelScalingBlock, ParallelThingsBlock, VisionTransformer

import converters
import vitjax
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

pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

TOL = FP32_TOL["vision_transformer"]
# a 4 x 3 patch grid, two blocks of width 32: every code path at the least cost
SIZE = (32, 24)
TINY = dict(img_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)
BASE = "vit_small_patch16_224"  # any registered ViT: its config is overridden field by field

RMS5 = partial(timm.layers.RmsNorm, eps=1e-5)
LN5 = partial(timm.layers.LayerNorm, eps=1e-5)

# name: (timm kwargs, vitjax ViTConfig overrides[, timm class])
CASES = {
    "map": (dict(class_token=False, global_pool="map"), dict(class_token=False, global_pool="map")),
    "map_reg_prefix": (
        dict(class_token=False, reg_tokens=1, global_pool="map", pool_include_prefix=True, init_values=1e-5),
        dict(class_token=False, reg_tokens=1, global_pool="map", pool_include_prefix=True, init_values=1e-5),
    ),
    "quick_gelu_clip": (
        dict(pre_norm=True, norm_layer=LN5, act_layer="quick_gelu"),
        dict(pre_norm=True, norm_eps=1e-5, act="quick_gelu"),
    ),
    "swiglu_aimv2": (
        dict(
            class_token=False,
            fc_norm=False,
            mlp_ratio=2.75,
            global_pool="avg",
            qkv_bias=False,
            proj_bias=False,
            act_layer="silu",
            norm_layer=RMS5,
            embed_norm_layer=RMS5,
            mlp_layer=timm.layers.SwiGLU,
        ),
        dict(
            class_token=False,
            fc_norm=False,
            mlp_ratio=2.75,
            global_pool="avg",
            qkv_bias=False,
            proj_bias=False,
            act="silu",
            norm_layer="rmsnorm",
            norm_eps=1e-5,
            embed_norm=True,
            mlp_layer="swiglu",
        ),
    ),
    "swiglu_packed_dinov2": (
        dict(init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer=timm.layers.SwiGLUPacked, act_layer="silu"),
        dict(init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed", act="silu"),
    ),
    "rmsnorm_map_qk_fc_norm": (
        dict(norm_layer="rmsnorm", qk_norm=True, class_token=False, global_pool="map", fc_norm=True),
        dict(norm_layer="rmsnorm", qk_norm=True, class_token=False, global_pool="map", fc_norm=True),
    ),
    "rmsnorm_avg_fc_norm_pre_norm": (
        dict(norm_layer="rmsnorm", global_pool="avg", pre_norm=True),
        dict(norm_layer="rmsnorm", global_pool="avg", pre_norm=True),
    ),
    "dist_token": (dict(), dict(dist_token=True), VisionTransformerDistilled),
    "scale_norms_beit3": (
        dict(scale_attn_norm=True, scale_mlp_norm=True, global_pool="avg", norm_layer=LN5),
        dict(scale_attn_norm=True, scale_mlp_norm=True, global_pool="avg", norm_eps=1e-5),
    ),
    "parallel_qk_norm": (
        dict(norm_layer=timm.layers.RmsNorm, block_fn=ParallelScalingBlock, qkv_bias=False, qk_norm=True),
        dict(norm_layer="rmsnorm", block="parallel", qkv_bias=False, qk_norm=True),
    ),
    "parallel_things": (
        dict(init_values=1e-5, block_fn=ParallelThingsBlock),
        dict(init_values=1e-5, block="parallel_things"),
    ),
    "parallel_things_3": (
        dict(block_fn=partial(ParallelThingsBlock, num_parallel=3), qk_norm=True),
        dict(block="parallel_things", num_parallel=3, qk_norm=True),
    ),
    "prr_token": (dict(global_pool="prr"), dict(global_pool="prr")),
    "prr_avg_reg": (
        dict(class_token=False, reg_tokens=2, global_pool="prr"),
        dict(class_token=False, reg_tokens=2, global_pool="prr"),
    ),
    "avg_include_prefix": (
        dict(reg_tokens=2, global_pool="avg", pool_include_prefix=True),
        dict(reg_tokens=2, global_pool="avg", pool_include_prefix=True),
    ),
}


def case(name: str):
    timm_kw, ours, *cls = CASES[name]
    return timm_kw, ours, (cls[0] if cls else VisionTransformer)


def timm_model(name: str, seed: int, **kw) -> torch.nn.Module:
    timm_kw, _, cls = case(name)
    torch.manual_seed(seed)
    return randomize(cls(**{**TINY, **timm_kw, **kw}).eval(), seed)


def ours(name: str, **kw):
    return vitjax.create_model(BASE, abstract=True, **TINY, **case(name)[1], **kw)


def outputs(feats_fn, head_fn, x):
    feats = feats_fn(x)
    return {"features": feats, "logits": head_fn(feats), "pre_logits": head_fn(feats, pre_logits=True)}


@pytest.mark.parametrize("name", list(CASES))
def test_switch_parity(name, parity_results):
    """float32 against timm (features, logits, pre-logits), then a bit-exact round trip timm loads strictly."""
    ref = timm_model(name, seed=0)
    sd = ref.state_dict()
    model = converters.from_torch(ours(name), sd, source="timm")
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        want = outputs(ref.forward_features, ref.forward_head, x)
    got = outputs(model.forward_features, model.forward_head, nchw_to_nhwc(x))
    errs = {k: rel_err(got[k], want[k]) for k in want}
    errs["call"] = rel_err(model(nchw_to_nhwc(x)), want["logits"])
    record(parity_results, "vision_transformer (switches)", name, errs)
    assert max(errs.values()) <= TOL, errs
    timm_kw, _, cls = case(name)
    assert_round_trip(model, sd, "timm", on_meta(cls, **TINY, **timm_kw))


@pytest.mark.parametrize("name", list(CASES))
def test_switch_parity_float64(name, parity_results):
    """The same in float64 on both sides: a wrong eps, activation or layout shows far above TOL_F64."""
    ref = timm_model(name, seed=1).double()
    x = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        want = outputs(ref.forward_features, ref.forward_head, x)
    with jax.enable_x64(True):
        model = converters.from_torch(float64(ours(name)), ref.state_dict(), source="timm")
        got = outputs(model.forward_features, model.forward_head, nchw_to_nhwc(x))
        errs = {k: rel_err64(got[k], want[k]) for k in want}
    record(parity_results, "vision_transformer (switches, float64)", name, errs)
    assert max(errs.values()) <= TOL_F64, errs


@pytest.mark.parametrize("name", ["map", "dist_token", "prr_avg_reg", "swiglu_aimv2"])
def test_switch_features_only(name, parity_results):
    """features_only from the full checkpoint (pool, distillation head and final norm left out) against timm's
    forward_intermediates: the prefix tokens (class, distillation, registers) are cut from every map."""
    ref = timm_model(name, seed=2)
    model = vitjax.create_model(BASE, abstract=True, features_only=True, out_indices=(0, 1), **TINY, **case(name)[1])
    converters.from_torch(model, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
    got = model(nchw_to_nhwc(x))
    errs = {f"map{i}": rel_err(g, r.permute(0, 2, 3, 1)) for i, (g, r) in enumerate(zip(got, want, strict=True))}
    record(parity_results, "vision_transformer (switches)", f"{name} features_only", errs)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parametrize("name", ["map", "prr_token", "dist_token"])
def test_reset_classifier(name):
    """reset_classifier(0) as timm's: the attention pool stays, the model's output is the pre-logits (for DeiT
    distilled: both heads go, the two tokens are averaged); the headless model converts both ways strictly."""
    ref = timm_model(name, seed=3)
    model = converters.from_torch(ours(name), ref.state_dict(), source="timm")
    ref.reset_classifier(0)
    model.reset_classifier(0)
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(model(nchw_to_nhwc(x)), want) <= TOL
    assert model.head is None and model.head_dist is None
    timm_kw, _, cls = case(name)
    assert_round_trip(model, ref.state_dict(), "timm", on_meta(cls, **{**TINY, **timm_kw, "num_classes": 0}))
    # a new class count: fresh heads of that size, the rest untouched
    model.reset_classifier(7)
    assert np.asarray(model(nchw_to_nhwc(x))).shape == (2, 7)


def test_reset_classifier_pool_rules():
    """As timm: an attention pool cannot be added or swapped by reset_classifier; a plain pool drops it."""
    model = vitjax.create_model(BASE, **TINY, **case("map")[1])
    with pytest.raises(ValueError, match="cannot change global_pool"):
        model.reset_classifier(0, "prr")
    plain = vitjax.create_model(BASE, **TINY)
    with pytest.raises(ValueError, match="cannot change global_pool"):
        plain.reset_classifier(0, "map")
    model.reset_classifier(3, "avg")
    assert model.attn_pool is None and model.cfg.global_pool == "avg"
    assert model(np.zeros((1, *SIZE, 3), np.float32)).shape == (1, 3)


def test_distilled_training_output():
    """deit.py's distilled_training: in train mode the model returns the class-token and distillation logits
    separately, in eval mode their mean."""
    ref = timm_model("dist_token", seed=4)
    model = converters.from_torch(ours("dist_token"), ref.state_dict(), source="timm")
    x = torch.randn(2, 3, *SIZE)
    ref.train()
    ref.set_distilled_training(True)
    model.train()
    model.distilled_training = True
    with torch.no_grad():
        want = ref(x)
    got = model(nchw_to_nhwc(x))
    assert isinstance(want, tuple) and isinstance(got, tuple) and len(got) == 2
    assert max(rel_err(g, w) for g, w in zip(got, want, strict=True)) <= TOL
    model.eval()
    ref.eval()
    with torch.no_grad():
        assert rel_err(model(nchw_to_nhwc(x)), ref(x)) <= TOL


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(global_pool="gem"), "global_pool must be one of"),
        (dict(mlp_layer="glu"), "mlp_layer must be one of"),
        (dict(norm_layer="batchnorm"), "norm_layer must be one of"),
        (dict(dist_token=True, global_pool="avg"), "dist_token=True reads"),
        (dict(dist_token=True, reg_tokens=1), "no register tokens"),
        (dict(block="parallel", scale_attn_norm=True), "not supported in parallel blocks"),
        (dict(block="parallel", mlp_layer="swiglu"), "has its own fused MLP"),
        (dict(block="diff_parallel", qk_norm=True), "qk_norm is not supported"),
        (dict(block="parallel_things", num_parallel=0), "num_parallel must be"),
    ],
)
def test_config_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        vitjax.models.vit.ViTConfig(**bad)


def test_distilled_heads_of_another_class_count_are_dropped(tmp_path, caplog):
    """A DeiT-distilled checkpoint made for another class count loads with both heads (``head``, ``head_dist``)
    left out and freshly initialised, and says so; the rest of the weights are the checkpoint's."""
    import logging

    from safetensors.torch import save_file

    ref = timm_model("dist_token", seed=5, num_classes=5)
    path = tmp_path / "deit5.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    with caplog.at_level(logging.WARNING, logger="converters"):
        model = vitjax.create_model(BASE, pretrained=str(path), **TINY, dist_token=True)
    assert "a classifier for 5 classes, the model's for 10" in caplog.text
    assert "head.bias, head.weight, head_dist.bias, head_dist.weight" in caplog.text
    assert model.head.kernel.shape == model.head_dist.kernel.shape == (32, 10)
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        want = ref.forward_features(x)
    assert rel_err(model.forward_features(nchw_to_nhwc(x)), want) <= TOL


@pytest.mark.parametrize("name", list(CASES))
def test_switch_params_and_axes(name):
    """Abstract build: as many parameters as timm's model, each with one logical axis name (or None) per
    dimension, so the sharding rules place the new weights (pools, gates, norms, distillation head) too."""
    from flax import nnx

    from vitjax.sharding import axes_of

    timm_kw, _, cls = case(name)
    model = ours(name)
    n = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Param))
    assert n == sum(p.numel() for p in on_meta(cls, **TINY, **timm_kw).parameters())
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            axes = axes_of(var)
            assert axes is not None and len(axes) == len(var.get_value().shape), (path, axes)
