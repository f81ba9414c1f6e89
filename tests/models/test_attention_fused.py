"""Fused attention (``jax.nn.dot_product_attention``): equal to the plain form, chosen per platform (cuDNN on
NVIDIA GPUs by default, XLA's form off the CPU when asked), switchable, and never used where it cannot do the job
(attention dropout).

The XLA form of ``jax.nn.dot_product_attention`` runs on the CPU, so its values and gradients are compared with the
plain form here; cuDNN's form needs an NVIDIA GPU (asked for on the CPU, it falls back to XLA's, which is checked
too). Which form a platform gets is read from the program lowered for it: in bf16 the fused form computes its
logits in float32, the plain form in bf16.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import timm
import torch
from flax import nnx
from jax import numpy as jnp

import converters
import vitjax
from tests.parity.reference import FP32_TOL, nchw_to_nhwc, randomize, rel_err
from vitjax.layers import attention
from vitjax.layers.attention import attend, attend_fused, attend_plain, set_fused_attention, use_fused_attention

B, H, N, D = 2, 3, 7, 8


def _inputs(dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(1), 4)
    q, k, v = (jax.random.normal(key, (B, H, N, D), dtype) * 2 for key in keys[:3])
    return q, k, v, jax.random.normal(keys[3], (1, H, N, N), dtype)


@pytest.mark.parametrize("case", ["no_bias", "bias", "one_query"])
@pytest.mark.parametrize("cudnn", [False, True], ids=["xla", "cudnn_asked"])
def test_fused_equals_plain(case, cudnn):
    """Self-attention with and without a bias, and one query over N keys (the MAP head's latent)."""
    q, k, v, bias = _inputs()
    bias = bias if case == "bias" else None
    q = q[:, :, :1] if case == "one_query" else q

    def loss(form):
        return lambda q, k, v: jnp.sum(jnp.sin(form(q, k, v, scale=0.35, bias=bias)))

    fused = jax.jit(lambda q, k, v: attend_fused(q, k, v, scale=0.35, bias=bias, cudnn=cudnn))(q, k, v)
    plain = jax.jit(lambda q, k, v: attend_plain(q, k, v, scale=0.35, bias=bias))(q, k, v)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)
    fused_fn = lambda q, k, v, **kw: attend_fused(q, k, v, cudnn=cudnn, **kw)  # noqa: E731
    got = jax.jit(jax.grad(loss(fused_fn), argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(loss(attend_plain), argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def _f32_logits(platform: str, dropout: bool | None = None) -> bool:
    """Whether ``attend`` in bf16, lowered for ``platform``, makes float32 logits (the fused form); with
    ``dropout`` an attention dropout of rate 0.1, active (True) or in eval mode (False)."""
    q, k, v, bias = _inputs(jnp.bfloat16)

    def fn(q, k, v, b):
        drop = None if dropout is None else nnx.Dropout(0.1, deterministic=not dropout, rngs=nnx.Rngs(0))
        return attend(q, k, v, scale=0.35, bias=b, dropout=drop)

    text = jax.jit(fn).trace(q, k, v, bias).lower(lowering_platforms=(platform,)).as_text()
    return bool(re.search(r"dot_general[^\n]*-> tensor<[\dx]+xf32>", text))


def test_platforms_and_switch():
    """auto (the default): plain on the CPU and the TPU, and on CUDA too here, where cuDNN is absent (it raises
    when asked, and auto then falls back to the plain form); True: XLA's form off the CPU; False: plain."""
    assert use_fused_attention() is None
    assert not _f32_logits("cpu") and not _f32_logits("tpu") and not _f32_logits("cuda")
    try:
        set_fused_attention(True)
        assert use_fused_attention() is True
        assert not _f32_logits("cpu") and _f32_logits("tpu") and _f32_logits("cuda")
        set_fused_attention(False)
        assert use_fused_attention() is False
        assert not _f32_logits("tpu") and not _f32_logits("cuda")
    finally:
        set_fused_attention(None)


def test_attention_dropout_keeps_the_plain_form():
    set_fused_attention(True)
    try:
        assert not _f32_logits("tpu", dropout=True)  # active: the fused forms have no dropout
        assert _f32_logits("tpu", dropout=False)  # eval mode: nothing to drop
    finally:
        set_fused_attention(None)


def test_environment_variable(monkeypatch):
    monkeypatch.delenv("VITJAX_FUSED_ATTENTION", raising=False)
    assert attention._fused_from_environment() is None
    for value, mode in (("auto", None), ("1", True), ("0", False)):
        monkeypatch.setenv("VITJAX_FUSED_ATTENTION", value)
        assert attention._fused_from_environment() is mode
    monkeypatch.setenv("VITJAX_FUSED_ATTENTION", "yes")
    with pytest.raises(ValueError, match="VITJAX_FUSED_ATTENTION='yes'"):
        attention._fused_from_environment()


@pytest.mark.parametrize(
    ("name", "kw"),
    [("vit_tiny_patch16_224", dict(embed_dim=48)), ("vit_relpos_small_patch16_224", dict(embed_dim=48))],
    ids=["vit", "relpos_bias"],
)
def test_models_with_the_fused_form_match_timm(name, kw, monkeypatch):
    """A depth-1 ViT and relative-position ViT (its bias goes into the fused call) with the fused form in place
    of the plain one on the CPU, against timm."""
    kw = dict(kw, depth=1, num_heads=3, img_size=32, patch_size=8)
    ref = randomize(timm.create_model(name, **kw).eval(), seed=5)
    model = vitjax.create_model(name, abstract=True, **kw)
    converters.from_torch(model, ref.state_dict(), source="timm")
    calls = []

    def fused_everywhere(q, k, v, *, scale, bias=None, dropout=None):
        calls.append(bias is not None)
        return attend_fused(q, k, v, scale=scale, bias=bias)

    monkeypatch.setattr(attention, "attend_plain", fused_everywhere)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(model(nchw_to_nhwc(x)), want) <= FP32_TOL[vitjax.get_spec(name).family]
    assert calls == [name.startswith("vit_relpos")]
