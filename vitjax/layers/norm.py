"""Normalisation layers with torch's numerics.

* LayerNorm: biased variance computed around the mean (``use_fast_variance=False``), as torch does; timm's
  ViTs use eps 1e-6, transformers' ViT 1e-12. In NHWC, timm's ``LayerNorm2d`` is this same layer.
* RmsNorm: ``x * rsqrt(mean(x^2) + eps) * weight`` (timm ``RmsNorm``).
* BatchNorm: torch's numerics and running-statistics update (see :class:`BatchNorm`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.sharding import EMBED, param, with_axes
from vitjax.xla_cpu import batch_norm_train


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


NormKind = Literal["layernorm", "rmsnorm"]
NORM_KINDS = ("layernorm", "rmsnorm")
NormFactory = Callable[..., nnx.Module]  # (dim, axis_name=EMBED) -> norm layer


def norm_factory(kind: NormKind, *, eps: float, axis_name: str | None = EMBED, rngs: nnx.Rngs) -> NormFactory:
    """``dim -> norm layer`` for a model-wide ``norm_layer`` choice (timm passes its ``norm_layer`` class down to
    every block, q/k norm and pool the same way)."""
    if kind == "layernorm":
        return lambda dim, axis_name=axis_name: LayerNorm(dim, eps=eps, axis_name=axis_name, rngs=rngs)
    if kind == "rmsnorm":
        return lambda dim, axis_name=axis_name: RmsNorm(dim, eps=eps, axis_name=axis_name)
    raise ValueError(f"norm_layer must be one of {NORM_KINDS}, got {kind!r}")


class BatchNorm(nnx.Module):
    """BatchNorm over the channels (last) axis with torch's numbers.

    * eval mode (``model.eval()``, the default of ``create_model``) normalises with the running statistics;
      train mode normalises with the batch's biased variance and updates the running statistics as torch does:
      ``running = (1 - momentum) * running + momentum * batch``, the variance unbiased (``n / (n - 1)``), and
      counts ``num_batches_tracked``.
    * ``momentum`` is torch's (0.1 by default; NNX's own BatchNorm uses ``1 - momentum``).
    * ``data_axis`` names a mapped axis (``shard_map``/``pmap``) over which batch statistics are averaged. Under
      ``jax.jit`` with a batch sharded over a mesh, XLA computes the global statistics already.
    * ``stat_groups`` (an attribute, 1 by default; the train loop sets it to the number of data-parallel devices
      unless ``--sync-bn``): train mode splits the batch (first axis) into that many equal consecutive slices and
      normalises each with its own statistics, as each DDP replica of timm's ``train.py`` does with its share of
      the batch. The running statistics are updated with the mean over the slices of their mean and unbiased
      variance, which is what averaging the replicas' running statistics gives (timm's ``--dist-bn reduce``):
      the update is affine with the same coefficients on every replica. That is timm run with ``--no-ddp-bb``; by
      default DDP broadcasts rank 0's buffers before every forward, so there the running statistics follow rank
      0's slice within an epoch and the epoch-end reduce averages only its last update.
    * compiled for the CPU, train mode has a hand-written gradient (:func:`vitjax.xla_cpu.batch_norm_train`):
      same forward values, gradients equal to about 1e-7. Other backends, ``data_axis``, ``stat_groups > 1`` and
      ``VITJAX_CPU_KERNELS=0`` keep JAX's derivative.
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
        self.stat_groups = 1
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
        if self.stat_groups > 1:
            if self.data_axis is not None:
                raise ValueError("BatchNorm: give stat_groups or data_axis, not both")
            y, means, variances = _grouped_train(x, scale, bias, self.stat_groups, self.eps)
            n //= self.stat_groups
            mean = jnp.mean(means, axis=0)
            unbiased = jnp.mean(variances * (n / max(n - 1, 1)), axis=0)  # each group's, averaged
        else:
            if self.data_axis is None:
                train = functools.partial(_batch_norm_train, eps=self.eps)
                y, mean, var = batch_norm_train(train, x, scale, bias, self.eps)  # the CPU's gradient by hand
            else:
                mean_local, sq, _ = _statistics(x, self.eps)
                mean = jax.lax.pmean(mean_local, self.data_axis)
                var = jax.lax.pmean(sq + jnp.square(mean_local - mean), self.data_axis)
                n = n * jax.lax.psum(1, self.data_axis)
                y = _normalise(x, mean, jax.lax.rsqrt(var + self.eps), scale, bias)
            unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
        self.var[...] = jax.lax.stop_gradient((1 - m) * self.var[...] + m * unbiased)
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


def _grouped_train(x, scale, bias, groups: int, eps: float):
    """Train-mode batch norm of each of ``groups`` consecutive equal slices of the batch with its own statistics:
    ``(y, mean, var)`` with ``mean`` and (biased) ``var`` of shape ``(groups, C)``."""
    if x.shape[0] % groups:
        raise ValueError(
            f"BatchNorm: a batch of {x.shape[0]} does not split into {groups} equal statistic groups (one per "
            "data-parallel device); make the per-device batch (--batch-size / --grad-accum-steps / devices) whole, "
            "or use --sync-bn"
        )
    xg = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])  # G, B/G, ..., C
    axes = tuple(range(1, xg.ndim - 1))
    mean = jnp.mean(xg, axis=axes)  # G, C
    shape = (groups,) + (1,) * (xg.ndim - 2) + (-1,)
    var = jnp.mean(jnp.square(xg - mean.reshape(shape)), axis=axes)  # G, C
    y = (xg - mean.reshape(shape)) * jax.lax.rsqrt(var + eps).reshape(shape)  # G, B/G, ..., C
    if scale is not None:
        y = y * _channels(scale, y) + _channels(bias, y)
    return y.reshape(x.shape), mean, var  # B, ..., C


def _batch_norm_train(x, scale, bias, *, eps):
    """Batch statistics over every axis but the last (variance biased, around the mean) and the normalised
    ``x``: ``(y, mean, var)``, differentiated by JAX."""
    mean, var, inv = _statistics(x, eps)
    return _normalise(x, mean, inv, scale, bias), mean, var
