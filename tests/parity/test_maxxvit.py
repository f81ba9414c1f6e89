"""Parity of every registered MaxViT / MaxxViT / CoAtNet (timm ``models/maxxvit.py``) against timm itself.

Per name: timm's model with every float tensor randomised (BatchNorm statistics and LayerScale gammas
included) -> converters.from_torch -> forward_features, logits and pre-logits at batch 2; a bit-exact round trip
that timm loads with strict=True; the state_dict keys/shapes and parameter count against timm's (built on the
meta device). Then timm's features_only model, the ``use_nchw_attn`` and pool-less-head layouts, the pooling
options, and the input sizes timm accepts or refuses.

What runs where (``-m slow`` runs the rest; every test passes either way):

* default suite: structure + parameter count of every name below ~100M parameters; parity of every such name
  at a reduced, non-square input (``img_size=(64, 96)``, partitions 2x3: every weight is exercised, only the
  bias tables are smaller); parity at the registered input size of the test/pico/nano models; the seed
  ``maxxvitv2_rmlp_base_rw_224`` at both; features_only, layouts, pools and input sizes on small models.
* slow: the other names (base/large/xlarge, CoAtNet 3-5, the 384/512 px models) in every test.
"""

from __future__ import annotations

import re
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
from tests.parity.reference import TOL, assert_round_trip, nchw_to_nhwc, nhwc, randomize, record, rel_err

# the round trip loads into timm models on the meta device: strict about keys and shapes, no copies
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

FAMILY = "maxxvit"
NAMES = vitjax.list_models(family=FAMILY)
SEED = "maxxvitv2_rmlp_base_rw_224"
REDUCED = (64, 96)
_BIG = re.compile(r"(base|large|xlarge)|coatnet_[345]|coatnet_(rmlp_)?3_rw")


def n_params(name: str) -> int:
    """timm's parameter count of the registered model (meta device: nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def is_big(name: str) -> bool:
    return bool(_BIG.search(name)) and name != SEED


def is_small(name: str) -> bool:
    return name.startswith("test_") or any(s in name for s in ("pico", "nano"))


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
    run = jax.jit(lambda state, x: fn(nnx.merge(graph, state), x))
    return lambda x: run(state, x)


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


@pytest.mark.parametrize("name", params(NAMES, is_big))
def test_structure(name):
    """Every key and shape of timm's state_dict (buffers included), and the parameter count."""
    model = vitjax.create_model(name, abstract=True)
    want = {k: tuple(v.shape) for k, v in meta_model(name).state_dict().items()}
    got = expected_torch_shapes(model, tables_for(model.family, "timm")[0])
    assert got == want
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == n_params(name)


@pytest.mark.parametrize("name", params(NAMES, is_big))
def test_parity_reduced_size(name, parity_results):
    """The registered architecture at a small non-square input (timm accepts it: partitions become 2x3)."""
    ref = timm_model(name, img_size=REDUCED)
    sd = ref.state_dict()
    model = ours(name, sd, img_size=REDUCED)
    compare(name, ref, model, torch.randn(2, 3, *REDUCED), parity_results, f" {REDUCED}")
    assert_round_trip(model, sd, "timm", meta_model(name, img_size=REDUCED))


@pytest.mark.parametrize("name", params(NAMES, lambda n: not is_small(n) and n != SEED))
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
    (SEED, (96, 64), None),
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


def test_nchw_attention_layout(parity_results):
    """``use_nchw_attn``: timm's attention blocks hold 1x1-conv weights; ours stay Linear (family +nchw_attn)."""
    ref = timm_model("test_maxvit", transformer_use_nchw_attn=True)
    sd = ref.state_dict()
    assert sd["stages.0.blocks.0.attn_grid.attn.qkv.weight"].ndim == 4
    tcfg = replace(vitjax.get_spec("test_maxvit").config().transformer_cfg, use_nchw_attn=True)
    model = ours("test_maxvit", sd, transformer_cfg=tcfg)
    assert model.family == "maxxvit+nchw_attn"
    compare("test_maxvit", ref, model, torch.randn(2, 3, 160, 160), parity_results, " use_nchw_attn")
    assert_round_trip(model, sd, "timm", meta_model("test_maxvit", transformer_use_nchw_attn=True))
    with pytest.raises(converters.ConversionError):  # the channels-last layout does not fit this model
        converters.from_torch(model, timm_model("test_maxvit").state_dict())


@pytest.mark.parametrize(
    "name,pool,num_classes",
    [
        ("test_coatnet", "max", 1000),
        ("test_coatnet", "avgmax", 10),
        ("test_coatnet", "catavgmax", 10),
        ("test_coatnet", "", 0),
        ("test_coatnet", "avg", 0),
        ("maxvit_tiny_tf_224", "max", 10),
        ("maxvit_tiny_tf_224", "", 10),  # NormMlpClassifierHead without pooling: 1x1-conv head, per-pixel logits
        ("maxvit_tiny_tf_224", "avg", 0),
    ],
)
def test_heads(name, pool, num_classes, parity_results):
    kw = dict(global_pool=pool, num_classes=num_classes)
    size = (64, 96) if "tf" in name else None
    if size:
        kw["img_size"] = size
    ref = timm_model(name, **kw)
    sd = ref.state_dict()
    model = ours(name, sd, **kw)
    if not pool and num_classes:
        assert model.family == "maxxvit+conv_head"
    h, w = ref.img_size
    compare(name, ref, model, torch.randn(2, 3, h, w), parity_results, f" pool={pool!r} classes={num_classes}")
    assert_round_trip(model, sd, "timm", meta_model(name, **kw))


@pytest.mark.parametrize(
    "name,img_size,input_size,ratio",
    [
        ("test_maxvit", 160, (320, 160), None),  # partitions (5x5) still divide every map
        ("maxvit_tiny_tf_224", 64, (128, 64), None),  # TF 'SAME' with partitions 2x2
        # odd maps into strided blocks (stage inputs 56, 28, 14, 7): TF 'SAME' keeps both paths equal; 1x1 partitions
        ("maxvit_tiny_tf_224", 112, (112, 112), 112),
        # a 3x3 map into the last strided ConvNeXt block: its 1x1 shortcut broadcasts onto the 2x2 block output
        ("maxxvit_rmlp_nano_rw_256", 48, (48, 48), None),
    ],
)
def test_other_input_sizes(name, img_size, input_size, ratio, parity_results):
    """Inputs that timm accepts without being the model's img_size."""
    t_kw, j_kw = {}, {}
    if ratio:
        t_kw["transformer_partition_ratio"] = ratio
        j_kw["transformer_cfg"] = replace(vitjax.get_spec(name).config().transformer_cfg, partition_ratio=ratio)
    ref = timm_model(name, img_size=img_size, **t_kw)
    model = ours(name, ref.state_dict(), img_size=img_size, **j_kw)
    compare(name, ref, model, torch.randn(2, 3, *input_size), parity_results, f" img_size={img_size} in={input_size}")


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
