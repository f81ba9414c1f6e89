"""MaxViT / MaxxViT / CoAtNet building blocks (timm ``models/maxxvit.py``): MBConv and ConvNeXt conv blocks,
window / grid partition attention, the stage and the stem. See :mod:`vitjax.models.maxxvit`."""

from __future__ import annotations

import math
from typing import Literal

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers import (
    BatchNorm,
    Dropout,
    DropPath,
    LayerNorm,
    Linear,
    Mlp,
    RelPosBias,
    RelPosMlp,
    attend,
    get_act,
    layer_scale,
    maybe,
    to_2tuple,
)
from vitjax.layers.attention import merge_heads, split_qkv
from vitjax.layers.channels import make_divisible
from vitjax.layers.conv import create_conv2d, pad_same
from vitjax.layers.partition import grid_partition, grid_reverse, window_partition, window_reverse
from vitjax.layers.rel_pos_tf import RelPosBiasTf
from vitjax.layers.spatial_pool import avg_pool2d, avg_pool2d_same, max_pool2d
from vitjax.layers.squeeze_excite import SEModule
from vitjax.models.common import run_block
from vitjax.models.maxxvit_config import MaxxVitConfig, MaxxVitConvCfg, MaxxVitTransformerCfg
from vitjax.sharding import CONV_OUT, EMBED, MLP, QKV


def _norm(kind: str, dim: int, eps: float, rngs: nnx.Rngs) -> nnx.Module:
    if kind in ("batchnorm2d", "batchnorm"):
        return BatchNorm(dim, eps=eps)
    if kind in ("layernorm2d", "layernorm"):
        return LayerNorm(dim, eps=eps, rngs=rngs)
    raise ValueError(f"unknown norm layer {kind!r}")


_POOL = {"max": ("max", 3, 1), "max2": ("max", 2, 0), "avg": ("avg", 3, 1), "avg2": ("avg", 2, 0)}


def _pool_out(size: int, pool_type: str, padding: str) -> int:
    _, k, pad = _POOL[pool_type]
    return math.ceil(size / 2) if padding == "same" else (size + 2 * pad - k) // 2 + 1


class Downsample2d(nnx.Module):
    """Stride-2 pool (``avg2``/``max2``: 2x2; ``avg``/``max``: 3x3 pad 1), then a 1x1 ``expand`` if widths differ."""

    def __init__(self, dim: int, dim_out: int, *, pool_type: str = "avg2", padding: str = "", bias: bool = True,
                 rngs: nnx.Rngs):  # fmt: skip
        self.pool_type, self.padding = pool_type, padding
        self.expand = Linear(dim, dim_out, bias=bias, axes=(None, EMBED), rngs=rngs) if dim != dim_out else None

    def __call__(self, x: jax.Array) -> jax.Array:
        kind, k, pad = _POOL[self.pool_type]
        if self.padding == "same":  # TF 'SAME' padding outside the pool: zeros count in the mean, -inf for max
            x = max_pool2d(pad_same(x, k, 2, value=-jnp.inf), k, 2) if kind == "max" else avg_pool2d_same(x, k, 2)
        elif kind == "max":
            x = max_pool2d(x, k, 2, pad)
        else:  # timm's 3x3 avg pool excludes the padding from the mean
            x = avg_pool2d(x, k, 2, pad, count_include_pad=k == 2)
        return maybe(self.expand, x)


class Attention(nnx.Module):
    """Multi-head attention on tokens ``(B, N, C)`` (timm ``AttentionCl``; ``channels_last=False``: ``Attention2d``,
    whose qkv/proj are 1x1 convs in timm, and which widens in qkv whenever ``expand_first``). ``head_first``
    defaults to the config's; timm's T blocks leave it at True whatever the config says."""

    def __init__(self, dim: int, dim_out: int, cfg: MaxxVitTransformerCfg, rel_pos_size: tuple[int, int], *,
                 channels_last: bool, expand_first: bool = True, head_first: bool | None = None,
                 rngs: nnx.Rngs):  # fmt: skip
        widen = expand_first and (dim_out > dim or not channels_last)
        dim_attn = dim_out if widen else dim
        if dim_attn % cfg.dim_head:
            raise ValueError(f"attention width {dim_attn} is not divisible by dim_head {cfg.dim_head}")
        self.num_heads, self.dim_head = dim_attn // cfg.dim_head, cfg.dim_head
        self.head_first = cfg.head_first if head_first is None else head_first
        self.qkv = Linear(dim, 3 * dim_attn, bias=cfg.attn_bias, axes=(EMBED, QKV), rngs=rngs)
        h, kind = self.num_heads, cfg.rel_pos_type
        if kind == "mlp":
            self.rel_pos = RelPosMlp(rel_pos_size, h, hidden_dim=cfg.rel_pos_dim, rngs=rngs)
        elif kind == "bias":
            self.rel_pos = RelPosBias(rel_pos_size, h, rngs=rngs)
        elif kind == "bias_tf":
            self.rel_pos = RelPosBiasTf(rel_pos_size, h, rngs=rngs)
        else:
            self.rel_pos = None
        self.attn_drop = Dropout(cfg.attn_drop, rngs=rngs)
        self.proj = Linear(dim_attn, dim_out, bias=cfg.attn_bias, axes=(QKV, EMBED), rngs=rngs)
        self.proj_drop = Dropout(cfg.proj_drop, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = split_qkv(self.qkv, x, self.num_heads, head_first=self.head_first)  # each B, H, N, D
        rel = self.rel_pos() if self.rel_pos is not None else None
        y = attend(q, k, v, scale=self.dim_head**-0.5, bias=rel, dropout=self.attn_drop)  # B, H, N, D
        return maybe(self.proj_drop, self.proj(merge_heads(y)))


def _attend_map(attn: Attention, x: jax.Array) -> jax.Array:
    """Attention over every position of an NHWC map (row-major tokens)."""
    b, hh, ww, c = x.shape
    return attn(x.reshape(b, hh * ww, c)).reshape(b, hh, ww, -1)  # B, H, W, C'


def _attend_partitioned(attn: Attention, x: jax.Array, size: tuple[int, int], block: bool) -> jax.Array:
    """Window (``block``) or grid partition -> attention within each group -> reverse."""
    hw = x.shape[1:3]
    parts = window_partition(x, size) if block else grid_partition(x, size)  # B', ph, pw, C
    parts = _attend_map(attn, parts)  # B', ph, pw, C'
    return window_reverse(parts, size, hw) if block else grid_reverse(parts, size, hw)  # B, H, W, C'


class MbConvBlock(nnx.Module):
    """Pre-norm inverted bottleneck: [pool] 1x1 expand -> norm-act -> kxk depthwise -> [SE] norm-act [SE] -> 1x1."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: MaxxVitConvCfg, drop_path: float, *,
                 rngs: nnx.Rngs):  # fmt: skip
        mid = make_divisible((out_chs if cfg.expand_output else in_chs) * cfg.expand_ratio)
        self.act, self.pre_norm_act = get_act(cfg.act_layer), cfg.pre_norm_act
        self.shortcut = (
            Downsample2d(in_chs, out_chs, pool_type=cfg.pool_type, bias=cfg.output_bias, padding=cfg.padding, rngs=rngs)
            if stride == 2
            else None
        )
        s_pool, self.stride_1x1, s_dw = {"pool": (stride, 1, 1), "1x1": (1, stride, 1), "dw": (1, 1, stride)}[
            cfg.stride_mode
        ]
        self.pre_norm = _norm(cfg.norm, in_chs, cfg.eps, rngs)
        self.down = (
            Downsample2d(in_chs, in_chs, pool_type=cfg.downsample_pool_type, padding=cfg.padding, rngs=rngs)
            if s_pool > 1
            else None
        )
        self.conv1_1x1 = Linear(in_chs, mid, bias=False, axes=(EMBED, MLP), rngs=rngs)
        self.norm1 = _norm(cfg.norm, mid, cfg.eps, rngs)
        groups = mid // cfg.group_size if cfg.group_size else 1
        self.conv2_kxk = create_conv2d(
            mid, mid, cfg.kernel_size, stride=s_dw, groups=groups, bias=False, padding=cfg.padding,
            axes=(None, None, None, MLP), rngs=rngs,
        )  # fmt: skip
        se = None
        if cfg.attn_layer == "se":
            rd = int(cfg.attn_ratio * (out_chs if cfg.expand_output else mid))
            se = SEModule(mid, rd_channels=rd, act_layer=cfg.attn_act_layer, rngs=rngs)
        self.se_early = se if cfg.attn_early else None
        self.norm2 = _norm(cfg.norm, mid, cfg.eps, rngs)
        self.se = None if cfg.attn_early else se
        self.conv3_1x1 = Linear(mid, out_chs, bias=cfg.output_bias, axes=(MLP, EMBED), rngs=rngs)
        self.drop_path = DropPath(drop_path, ndim=4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = maybe(self.shortcut, x)
        x = self.pre_norm(x)
        x = self.act(x) if self.pre_norm_act else x
        x = maybe(self.down, x)
        s = self.stride_1x1
        x = self.act(self.norm1(self.conv1_1x1(x[:, ::s, ::s] if s > 1 else x)))
        x = maybe(self.se_early, self.conv2_kxk(x))
        x = maybe(self.se, self.act(self.norm2(x)))
        return maybe(self.drop_path, self.conv3_1x1(x)) + shortcut


class ConvNeXtBlock(nnx.Module):
    """ConvNeXt block: [pool] depthwise 7x7 (channel multiplier out/in) -> norm -> MLP -> LayerScale."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: MaxxVitConvCfg, drop_path: float, *,
                 rngs: nnx.Rngs):  # fmt: skip
        if stride == 2:
            self.shortcut = Downsample2d(in_chs, out_chs, rngs=rngs)
        elif in_chs != out_chs:
            self.shortcut = Linear(in_chs, out_chs, bias=cfg.output_bias, axes=(None, EMBED), rngs=rngs)
        else:
            self.shortcut = None
        pool = cfg.stride_mode == "pool" and stride > 1
        self.down = Downsample2d(in_chs, in_chs, pool_type=cfg.downsample_pool_type, rngs=rngs) if pool else None
        self.conv_dw = create_conv2d(
            in_chs, out_chs, 7, stride=1 if pool else stride, groups=in_chs, bias=cfg.output_bias,
            axes=(None, None, None, CONV_OUT), rngs=rngs,
        )  # fmt: skip
        self.norm = _norm(cfg.norm, out_chs, cfg.eps, rngs)
        hidden = int(cfg.expand_ratio * out_chs)
        self.mlp = Mlp(out_chs, hidden, act=cfg.act_layer, bias=cfg.output_bias, rngs=rngs)
        self.ls = layer_scale(out_chs, cfg.init_values)
        self.drop_path = DropPath(drop_path, ndim=4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = maybe(self.shortcut, x)
        x = self.conv_dw(maybe(self.down, x))
        x = maybe(self.ls, self.mlp(self.norm(x)))
        return maybe(self.drop_path, x) + shortcut


def _conv_block(in_chs: int, out_chs: int, stride: int, cfg: MaxxVitConvCfg, drop_path: float, rngs: nnx.Rngs):
    cls = ConvNeXtBlock if cfg.block_type == "convnext" else MbConvBlock
    return cls(in_chs, out_chs, stride, cfg, drop_path, rngs=rngs)


class NormDown(nnx.Module):
    """timm's ``Sequential(norm, down)``: the pre-norm of a strided T block, then the pool."""

    def __init__(self, norm: nnx.Module, down: Downsample2d):
        self.norm, self.down = norm, down

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(self.norm(x))


class TransformerBlock2d(nnx.Module):
    """Full attention over the map (CoAtNet 'T'); a strided block pools inside ``norm1`` and in the shortcut."""

    def __init__(self, dim: int, dim_out: int, stride: int, cfg: MaxxVitTransformerCfg, feat_size: tuple[int, int],
                 drop_path: float, *, rngs: nnx.Rngs):  # fmt: skip
        if stride == 2:
            self.shortcut = Downsample2d(dim, dim_out, pool_type=cfg.pool_type, bias=cfg.shortcut_bias, rngs=rngs)
            down = Downsample2d(dim, dim, pool_type=cfg.pool_type, rngs=rngs)
            self.norm1 = NormDown(_norm(cfg.norm_layer, dim, cfg.norm_eps, rngs), down)
        else:
            if dim != dim_out:
                raise ValueError("a stride-1 transformer block keeps its width")
            self.shortcut, self.norm1 = None, _norm(cfg.norm_layer, dim, cfg.norm_eps, rngs)
        self.attn = Attention(
            dim, dim_out, cfg, feat_size, channels_last=False, expand_first=cfg.expand_first, head_first=True, rngs=rngs
        )
        self.ls1 = layer_scale(dim_out, cfg.init_values)
        self.drop_path1 = DropPath(drop_path, ndim=4, rngs=rngs)
        self.norm2 = _norm(cfg.norm_layer, dim_out, cfg.norm_eps, rngs)
        hidden = int(dim_out * cfg.expand_ratio)
        self.mlp = Mlp(dim_out, hidden, act=cfg.act_layer, drop=(cfg.proj_drop, 0.0), rngs=rngs)
        self.ls2 = layer_scale(dim_out, cfg.init_values)
        self.drop_path2 = DropPath(drop_path, ndim=4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = maybe(self.shortcut, x) + maybe(self.drop_path1, maybe(self.ls1, _attend_map(self.attn, self.norm1(x))))
        return x + maybe(self.drop_path2, maybe(self.ls2, self.mlp(self.norm2(x))))


class PartitionAttention(nnx.Module):
    """Window ('block') or grid attention + MLP, pre-norm with LayerScale (timm ``PartitionAttentionCl``, and
    ``PartitionAttention2d`` with ``use_nchw_attn``: the same maths, timm's norm_layer and 1x1-conv weights)."""

    def __init__(self, dim: int, partition: Literal["block", "grid"], size: tuple[int, int],
                 cfg: MaxxVitTransformerCfg, drop_path: float, *, rngs: nnx.Rngs):  # fmt: skip
        self.block, self.size = partition == "block", tuple(size)
        norm = cfg.norm_layer if cfg.use_nchw_attn else cfg.norm_layer_cl
        self.norm1 = _norm(norm, dim, cfg.norm_eps, rngs)
        self.attn = Attention(dim, dim, cfg, self.size, channels_last=True, rngs=rngs)
        self.ls1 = layer_scale(dim, cfg.init_values)
        self.drop_path1 = DropPath(drop_path, ndim=4, rngs=rngs)
        self.norm2 = _norm(norm, dim, cfg.norm_eps, rngs)
        drop = (cfg.proj_drop, 0.0) if cfg.use_nchw_attn else cfg.proj_drop
        self.mlp = Mlp(dim, int(dim * cfg.expand_ratio), act=cfg.act_layer, drop=drop, rngs=rngs)
        self.ls2 = layer_scale(dim, cfg.init_values)
        self.drop_path2 = DropPath(drop_path, ndim=4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _attend_partitioned(self.attn, self.norm1(x), self.size, self.block)
        x = x + maybe(self.drop_path1, maybe(self.ls1, y))
        return x + maybe(self.drop_path2, maybe(self.ls2, self.mlp(self.norm2(x))))


class ParallelPartitionAttention(nnx.Module):
    """Window and grid attention side by side (each C -> C/2, concatenated), then one MLP."""

    def __init__(self, dim: int, size: tuple[int, int], cfg: MaxxVitTransformerCfg, drop_path: float, *,
                 rngs: nnx.Rngs):  # fmt: skip
        self.size = tuple(size)
        self.norm1 = _norm(cfg.norm_layer_cl, dim, cfg.norm_eps, rngs)
        self.attn_block = Attention(dim, dim // 2, cfg, self.size, channels_last=True, rngs=rngs)
        self.attn_grid = Attention(dim, dim // 2, cfg, self.size, channels_last=True, rngs=rngs)
        self.ls1 = layer_scale(dim, cfg.init_values)
        self.drop_path1 = DropPath(drop_path, ndim=4, rngs=rngs)
        self.norm2 = _norm(cfg.norm_layer_cl, dim, cfg.norm_eps, rngs)
        self.mlp = Mlp(dim, int(dim * cfg.expand_ratio), act=cfg.act_layer, drop=cfg.proj_drop, rngs=rngs)
        self.ls2 = layer_scale(dim, cfg.init_values)
        self.drop_path2 = DropPath(drop_path, ndim=4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm1(x)
        y = jnp.concatenate(
            [
                _attend_partitioned(self.attn_block, y, self.size, True),
                _attend_partitioned(self.attn_grid, y, self.size, False),
            ],
            axis=-1,
        )  # B, H, W, C
        x = x + maybe(self.drop_path1, maybe(self.ls1, y))
        return x + maybe(self.drop_path2, maybe(self.ls2, self.mlp(self.norm2(x))))


class MaxxVitBlock(nnx.Module):
    """MaxViT 'M': conv block, window attention (absent with ``no_block_attn``), grid attention."""

    def __init__(self, dim: int, dim_out: int, stride: int, cfg: MaxxVitConfig, window: tuple[int, int],
                 grid: tuple[int, int], drop_path: float, *, rngs: nnx.Rngs):  # fmt: skip
        tc = cfg.transformer_cfg
        self.conv = _conv_block(dim, dim_out, stride, cfg.conv_cfg, drop_path, rngs)
        self.attn_block = (
            None if tc.no_block_attn else PartitionAttention(dim_out, "block", window, tc, drop_path, rngs=rngs)
        )
        self.attn_grid = PartitionAttention(dim_out, "grid", grid, tc, drop_path, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.attn_grid(maybe(self.attn_block, self.conv(x)))


class ParallelMaxxVitBlock(nnx.Module):
    """timm's experimental 'PM': two conv blocks, then :class:`ParallelPartitionAttention`."""

    def __init__(self, dim: int, dim_out: int, stride: int, cfg: MaxxVitConfig, window: tuple[int, int],
                 grid: tuple[int, int], drop_path: float, *, rngs: nnx.Rngs):  # fmt: skip
        if window != grid:
            raise ValueError(f"parallel blocks need window == grid, got {window} and {grid}")
        cc = cfg.conv_cfg
        self.conv = nnx.List(
            [
                _conv_block(dim, dim_out, stride, cc, drop_path, rngs),
                _conv_block(dim_out, dim_out, 1, cc, drop_path, rngs),
            ]
        )
        self.attn = ParallelPartitionAttention(dim_out, window, cfg.transformer_cfg, drop_path, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.conv:
            x = conv(x)
        return self.attn(x)


class MaxxVitStage(nnx.Module):
    def __init__(self, in_chs: int, out_chs: int, index: int, cfg: MaxxVitConfig, feat_size: tuple[int, int],
                 window: tuple[int, int], grid: tuple[int, int], dpr: list[float], *, rngs: nnx.Rngs):  # fmt: skip
        self.feat_size = feat_size
        blocks = []
        for i, t in enumerate(cfg.stage_block_types(index)):
            stride = 2 if i == 0 else 1
            if t == "C":
                blocks.append(_conv_block(in_chs, out_chs, stride, cfg.conv_cfg, dpr[i], rngs))
            elif t == "T":
                blocks.append(
                    TransformerBlock2d(in_chs, out_chs, stride, cfg.transformer_cfg, feat_size, dpr[i], rngs=rngs)
                )
            else:
                cls = MaxxVitBlock if t == "M" else ParallelMaxxVitBlock
                blocks.append(cls(in_chs, out_chs, stride, cfg, window, grid, dpr[i], rngs=rngs))
            in_chs = out_chs
        self.blocks = nnx.List(blocks)
        self.grad_checkpointing = False

    def __call__(self, x: jax.Array) -> jax.Array:
        for blk in self.blocks:
            x = run_block(blk, x, remat=self.grad_checkpointing)
        return x


class Stem(nnx.Module):
    """3x3 stride-2 conv -> norm-act -> 3x3 conv (no norm after)."""

    def __init__(self, cfg: MaxxVitConfig, *, rngs: nnx.Rngs):
        cc = cfg.conv_cfg
        w0, w1 = to_2tuple(cfg.stem_width)
        self.out_chs = w1
        self.act = get_act(cc.act_layer)
        kw = dict(bias=cfg.stem_bias, padding=cc.padding, rngs=rngs)
        self.conv1 = create_conv2d(cfg.in_chans, w0, 3, stride=2, **kw)
        self.norm1 = _norm(cc.norm, w0, cc.eps, rngs)
        self.conv2 = create_conv2d(w0, w1, 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv2(self.act(self.norm1(self.conv1(x))))
