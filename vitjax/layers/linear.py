"""Dense layers and parameters with vitjax's initialisers and logical axis names (convolutions:
:mod:`vitjax.layers.conv`).

Flax layout: a Linear kernel is ``[in, out]`` (torch ``weight.T``).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.sharding import Axes, param, with_axes
from vitjax.xla_cpu import dense

_trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)


class Dense(nnx.Linear):
    """``nnx.Linear``; compiled for the CPU, computed on the 2-D view ``(prod(leading axes), in)`` of its input
    (:func:`vitjax.xla_cpu.dense`), with the same values. With ``out_sharding`` the N-D form is kept everywhere."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        linear = super().__call__
        if inputs.ndim <= 2 or out_sharding is not None:
            return linear(inputs, out_sharding)
        return dense(linear, inputs)


def Linear(
    in_features: int,
    out_features: int,
    *,
    bias: bool = True,
    axes: Axes = (None, None),
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """:class:`Dense` with truncated-normal(0.02) weights, zero bias and logical axes ``axes = (in, out)``."""
    return Dense(
        in_features,
        out_features,
        use_bias=bias,
        kernel_init=with_axes(_trunc_normal, axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


def zeros_param(shape: tuple[int, ...], axes: Axes) -> nnx.Param:
    """A zero-initialised parameter (tokens, gammas) carrying logical axes."""
    return param(jnp.zeros(shape, jnp.float32), axes)


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: Axes, std: float = 0.02) -> nnx.Param:
    """A truncated-normal parameter carrying logical axes."""
    init = nnx.initializers.truncated_normal(stddev=std)
    return param(init(rngs.params(), shape, jnp.float32), axes)
