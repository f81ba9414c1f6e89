"""Normalisation layers with torch's numerics.

* LayerNorm: biased variance computed around the mean (``use_fast_variance=False``), as torch does; timm's
  ViTs use eps 1e-6, transformers' ViT 1e-12. In NHWC, timm's ``LayerNorm2d`` is this same layer.
* RmsNorm: ``x * rsqrt(mean(x^2) + eps) * weight`` (timm ``RmsNorm``).
* BatchNorm: torch's numerics and running-statistics update (see :class:`BatchNorm`).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx
from jax import numpy as jnp
from jax.custom_derivatives import SymbolicZero

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
    * compiled for the CPU, train mode has a hand-written gradient: two per-channel reductions (of the output
      gradient ``g`` and of ``g * xhat``) and one elementwise pass. Differentiated by JAX, XLA:CPU ran about eight
      reductions over the activation per BatchNorm (450 in halonet50ts's training step, 0.44 s of its thread
      time). Alone, a BatchNorm's forward and backward over 8x64x64x256 took 20.9 -> 9.8 ms; halonet50ts's
      training step at batch 8 1.75-1.78 -> 1.58-1.60 s (this project's machine, 2026-12-03). Same forward
      values; gradients equal to about 1e-7. Other backends, and ``data_axis``, keep JAX's derivative.
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
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        if self.use_running_average:
            return _normalise(x, self.mean[...], jax.lax.rsqrt(self.var[...] + self.eps), scale, bias)
        n = x.size // x.shape[-1]
        if self.data_axis is None:
            train = functools.partial(_batch_norm_train, eps=self.eps)
            train_cpu = functools.partial(_batch_norm_train_cpu, eps=self.eps)
            y, mean, var = jax.lax.platform_dependent(x, scale, bias, cpu=train_cpu, default=train)
        else:
            mean_local, sq, _ = _statistics(x, self.eps)
            mean = jax.lax.pmean(mean_local, self.data_axis)
            var = jax.lax.pmean(sq + jnp.square(mean_local - mean), self.data_axis)
            n = n * jax.lax.psum(1, self.data_axis)
            y = _normalise(x, mean, jax.lax.rsqrt(var + self.eps), scale, bias)
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
        self.var[...] = jax.lax.stop_gradient((1 - m) * self.var[...] + m * var * (n / max(n - 1, 1)))
        self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        return y


def _channels(v: jax.Array, x: jax.Array) -> jax.Array:
    """A per-channel vector shaped to broadcast against ``x`` (channels last)."""
    return v.reshape((1,) * (x.ndim - 1) + (-1,))


def _normalise(x, mean, inv, scale, bias):
    """``(x - mean) * inv * scale + bias`` over the last axis (no affine part where ``scale`` is None)."""
    y = (x - _channels(mean, x)) * _channels(inv, x)
    return y if scale is None else y * _channels(scale, x) + _channels(bias, x)


def _statistics(x, eps):
    """The batch's mean and biased variance (around the mean) per channel, and ``rsqrt(var + eps)``."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - _channels(mean, x)), axis=axes)
    return mean, var, jax.lax.rsqrt(var + eps)


def _batch_norm_train(x, scale, bias, *, eps):
    """Batch statistics over every axis but the last (variance biased, around the mean) and the normalised
    ``x``: ``(y, mean, var)``, differentiated by JAX."""
    mean, var, inv = _statistics(x, eps)
    return _normalise(x, mean, inv, scale, bias), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train_vjp(x, scale, bias, eps):
    return _batch_norm_train(x, scale, bias, eps=eps)


def _bn_fwd(x, scale, bias, eps):
    # with symbolic zeros, the primals come wrapped (CustomVJPPrimal); an absent affine part stays None
    x, scale, bias = (None if p is None else p.value for p in (x, scale, bias))
    mean, var, inv = _statistics(x, eps)
    # bias only for its dtype: its gradient is returned in it
    return (_normalise(x, mean, inv, scale, bias), mean, var), (x, mean, inv, scale, bias)


def _bn_bwd(eps, res, cts):
    """The gradient of batch norm in two reductions (of ``g`` and ``g * xhat``) and one elementwise pass, in
    float32 at least (as torch accumulates a bf16 BatchNorm's gradient), each result in its primal's dtype; a
    cotangent of the returned statistics (zero when they only update the running ones) adds its own terms."""
    x, mean, inv, scale, bias = res
    g, g_mean, g_var = cts
    f32 = jnp.promote_types(x.dtype, jnp.float32)
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    centred = x.astype(f32) - _channels(mean.astype(f32), x)
    inv = inv.astype(f32)
    if isinstance(g, SymbolicZero):
        dx, dscale, dbias = jnp.zeros(x.shape, f32), jnp.zeros(mean.shape, f32), jnp.zeros(mean.shape, f32)
    else:
        g = g.astype(f32)
        xhat = centred * _channels(inv, x)
        dbias = jnp.sum(g, axis=axes)
        dscale = jnp.sum(g * xhat, axis=axes)
        gain = inv if scale is None else inv * scale.astype(f32)
        dx = _channels(gain, x) * (g - _channels(dbias / n, x) - xhat * _channels(dscale / n, x))
    if not isinstance(g_mean, SymbolicZero):
        dx = dx + _channels(g_mean.astype(f32) / n, x)
    if not isinstance(g_var, SymbolicZero):
        dx = dx + centred * _channels(g_var.astype(f32) * (2.0 / n), x)
    if scale is None:
        return dx.astype(x.dtype), None, None
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_batch_norm_train_vjp.defvjp(_bn_fwd, _bn_bwd, symbolic_zeros=True)


def _batch_norm_train_cpu(x, scale, bias, *, eps):
    """:func:`_batch_norm_train` with a hand-written gradient, for XLA:CPU (see :class:`BatchNorm`)."""
    return _batch_norm_train_vjp(x, scale, bias, eps)
