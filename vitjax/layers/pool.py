"""Pooling on NHWC maps with torch's / timm's numbers (``nn.AvgPool2d``, ``nn.MaxPool2d``, timm ``create_pool2d``,
``AvgPool2dSame`` / ``MaxPool2dSame`` and ``SelectAdaptivePool2d``).

* ``padding`` is an int (symmetric, torch) or ``'same'`` (TF 'SAME', computed from the input shape). Max pools pad
  with -inf. Average pools with an int padding count the padded zeros unless ``count_include_pad=False``; with
  ``'same'`` the padding is applied outside the pool, so the zeros are always counted (as timm's
  ``AvgPool2dSame`` does).
* :func:`global_pool`: ``'avg'``, ``'max'``, ``'avgmax'`` (mean of the two), ``'catavgmax'`` (avg then max
  concatenated on channels), ``''`` (no pooling).
"""

from __future__ import annotations

import jax
from jax import numpy as jnp

from vitjax.layers.conv import pad_same


def _window(x: jax.Array, init: float, op, k: int, s: int, pads) -> jax.Array:
    return jax.lax.reduce_window(x, init, op, (1, k, k, 1), (1, s, s, 1), ((0, 0), pads, pads, (0, 0)))


def max_pool2d(x: jax.Array, kernel_size: int, stride: int | None = None, padding: int | str = 0) -> jax.Array:
    stride = stride or kernel_size
    if padding == "same":
        x, padding = pad_same(x, kernel_size, stride, value=-jnp.inf), 0
    return _window(x, -jnp.inf, jax.lax.max, kernel_size, stride, (padding, padding))


def avg_pool2d(
    x: jax.Array,
    kernel_size: int,
    stride: int | None = None,
    padding: int | str = 0,
    count_include_pad: bool = True,
) -> jax.Array:
    stride = stride or kernel_size
    if padding == "same":
        x, padding = pad_same(x, kernel_size, stride), 0
    pads = (padding, padding)
    total = _window(x, 0.0, jax.lax.add, kernel_size, stride, pads)
    if count_include_pad or not padding:
        return total / (kernel_size * kernel_size)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = _window(ones, 0.0, jax.lax.add, kernel_size, stride, pads)  # 1, H', W', 1
    return total / count


def global_pool(x: jax.Array, pool_type: str) -> jax.Array:
    """``(B, H, W, C)`` -> ``(B, C)`` (``(B, 2C)`` for 'catavgmax'); ``''`` returns the map unchanged."""
    if not pool_type:
        return x
    if pool_type == "avg":
        return x.mean(axis=(1, 2))
    if pool_type == "max":
        return x.max(axis=(1, 2))
    if pool_type == "avgmax":
        return 0.5 * (x.mean(axis=(1, 2)) + x.max(axis=(1, 2)))
    if pool_type == "catavgmax":
        return jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)  # B, 2C
    raise ValueError(f"unknown pool_type {pool_type!r}; use '', 'avg', 'max', 'avgmax' or 'catavgmax'")


def pool_feat_mult(pool_type: str) -> int:
    return 2 if pool_type == "catavgmax" else 1
