"""The relative-position bias of Google's TensorFlow MaxViT (timm ``layers/pos_embed_rel.py:RelPosBiasTf``).

A learned table ``(heads, 2Gh-1, 2Gw-1)`` indexed by key minus query:
``bias[h, (y, x), (y', x')] = table[h, y' - y + Gh - 1, x' - x + Gw - 1]`` (timm builds it with two one-hot einsum
lookups; a gather gives the same numbers). Note the sign is the opposite of :class:`~vitjax.layers.RelPosBias`'s
query-minus-key index, and the table is heads-first.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.linear import normal_param
from vitjax.sharding import HEADS


def key_minus_query_index(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices ``(N, N)`` into a ``(2Gh-1, 2Gw-1)`` table, query i first, key j second."""
    gh, gw = grid
    ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # N
    dy = ys[None, :] - ys[:, None] + gh - 1  # N, N
    dx = xs[None, :] - xs[:, None] + gw - 1  # N, N
    return dy.astype(np.int32), dx.astype(np.int32)


class RelPosBiasTf(nnx.Module):
    def __init__(self, grid: tuple[int, int], num_heads: int, *, rngs: nnx.Rngs):
        self.grid = tuple(grid)
        shape = (num_heads, 2 * grid[0] - 1, 2 * grid[1] - 1)
        self.relative_position_bias_table = normal_param(rngs, shape, (HEADS, None, None))

    def __call__(self) -> jax.Array:
        """The attention bias ``(1, heads, N, N)``."""
        dy, dx = key_minus_query_index(self.grid)
        bias = self.relative_position_bias_table[...][:, jnp.asarray(dy), jnp.asarray(dx)]  # H, N, N
        return bias[None]
