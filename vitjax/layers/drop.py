"""Dropout and stochastic depth (DropPath).

Both are ``nnx.Dropout``: DropPath is dropout whose mask is broadcast over every axis but the batch, so a
whole residual branch is dropped per sample and the survivors are scaled by ``1 / (1 - rate)`` (timm's
``scale_by_keep=True``). ``model.eval()`` / ``model.train()`` switch them off / on. A rate of 0 builds nothing.
"""

from __future__ import annotations

import jax
from flax import nnx


def Dropout(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout | None:
    return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


def DropPath(rate: float, *, ndim: int = 3, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """Per-sample stochastic depth for inputs of rank ``ndim`` (3 for tokens, 4 for NHWC maps)."""
    return nnx.Dropout(rate, broadcast_dims=tuple(range(1, ndim)), rngs=rngs) if rate > 0 else None


def maybe(layer: nnx.Module | None, x: jax.Array) -> jax.Array:
    """Apply an optional layer (dropout, norm, layer scale) built as None when disabled."""
    return x if layer is None else layer(x)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """timm's linear stochastic-depth rule: block i gets ``rate * i / (depth - 1)``."""
    if depth <= 1:
        return [0.0] * depth
    return [rate * i / (depth - 1) for i in range(depth)]
