"""LayerScale: a learned per-channel gain on a residual branch (``x * gamma``)."""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.sharding import EMBED, param


class LayerScale(nnx.Module):
    def __init__(self, dim: int, init_values: float = 1e-5, axis_name: str | None = EMBED):
        self.gamma = param(jnp.full((dim,), init_values, jnp.float32), (axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].reshape((1,) * (x.ndim - 1) + (-1,))


def layer_scale(dim: int, init_values: float | None) -> LayerScale | None:
    """timm builds LayerScale only when ``init_values`` is truthy."""
    return LayerScale(dim, init_values) if init_values else None
