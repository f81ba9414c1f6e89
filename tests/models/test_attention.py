"""``vitjax.layers.attention.attend``: both of its softmax forms equal JAX's own attention, values and gradients,
and each platform gets its form (the CPU divides after PV, the others normalise the weights)."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from jax import numpy as jnp

from vitjax.layers.attention import attend, set_fused_attention
from vitjax.xla_cpu import _normalised, _unnormalised

B, H, N, D = 2, 3, 7, 4  # N != D, so the two divisions have different shapes


def _inputs():
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (B, H, N, D)) * 2.0 for key in keys[:3])
    return q, k, v, jax.random.normal(keys[3], (1, H, N, N))


def _reference(q, k, v, bias):
    """``jax.nn.dot_product_attention`` (tokens-first layout) on heads-first tensors."""
    t = (0, 2, 1, 3)
    out = jax.nn.dot_product_attention(q.transpose(t), k.transpose(t), v.transpose(t), bias=bias, scale=0.5)
    return out.transpose(t)


def _with_form(form):
    def fn(q, k, v, bias):
        weights, total = form(jnp.einsum("bhqd,bhkd->bhqk", q * 0.5, k) + bias)
        return jnp.einsum("bhqk,bhkd->bhqd", weights, v) / total

    return fn


def _loss(fn):
    return lambda *a: jnp.sum(jnp.sin(fn(*a)))


@pytest.mark.parametrize("form", [_unnormalised, _normalised, None], ids=["cpu", "default", "attend"])
def test_forms_equal_jax_attention(form):
    args = _inputs()
    fn = _with_form(form) if form else lambda q, k, v, b: attend(q, k, v, scale=0.5, bias=b)
    np.testing.assert_allclose(jax.jit(fn)(*args), _reference(*args), rtol=1e-5, atol=1e-6)
    got = jax.jit(jax.grad(_loss(fn), argnums=(0, 1, 2, 3)))(*args)
    want = jax.grad(_loss(_reference), argnums=(0, 1, 2, 3))(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def _divisions(platform: str) -> list[str]:
    """Result shapes of the divisions in ``attend`` lowered (not compiled) for ``platform``."""
    fn = lambda q, k, v, b: attend(q, k, v, scale=0.5, bias=b)  # noqa: E731
    text = jax.jit(fn).trace(*_inputs()).lower(lowering_platforms=(platform,)).as_text()
    return sorted(set(re.findall(r"stablehlo\.divide [^:]*: tensor<([\dx]+)xf32>", text)))


def test_each_platform_gets_its_form():
    """The CPU divides the output (B, H, N, D) once; on a TPU or a GPU the softmax divides the N x N weights (the
    CPU form's training step took 16.86 GiB per v5e chip where the softmax's takes 15.17 GiB), in the fused form
    (``jax.nn.dot_product_attention`` adds a group axis) and in the plain one."""
    weights, out = f"{N}x{N}", f"{B}x{H}x{N}x{D}"
    assert _divisions("cpu") == [out]
    for fused in (True, False, None):
        set_fused_attention(fused)
        try:
            for platform in ("tpu", "cuda"):
                assert any(d.endswith(weights) for d in _divisions(platform)), (platform, fused)
        finally:
            set_fused_attention(None)
