"""Normalisation layers with torch's numerics.

* LayerNorm: biased variance computed around the mean (``use_fast_variance=False``), as torch does; timm's
  ViTs use eps 1e-6, transformers' ViT 1e-12. In NHWC, timm's ``LayerNorm2d`` is this same layer.
* RmsNorm: ``x * rsqrt(mean(x^2) + eps) * weight`` (timm ``RmsNorm``).
* BatchNorm: torch's numerics and running-statistics update (see :class:`BatchNorm`).
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


class BatchNorm(nnx.Module):
    """BatchNorm over the channels (last) axis with torch's numbers.

    * eval mode (``model.eval()``, the default of ``create_model``) normalises with the running statistics;
      train mode normalises with the batch's biased variance and updates the running statistics as torch does:
      ``running = (1 - momentum) * running + momentum * batch``, the variance unbiased (``n / (n - 1)``), and
      counts ``num_batches_tracked``.
    * ``momentum`` is torch's (0.1 by default; NNX's own BatchNorm uses ``1 - momentum``).
    * ``data_axis`` names a mapped axis (``shard_map``/``pmap``) over which batch statistics are averaged. Under
      ``jax.jit`` with a batch sharded over a mesh, XLA computes the global statistics already.
    Weights: ``scale``/``bias`` (torch ``weight``/``bias``), statistics ``mean``/``var``/``num_batches_tracked``
    (``nnx.BatchStat``; torch ``running_mean``/``running_var``/``num_batches_tracked``).
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        axis_name: str | None = EMBED,
        data_axis: str | None = None,
        rngs: nnx.Rngs | None = None,
    ):
        self.eps, self.momentum, self.data_axis = eps, momentum, data_axis
        self.use_running_average = False
        self.scale = param(jnp.ones((dim,), jnp.float32), (axis_name,)) if affine else None
        self.bias = param(jnp.zeros((dim,), jnp.float32), (axis_name,)) if affine else None
        self.mean = nnx.BatchStat(jnp.zeros((dim,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((dim,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1,) * (x.ndim - 1) + (-1,)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            sq = jnp.mean(jnp.square(x - mean.reshape(shape)), axis=axes)
            n = x.size // x.shape[-1]
            if self.data_axis is not None:
                mean_local = mean
                mean = jax.lax.pmean(mean_local, self.data_axis)
                sq = jax.lax.pmean(sq + jnp.square(mean_local - mean), self.data_axis)
                n = n * jax.lax.psum(1, self.data_axis)
            var = sq
            m = self.momentum
            self.mean[...] = jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
            self.var[...] = jax.lax.stop_gradient((1 - m) * self.var[...] + m * var * (n / max(n - 1, 1)))
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        y = (x - mean.reshape(shape)) * jax.lax.rsqrt(var.reshape(shape) + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].reshape(shape) + self.bias[...].reshape(shape)
        return y
