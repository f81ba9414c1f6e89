"""Attention pooling heads of timm's ``layers/attention_pool.py``, on tokens ``(B, N, C)``.

* :class:`AttentionPoolLatent` (multi-head attention pooling, "MAP", as in big_vision's SigLIP): a learned
  latent query attends over the tokens through its own ``q`` and fused ``kv`` projections, then ``proj`` and a
  pre-norm residual MLP; the first latent is the pooled vector.
* :class:`AttentionPoolPrr` (patch representation refinement, Locality-Attending ViT): parameter-free
  self-attention over all tokens (q = k = v = the tokens split into heads), then the first token or the mean.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.attention import attend, merge_heads
from vitjax.layers.drop import Dropout, maybe
from vitjax.layers.linear import Linear, normal_param
from vitjax.layers.mlp import Mlp
from vitjax.layers.norm import NormFactory
from vitjax.sharding import EMBED, QKV


def _pool(x: jax.Array, pool_type: str) -> jax.Array:
    if pool_type == "token":
        return x[:, 0]
    if pool_type == "avg":
        return x.mean(axis=1)
    return x


class AttentionPoolLatent(nnx.Module):
    """timm ``AttentionPoolLatent`` as timm's ``VisionTransformer`` builds it for ``global_pool='map'``: biased
    ``q``/``kv``, no q/k norm unless asked, output width = input width, MLP hidden ``int(dim * mlp_ratio)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        norm: NormFactory,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        qkv_bias: bool = True,
        qk_norm: bool = False,
        latent_len: int = 1,
        pool_type: str = "token",
        drop: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.latent_len, self.pool_type = latent_len, pool_type
        self.latent = normal_param(rngs, (1, latent_len, dim), (None, None, EMBED), std=dim**-0.5)
        self.q = Linear(dim, dim, bias=qkv_bias, axes=(EMBED, QKV), rngs=rngs)
        self.kv = Linear(dim, 2 * dim, bias=qkv_bias, axes=(EMBED, QKV), rngs=rngs)
        self.q_norm = norm(self.head_dim, axis_name=None) if qk_norm else None
        self.k_norm = norm(self.head_dim, axis_name=None) if qk_norm else None
        self.proj = Linear(dim, dim, axes=(QKV, EMBED), rngs=rngs)
        self.proj_drop = Dropout(drop, rngs=rngs)
        self.norm = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        h, d, m = self.num_heads, self.head_dim, self.latent_len
        q = self.q(self.latent[...]).reshape(1, m, h, d).transpose(0, 2, 1, 3)  # 1, H, L, D
        q = jnp.broadcast_to(q, (b, h, m, d))  # B, H, L, D
        kv = self.kv(x).reshape(b, n, 2, h, d).transpose(2, 0, 3, 1, 4)  # 2, B, H, N, D
        k, v = kv[0], kv[1]
        q, k = maybe(self.q_norm, q), maybe(self.k_norm, k)
        x = merge_heads(attend(q, k, v, scale=d**-0.5))  # B, L, C
        x = maybe(self.proj_drop, self.proj(x))
        x = x + self.mlp(self.norm(x))
        return _pool(x, self.pool_type)


class AttentionPoolPrr(nnx.Module):
    """timm ``AttentionPoolPrr`` as timm's ``VisionTransformer`` builds it for ``global_pool='prr'``: no pre/post
    norm, so no weights; ``pool_type`` 'token' (a model with a class token) or 'avg'."""

    def __init__(self, dim: int, num_heads: int, *, pool_type: str = "token"):
        if pool_type not in ("token", "avg"):
            raise ValueError(f"AttentionPoolPrr pools by 'token' or 'avg', got {pool_type!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.pool_type = num_heads, dim // num_heads, pool_type

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        t = x.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)  # B, H, N, D
        x = merge_heads(attend(t, t, t, scale=self.head_dim**-0.5))  # B, N, C
        return _pool(x, self.pool_type)
