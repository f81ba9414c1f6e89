"""Parity of every timm ``byoanet`` model (HaloNet, BoTNet, Lambda-ResNet and their mixtures) against timm.

For each name: timm's model with every float tensor randomised (BatchNorm statistics and the zero-initialised
last BN gammas included) -> converters.from_torch -> compare forward_features, logits and pre-logits at batch
2 in eval mode; bit-exact round trip (num_batches_tracked included) that timm loads with strict=True; timm's
features_only model (its FeatureListNet state_dict loaded into ours) map by map. Fixed-size models are built
at img_size 128 (timm allows it), halo models run at the smallest size their block geometry allows.
Then: BatchNorm running statistics after one train-mode step, the input sizes we and timm accept, and the
ByobNet machinery itself on hand-made configs that use what no registered model does.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest
import timm
import torch
from flax import nnx
from timm.models import byobnet as tb

import converters
import vitjax
from tests.parity.reference import (
    FP32_TOL,
    TOL_F64,
    assert_round_trip,
    float64,
    nchw_to_nhwc,
    nhwc,
    on_meta,
    randomize,
    record,
    rel_err,
    rel_err64,
)
from vitjax.models import byobnet as vb
from vitjax.xla_cpu import compiler_options

TOL = FP32_TOL["byoanet"]

# the round trips load into reference models on the meta device: strict about keys and shapes, no copies
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

NAMES = vitjax.list_models(family="byoanet")
SLOW = ("50ts", "halonet_h1")  # ResNet-50-sized and the all-halo H1


def params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if any(s in n for s in SLOW) else n for n in names]


def input_for(name: str) -> tuple[dict, int]:
    """(build overrides, input side) for the cheapest input timm accepts."""
    cfg = vitjax.get_spec(name).config()
    attn = [b.self_attn_layer or cfg.self_attn_layer for s in cfg.stages_expanded for b in s if b.type == "self_attn"]
    if any(isinstance(a, vb.BottleneckAttnCfg) or getattr(a, "r", 0) is None for a in attn):
        return dict(img_size=128), 128  # built for a size: build for 128
    if any(isinstance(a, vb.HaloCfg) for a in attn):
        return {}, cfg.img_size
    return {}, 128  # lambda convolutions: any size with even maps at strided lambda layers


def _heads(m, x):
    f = m.forward_features(x)
    return f, m.forward_head(f), m.forward_head(f, pre_logits=True)


def _heads_and_intermediates(m, x):
    return *_heads(m, x), m.forward_intermediates(x)


_PROGRAMS = {"heads": _heads, "heads_and_intermediates": _heads_and_intermediates}


def jitted(model, method: str = "__call__", **kw):
    """``model.method(x)`` compiled once (op-by-op dispatch of these conv nets costs more than a compile);
    ``"heads"``: (forward_features, logits, pre-logits) in one program, ``"heads_and_intermediates"`` adds
    every forward_intermediates map."""
    fn = nnx.jit(_PROGRAMS.get(method) or (lambda m, x: getattr(m, method)(x, **kw)))
    return lambda x: fn(model, x)


def reference(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(timm.create_model(name, **kw).eval(), seed)


def test_registry_covers_timm():
    assert NAMES == sorted(timm.list_models(module="byoanet"))


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    model = vitjax.create_model(name, abstract=True)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    with torch.device("meta"):
        ref = timm.create_model(name)
    assert n == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", params(NAMES))
def test_parity(name, parity_results):
    kw, side = input_for(name)
    ref = reference(name, **kw)
    sd = ref.state_dict()
    model = vitjax.create_model(name, abstract=True, **kw)
    converters.from_torch(model, sd, source="timm")

    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        feats = ref.forward_features(x)
        logits = ref.forward_head(feats)
        pre = ref.forward_head(feats, pre_logits=True)
    feats_j, logits_j, pre_j = jitted(model, "heads")(nchw_to_nhwc(x))
    errs = {
        "features": rel_err(feats_j, nhwc(feats)),
        "logits": rel_err(logits_j, logits),
        "pre_logits": rel_err(pre_j, pre),
    }
    record(parity_results, "byoanet", name, errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, sd, "timm", on_meta(timm.create_model, name, **kw))


@pytest.mark.parametrize("name", params(NAMES))
def test_features_only(name, parity_results):
    """timm's features_only model (FeatureListNet, default out_indices): its state_dict loads into ours, and
    every map, channel count and reduction matches."""
    kw, side = input_for(name)
    ref = reference(name, seed=1, features_only=True, **kw)
    model = vitjax.create_model(name, features_only=True, abstract=True, **kw)
    converters.from_torch(model, ref.state_dict(), source="timm")
    assert model.channels() == ref.feature_info.channels()
    assert model.reduction() == ref.feature_info.reduction()
    assert [f["module"] for f in model.feature_info] == ref.feature_info.module_name()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        want = ref(x)
    got = jitted(model)(nchw_to_nhwc(x))
    assert len(got) == len(want) == 5
    errs = {f"feature{i}": rel_err(g, nhwc(r)) for i, (g, r) in enumerate(zip(got, want, strict=True))}
    record(parity_results, "byoanet", f"{name} features_only", errs)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parametrize(
    "name,out_indices",
    [("lambda_resnet26t", (0,)), ("lambda_resnet26t", (1, 3)), ("sehalonet33ts", (0, 2))],
)
def test_features_only_out_indices(name, out_indices):
    """Pruned feature models (the stem cut at its tap, stages and final conv dropped) take timm's pruned
    FeatureListNet state_dict and also the full model's; the kept maps match."""
    kw, side = input_for(name)
    ref_full = reference(name, seed=2, **kw)
    ref = timm.create_model(name, features_only=True, out_indices=out_indices, **kw).eval()
    missing = ref.load_state_dict(
        {
            re.sub(r"^stem\.conv(\d)", r"stem_conv\1", re.sub(r"^stages\.(\d+)", r"stages_\1", k)): v
            for k, v in ref_full.state_dict().items()
        },
        strict=False,
    ).missing_keys
    assert not missing
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        want = ref(x)
    model = vitjax.create_model(name, features_only=True, out_indices=out_indices, abstract=True, **kw)
    converters.from_torch(model, ref.state_dict(), source="timm")
    assert model.channels() == ref.feature_info.channels()
    assert model.reduction() == ref.feature_info.reduction()
    got = jitted(model)(nchw_to_nhwc(x))
    errs = [rel_err(g, nhwc(r)) for g, r in zip(got, want, strict=True)]
    assert max(errs) <= TOL, errs
    # sizes: what the pruned timm model accepts (attention layers of dropped stages no longer constrain them)
    for h, w in ((100, 96), (136, 128)):
        if _timm_accepts(ref, h, w):
            model.model.check_input_size(h, w)
        else:
            with pytest.raises(ValueError, match="sizes that work"):
                model.model.check_input_size(h, w)
    # the full model's checkpoint fills the same weights (pruned layers and the head are left out)
    from_full = vitjax.create_model(name, features_only=True, out_indices=out_indices, abstract=True, **kw)
    converters.from_torch(from_full, ref_full.state_dict(), source="timm")
    a, b = converters.to_torch(model), converters.to_torch(from_full)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["lambda_resnet26t", pytest.param("halonet26t", marks=pytest.mark.slow)])
def test_train_mode_batch_norm_update(name, parity_results):
    """One forward in train mode on the same batch: outputs (batch statistics) and every BatchNorm's updated
    running mean / variance / num_batches_tracked equal timm's."""
    kw, side = input_for(name)
    ref = reference(name, seed=3, **kw)
    model = vitjax.create_model(name, abstract=True, **kw)
    converters.from_torch(model, ref.state_dict(), source="timm")
    ref.train()
    model.train()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        want = ref(x)
    got = jitted(model)(nchw_to_nhwc(x))
    errs = {"logits": rel_err(got, want)}
    after = converters.to_torch(model, target="timm")
    ref_sd = ref.state_dict()
    stats = [k for k in ref_sd if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 50
    errs["running_stats"] = max(rel_err(after[k], ref_sd[k]) for k in stats)
    for k in (k for k in ref_sd if k.endswith("num_batches_tracked")):
        assert int(after[k]) == int(ref_sd[k]) == 1, k
    record(parity_results, "byoanet", f"{name} train step", errs)
    assert max(errs.values()) <= TOL, errs


# float64 gradients: with every tensor randomised the deep train-mode gradient is ill-conditioned in places (in
# float32 timm's own NCHW and channels-last gradients differ by up to 5e-2 of a tensor's largest entry, more or
# less depending on the CPU's kernels), so the comparison runs in float64 on both sides, where rounding is ~1e-16
# and a fixed bound holds on any machine.
GRAD_TOL_F64 = 1e-9


@pytest.mark.parametrize("name", ["lambda_resnet26t", pytest.param("halonet26t", marks=pytest.mark.slow)])
def test_train_mode_gradients(name, parity_results):
    """The gradient of a train-mode loss (batch statistics) with respect to every parameter equals timm's, in
    float64 on both sides, compiled with the CPU options ``python -m train`` uses (BatchNorm's hand-written
    gradient, the 1x1 convolutions' 2-D view and the other XLA:CPU workarounds are all on this path).

    Each tensor's error is relative to its largest entry, which must be nonzero and finite (an all-zero
    reference gradient would make the ratio NaN, and a NaN compares false against any bound)."""
    kw, side = input_for(name)
    ref = reference(name, seed=5, **kw).train().double()
    with jax.enable_x64(True):
        model = float64(vitjax.create_model(name, abstract=True, **kw))
        converters.from_torch(model, ref.state_dict(), source="timm")
        model.train()
        x = torch.randn(2, 3, side, side, dtype=torch.float64)
        w = torch.randn(2, ref.num_classes, dtype=torch.float64)
        (ref(x) * w).sum().backward()
        want = {k: p.grad.numpy() for k, p in ref.named_parameters()}
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def gradient(params, rest):
            # nnx's grad: the forward updates the BatchNorm statistics
            return nnx.grad(lambda m: (m(nchw_to_nhwc(x)) * w.numpy()).sum())(nnx.merge(graphdef, params, rest))

        grads = jax.jit(gradient, compiler_options=compiler_options("cpu"))(params, rest)
        got = converters.to_torch(nnx.merge(graphdef, grads, rest), target="timm")
    assert len(want) > 100
    errs = grad_errors(got, want)
    worst = max(errs, key=errs.get)
    record(parity_results, "byoanet gradients (float64)", f"{name} train mode", {"grads": errs[worst]})
    bad = {k: e for k, e in errs.items() if not e <= GRAD_TOL_F64}
    assert not bad, bad


def grad_errors(got: dict, want: dict) -> dict[str, float]:
    """max|got - want| / max|want| per tensor, both float64; asserts each reference tensor has a nonzero
    finite scale (so that no ratio is NaN or infinite) and each computed one is finite."""
    assert set(got) >= set(want), sorted(set(want) - set(got))[:5]
    errs = {}
    for key, ref in want.items():
        g = np.asarray(got[key])
        assert ref.dtype == g.dtype == np.float64, (key, ref.dtype, g.dtype)
        scale = float(np.abs(ref).max())
        assert np.isfinite(scale) and scale > 0, f"{key}: the reference gradient has scale {scale}"
        assert np.isfinite(g).all(), f"{key}: the gradient is not finite"
        errs[key] = float(np.abs(g - ref).max() / scale)
    return errs


def _timm_accepts(ref: torch.nn.Module, h: int, w: int) -> bool:
    try:
        with torch.no_grad():
            ref(torch.zeros(1, 3, h, w))
        return True
    except (AssertionError, RuntimeError):
        return False


@pytest.mark.parametrize(
    "name,kw,sizes",
    [
        ("halonet26t", {}, [(224, 224), (255, 256), (257, 256), (256, 320)]),
        ("haloregnetz_b", {}, [(224, 224), (256, 256), (112, 112), (209, 224)]),
        ("lambda_resnet26t", {}, [(128, 128), (136, 128), (120, 120), (100, 96), (113, 128), (64, 64)]),
        ("botnet26t_256", {}, [(224, 224), (250, 256), (288, 288)]),
        ("botnet26t_256", dict(img_size=(96, 160)), [(96, 160), (160, 96), (128, 128)]),
        ("lambda_resnet26rpt_256", dict(img_size=128), [(128, 128), (256, 256), (120, 128), (136, 128)]),
    ],
)
def test_input_sizes(name, kw, sizes):
    """We accept exactly the sizes timm accepts; a rejected size raises a ValueError that names the layer
    and which sizes work."""
    ref = timm.create_model(name, **kw).eval()
    model = vitjax.create_model(name, abstract=True, **kw)
    for h, w in sizes:
        ok = _timm_accepts(ref, h, w)
        if ok:
            model.check_input_size(h, w)
        else:
            with pytest.raises(ValueError, match=r"self_attn.*sizes that work include multiples of \d+"):
                model.check_input_size(h, w)


def test_rejected_size_raises_before_tracing():
    model = vitjax.create_model("halonet26t", abstract=True)
    with pytest.raises(ValueError, match="halonet26t: a 224x224 input .* multiples of 256"):
        model(np.zeros((1, 224, 224, 3), np.float32))


# -- the machinery on configs no registered model uses ----------------------------------------------------------------
def _timm_attn(cfg):
    if cfg is None:
        return None, None
    name = {vb.SeCfg: "se", vb.EcaCfg: "eca", vb.HaloCfg: "halo", vb.BottleneckAttnCfg: "bottleneck"}.get(type(cfg))
    name = name or "lambda"
    return name, _non_default(cfg)


def _non_default(cfg) -> dict:
    """The fields set away from their defaults (the kwargs to hand timm)."""
    defaults = type(cfg)()
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__ if getattr(cfg, f) != getattr(defaults, f)}


def _timm_block(bc: vb.ByoBlockCfg):
    attn, attn_kw = _timm_attn(bc.attn_layer)
    sa, sa_kw = _timm_attn(bc.self_attn_layer)
    bk = None if bc.block_kwargs is None else _non_default(bc.block_kwargs)
    return tb.ByoBlockCfg(
        type=bc.type,
        d=bc.d,
        c=bc.c,
        s=bc.s,
        gs=bc.gs,
        br=bc.br,
        attn_layer=attn,
        attn_kwargs=attn_kw,
        self_attn_layer=sa,
        self_attn_kwargs=sa_kw,
        block_kwargs=bk,
    )


def _timm_model(cfg: vb.ByoModelCfg) -> torch.nn.Module:
    attn, attn_kw = _timm_attn(cfg.attn_layer)
    sa, sa_kw = _timm_attn(cfg.self_attn_layer)
    blocks = tuple(tuple(_timm_block(b) for b in s) if isinstance(s, tuple) else _timm_block(s) for s in cfg.blocks)
    bk = _non_default(cfg.block_kwargs)
    tcfg = tb.ByoModelCfg(
        blocks=blocks,
        downsample=cfg.downsample,
        stem_type=cfg.stem_type,
        stem_pool=cfg.stem_pool,
        stem_chs=cfg.stem_chs,
        width_factor=cfg.width_factor,
        num_features=cfg.num_features,
        act_layer=cfg.act_layer,
        attn_layer=attn,
        attn_kwargs=attn_kw or {},
        self_attn_layer=sa,
        self_attn_kwargs=sa_kw or {},
        block_kwargs=bk,
    )
    return tb.ByobNet(
        tcfg,
        num_classes=cfg.num_classes,
        global_pool=cfg.global_pool,
        output_stride=cfg.output_stride,
        img_size=cfg.img_size,
    )


B = vb.ByoBlockCfg
CUSTOM = {
    # basic / dark / edge blocks, avg-pool shortcuts, a quad2 stem (bias convs without BN), avg stem pool
    "basic_dark_edge": vb.ByoModelCfg(
        blocks=(
            B(type="basic", d=1, c=24, s=1, br=1.0),
            B(type="dark", d=2, c=32, s=2, gs=8, br=0.5),
            (B(type="edge", d=1, c=48, s=2, gs=48, br=2.0), B(type="basic", d=1, c=48, gs=8, br=0.5)),
            B(type="bottle", d=2, c=64, s=2, gs=0, br=0.25, block_kwargs=vb.BlockKwargs(extra_conv=True)),
        ),
        stem_type="quad2",
        stem_chs=16,
        stem_pool="avg",
        downsample="avg",
        act_layer="silu",
        attn_layer=vb.EcaCfg(),
        global_pool="catavgmax",
        num_classes=11,
    ),
    # dilation (output_stride 8) with avg shortcuts and attn_last SE; deep stem with max2 pool; a final conv
    "dilated": vb.ByoModelCfg(
        blocks=(
            B(type="bottle", d=1, c=32, s=1, br=0.5, block_kwargs=vb.BlockKwargs(attn_last=True)),
            B(type="basic", d=2, c=48, s=2, br=1.0),
            B(type="bottle", d=2, c=64, s=2, br=0.5),
            B(type="edge", d=1, c=80, s=2, br=1.0),
        ),
        stem_type="deep",
        stem_chs=24,
        stem_pool="max2",
        downsample="avg",
        attn_layer=vb.SeCfg(rd_ratio=0.5, add_maxpool=True),
        output_stride=8,
        num_features=96,
        global_pool="avgmax",
        num_classes=7,
    ),
    # self-attention blocks with extra_conv (strided conv before halo), strided halo with avg_down, lambda
    # with relative positions and a strided bottleneck attention; 7x7 stem without pool; qkv biases
    "self_attn_variants": vb.ByoModelCfg(
        blocks=(
            B(type="bottle", d=1, c=32, s=1, br=0.5),
            B(
                type="self_attn",
                d=2,
                c=64,
                s=2,
                br=0.5,
                block_kwargs=vb.BlockKwargs(extra_conv=True),
                self_attn_layer=vb.HaloCfg(block_size=4, halo_size=1, num_heads=2, qkv_bias=True),
            ),
            B(type="self_attn", d=1, c=96, s=2, br=0.5, self_attn_layer=vb.HaloCfg(block_size=4, avg_down=True)),
            (
                B(
                    type="self_attn",
                    d=1,
                    c=128,
                    s=2,
                    br=0.5,
                    self_attn_layer=vb.BottleneckAttnCfg(scale_pos_embed=True),
                ),
                B(type="self_attn", d=1, c=128, s=1, br=0.5, self_attn_layer=vb.LambdaCfg(r=None, qkv_bias=True)),
            ),
        ),
        stem_type="7x7",
        stem_chs=16,
        stem_pool="",
        img_size=(64, 96),
        num_features=0,
        num_classes=5,
    ),
}


# heads: no classifier with a max pool, and no pool at all (the head returns the map)
CUSTOM["dilated_max_no_fc"] = dataclasses.replace(CUSTOM["dilated"], num_classes=0, global_pool="max")
CUSTOM["self_attn_map_out"] = dataclasses.replace(CUSTOM["self_attn_variants"], num_classes=0, global_pool="")


@pytest.mark.parametrize("key", sorted(CUSTOM))
def test_machinery(key, parity_results):
    """Hand-made configs against timm's ByobNet built from the same config: float32, then float64."""
    cfg = CUSTOM[key]
    torch.manual_seed(4)
    ref = randomize(_timm_model(cfg).eval(), seed=4)
    sd = ref.state_dict()
    model = nnx.eval_shape(lambda: vb.ByobNet(cfg, rngs=nnx.Rngs(0)))
    model.model_name, model.family = key, "byoanet"
    model.eval()
    converters.from_torch(model, sd, source="timm")
    assert model.feature_info == [
        {k: f[k] for k in ("num_chs", "reduction", "module", "stage")} for f in ref.feature_info
    ]
    h, w = cfg.img_size or (64, 64)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        feats = ref.forward_features(x)
        logits = ref.forward_head(feats)
        inter = ref.forward_intermediates(x, intermediates_only=True)
    xj = nchw_to_nhwc(x)
    feats_j, logits_j, pre_j, got = jitted(model, "heads_and_intermediates")(xj)
    errs = {
        "features": rel_err(feats_j, nhwc(feats)),
        "logits": rel_err(logits_j, nhwc(logits) if logits.ndim == 4 else logits),
    }
    assert pre_j.shape == (logits_j.shape if cfg.num_classes == 0 else (2, model.head_hidden_size))
    errs |= {f"inter{i}": rel_err(g, nhwc(r)) for i, (g, r) in enumerate(zip(got, inter, strict=True))}
    record(parity_results, "byoanet", f"custom {key}", errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, sd, "timm", on_meta(_timm_model, cfg))

    # the same in float64 on both sides: within TOL_F64 (a wrong eps, activation form or pooling shows)
    ref = ref.double()
    x = x.double()
    with torch.no_grad():
        feats = ref.forward_features(x)
        logits = ref.forward_head(feats)
        inter = ref.forward_intermediates(x, intermediates_only=True)
    with jax.enable_x64(True):
        model = float64(nnx.eval_shape(lambda: vb.ByobNet(cfg, rngs=nnx.Rngs(0))))
        model.model_name, model.family = key, "byoanet"
        model.eval()
        converters.from_torch(model, ref.state_dict(), source="timm")
        feats_j, logits_j, _, got = jitted(model, "heads_and_intermediates")(nchw_to_nhwc(x))
        errs = {
            "features": rel_err64(feats_j, nhwc(feats)),
            "logits": rel_err64(logits_j, nhwc(logits) if logits.ndim == 4 else logits),
        }
        errs |= {f"inter{i}": rel_err64(g, nhwc(r)) for i, (g, r) in enumerate(zip(got, inter, strict=True))}
    record(parity_results, "byoanet (float64)", f"custom {key}", errs)
    assert max(errs.values()) <= TOL_F64, errs


def _shallow(cfg, width: float = 0.5):
    """``cfg`` (timm's ``ByoModelCfg`` or ours, the same fields) with one block per stage, or two where the
    stage interleaves a self-attention block (its first block and its first ``self_attn`` block), at
    ``width`` times the channels: the same block kinds, a few seconds to run."""

    def stage(s):
        if not isinstance(s, tuple):
            return dataclasses.replace(s, d=1)
        attn = [b for b in s[1:] if b.type == "self_attn"][:1]
        return (s[0], *attn)

    return dataclasses.replace(cfg, blocks=tuple(stage(s) for s in cfg.blocks), width_factor=width)


def test_halonet50ts_shallow(parity_results):
    """halonet50ts (slow at full size) with fewer blocks and half the width, both sides shrunk alike from their
    own configs (timm's ``model_cfgs`` entry for the reference): float32 within the family bound, then float64
    within ``TOL_F64``."""
    from timm.models import byoanet as tba

    tcfg, cfg = _shallow(tba.model_cfgs["halonet50ts"]), _shallow(vitjax.get_spec("halonet50ts").config())
    assert sum(len(s) if isinstance(s, tuple) else s.d for s in cfg.blocks) == 7
    _, side = input_for("halonet50ts")
    torch.manual_seed(6)
    ref = randomize(tb.ByobNet(tcfg, num_classes=7).eval(), seed=6)
    x = torch.randn(2, 3, side, side)

    def ours():
        model = nnx.eval_shape(lambda: vb.ByobNet(dataclasses.replace(cfg, num_classes=7), rngs=nnx.Rngs(0)))
        model.model_name, model.family = "halonet50ts", "byoanet"
        model.eval()
        return model

    errs = {}
    for dtype, err in ((torch.float32, rel_err), (torch.float64, rel_err64)):
        r, xs = ref.to(dtype), x.to(dtype)
        with torch.no_grad():
            feats = r.forward_features(xs)
            want = (nhwc(feats), r.forward_head(feats), r.forward_head(feats, pre_logits=True))
        with jax.enable_x64(dtype == torch.float64):
            model = ours() if dtype == torch.float32 else float64(ours())
            converters.from_torch(model, r.state_dict(), source="timm")
            got = jitted(model, "heads")(nchw_to_nhwc(xs))
            e = {k: err(g, w) for k, g, w in zip(("features", "logits", "pre_logits"), got, want, strict=True)}
        errs[dtype] = e
    record(parity_results, "byoanet", "halonet50ts (shallow)", errs[torch.float32])
    record(parity_results, "byoanet (float64)", "halonet50ts (shallow)", errs[torch.float64])
    assert max(errs[torch.float32].values()) <= TOL, errs
    assert max(errs[torch.float64].values()) <= TOL_F64, errs


def test_config_validation():
    with pytest.raises(ValueError, match="fixed input size"):
        vb.ByoModelCfg(blocks=(B(type="basic", d=1, c=8),), fixed_input_size=True)
    with pytest.raises(ValueError, match="do not take"):
        vb.ByoModelCfg(blocks=(B(type="basic", d=1, c=8, block_kwargs=vb.BlockKwargs(bottle_in=True)),))
    with pytest.raises(ValueError, match="output_stride"):
        vitjax.create_model("halonet26t", output_stride=4, abstract=True)
    with pytest.raises(ValueError, match="needs the feature-map size"):
        vitjax.create_model("botnet26t_256", img_size=None, fixed_input_size=False, abstract=True)


# -- layers on their own, on odd and non-square maps ----------------------------------------------------------------
@pytest.mark.parametrize(
    "n,k,s,p,ceil,count_pad",
    [(7, 3, 2, 1, False, False), (9, 2, 2, 0, True, False), (6, 3, 2, 1, False, True), (5, 2, 2, 0, False, True)],
)
def test_pools_match_torch(n, k, s, p, ceil, count_pad):
    from vitjax.layers.spatial_pool import avg_pool2d, avg_pool2d_same, max_pool2d

    x = torch.randn(2, 3, n, n + 2)
    xj = nchw_to_nhwc(x)
    want = torch.nn.functional.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=count_pad)
    assert rel_err(avg_pool2d(xj, k, s, p, ceil_mode=ceil, count_include_pad=count_pad), nhwc(want)) < 1e-6
    assert rel_err(max_pool2d(xj, k, s, p), nhwc(torch.nn.functional.max_pool2d(x, k, s, p))) == 0
    same = timm.layers.AvgPool2dSame(2, 1, ceil_mode=True, count_include_pad=False)
    assert rel_err(avg_pool2d_same(xj, 2, 1), nhwc(same(x))) < 1e-6


def _copy_linear(lin, conv: torch.nn.Conv2d) -> None:
    lin.kernel[...] = conv.weight.detach()[:, :, 0, 0].T.numpy()
    if conv.bias is not None:
        lin.bias[...] = conv.bias.detach().numpy()


@pytest.mark.parametrize(
    "kw,hw",
    [
        (dict(stride=2, block_size=4, halo_size=2, num_heads=2, scale_pos_embed=True, qkv_bias=True), (8, 12)),
        (dict(stride=1, block_size=6, halo_size=1, num_heads=4, dim_head=8), (12, 18)),
        (dict(stride=2, block_size=5, halo_size=3, num_heads=2, qk_ratio=0.5), (10, 20)),
    ],
)
def test_halo_attn_layer(kw, hw):
    """HaloAttn alone with N(0, 1) weights: strided queries, avg-pool downsampling, halo wider than the block."""
    from timm.layers.halo_attn import HaloAttn as TimmHalo

    from vitjax.layers.halo import HaloAttn

    torch.manual_seed(5)
    ref = TimmHalo(32, **kw).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    layer = HaloAttn(32, **kw, rngs=nnx.Rngs(0))
    _copy_linear(layer.q, ref.q)
    _copy_linear(layer.kv, ref.kv)
    layer.pos_embed.height_rel[...] = ref.pos_embed.height_rel.detach().numpy()
    layer.pos_embed.width_rel[...] = ref.pos_embed.width_rel.detach().numpy()
    x = torch.randn(2, 32, *hw)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(layer(nchw_to_nhwc(x)), nhwc(want)) <= TOL


@pytest.mark.parametrize("r,stride,hw", [(5, 2, (6, 10)), (3, 1, (5, 7)), (None, 2, (4, 6))])
def test_lambda_layer(r, stride, hw):
    from timm.layers.lambda_layer import LambdaLayer as TimmLambda

    from vitjax.layers.lambda_layer import LambdaLayer

    torch.manual_seed(6)
    ref = randomize(TimmLambda(32, feat_size=hw, stride=stride, r=r, num_heads=2, dim_head=8).eval(), 6)
    layer = LambdaLayer(32, feat_size=hw, stride=stride, r=r, num_heads=2, dim_head=8, rngs=nnx.Rngs(0))
    layer.eval()
    _copy_linear(layer.qkv, ref.qkv)
    for name in ("norm_q", "norm_v"):
        t, j = getattr(ref, name), getattr(layer, name)
        j.scale[...], j.bias[...] = t.weight.detach().numpy(), t.bias.detach().numpy()
        j.mean[...], j.var[...] = t.running_mean.numpy(), t.running_var.numpy()
    if r is None:
        layer.pos_emb[...] = ref.pos_emb.detach().numpy()
    else:
        layer.conv_lambda.kernel[...] = ref.conv_lambda.weight.detach().numpy().transpose(2, 3, 4, 1, 0)
        layer.conv_lambda.bias[...] = ref.conv_lambda.bias.detach().numpy()
    x = torch.randn(2, 32, *hw)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(layer(nchw_to_nhwc(x)), nhwc(want)) <= TOL
