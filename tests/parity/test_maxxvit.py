"""Parity of every registered MaxViT / MaxxViT / CoAtNet (timm ``models/maxxvit.py``) against timm itself.

Per name: timm's model with every float tensor randomised (BatchNorm statistics and LayerScale gammas
included) -> converters.from_torch -> forward_features, logits and pre-logits at batch 2; a bit-exact round trip
that timm loads with strict=True; the state_dict keys/shapes and parameter count against timm's (built on the
meta device). Then timm's features_only model, the ``use_nchw_attn`` and pool-less-head layouts, the pooling
options, and the input sizes timm accepts or refuses.

What runs where (``-m slow`` runs the rest; every test passes either way). These nets are deep, so the default
suite takes one model per distinct configuration recipe rather than every name:

* default: parity at a reduced, non-square input (``img_size=(64, 96)``, partitions 2x3: every weight and code
  path runs, only the bias tables are smaller) of ``REPRESENTATIVE`` (each recipe: rw/paper CoAtNets with MBConv
  or ConvNeXt blocks, BatchNorm or LayerNorm transformers, bias/MLP/TF relative positions, M/PM/V2 blocks, TF
  'SAME', NormMlp heads; the seed ``maxxvitv2_rmlp_base_rw_224`` included); parity at the registered size of
  ``test_maxvit`` / ``test_coatnet``; structure (keys, shapes, parameter count) of ``REPRESENTATIVE`` at the
  registered size (``tests/models/test_api.py`` checks every name's parameter count in the default suite too);
  config paths no registered default uses cheaply (max/3x3 pools, 1x1 stride, MLP biases) on the test models;
  features_only, layouts, pools and input sizes on small models.
* slow: every name at its registered size (384/512 px, base/large/xlarge, CoAtNet 3-5 included), and every
  name's reduced-size parity and structure.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import numpy as np
import pytest
import timm
import torch
from flax import nnx

import converters
import vitjax
from converters.engine import expected_torch_shapes
from converters.tables import tables_for
from tests.parity.reference import (
    FP32_TOL,
    TOL_F64,
    assert_round_trip,
    float64,
    nchw_to_nhwc,
    nhwc,
    randomize,
    record,
    rel_err,
    rel_err64,
)

TOL = FP32_TOL["maxxvit"]

# the round trip loads into timm models on the meta device: strict about keys and shapes, no copies
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

FAMILY = "maxxvit"
NAMES = vitjax.list_models(family=FAMILY)
SEED = "maxxvitv2_rmlp_base_rw_224"
REDUCED = (64, 96)
REPRESENTATIVE = {
    "test_coatnet",  # rw MaxViT recipe, C/T blocks, MBConv pool stride
    "test_maxvit",  # rw MaxViT recipe, M blocks, bias tables
    "coatnet_pico_rw_224",  # MBConv dw stride, SE 1/4, output bias
    "coatnet_nano_rw_224",  # rw MaxViT recipe with pool stride
    "coatnet_bn_0_rw_224",  # rw CoAtNet recipe: pre-norm act, SE early, BatchNorm transformers, no shortcut bias
    "coatnet_rmlp_nano_rw_224",  # MLP relative positions (hidden 384) in T blocks
    "coatnet_nano_cc_224",  # mixed (C, T) stages
    "coatnext_nano_rw_224",  # ConvNeXt conv blocks, LayerScale (1e-5, None)
    "coatnet_0_224",  # paper recipe: GELU MBConv, output-based widths, NormMlpClassifierHead
    "maxvit_rmlp_pico_rw_256",  # M blocks with MLP relative positions
    "maxvit_tiny_pm_256",  # parallel window/grid blocks
    "maxxvit_rmlp_nano_rw_256",  # MaxxViT: ConvNeXt + window + grid
    "maxxvitv2_nano_rw_256",  # MaxxViT-V2 (grid only) with bias tables
    "maxvit_tiny_tf_224",  # TF: 'SAME' padding, GELU-tanh, BN 1e-3, [q; k; v], RelPosBiasTf, NormMlp head
    SEED,  # MaxxViT-V2 with MLP relative positions
}


def n_params(name: str) -> int:
    """timm's parameter count of the registered model (meta device: nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def params(names, slow):
    return [pytest.param(n, marks=pytest.mark.slow) if slow(n) else n for n in names]


def timm_model(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(timm.create_model(name, **kw).eval(), seed=seed)


def meta_model(name: str, **kw) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kw)


def ours(name: str, sd: dict, **kw) -> nnx.Module:
    model = vitjax.create_model(name, abstract=True, **kw)
    converters.from_torch(model, sd, source="timm")
    return model


def jitted(model: nnx.Module, fn):
    """``fn(model, x)`` compiled once: XLA:CPU compiles every op of an eager call separately, which for these
    deep nets costs several times one whole-graph compile."""
    graph, state = nnx.split(model)
    cache = {}

    def run(x):
        if x.shape not in cache:  # LLVM -O0: half the compile time, the same numbers to ~1e-7
            lowered = jax.jit(lambda state, x: fn(nnx.merge(graph, state), x)).lower(state, x)
            cache[x.shape] = lowered.compile({"xla_backend_optimization_level": 0})
        return cache[x.shape](state, x)

    return run


def _outputs(model: nnx.Module, x: jax.Array):
    feats = model.forward_features(x)
    return feats, model.forward_head(feats), model.forward_head(feats, pre_logits=True)


def compare(name: str, ref: torch.nn.Module, model: nnx.Module, x: torch.Tensor, results: dict, tag: str = ""):
    """forward_features (NHWC), logits and pre-logits of ours against timm's."""
    with torch.no_grad():
        feats = ref.forward_features(x)
        logits = ref.forward_head(feats)
        pre = ref.forward_head(feats, pre_logits=True)
    feats_j, logits_j, pre_j = jitted(model, _outputs)(nchw_to_nhwc(x))
    as_nhwc = lambda t: nhwc(t) if t.ndim == 4 else t  # noqa: E731
    errs = {
        "features": rel_err(feats_j, nhwc(feats)),
        "logits": rel_err(logits_j, as_nhwc(logits)),
        "pre_logits": rel_err(pre_j, as_nhwc(pre)),
    }
    record(results, FAMILY, f"{name}{tag}", errs)
    assert max(errs.values()) <= TOL, errs


def test_registry_covers_timm():
    assert set(NAMES) == set(timm.list_models(module="maxxvit"))
    assert len(NAMES) == 58


@pytest.mark.parametrize("name", params(NAMES, lambda n: n not in REPRESENTATIVE))
def test_structure(name):
    """Every key and shape of timm's state_dict (buffers included), and the parameter count."""
    model = vitjax.create_model(name, abstract=True)
    want = {k: tuple(v.shape) for k, v in meta_model(name).state_dict().items()}
    got = expected_torch_shapes(model, tables_for(model, "timm")[0])
    assert got == want
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == n_params(name)


@pytest.mark.parametrize("name", params(NAMES, lambda n: n not in REPRESENTATIVE))
def test_parity_reduced_size(name, parity_results):
    """The registered architecture at a small non-square input (timm accepts it: partitions become 2x3), in
    float32 and then in float64 on both sides (within TOL_F64: a wrong eps, activation form or layout shows)."""
    ref = timm_model(name, img_size=REDUCED)
    sd = ref.state_dict()
    model = ours(name, sd, img_size=REDUCED)
    compare(name, ref, model, torch.randn(2, 3, *REDUCED), parity_results, f" {REDUCED}")
    assert_round_trip(model, sd, "timm", meta_model(name, img_size=REDUCED))
    errs = compare_float64(ref, name, img_size=REDUCED)
    record(parity_results, f"{FAMILY} (float64)", f"{name} {REDUCED}", errs)
    assert max(errs.values()) <= TOL_F64, errs


def compare_float64(ref: torch.nn.Module, name: str, **kw) -> dict[str, float]:
    """forward_features, logits and pre-logits of ``ref.double()`` against ours built in float64 from it."""
    ref = ref.double()
    x = torch.randn(2, 3, *REDUCED, dtype=torch.float64)
    with torch.no_grad():
        feats = ref.forward_features(x)
        want = {"features": nhwc(feats), "logits": ref.forward_head(feats), "pre_logits": ref.forward_head(feats, True)}
    with jax.enable_x64(True):
        model = float64(vitjax.create_model(name, abstract=True, **kw))
        converters.from_torch(model, ref.state_dict(), source="timm")
        got = dict(zip(want, jitted(model, _outputs)(nchw_to_nhwc(x)), strict=True))
        return {k: rel_err64(got[k], want[k]) for k in want}


@pytest.mark.parametrize("name", params(NAMES, lambda n: not n.startswith("test_")))
def test_parity(name, parity_results):
    """The registered model at its registered input size."""
    ref = timm_model(name)
    sd = ref.state_dict()
    model = ours(name, sd)
    h, w = ref.img_size
    compare(name, ref, model, torch.randn(2, 3, h, w), parity_results)
    assert_round_trip(model, sd, "timm", meta_model(name))


FEATURE_CASES = [
    ("test_coatnet", (96, 128), None),  # MBConv pool-stride + T blocks
    ("test_maxvit", (160, 192), (1, 3, 4)),  # window + grid, rel-pos bias table
    ("coatnext_nano_rw_224", (64, 96), None),  # ConvNeXt blocks, T blocks
    ("maxvit_tiny_pm_256", (64, 96), (0, 2)),  # parallel blocks
    ("maxvit_tiny_tf_224", (64, 96), None),  # TF 'SAME', bias_tf
    pytest.param(SEED, (96, 64), None, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,size,out_indices", FEATURE_CASES)
def test_features_only(name, size, out_indices, parity_results):
    """timm's features_only model (its ``stages_{s}`` keys load into ours) at a non-square size."""
    kw = {} if out_indices is None else dict(out_indices=out_indices)
    ref = timm_model(name, seed=1, features_only=True, img_size=size, **kw)
    model = vitjax.create_model(name, features_only=True, img_size=size, abstract=True, **kw)
    converters.from_torch(model, ref.state_dict(), source="timm")
    assert model.channels() == ref.feature_info.channels()
    assert model.reduction() == ref.feature_info.reduction()
    assert [f["module"] for f in model.feature_info] == ref.feature_info.module_name()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        want = ref(x)
    got = jitted(model, lambda m, x: m(x))(nchw_to_nhwc(x))
    assert len(got) == len(want)
    errs = {f"feature{i}": rel_err(g, nhwc(r)) for i, (g, r) in enumerate(zip(got, want, strict=True))}
    record(parity_results, FAMILY, f"{name} features_only {size}", errs)
    assert max(errs.values()) <= TOL, errs


def test_features_only_from_full_checkpoint():
    """A full-model state_dict fills a features_only model (the pruned stages and the head are ignored)."""
    ref = timm_model("test_maxvit", seed=2)
    model = vitjax.create_model("test_maxvit", features_only=True, out_indices=(0, 2), abstract=True)
    converters.from_torch(model, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=(0, 2), intermediates_only=True)
    got = jitted(model, lambda m, x: m(x))(nchw_to_nhwc(x))
    assert max(rel_err(g, nhwc(r)) for g, r in zip(got, want, strict=True)) <= TOL


CONFIG_PATHS = [  # (name, timm kwargs, conv_cfg fields, transformer_cfg fields)
    ("test_coatnet", dict(conv_pool_type="max", transformer_pool_type="max"), dict(pool_type="max"),
     dict(pool_type="max")),  # 3x3 max pools (coatnet_rmlp_1_rw)
    ("test_coatnet", dict(conv_pool_type="avg", conv_downsample_pool_type="avg"),
     dict(pool_type="avg", downsample_pool_type="avg"), {}),  # 3x3 avg pools without the padding in the mean
    ("test_coatnet", dict(conv_stride_mode="1x1"), dict(stride_mode="1x1"), {}),  # strided 1x1 expansion
    ("test_coatnet", dict(conv_padding="same", conv_pool_type="max", conv_downsample_pool_type="avg"),
     dict(padding="same", pool_type="max", downsample_pool_type="avg"), {}),  # 3x3 pools with TF 'SAME' padding
    ("test_coatnet", dict(transformer_head_first=False), {}, dict(head_first=False)),  # T blocks stay head-first
    ("test_maxvit", dict(transformer_rel_pos_type="mlp", transformer_rel_pos_dim=64),
     {}, dict(rel_pos_type="mlp", rel_pos_dim=64)),  # M blocks with MLP relative positions
    ("test_maxvit", dict(img_size=(128, 160), transformer_window_size=(4, 5), transformer_grid_size=(2, 5)),
     {}, dict(window_size=(4, 5), grid_size=(2, 5))),  # explicit, different window and grid sizes
]  # fmt: skip


@pytest.mark.parametrize("name,timm_kw,conv,transformer", CONFIG_PATHS)
def test_config_paths(name, timm_kw, conv, transformer, parity_results):
    """Options of timm's configs that no registered default combines, on the test models."""
    cfg = vitjax.get_spec(name).config()
    kw = dict(conv_cfg=replace(cfg.conv_cfg, **conv), transformer_cfg=replace(cfg.transformer_cfg, **transformer))
    if "img_size" in timm_kw:
        kw["img_size"] = timm_kw["img_size"]
    ref = timm_model(name, **timm_kw)
    sd = ref.state_dict()
    model = ours(name, sd, **kw)
    h, w = ref.img_size
    compare(name, ref, model, torch.randn(2, 3, h, w), parity_results, f" {timm_kw}")
    assert_round_trip(model, sd, "timm", meta_model(name, **timm_kw))


@pytest.mark.parametrize("head_first", [True, False])
def test_nchw_attention_layout(head_first, parity_results):
    """``use_nchw_attn``: timm's attention blocks are ``PartitionAttention2d`` with 1x1-conv weights (and
    ``Attention2d``'s qkv split); ours stay channels-last Linear layers (table ``timm-maxxvit+nchw_attn``)."""
    t_kw = dict(transformer_use_nchw_attn=True, transformer_head_first=head_first)
    ref = timm_model("test_maxvit", **t_kw)
    sd = ref.state_dict()
    assert sd["stages.0.blocks.0.attn_grid.attn.qkv.weight"].ndim == 4
    tcfg = replace(vitjax.get_spec("test_maxvit").config().transformer_cfg, use_nchw_attn=True, head_first=head_first)
    model = ours("test_maxvit", sd, transformer_cfg=tcfg)
    assert tables_for(model, "timm")[0].name == "timm-maxxvit+nchw_attn"
    compare("test_maxvit", ref, model, torch.randn(2, 3, 160, 160), parity_results, f" {t_kw}")
    assert_round_trip(model, sd, "timm", meta_model("test_maxvit", **t_kw))
    with pytest.raises(converters.ConversionError):  # the channels-last layout does not fit this model
        converters.from_torch(model, timm_model("test_maxvit").state_dict())


@pytest.mark.parametrize(
    "name,head_hidden,pool,num_classes",
    [
        ("test_coatnet", None, "max", 1000),
        ("test_coatnet", None, "avgmax", 10),
        ("test_coatnet", None, "catavgmax", 10),
        ("test_coatnet", None, "", 0),
        ("test_coatnet", None, "avg", 0),
        ("test_maxvit", 64, "max", 10),  # NormMlpClassifierHead (as the TF / paper / large models)
        ("test_maxvit", 64, "", 10),  # ... without pooling: timm's 1x1-conv head, per-position logits
        ("test_maxvit", 64, "avg", 0),
    ],
)
def test_heads(name, head_hidden, pool, num_classes, parity_results):
    kw = dict(global_pool=pool, num_classes=num_classes)
    if head_hidden:
        kw["head_hidden_size"] = head_hidden
    ref = timm_model(name, **kw)
    sd = ref.state_dict()
    model = ours(name, sd, **kw)
    if head_hidden and not pool and num_classes:
        assert tables_for(model, "timm")[0].name == "timm-maxxvit+conv_head"
        assert sd["head.fc.weight"].ndim == 4
    h, w = ref.img_size
    compare(name, ref, model, torch.randn(2, 3, h, w), parity_results, f" {kw}")
    assert_round_trip(model, sd, "timm", meta_model(name, **kw))


@pytest.mark.parametrize(
    "name,img_size,input_size,padding,ratio",
    [
        ("test_maxvit", 160, (320, 160), "", None),  # partitions (5x5) still divide every map
        ("test_maxvit", 64, (128, 64), "same", None),  # TF 'SAME' padding (the _tf models'), partitions 2x2
        # odd maps into strided blocks (stage inputs 56, 28, 14, 7): TF 'SAME' keeps both paths equal; 1x1 partitions
        ("test_maxvit", 112, (112, 112), "same", 112),
        # a 3x3 map into the last strided ConvNeXt block: its 1x1 shortcut broadcasts onto the 2x2 block output
        ("maxxvit_rmlp_nano_rw_256", 48, (48, 48), "", None),
    ],
)
def test_other_input_sizes(name, img_size, input_size, padding, ratio, parity_results):
    """Inputs that timm accepts without being the model's img_size."""
    cfg = vitjax.get_spec(name).config()
    t_kw, j_kw = dict(img_size=img_size), dict(img_size=img_size)
    if padding:
        t_kw["conv_padding"] = padding
        j_kw["conv_cfg"] = replace(cfg.conv_cfg, padding=padding)
    if ratio:
        t_kw["transformer_partition_ratio"] = ratio
        j_kw["transformer_cfg"] = replace(cfg.transformer_cfg, partition_ratio=ratio)
    ref = timm_model(name, **t_kw)
    model = ours(name, ref.state_dict(), **j_kw)
    compare(name, ref, model, torch.randn(2, 3, *input_size), parity_results, f" {t_kw} in={input_size}")


@pytest.mark.parametrize(
    "name,img_size,input_size,match",
    [
        ("test_maxvit", 160, (192, 160), "not divisible"),  # 48x40 stage-0 map vs 5x5 partitions
        ("test_maxvit", 160, (161, 160), "shortcut"),  # odd sizes: avg-pool shortcut vs strided conv disagree
        ("test_coatnet", 160, (128, 128), "relative"),  # T blocks' bias is sized for 160 px
        ("maxxvit_rmlp_nano_rw_256", 80, (80, 80), "not divisible"),  # 5x5 stage-2 map vs 2x2 partitions
        ("coatnext_nano_rw_224", 48, (48, 48), "relative"),  # there the T block's 2x2 bias meets a 1x1 map
    ],
)
def test_refused_input_sizes(name, img_size, input_size, match):
    """Where timm fails, ours raises a ValueError that says why."""
    ref = timm_model(name, img_size=img_size)
    with pytest.raises((RuntimeError, AssertionError)), torch.no_grad():
        ref(torch.randn(1, 3, *input_size))
    model = ours(name, ref.state_dict(), img_size=img_size)
    with pytest.raises(ValueError, match=match):
        model(np.zeros((1, *input_size, 3), np.float32))


def test_train_mode_batchnorm_and_remat():
    """Train mode: batch statistics and torch's running-statistics update (BatchNorm in the stem, the MBConv
    blocks and, as in coatnet_bn_0_rw, the transformer blocks) match timm after one step; gradient checkpointing
    leaves the gradients alone."""
    name = "test_coatnet"
    tcfg = replace(vitjax.get_spec(name).config().transformer_cfg, norm_layer="batchnorm2d")
    ref = timm_model(name, img_size=REDUCED, transformer_norm_layer="batchnorm2d").train()
    model = ours(name, ref.state_dict(), img_size=REDUCED, transformer_cfg=tcfg)
    model.train()
    x = torch.randn(4, 3, *REDUCED)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(model(nchw_to_nhwc(x)), want) <= TOL
    after, ref_sd = converters.to_torch(model), ref.state_dict()
    stats = [k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stats) == 3 * 14  # stem, 2 MBConv x 3, 3 T blocks x 2, final norm
    for k in stats:
        if k.endswith("num_batches_tracked"):
            assert after[k] == ref_sd[k].numpy() == 1, k
        else:
            np.testing.assert_allclose(after[k], ref_sd[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)

    xj = nchw_to_nhwc(x[:2])

    def loss(m):
        return jax.numpy.sum(m(xj) ** 2)

    model.eval()
    g0 = nnx.jit(nnx.grad(loss))(model)
    model.set_grad_checkpointing(True)
    g1 = nnx.jit(nnx.grad(loss))(model)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):  # recomputation reorders fp32 sums
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1e-3)
