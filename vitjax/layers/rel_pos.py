"""Relative-position biases for attention over a 2-D grid of tokens (timm ``layers/pos_embed_rel.py``).

Index convention (timm ``gen_relative_position_index``): for query token i at (y_i, x_i) and key token j,
``index[i, j] = (y_i - y_j + Gh - 1) * (2Gw - 1) + (x_i - x_j + Gw - 1)``, tokens in row-major order. These
lookups are functions of the grid size, recomputed here, never stored as parameters.

* :class:`RelPosMlp` ('cr' mode, Swin-V2 style): a 2 -> hidden -> heads ReLU MLP over log-spaced relative
  coordinates ``sign(d) * log(1 + |d|)``, gathered by the index. Prefix (class) tokens get a zero bias.
* :class:`RelPosBias`: a learned ``((2Gh-1)(2Gw-1) + 3*prefix, heads)`` table gathered by the index; with a
  class token, three extra rows hold cls->token, token->cls and cls->cls.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.linear import normal_param
from vitjax.layers.mlp import Mlp
from vitjax.sharding import HEADS


def relative_position_index(grid: tuple[int, int], class_token: bool = False) -> np.ndarray:
    """``(N, N)`` int32 index into a ``(2Gh-1)(2Gw-1)`` table (``(N+1, N+1)`` with a class token)."""
    gh, gw = grid
    ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # N
    dy = ys[:, None] - ys[None, :] + gh - 1  # N, N
    dx = xs[:, None] - xs[None, :] + gw - 1  # N, N
    index = dy * (2 * gw - 1) + dx
    if class_token:
        n_rel = (2 * gh - 1) * (2 * gw - 1)
        index = np.pad(index, ((1, 0), (1, 0)))
        index[0, :] = n_rel
        index[:, 0] = n_rel + 1
        index[0, 0] = n_rel + 2
    return index.astype(np.int32)


def relative_log_coords(grid: tuple[int, int]) -> np.ndarray:
    """``(2Gh-1, 2Gw-1, 2)`` float32 coordinates ``sign(d) * log(1 + |d|)``, channel 0 = dy (timm 'cr')."""
    dy = np.arange(-(grid[0] - 1), grid[0], dtype=np.float32)
    dx = np.arange(-(grid[1] - 1), grid[1], dtype=np.float32)
    coords = np.stack(np.meshgrid(dy, dx, indexing="ij"), axis=-1)  # 2Gh-1, 2Gw-1, 2
    return (np.sign(coords) * np.log1p(np.abs(coords))).astype(np.float32)


class RelPosMlp(nnx.Module):
    def __init__(
        self,
        grid: tuple[int, int],
        num_heads: int,
        *,
        hidden_dim: int = 128,
        prefix_tokens: int = 0,
        rngs: nnx.Rngs,
    ):
        self.grid = tuple(grid)
        self.num_heads = num_heads
        self.prefix_tokens = prefix_tokens
        self.mlp = Mlp(
            2, hidden_dim, num_heads, act="relu", drop=(0.125, 0.0), in_axis=None, hidden_axis=None, rngs=rngs
        )

    def __call__(self) -> jax.Array:
        """The attention bias ``(1, heads, N', N')``, N' = tokens + prefix tokens."""
        table = self.mlp(jnp.asarray(relative_log_coords(self.grid)))  # 2Gh-1, 2Gw-1, H
        table = table.reshape(-1, self.num_heads)  # R, H
        index = relative_position_index(self.grid)
        bias = jnp.take(table, jnp.asarray(index), axis=0).transpose(2, 0, 1)  # H, N, N
        p = self.prefix_tokens
        if p:
            bias = jnp.pad(bias, ((0, 0), (p, 0), (p, 0)))  # H, N', N'
        return bias[None]


class RelPosBias(nnx.Module):
    def __init__(self, grid: tuple[int, int], num_heads: int, *, prefix_tokens: int = 0, rngs: nnx.Rngs):
        if prefix_tokens > 1:
            raise ValueError("RelPosBias supports at most one prefix (class) token")
        self.grid = tuple(grid)
        self.prefix_tokens = prefix_tokens
        n_rel = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3 * prefix_tokens
        self.relative_position_bias_table = normal_param(rngs, (n_rel, num_heads), (None, HEADS))

    def __call__(self) -> jax.Array:
        index = relative_position_index(self.grid, class_token=self.prefix_tokens > 0)
        bias = jnp.take(self.relative_position_bias_table[...], jnp.asarray(index), axis=0)  # N', N', H
        return bias.transpose(2, 0, 1)[None]  # 1, H, N', N'
