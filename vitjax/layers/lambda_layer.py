"""Lambda layer (Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention",
arXiv:2102.08602), the maths of timm ``layers/lambda_layer.py`` ``LambdaLayer`` (intra-depth u = 1).

One fused 1x1 ``qkv`` projection, channels ``[q (heads * K) | k (K) | v (V)]``; BatchNorms on q and v
(``norm_q``, ``norm_v``); keys softmaxed over positions. Output per head ``q . (content_lambda +
position_lambda)`` with ``content_lambda = softmax(k) v^T`` shared by all positions, and the position lambda
either
* a local "lambda convolution" (``r`` set): a ``(r, r, 1)`` 3-D conv with bias over ``(H, W, V)``, mapping
  each value channel's map to ``K`` maps (timm ``conv_lambda``, torch weight ``(K, 1, r, r, 1)``), or
* relative position embeddings (``r=None``, fixed ``feat_size``): ``pos_emb[ny - my + H - 1, nx - mx + W - 1]``
  (a ``(2H - 1, 2W - 1, K)`` table) contracted with the values of every position n.
A 2x2 average pool follows when ``stride == 2``.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.channels import make_divisible
from vitjax.layers.halo import fan_in_linear
from vitjax.layers.norm import BatchNorm
from vitjax.layers.patch_embed import to_2tuple
from vitjax.layers.spatial_pool import avg_pool2d
from vitjax.sharding import param, with_axes


def rel_pos_indices(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For positions m, n of an ``H x W`` map in row-major order: ``(ny - my + H - 1, nx - mx + W - 1)``, each
    ``(HW, HW)`` (timm's non-persistent ``rel_pos_indices``, recomputed)."""
    h, w = size
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # HW
    return ys[None, :] - ys[:, None] + h - 1, xs[None, :] - xs[:, None] + w - 1  # HW, HW


class LambdaLayer(nnx.Module):
    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        feat_size: int | tuple[int, int] | None = None,
        stride: int = 1,
        num_heads: int = 4,
        dim_head: int | None = 16,
        r: int | None = 9,
        qk_ratio: float = 1.0,
        qkv_bias: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        data_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"lambda layer: {dim_out} channels are not divisible by {num_heads} heads")
        self.dim_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.num_heads = num_heads
        self.dim_v = dim_out // num_heads
        self.stride = stride
        k, v = self.dim_qk, self.dim_v
        self.qkv = fan_in_linear(dim, num_heads * k + k + v, bias=qkv_bias, rngs=rngs)
        bn = dict(eps=bn_eps, momentum=bn_momentum, data_axis=data_axis)
        self.norm_q = BatchNorm(num_heads * k, **bn)
        self.norm_v = BatchNorm(v, **bn)
        if r is not None:
            init = with_axes(nnx.initializers.truncated_normal(stddev=k**-0.5), (None, None, None, None, None))
            self.conv_lambda = nnx.Conv(
                1,
                k,
                kernel_size=(r, r, 1),
                padding=((r // 2, r // 2), (r // 2, r // 2), (0, 0)),
                kernel_init=init,
                bias_init=with_axes(nnx.initializers.zeros_init(), (None,)),
                rngs=rngs,
            )
            self.pos_emb = None
            self.feat_size = None
        else:
            if feat_size is None:
                raise ValueError(
                    "a lambda layer with relative positions (r=None) needs feat_size (the model's img_size)"
                )
            self.feat_size = to_2tuple(feat_size)
            fh, fw = self.feat_size
            self.conv_lambda = None
            init = nnx.initializers.truncated_normal(stddev=0.02)
            self.pos_emb = param(init(rngs.params(), (2 * fh - 1, 2 * fw - 1, k)), (None, None, None))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        heads, k, v = self.num_heads, self.dim_qk, self.dim_v
        if self.feat_size is not None and (h, w) != self.feat_size:
            fh, fw = self.feat_size
            raise ValueError(f"lambda layer was built for a {fh}x{fw} map, got {h}x{w}")
        qkv = self.qkv(x)  # B, H, W, heads*K + K + V
        q, key, val = jnp.split(qkv, [heads * k, heads * k + k], axis=-1)
        q = self.norm_q(q).reshape(b, h * w, heads, k)  # B, M, heads, K
        val = self.norm_v(val)  # B, H, W, V
        key = jax.nn.softmax(key.reshape(b, h * w, k), axis=1)  # B, M, K: softmax over positions
        vm = val.reshape(b, h * w, v)  # B, M, V
        content_lam = jnp.einsum("bmk,bmv->bkv", key, vm)  # B, K, V
        content_out = jnp.einsum("bmhk,bkv->bmhv", q, content_lam)  # B, M, heads, V
        if self.conv_lambda is not None:
            pos_lam = self.conv_lambda(val[..., None])  # B, H, W, V, K
            pos_lam = pos_lam.reshape(b, h * w, v, k)  # B, M, V, K
            position_out = jnp.einsum("bmhk,bmvk->bmhv", q, pos_lam)  # B, M, heads, V
        else:
            iy, ix = rel_pos_indices(self.feat_size)
            emb = self.pos_emb[...][iy, ix]  # M, M, K
            pos_lam = jnp.einsum("mnk,bnv->bmkv", emb, vm)  # B, M, K, V
            position_out = jnp.einsum("bmhk,bmkv->bmhv", q, pos_lam)  # B, M, heads, V
        out = (content_out + position_out).reshape(b, h, w, heads * v)  # B, H, W, heads*V
        return avg_pool2d(out, 2, 2) if self.stride == 2 else out
