"""Halo attention (Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
arXiv:2103.12731), the maths of timm ``layers/halo_attn.py`` ``HaloAttn``, written for XLA.

The map is cut into non-overlapping ``block_size`` query blocks; each block attends to a ``win = block_size +
2 * halo_size`` window of keys centred on it. As in timm:

* keys and values are the 1x1 projections of the map **zero-padded** by ``halo_size``, with **no mask**: a
  padded key has logit ``q . 0 + rel`` and still takes softmax mass, with a zero value;
* logits are ``scale * q.k + q.height_rel[ky - y + win - 1] + q.width_rel[kx - x + win - 1]`` with (y, x) the
  query's position in its block and (ky, kx) the key's in its window; the relative terms are not scaled
  (``scale_pos_embed=False``); with ``scale_pos_embed=True`` both terms are scaled;
* ``kv`` channels are per head ``[k_h | v_h]``, ``q`` channels head-major; the output is ``heads * dim_head_v``
  wide with no projection (the block's next 1x1 conv does it);
* stride 2: with an even block the query projection is strided (1x1 conv, stride 2) and the block holds
  ``block_size / 2`` queries (their relative index still uses the query's own coordinate); otherwise
  (``avg_down`` or an odd block) a 2x2 average pool follows.

Overlapping windows are built by padding and reshaping into block rows, then concatenating a few shifted
slices of whole blocks (no per-pixel gathers); relative logits go from relative to absolute indexing by the
pad-and-reshape trick of Music Transformer / Attention Augmented Convolution (pure data movement, exact).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.channels import make_divisible
from vitjax.layers.linear import Dense
from vitjax.layers.spatial_pool import avg_pool2d
from vitjax.sharding import EMBED, QKV, param, with_axes


def rel_to_abs(t: jax.Array, size: int) -> jax.Array:
    """Relative to absolute positions: ``t`` ``(..., Q, 2*size - 1)`` -> ``(..., Q, size)`` with
    ``out[..., q, k] = t[..., q, k - q + size - 1]`` (``Q <= size``)."""
    *lead, nq, nr = t.shape
    nolead = [(0, 0)] * len(lead)
    t = jnp.pad(t, nolead + [(0, 0), (0, 1)])  # ..., Q, R + 1
    t = t.reshape(*lead, nq * (nr + 1))  # ..., Q * (R + 1)
    t = jnp.pad(t, nolead + [(0, nr - nq)])  # ..., (Q + 1) * R
    t = t.reshape(*lead, nq + 1, nr)  # ..., Q + 1, R: row q now starts at relative offset -q
    return t[..., :nq, size - 1 :]  # ..., Q, size


def rel_logits_2d(q: jax.Array, height_rel: jax.Array, width_rel: jax.Array, key_hw: tuple[int, int]) -> jax.Array:
    """Relative-position logits of queries ``(..., Qh, Qw, D)`` against a ``key_hw`` grid of keys:
    ``q . height_rel[ky - y + Kh - 1] + q . width_rel[kx - x + Kw - 1]`` -> ``(..., Qh, Qw, Kh, Kw)``."""
    kh, kw = key_hw
    lw = rel_to_abs(jnp.einsum("...yxd,rd->...yxr", q, width_rel), kw)  # ..., Qh, Qw, Kw
    lh = rel_to_abs(jnp.einsum("...yxd,rd->...xyr", q, height_rel), kh)  # ..., Qw, Qh, Kh
    lh = jnp.swapaxes(lh, -3, -2)  # ..., Qh, Qw, Kh
    return lh[..., :, None] + lw[..., None, :]  # ..., Qh, Qw, Kh, Kw


def _windows_along(x: jax.Array, axis: int, num: int, block: int, win: int) -> jax.Array:
    """Split ``axis`` (already padded to ``(num + m - 1) * block``, ``m = ceil(win / block)``) into ``num``
    overlapping windows of ``win`` starting every ``block``: axis -> (num, win)."""
    m = -(-win // block)
    shape = x.shape
    xb = x.reshape(shape[:axis] + (num + m - 1, block) + shape[axis + 1 :])  # ..., num + m - 1, block, ...
    parts = [jax.lax.slice_in_dim(xb, j, j + num, axis=axis) for j in range(m)]  # m x (..., num, block, ...)
    xw = jnp.stack(parts, axis=axis + 1)  # ..., num, m, block, ...
    xw = xw.reshape(shape[:axis] + (num, m * block) + shape[axis + 1 :])  # ..., num, m * block, ...
    return jax.lax.slice_in_dim(xw, 0, win, axis=axis + 1)  # ..., num, win, ...


def halo_windows(x: jax.Array, block: int, halo: int) -> jax.Array:
    """``(B, H, W, C)`` -> ``(B, H/block, win, W/block, win, C)``: for block (i, j) the rows ``i*block - halo ..``
    and columns ``j*block - halo ..`` of the map, zero outside it."""
    b, h, w, c = x.shape
    win = block + 2 * halo
    m = -(-win // block)
    nh, nw = h // block, w // block
    extra = (m - 1) * block - halo  # right/bottom padding: the halo, plus zeros no window reaches
    x = jnp.pad(x, [(0, 0), (halo, extra), (halo, extra), (0, 0)])  # B, (nh+m-1)*block, (nw+m-1)*block, C
    x = _windows_along(x, 1, nh, block, win)  # B, nh, win, Wp, C
    return _windows_along(x, 3, nw, block, win)  # B, nh, win, nw, win, C


class PosEmbedRel(nnx.Module):
    """The two relative-position tables ``(2 * win - 1, dim_head)`` of timm's halo ``PosEmbedRel``."""

    def __init__(self, win_size: int, dim_head: int, scale: float, *, rngs: nnx.Rngs):
        init = nnx.initializers.truncated_normal(stddev=scale)
        self.height_rel = param(init(rngs.params(), (2 * win_size - 1, dim_head)), (None, None))
        self.width_rel = param(init(rngs.params(), (2 * win_size - 1, dim_head)), (None, None))


def fan_in_linear(n_in: int, n_out: int, *, bias: bool, rngs: nnx.Rngs) -> Dense:
    """A projection initialised as timm's self-attention 1x1 convs (truncated normal, std ``fan_in ** -0.5``)."""
    return Dense(
        n_in,
        n_out,
        use_bias=bias,
        kernel_init=with_axes(nnx.initializers.truncated_normal(stddev=n_in**-0.5), (EMBED, QKV)),
        bias_init=with_axes(nnx.initializers.zeros_init(), (QKV,)),
        rngs=rngs,
    )


class HaloAttn(nnx.Module):
    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        stride: int = 1,
        num_heads: int = 8,
        dim_head: int | None = None,
        block_size: int = 8,
        halo_size: int = 3,
        qk_ratio: float = 1.0,
        qkv_bias: bool = False,
        avg_down: bool = False,
        scale_pos_embed: bool = False,
        rngs: nnx.Rngs,
    ):
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"halo attention: {dim_out} channels are not divisible by {num_heads} heads")
        if stride not in (1, 2):
            raise ValueError(f"halo attention supports stride 1 or 2, got {stride}")
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.scale = self.dim_head_qk**-0.5
        self.scale_pos_embed = scale_pos_embed
        self.block_size = block_size
        self.halo_size = halo_size
        self.win_size = block_size + 2 * halo_size
        use_avg_pool = stride > 1 and (avg_down or block_size % stride != 0)
        self.block_stride = stride if stride > 1 and not use_avg_pool else 1
        self.block_size_ds = block_size // self.block_stride
        self.avg_pool = use_avg_pool
        qk, v = num_heads * self.dim_head_qk, num_heads * self.dim_head_v
        self.q = fan_in_linear(dim, qk, bias=qkv_bias, rngs=rngs)
        self.kv = fan_in_linear(dim, qk + v, bias=qkv_bias, rngs=rngs)
        self.pos_embed = PosEmbedRel(self.win_size, self.dim_head_qk, self.scale, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        bs, s, win = self.block_size, self.block_stride, self.win_size
        if h % bs or w % bs:
            raise ValueError(f"halo attention needs a map whose sides divide by block_size {bs}, got {h}x{w}")
        nh, nw, bq = h // bs, w // bs, self.block_size_ds
        heads, dqk, dv = self.num_heads, self.dim_head_qk, self.dim_head_v

        q = self.q(x[:, ::s, ::s] if s > 1 else x)  # B, H/s, W/s, heads*dqk
        q = q.reshape(b, nh, bq, nw, bq, heads, dqk).transpose(0, 5, 1, 3, 2, 4, 6)  # B, h, nh, nw, bq, bq, dqk
        kv = halo_windows(self.kv(x), bs, self.halo_size)  # B, nh, win, nw, win, heads*(dqk+dv)
        kv = kv.reshape(b, nh, win, nw, win, heads, dqk + dv).transpose(0, 5, 1, 3, 2, 4, 6)  # B, h, nh, nw, w, w, d
        kv = kv.reshape(b, heads, nh * nw, win * win, dqk + dv)  # B, h, nb, win*win, dqk+dv
        k, v = kv[..., :dqk], kv[..., dqk:]

        qf = q.reshape(b, heads, nh * nw, bq * bq, dqk)  # B, h, nb, bq*bq, dqk
        qk = jnp.einsum("bhnqd,bhnkd->bhnqk", qf, k)  # B, h, nb, bq*bq, win*win
        rel = rel_logits_2d(q, self.pos_embed.height_rel[...], self.pos_embed.width_rel[...], (win, win))
        rel = rel.reshape(b, heads, nh * nw, bq * bq, win * win)  # B, h, nb, bq*bq, win*win
        logits = (qk + rel) * self.scale if self.scale_pos_embed else qk * self.scale + rel
        attn = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhnqk,bhnkd->bhnqd", attn, v)  # B, h, nb, bq*bq, dv
        out = out.reshape(b, heads, nh, nw, bq, bq, dv).transpose(0, 2, 4, 3, 5, 1, 6)  # B, nh, bq, nw, bq, h, dv
        out = out.reshape(b, nh * bq, nw * bq, heads * dv)  # B, H/s, W/s, heads*dv
        return avg_pool2d(out, 2, 2) if self.avg_pool else out
