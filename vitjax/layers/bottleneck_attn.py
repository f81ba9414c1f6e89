"""Bottleneck-Transformer self-attention (Srinivas et al., "Bottleneck Transformers for Visual Recognition",
arXiv:2101.11605), the maths of timm ``layers/bottleneck_attn.py`` ``BottleneckAttn``.

Global multi-head attention over all ``H * W`` positions of a map whose size is fixed at construction
(``feat_size``): logits ``scale * q.k + q.height_rel[ky - y + H - 1] + q.width_rel[kx - x + W - 1]``, the
relative terms unscaled unless ``scale_pos_embed``. One fused 1x1 ``qkv`` projection whose output channels
are ``[q | k | v]``, each head-major; no output projection; a 2x2 average pool when ``stride == 2``.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.channels import make_divisible
from vitjax.layers.halo import fan_in_linear, rel_logits_2d
from vitjax.layers.patch_embed import to_2tuple
from vitjax.layers.spatial_pool import avg_pool2d
from vitjax.sharding import param


class PosEmbedRel(nnx.Module):
    """Relative-position tables ``(2H - 1, dim_head)`` and ``(2W - 1, dim_head)`` for an ``H x W`` map."""

    def __init__(self, feat_size: tuple[int, int], dim_head: int, scale: float, *, rngs: nnx.Rngs):
        self.height, self.width = feat_size
        init = nnx.initializers.truncated_normal(stddev=scale)
        self.height_rel = param(init(rngs.params(), (2 * self.height - 1, dim_head)), (None, None))
        self.width_rel = param(init(rngs.params(), (2 * self.width - 1, dim_head)), (None, None))


class BottleneckAttn(nnx.Module):
    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        feat_size: int | tuple[int, int] | None = None,
        stride: int = 1,
        num_heads: int = 4,
        dim_head: int | None = None,
        qk_ratio: float = 1.0,
        qkv_bias: bool = False,
        scale_pos_embed: bool = False,
        rngs: nnx.Rngs,
    ):
        if feat_size is None:
            raise ValueError("bottleneck attention needs the feature-map size (build the model with img_size)")
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"bottleneck attention: {dim_out} channels are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.scale = self.dim_head_qk**-0.5
        self.scale_pos_embed = scale_pos_embed
        self.stride = stride
        qk, v = num_heads * self.dim_head_qk, num_heads * self.dim_head_v
        self.qkv = fan_in_linear(dim, 2 * qk + v, bias=qkv_bias, rngs=rngs)
        self.pos_embed = PosEmbedRel(to_2tuple(feat_size), self.dim_head_qk, self.scale, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        if (h, w) != (self.pos_embed.height, self.pos_embed.width):
            raise ValueError(
                f"bottleneck attention was built for a {self.pos_embed.height}x{self.pos_embed.width} map, got {h}x{w}"
            )
        heads, dqk, dv = self.num_heads, self.dim_head_qk, self.dim_head_v
        qkv = self.qkv(x)  # B, H, W, 2*heads*dqk + heads*dv
        q, k, v = jnp.split(qkv, [heads * dqk, 2 * heads * dqk], axis=-1)
        q = q.reshape(b, h, w, heads, dqk).transpose(0, 3, 1, 2, 4)  # B, heads, H, W, dqk
        k = k.reshape(b, h * w, heads, dqk).transpose(0, 2, 1, 3)  # B, heads, HW, dqk
        v = v.reshape(b, h * w, heads, dv).transpose(0, 2, 1, 3)  # B, heads, HW, dv
        qk = jnp.einsum("bhqd,bhkd->bhqk", q.reshape(b, heads, h * w, dqk), k)  # B, heads, HW, HW
        rel = rel_logits_2d(q, self.pos_embed.height_rel[...], self.pos_embed.width_rel[...], (h, w))
        rel = rel.reshape(b, heads, h * w, h * w)  # B, heads, HW, HW
        logits = (qk + rel) * self.scale if self.scale_pos_embed else qk * self.scale + rel
        attn = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bhkd->bqhd", attn, v)  # B, HW, heads, dv
        out = out.reshape(b, h, w, heads * dv)  # B, H, W, heads*dv
        return avg_pool2d(out, 2, 2) if self.stride == 2 else out
