"""The CPU backward-pass boundary (``vitjax.xla_cpu``): an exact identity for every kind of differentiation, and
the compiled backward pass of a ViT stays linear in depth on the CPU."""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx
from jax import numpy as jnp

import vitjax
from vitjax.xla_cpu import CPU_COMPILER_OPTIONS, compiler_options, grad_boundary


def _f(x):
    return jnp.sum(jnp.sin(grad_boundary(x * 2.0)) ** 2)


def _g(x):
    return jnp.sum(jnp.sin(x * 2.0) ** 2)


def test_identity_under_every_transform():
    x = jnp.linspace(-1.0, 1.0, 5)
    np.testing.assert_array_equal(grad_boundary(x), x)
    np.testing.assert_array_equal(jax.grad(_f)(x), jax.grad(_g)(x))
    np.testing.assert_array_equal(jax.jvp(_f, (x,), (x,))[1], jax.jvp(_g, (x,), (x,))[1])
    np.testing.assert_array_equal(jax.hessian(_f)(x), jax.hessian(_g)(x))
    opts = compiler_options("cpu")
    np.testing.assert_array_equal(jax.jit(jax.grad(_f), compiler_options=opts)(x), jax.grad(_g)(x))


def test_options_per_platform():
    assert compiler_options("cpu") == CPU_COMPILER_OPTIONS
    assert compiler_options("tpu") is None and compiler_options("gpu") is None
    lowered = jax.jit(jax.grad(_f)).lower(jnp.ones(3)).as_text()
    assert "optimization_barrier" in lowered  # the cotangent's barrier, on the CPU lowering


def _fused_instructions(depth: int, opts: dict | None) -> int:
    m = vitjax.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=5
    )
    m.train()
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    x = jnp.zeros((2, 32, 32, 3))

    def loss(p):
        return nnx.merge(graphdef, p, rest)(x).sum()

    hlo = jax.jit(jax.grad(loss), compiler_options=opts).lower(params).compile().as_text()
    blocks = re.split(r"\n(?=%fused_computation)", hlo)
    return sum(len(b.splitlines()) for b in blocks if b.startswith("%fused_computation"))


def test_backward_linear_in_depth():
    """XLA:CPU duplicates the residual cotangent's chain of adds into every block's gradient fusions (quadratic in
    depth); with the boundary and the options the fused code grows linearly. Measured: 15k -> 30k instructions
    from 12 to 24 blocks with the options, 46k -> 149k without; the test compares 6 and 12 blocks."""
    opts = compiler_options("cpu")
    with_opts = _fused_instructions(6, opts), _fused_instructions(12, opts)
    without = _fused_instructions(6, None), _fused_instructions(12, None)
    assert with_opts[1] / with_opts[0] < 2.25, with_opts
    assert without[1] / without[0] > 2.5, without  # the pathology is still there without them
