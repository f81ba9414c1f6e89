"""Normalisation layers with torch's numerics.

* LayerNorm: biased variance computed around the mean (``use_fast_variance=False``), as torch does; timm's
  ViTs use eps 1e-6, transformers' ViT 1e-12. In NHWC, timm's ``LayerNorm2d`` is this same layer.
* RmsNorm: ``x * rsqrt(mean(x^2) + eps) * weight`` (timm ``RmsNorm``).
* BatchNorm: torch ``momentum=m`` is NNX ``momentum=1 - m``; eps must match. Running statistics are
  ``nnx.BatchStat`` (``mean``/``var``), used in eval mode and updated in train mode.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.sharding import EMBED, param, with_axes


def LayerNorm(dim: int, *, eps: float = 1e-6, axis_name: str | None = EMBED, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        use_fast_variance=False,
        scale_init=with_axes(nnx.initializers.ones_init(), (axis_name,)),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axis_name,)),
        rngs=rngs,
    )


class RmsNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6, axis_name: str | None = None):
        self.eps = eps
        self.scale = param(jnp.ones((dim,), jnp.float32), (axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(ms + self.eps) * self.scale[...].reshape((1,) * (x.ndim - 1) + (-1,))


def BatchNorm(
    dim: int,
    *,
    eps: float = 1e-5,
    torch_momentum: float = 0.1,
    axis_name: str | None = EMBED,
    data_axis: str | None = None,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """BatchNorm over the channels (last) axis with torch's defaults.

    ``data_axis`` names a mapped axis over which batch statistics are averaged (``jax.lax.pmean``); under
    ``jax.jit`` with a sharded batch, XLA already computes global statistics, so it stays None there.
    """
    return nnx.BatchNorm(
        dim,
        epsilon=eps,
        momentum=1.0 - torch_momentum,
        use_fast_variance=False,
        axis_name=data_axis,
        scale_init=with_axes(nnx.initializers.ones_init(), (axis_name,)),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axis_name,)),
        rngs=rngs,
    )
