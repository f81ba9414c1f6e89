"""Spatial pooling on NHWC maps with torch's numerics (``nn.MaxPool2d``, ``nn.AvgPool2d`` incl. ``ceil_mode``
and ``count_include_pad``) and timm's global pooling (``SelectAdaptivePool2d``: avg, max, avgmax, catavgmax).
"""

from __future__ import annotations

import math

import jax
from jax import numpy as jnp

from vitjax.xla_cpu import materialise, max_pool

GLOBAL_POOLS = ("", "avg", "max", "avgmax", "catavgmax")


def _out_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    span = n + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:  # torch: the last window must start inside the input or left pad
        out -= 1
    return out


def _pads(x: jax.Array, k: int, s: int, p: int, ceil_mode: bool) -> list[tuple[int, int]]:
    pads = [(0, 0)]
    for n in x.shape[1:3]:
        out = _out_size(n, k, s, p, ceil_mode)
        pads.append((p, max((out - 1) * s + k - n - p, p)))
    return pads + [(0, 0)]


def max_pool2d(x: jax.Array, kernel_size: int, stride: int, padding: int = 0) -> jax.Array:
    """``nn.MaxPool2d(kernel_size, stride, padding)``: padding never wins (it is -inf)."""
    pads = _pads(x, kernel_size, stride, padding, False)
    return max_pool(x, (kernel_size, kernel_size), (stride, stride), pads[1:3])  # shifted slices on the CPU


def avg_pool2d(
    x: jax.Array,
    kernel_size: int,
    stride: int,
    padding: int = 0,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """``nn.AvgPool2d``. Windows that run past the input (``ceil_mode``) always divide by their in-bounds
    size; ``count_include_pad`` decides whether the symmetric ``padding`` counts.

    On the CPU the result is materialised (:func:`vitjax.xla_cpu.materialise`): fed to a 1x1 convolution
    (MaxxViT's downsampling shortcut), XLA:CPU otherwise fuses the pool with the matmuls around it into one slow
    YNNPACK fusion."""
    return materialise(_avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad))


def _avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    pads = _pads(x, kernel_size, stride, padding, ceil_mode)
    window, strides = (1, kernel_size, kernel_size, 1), (1, stride, stride, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    if count_include_pad and not ceil_mode:
        return total / (kernel_size * kernel_size)
    h, w = x.shape[1:3]
    if count_include_pad:  # the symmetric padding counts, the ceil-mode overhang does not
        ones = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), [(0, 0), (padding, padding), (padding, padding), (0, 0)])
        inner = [(0, 0), (0, pads[1][1] - padding), (0, pads[2][1] - padding), (0, 0)]
        count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, inner)
    else:
        count = jax.lax.reduce_window(jnp.ones((1, h, w, 1), x.dtype), 0.0, jax.lax.add, window, strides, pads)
    return total / count


def avg_pool2d_same(x: jax.Array, kernel_size: int, stride: int = 1) -> jax.Array:
    """timm ``AvgPool2dSame``: TF-'SAME' zero padding (extra on the bottom/right), zeros counted."""
    pads = [(0, 0)]
    for n in x.shape[1:3]:
        total = max((math.ceil(n / stride) - 1) * stride + kernel_size - n, 0)
        pads.append((total // 2, total - total // 2))
    x = jnp.pad(x, pads + [(0, 0)])
    return avg_pool2d(x, kernel_size, stride, ceil_mode=True, count_include_pad=False)


def global_pool_mult(pool_type: str) -> int:
    """Width multiplier of a global pool (2 for 'catavgmax')."""
    return 2 if pool_type == "catavgmax" else 1


def global_pool(x: jax.Array, pool_type: str) -> jax.Array:
    """timm ``SelectAdaptivePool2d`` to 1x1, flattened: ``(B, H, W, C) -> (B, C)`` (``(B, 2C)`` for catavgmax);
    ``''`` returns the map unchanged."""
    if pool_type not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {pool_type!r}")
    if not pool_type:
        return x
    if pool_type == "avg":
        return x.mean(axis=(1, 2))
    if pool_type == "max":
        return x.max(axis=(1, 2))
    avg, mx = x.mean(axis=(1, 2)), x.max(axis=(1, 2))
    if pool_type == "avgmax":
        return 0.5 * (avg + mx)
    return jnp.concatenate([avg, mx], axis=-1)  # B, 2C
