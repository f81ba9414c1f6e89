"""The timm-shaped surface of every model: registry, overrides, heads, eval/train, remat, jit, sharding names."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from jax import numpy as jnp

import vitjax
from converters.verify import reference_model
from vitjax.models import deit, vit_zoo
from vitjax.sharding import axes_of

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


# the zoo rows (timm's other ViTs and DeiT: 40- and 48-block models among them) are checked name by name, key by
# key, by tests/models/test_zoo.py's slow sweep; the default suite counts the parameters of the seed rows, one
# size of each (a *_384 / *_512 row whose *_224 or *_256 row exists is in `make test-all`: the two differ in
# their position tables only) and the smallest transformers tower of each kind
ZOO = set(vit_zoo.MODELS) | set(deit.MODELS)
TOWERS_IN_DEFAULT = {
    "facebook/dinov2-small",
    "facebook/dinov2-with-registers-small",
    "openai/clip-vit-base-patch32",
    "google/siglip-base-patch16-224",
}


def _slow_count(name: str) -> bool:
    if name in ZOO:
        return True
    if vitjax.get_spec(name).family in ("hf_dinov2", "hf_clip", "hf_siglip"):
        return name not in TOWERS_IN_DEFAULT
    stem, _, size = name.rpartition("_")
    return size.isdigit() and int(size) > 256 and any(f"{stem}_{s}" in vitjax.list_models() for s in (224, 256))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if _slow_count(n) else n for n in vitjax.list_models()]
)
def test_param_count_matches_reference(name):
    """Abstract build (no initialisation cost): parameter count equal to the reference library's, and every
    parameter carries one logical axis name (or None) per dimension."""
    model = vitjax.create_model(name, abstract=True)
    params = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(params)
    n = sum(int(np.prod(x.shape)) for x in leaves)
    with torch.device("meta"):
        if vitjax.get_spec(name).family == "hf_vit":  # transformers' model from the published config
            from transformers import ViTModel

            from tests.parity.reference import hf_published_config

            ref = ViTModel(hf_published_config(name), add_pooling_layer=True)
        elif vitjax.get_spec(name).family.startswith("hf_"):  # DINOv2 / CLIP / SigLIP towers, published configs
            from tests.parity.hf_published import published_model

            ref = published_model(name)
        else:
            ref = reference_model(name)
    assert n == sum(p.numel() for p in ref.parameters())
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            axes = axes_of(var)
            assert axes is not None and len(axes) == len(var.get_value().shape), (path, axes)


def test_list_models_pattern():
    assert vitjax.list_models("vit_relpos*") == sorted(vitjax.list_models("vit_relpos*"))
    assert "vit_relpos_base_patch16_clsgap_224" in vitjax.list_models("vit_relpos*")
    assert all(n.startswith("vit_relpos") for n in vitjax.list_models("vit_relpos*"))
    with pytest.raises(ValueError, match="unknown model"):
        vitjax.create_model("vit_nope")


def test_overrides_and_heads():
    m = vitjax.create_model("vit_medium_patch16_reg4_gap_256", num_classes=10, img_size=192, depth=2)
    x = jnp.ones((2, 192, 192, 3))
    tokens = m.forward_features(x)
    assert tokens.shape == (2, 4 + 144, 512)
    assert m(x).shape == (2, 10)
    assert m.forward_head(tokens, pre_logits=True).shape == (2, 512)
    emb = vitjax.create_model("vit_medium_patch16_reg4_gap_256", num_classes=0, depth=2)
    x = jnp.ones((1, 256, 256, 3))
    np.testing.assert_array_equal(emb(x), emb.forward_head(emb.forward_features(x), pre_logits=True))
    with pytest.raises(TypeError):
        vitjax.create_model("vit_tiny_patch16_224", not_a_field=1)
    with pytest.raises(ValueError, match="does not match the model's img_size"):
        vitjax.create_model("vit_tiny_patch16_224", depth=1)(jnp.ones((1, 160, 160, 3)))
    hf = vitjax.create_model("google/vit-base-patch16-224-in21k", depth=1, embed_dim=64, num_heads=2, num_classes=3)
    assert hf(jnp.ones((1, 224, 224, 3))).shape == (1, 3)


@pytest.mark.parametrize("pool", ["", "avg", "max", "avgmax", "token"])
def test_global_pool(pool):
    m = vitjax.create_model("vit_tiny_patch16_224", global_pool=pool, num_classes=5, **TINY)
    out = m(jnp.ones((2, 32, 32, 3)))
    assert out.shape == ((2, 17, 5) if pool == "" else (2, 5))


def test_features_only_defaults():
    f = vitjax.create_model("vit_tiny_patch16_224", features_only=True, img_size=64, depth=4)
    assert f.out_indices == (1, 2, 3)
    maps = f(jnp.ones((2, 64, 64, 3)))
    assert [m.shape for m in maps] == [(2, 4, 4, 192)] * 3
    assert len(f.model.blocks) == 4 and f.model.head is None


def test_eval_train_switch_dropout_and_drop_path():
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    ref = vitjax.create_model("vit_tiny_patch16_224", num_classes=5, **TINY)
    m = vitjax.create_model(
        "vit_tiny_patch16_224",
        num_classes=5,
        drop_rate=0.3,
        drop_path_rate=0.5,
        attn_drop_rate=0.2,
        proj_drop_rate=0.2,
        **TINY,
    )
    np.testing.assert_array_equal(m(x), ref(x))  # created in eval mode: no randomness
    m.train()
    a, b = m(x), m(x)
    assert not np.allclose(a, ref(x)) and not np.allclose(a, b)
    m.eval()
    np.testing.assert_array_equal(m(x), ref(x))


def test_remat_gives_same_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    m = vitjax.create_model("vit_relpos_small_patch16_224", num_classes=5, **TINY)

    def loss(model):
        return jnp.sum(model(x) ** 2)

    g0 = nnx.grad(loss)(m)
    m.grad_checkpointing = True
    g1 = nnx.grad(loss)(m)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_jit_matches_eager():
    m = vitjax.create_model("vit_srelpos_small_patch16_224", num_classes=5, **TINY)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    np.testing.assert_allclose(nnx.jit(lambda mod, v: mod(v))(m, x), m(x), rtol=1e-5, atol=1e-5)
