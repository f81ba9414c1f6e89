"""BatchNorm's hand-written CPU gradient against JAX's derivative of the same formula: every branch of the VJP
(affine or not, the statistics' own cotangents, bf16 inputs or parameters)."""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pytest
from flax import nnx
from jax import numpy as jnp

import vitjax
from vitjax.layers import norm
from vitjax.xla_cpu import _batch_norm_vjp

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((4, 6, 5, 7)) * 3 + 1, jnp.float32)
SCALE = jnp.asarray(RNG.random(7) + 0.5, jnp.float32)
BIAS = jnp.asarray(RNG.standard_normal(7), jnp.float32)
GY = jnp.asarray(RNG.standard_normal(X.shape), jnp.float32)
G_STATS = jnp.asarray(RNG.standard_normal((2, 7)), jnp.float32)


def _train_cpu(x, scale, bias, *, eps):
    """BatchNorm's train mode with the CPU kernel's gradient, as the layer calls it on the CPU."""
    return _batch_norm_vjp(functools.partial(norm._batch_norm_train, eps=eps), x, scale, bias, eps=eps)


def _gradient(fn, affine: bool, use_stats: bool):
    def loss(x, scale, bias):
        y, mean, var = fn(x, scale if affine else None, bias if affine else None, eps=1e-5)
        out = jnp.sum(y.astype(jnp.float32) * GY)
        if use_stats:  # the statistics in the loss too: their cotangents are not zero
            out = out + jnp.sum(mean.astype(jnp.float32) * G_STATS[0]) + jnp.sum(var.astype(jnp.float32) * G_STATS[1])
        return out

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2) if affine else (0,)))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("use_stats", [False, True])
def test_cpu_gradient_equals_jax_derivative(affine, use_stats):
    want = _gradient(norm._batch_norm_train, affine, use_stats)(X, SCALE, BIAS)
    got = _gradient(_train_cpu, affine, use_stats)(X, SCALE, BIAS)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6 * float(jnp.abs(w).max()))
    y_cpu = _train_cpu(X, SCALE, BIAS, eps=1e-5)
    y_jax = norm._batch_norm_train(X, SCALE, BIAS, eps=1e-5)
    for a, b in zip(y_cpu, y_jax, strict=True):
        np.testing.assert_array_equal(a, b)  # the forward is the same program


@pytest.mark.parametrize("x_dtype,p_dtype", [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16)])
def test_cpu_gradient_mixed_precision(x_dtype, p_dtype):
    """Each gradient in its primal's dtype, as JAX's derivative gives, and no further from the float32 gradient."""
    args = X.astype(x_dtype), SCALE.astype(p_dtype), BIAS.astype(p_dtype)
    truth = _gradient(norm._batch_norm_train, True, False)(X, SCALE, BIAS)
    want = _gradient(norm._batch_norm_train, True, False)(*args)
    got = _gradient(_train_cpu, True, False)(*args)
    for g, w, t, a in zip(got, want, truth, args, strict=True):
        assert g.dtype == w.dtype == a.dtype
        err = float(jnp.abs(g.astype(jnp.float32) - t).max())
        assert err <= 1.01 * float(jnp.abs(w.astype(jnp.float32) - t).max()) + 1e-6, err


def _reductions(compiled_text: str) -> int:
    return len(re.findall(r"= f32\[7\]\S* reduce\(", compiled_text))


@pytest.mark.parametrize("kernels", [True, False])
def test_module_compiles_the_cpu_gradient(kernels):
    """On the CPU, a train-mode BatchNorm's gradient (input and parameters) compiles to the hand-written VJP's
    reductions, fewer than JAX's derivative needs; to JAX's derivative with the CPU kernels off."""
    graphdef, params, rest = nnx.split(norm.BatchNorm(7), nnx.Param, ...)

    def gradient(params, rest, x):
        return nnx.grad(lambda m, x: jnp.sum(m(x) * GY), argnums=(0, 1))(nnx.merge(graphdef, params, rest), x)

    def of(fn):
        return lambda x: jax.grad(lambda x: jnp.sum(fn(x, SCALE, BIAS, eps=1e-5)[0] * GY))(x)

    vitjax.set_cpu_kernels(kernels)
    try:
        module = _reductions(jax.jit(gradient).lower(params, rest, X).compile().as_text())
    finally:
        vitjax.set_cpu_kernels(True)
    cpu = _reductions(jax.jit(of(_train_cpu)).lower(X).compile().as_text())
    derived = _reductions(jax.jit(of(norm._batch_norm_train)).lower(X).compile().as_text())
    assert cpu < derived, (cpu, derived)
    # off: JAX's derivative, with the parameters' gradients on top of the input's
    assert module == cpu if kernels else module >= derived, (module, cpu, derived)
