"""MaxViT, MaxxViT(-V2) and CoAtNet in one configurable network, as timm builds them.

Papers: MaxViT (arXiv:2204.01697), CoAtNet (arXiv:2106.04803). Mirrors timm ``models/maxxvit.py``: one
``MaxxVit`` class, three config dataclasses with timm's names (``MaxxVitCfg`` is :class:`MaxxVitConfig` here, and
also carries the constructor arguments ``img_size``, ``num_classes``, ...), and the 58 registered variants as rows.

The network: a stem (two 3x3 convs, the first stride 2) and four stages, each halving the resolution in its
first block. A stage is a sequence of blocks:

* ``C``: a conv block, :class:`MbConvBlock` (BatchNorm, depthwise 3x3, SE) or :class:`ConvNeXtBlock`
  (depthwise 7x7, LayerNorm, MLP, LayerScale), per ``conv_cfg.block_type``;
* ``T``: :class:`TransformerBlock2d`, attention over the whole map with a relative-position bias sized for it;
* ``M``: :class:`MaxxVitBlock`, a conv block then window ("block") attention and grid attention, each with its
  own MLP (MaxxViT-V2, ``no_block_attn``, keeps the grid attention only);
* ``PM``: :class:`ParallelMaxxVitBlock`, two conv blocks then window and grid attention side by side (each
  projecting to C/2, concatenated) and one MLP.

Relative positions: ``rel_pos_type`` 'bias' (table), 'mlp' (log-coordinate MLP, timm's 'cr' mode) or 'bias_tf'
(the TF MaxViT table). Window and grid sizes are ``img_size // partition_ratio`` unless set, fixed at
construction (the T blocks' bias is sized for their stage's feature map); an input is accepted when timm would
accept it (every partition divides the maps, strided blocks agree on sizes), else a ValueError says why.

Everything is NHWC. timm's 1x1 convolutions (MBConv / ConvNeXt MLPs, ``Attention2d``'s qkv/proj, SE, the
shortcut expansion; the attention blocks and a pool-less head when timm lays those out as convs) are Linear
layers here; the converter table (``converters/tables/maxxvit.py``) maps them with ``CONV1X1_AS_LINEAR``. qkv
kernels keep timm's layout, ``head_first`` (per head ``[q|k|v]``) or not (``[q; k; v]``), and are split here.

timm's ``transformer_*`` / ``conv_*`` keyword overlays are nested here:
``create_model(name, transformer_cfg=dataclasses.replace(get_spec(name).config().transformer_cfg, ...))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    drop_path_rates,
    get_act,
    layer_scale,
    maybe,
    to_2tuple,
)
from vitjax.layers.attention import merge_heads, split_qkv
from vitjax.layers.channels import make_divisible
from vitjax.layers.conv import conv_out_size, create_conv2d, pad_same
from vitjax.layers.partition import grid_partition, grid_reverse, window_partition, window_reverse
from vitjax.layers.rel_pos_tf import RelPosBiasTf
from vitjax.layers.spatial_pool import avg_pool2d, avg_pool2d_same, global_pool, global_pool_mult, max_pool2d
from vitjax.layers.squeeze_excite import SEModule
from vitjax.models.common import ClassifierMixin, feature_take_indices, run_block
from vitjax.registry import variants
from vitjax.sharding import CLASSES, CONV_OUT, EMBED, MLP, QKV

PoolType = Literal["avg2", "max2", "avg", "max"]
Size = int | tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class MaxxVitTransformerCfg:
    """Attention blocks (timm ``MaxxVitTransformerCfg``)."""

    dim_head: int = 32
    head_first: bool = True  # qkv output channels grouped per head [q_h|k_h|v_h] (else [q; k; v])
    expand_ratio: float = 4.0
    expand_first: bool = True  # widen in qkv (else in proj) when a strided T block changes width
    shortcut_bias: bool = True
    attn_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    pool_type: PoolType = "avg2"
    rel_pos_type: Literal["bias", "mlp", "bias_tf", "none"] = "bias"
    rel_pos_dim: int = 512
    partition_ratio: int = 32
    window_size: Size | None = None
    grid_size: Size | None = None
    no_block_attn: bool = False
    use_nchw_attn: bool = False  # timm keeps attention blocks NCHW with 1x1 convs: only the weight layout differs
    init_values: float | None = None
    act_layer: str = "gelu"
    norm_layer: str = "layernorm2d"
    norm_layer_cl: str = "layernorm"
    norm_eps: float = 1e-6

    def partition_sizes(self, img_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, grid) sizes: the configured ones (grid defaults to window), else ``img_size // ratio``."""
        if self.window_size is not None:
            window = to_2tuple(self.window_size)
            return window, to_2tuple(self.grid_size) if self.grid_size is not None else window
        size = (img_size[0] // self.partition_ratio, img_size[1] // self.partition_ratio)
        return size, size


@dataclass(frozen=True, kw_only=True)
class MaxxVitConvCfg:
    """Conv blocks (timm ``MaxxVitConvCfg``); empty norm fields take the block type's default."""

    block_type: Literal["mbconv", "convnext"] = "mbconv"
    expand_ratio: float = 4.0
    expand_output: bool = True  # MBConv width from the output (else input) channels
    kernel_size: int = 3  # MBConv only; ConvNeXt blocks are 7x7
    group_size: int = 1  # 1: depthwise
    pre_norm_act: bool = False
    output_bias: bool = True
    stride_mode: Literal["pool", "1x1", "dw"] = "dw"
    pool_type: PoolType = "avg2"
    downsample_pool_type: PoolType = "avg2"
    padding: Literal["", "same"] = ""
    attn_early: bool = False  # SE before norm2 (else after)
    attn_layer: Literal["se", ""] = "se"
    attn_act_layer: str = "silu"
    attn_ratio: float = 0.25
    init_values: float | None = 1e-6  # ConvNeXt LayerScale
    act_layer: str = "gelu"
    norm_layer: str = ""  # '': batchnorm2d (mbconv), layernorm2d (convnext)
    norm_layer_cl: str = ""
    norm_eps: float | None = None  # None: 1e-5 (mbconv), 1e-6 (convnext)

    def __post_init__(self):
        if self.block_type == "convnext" and self.stride_mode == "1x1":
            raise ValueError("ConvNeXt blocks stride with 'pool' or 'dw'")

    @property
    def norm(self) -> str:
        return self.norm_layer or ("batchnorm2d" if self.block_type == "mbconv" else "layernorm2d")

    @property
    def eps(self) -> float:
        return self.norm_eps if self.norm_eps is not None else (1e-5 if self.block_type == "mbconv" else 1e-6)


@dataclass(frozen=True, kw_only=True)
class MaxxVitConfig:
    """The network (timm ``MaxxVitCfg``) and timm ``MaxxVit``'s constructor arguments."""

    embed_dim: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (2, 3, 5, 2)
    block_type: tuple[str | tuple[str, ...], ...] = ("C", "C", "T", "T")
    stem_width: Size = 64
    stem_bias: bool = False
    conv_cfg: MaxxVitConvCfg = field(default_factory=MaxxVitConvCfg)
    transformer_cfg: MaxxVitTransformerCfg = field(default_factory=MaxxVitTransformerCfg)
    head_hidden_size: int | None = None  # NormMlpClassifierHead (pool, norm, tanh pre-logits) instead of norm + fc
    img_size: Size = 224
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: Literal["", "avg", "max", "avgmax", "catavgmax"] = "avg"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        n = len(self.embed_dim)
        if len(self.depths) != n or len(self.block_type) != n:
            raise ValueError("embed_dim, depths and block_type need one entry per stage")
        for types in self.block_type:
            for t in (types,) if isinstance(types, str) else types:
                if t not in ("C", "T", "M", "PM"):
                    raise ValueError(f"block type {t!r} is not one of 'C', 'T', 'M', 'PM'")
        if self.head_hidden_size and self.global_pool == "catavgmax":
            raise ValueError("NormMlpClassifierHead does not support 'catavgmax' pooling")
        if not self.global_pool and self.num_classes > 0 and not self.head_hidden_size:
            raise ValueError("global_pool='' needs num_classes=0 (timm's ClassifierHead has no per-pixel classifier)")
        window, grid = self.transformer_cfg.partition_sizes(to_2tuple(self.img_size))
        if min(*window, *grid) < 1:
            raise ValueError(f"img_size {self.img_size} gives an empty partition (window {window}, grid {grid})")

    def stage_block_types(self, i: int) -> tuple[str, ...]:
        """timm ``extend_tuple``: one type per block, the last given type repeated."""
        types = self.block_type[i]
        types = (types,) if isinstance(types, str) else tuple(types)
        return types + (types[-1],) * (self.depths[i] - len(types))


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


class ClassifierHead(nnx.Module):
    """Global pool -> dropout -> fc (timm ``ClassifierHead``)."""

    def __init__(self, dim: int, num_classes: int, pool_type: str, drop_rate: float, *, rngs: nnx.Rngs):
        self.pool_type = pool_type
        self.num_features = dim * global_pool_mult(pool_type)
        self.drop = Dropout(drop_rate, rngs=rngs)
        self.fc = Linear(self.num_features, num_classes, axes=(EMBED, CLASSES), rngs=rngs) if num_classes > 0 else None

    def __call__(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        x = maybe(self.drop, global_pool(x, self.pool_type))
        return x if pre_logits else maybe(self.fc, x)


class PreLogits(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc = Linear(dim, hidden, axes=(EMBED, None), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.fc(x))


class NormMlpClassifierHead(nnx.Module):
    """Global pool -> norm -> tanh pre-logits -> dropout -> fc (timm ``NormMlpClassifierHead``); without pooling
    it runs per position (timm's 1x1-conv form)."""

    def __init__(self, dim: int, num_classes: int, hidden: int, pool_type: str, drop_rate: float,
                 norm: nnx.Module, *, rngs: nnx.Rngs):  # fmt: skip
        self.pool_type = pool_type
        self.norm = norm
        self.pre_logits = PreLogits(dim, hidden, rngs=rngs)
        self.num_features = hidden
        self.drop = Dropout(drop_rate, rngs=rngs)
        self.fc = Linear(hidden, num_classes, axes=(None, CLASSES), rngs=rngs) if num_classes > 0 else None

    def __call__(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        x = self.pre_logits(self.norm(global_pool(x, self.pool_type)))
        x = maybe(self.drop, x)
        return x if pre_logits else maybe(self.fc, x)


class MaxxVit(ClassifierMixin, nnx.Module):
    default_out_indices = (0, 1, 2, 3, 4)  # timm features_only: stem and every stage

    def __init__(self, cfg: MaxxVitConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        tc = cfg.transformer_cfg
        img = to_2tuple(cfg.img_size)
        self.window_size, self.grid_size = tc.partition_sizes(img)
        self.stem = Stem(cfg, rngs=rngs)
        self.feature_info = [dict(num_chs=self.stem.out_chs, reduction=2, module="stem")]
        feat = (img[0] // 2, img[1] // 2)
        rates = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        in_chs, stages = self.stem.out_chs, []
        for i, dim in enumerate(cfg.embed_dim):
            feat = ((feat[0] - 1) // 2 + 1, (feat[1] - 1) // 2 + 1)
            dpr = rates[sum(cfg.depths[:i]) : sum(cfg.depths[: i + 1])]
            stages.append(MaxxVitStage(in_chs, dim, i, cfg, feat, self.window_size, self.grid_size, dpr, rngs=rngs))
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f"stages.{i}"))
            in_chs = dim
        self.stages = nnx.List(stages)
        self.num_features = cfg.embed_dim[-1]
        final_norm = _norm(tc.norm_layer, self.num_features, tc.norm_eps, rngs)
        if cfg.head_hidden_size:
            self.norm = None
            self.head = NormMlpClassifierHead(
                self.num_features, cfg.num_classes, cfg.head_hidden_size, cfg.global_pool, cfg.drop_rate, final_norm,
                rngs=rngs,
            )  # fmt: skip
        else:
            self.norm = final_norm
            self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.global_pool, cfg.drop_rate, rngs=rngs)
        self.head_hidden_size = self.head.num_features

    # -- input sizes ------------------------------------------------------------------------------------------
    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The (H, W) of the stem and every stage output for an input of this size; a ValueError when timm's
        network could not run it (a strided block whose paths disagree on odd sizes, a partition that does not
        divide a map, a T block whose relative-position bias is sized for another map)."""
        cc, tc = self.cfg.conv_cfg, self.cfg.transformer_cfg
        size = tuple(conv_out_size(s, 3, 2, cc.padding) for s in (height, width))
        out = [size]
        for i, stage in enumerate(self.stages):
            types = self.cfg.stage_block_types(i)
            if types[0] == "T":
                short = main = tuple(_pool_out(s, tc.pool_type, "") for s in size)
            elif cc.block_type == "convnext":
                short = tuple(_pool_out(s, "avg2", "") for s in size)
                pool = cc.stride_mode == "pool"
                main = tuple(
                    _pool_out(s, cc.downsample_pool_type, "") if pool else conv_out_size(s, 7, 2) for s in size
                )
            else:
                short = tuple(_pool_out(s, cc.pool_type, cc.padding) for s in size)
                if cc.stride_mode == "pool":
                    main = tuple(_pool_out(s, cc.downsample_pool_type, cc.padding) for s in size)
                elif cc.stride_mode == "1x1":
                    main = tuple(conv_out_size(s, 1, 2) for s in size)
                else:
                    main = tuple(conv_out_size(s, cc.kernel_size, 2, cc.padding) for s in size)
            if any(a != b and 1 not in (a, b) for a, b in zip(short, main, strict=True)):
                raise ValueError(
                    f"input {height}x{width}: stage {i} reduces a {size[0]}x{size[1]} map to {main} in the block "
                    f"and to {short} in its shortcut (timm fails too); use sides that stay even through the net"
                )
            size = tuple(max(a, b) for a, b in zip(short, main, strict=True))  # a 1-sized side broadcasts, as in torch
            if "T" in types and tc.rel_pos_type != "none" and size != stage.feat_size:
                raise ValueError(
                    f"input {height}x{width}: stage {i} attends over a {size[0]}x{size[1]} map but its relative "
                    f"position bias is built for {stage.feat_size} (create the model with img_size="
                    f"({height}, {width}))"
                )
            if any(t in ("M", "PM") for t in types):
                parts = [self.grid_size] + ([] if tc.no_block_attn and "PM" not in types else [self.window_size])
                for p in parts:
                    if size[0] % p[0] or size[1] % p[1]:
                        raise ValueError(
                            f"input {height}x{width}: stage {i}'s {size[0]}x{size[1]} map is not divisible by the "
                            f"{p[0]}x{p[1]} attention partition (img_size {to_2tuple(self.cfg.img_size)} with "
                            f"partition_ratio {tc.partition_ratio}); create the model with a matching img_size"
                        )
            out.append(size)
        return out

    # -- forward ----------------------------------------------------------------------------------------------
    def forward_features(self, x: jax.Array) -> jax.Array:
        """NHWC images -> the last stage's map ``(B, H/32, W/32, C)``, after the final norm where there is one."""
        self.feature_sizes(x.shape[1], x.shape[2])
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return maybe(self.norm, x)

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(
        self, x: jax.Array, indices: int | tuple[int, ...] | None = None, norm: bool = False
    ) -> list[jax.Array]:
        """NHWC maps of the stem (index 0) and the chosen stages (1..4), before the final norm unless ``norm``
        (then applied to the last stage only), as timm's ``forward_intermediates(intermediates_only=True)``."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        self.feature_sizes(x.shape[1], x.shape[2])
        x = self.stem(x)
        out = [x] if 0 in take else []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in take:
                out.append(maybe(self.norm, x) if norm and i == len(self.feature_info) - 1 else x)
        return out

    def prune_intermediate_layers(
        self, indices: int | tuple[int, ...] | None = None, prune_norm: bool = True
    ) -> list[int]:
        """Keep the layers up to the deepest index; drop the head (and the final norm, unless ``prune_norm=False``
        and the last stage is kept)."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = nnx.List(list(self.stages)[:max_index])
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = None
        self.head = None
        return take

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable


# -- registered variants of timm's maxxvit.py ----------------------------------------------------------------------
def _rw_coat(*, stride_mode="pool", pool_type="avg2", conv_output_bias=False, conv_attn_early=False,
             conv_attn_act_layer="relu", conv_norm_layer="", transformer_shortcut_bias=True,
             transformer_norm_layer="layernorm2d", init_values=None, rel_pos_type="bias", rel_pos_dim=512):  # fmt: skip
    """timm ``_rw_coat_cfg``: the first timm CoAtNets (SiLU MBConv with pre-norm act, SE between conv2 and norm2
    where ``conv_attn_early``, widening in the attention output projection)."""
    return dict(
        conv_cfg=MaxxVitConvCfg(
            stride_mode=stride_mode, pool_type=pool_type, pre_norm_act=True, expand_output=False,
            output_bias=conv_output_bias, attn_early=conv_attn_early, attn_act_layer=conv_attn_act_layer,
            act_layer="silu", norm_layer=conv_norm_layer,
        ),
        transformer_cfg=MaxxVitTransformerCfg(
            expand_first=False, shortcut_bias=transformer_shortcut_bias, pool_type=pool_type, init_values=init_values,
            norm_layer=transformer_norm_layer, rel_pos_type=rel_pos_type, rel_pos_dim=rel_pos_dim,
        ),
    )  # fmt: skip


def _rw_max(*, stride_mode="dw", conv_output_bias=False, conv_attn_ratio=1 / 16, init_values=None,
            rel_pos_type="bias", rel_pos_dim=512):  # fmt: skip
    """timm ``_rw_max_cfg``: timm's own MaxViTs (SiLU MBConv, SE 1/16 of the input-based width)."""
    return dict(
        conv_cfg=MaxxVitConvCfg(
            stride_mode=stride_mode, expand_output=False, output_bias=conv_output_bias, attn_ratio=conv_attn_ratio,
            act_layer="silu",
        ),
        transformer_cfg=MaxxVitTransformerCfg(
            expand_first=False, init_values=init_values, rel_pos_type=rel_pos_type, rel_pos_dim=rel_pos_dim
        ),
    )  # fmt: skip


def _next(*, no_block_attn=False, init_values=(1e-6, 1e-6), rel_pos_type="mlp"):
    """timm ``_next_cfg``: ConvNeXt conv blocks (MaxxViT, MaxxViT-V2 with ``no_block_attn``, CoAtNeXt)."""
    return dict(
        conv_cfg=MaxxVitConvCfg(
            block_type="convnext", expand_output=False, init_values=init_values[0], norm_layer="layernorm2d",
            norm_layer_cl="layernorm",
        ),
        transformer_cfg=MaxxVitTransformerCfg(
            expand_first=False, no_block_attn=no_block_attn, init_values=init_values[1], rel_pos_type=rel_pos_type
        ),
    )  # fmt: skip


# timm ``_tf_cfg``: Google's MaxViT: GELU-tanh, BN eps 1e-3, TF 'SAME' padding, LN eps 1e-5, [q; k; v] qkv
_TF = dict(
    conv_cfg=MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same"),
    transformer_cfg=MaxxVitTransformerCfg(
        norm_eps=1e-5, act_layer="gelu_tanh", head_first=False, rel_pos_type="bias_tf"
    ),
    stem_bias=True,
)
_M4 = ("M",) * 4
_S = {  # width / depth presets
    "pico": dict(embed_dim=(64, 128, 256, 512), depths=(2, 3, 5, 2), stem_width=(32, 64)),
    "nano": dict(embed_dim=(64, 128, 256, 512), depths=(3, 4, 6, 3), stem_width=(32, 64)),
    "0": dict(embed_dim=(96, 192, 384, 768), depths=(2, 3, 7, 2), stem_width=(32, 64)),
    "1": dict(embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=(32, 64)),
    "2": dict(embed_dim=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=(64, 128)),
    "3": dict(embed_dim=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=(96, 192)),
    "mpico": dict(embed_dim=(32, 64, 128, 256), depths=(2, 2, 5, 2), stem_width=(24, 32), block_type=_M4),
    "mnano": dict(embed_dim=(64, 128, 256, 512), depths=(1, 2, 3, 1), stem_width=(32, 64), block_type=_M4),
    "mtiny": dict(embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=(32, 64), block_type=_M4),
    "msmall": dict(embed_dim=(96, 192, 384, 768), depths=(2, 2, 5, 2), stem_width=(32, 64), block_type=_M4),
}
_CFGS = {  # timm ``model_cfgs``
    "coatnet_pico_rw": dict(_S["pico"], **_rw_max(conv_output_bias=True, conv_attn_ratio=0.25)),
    "coatnet_nano_rw": dict(_S["nano"], **_rw_max(stride_mode="pool", conv_output_bias=True, conv_attn_ratio=0.25)),
    "coatnet_0_rw": dict(_S["0"], **_rw_coat(conv_attn_early=True, transformer_shortcut_bias=False)),
    "coatnet_1_rw": dict(_S["1"], **_rw_coat(stride_mode="dw", conv_attn_early=True, transformer_shortcut_bias=False)),
    "coatnet_2_rw": dict(_S["2"], **_rw_coat(stride_mode="dw", conv_attn_act_layer="silu")),
    "coatnet_3_rw": dict(_S["3"], **_rw_coat(stride_mode="dw", conv_attn_act_layer="silu", init_values=1e-6)),
    "coatnet_bn_0_rw": dict(
        _S["0"],
        **_rw_coat(
            stride_mode="dw",
            conv_attn_early=True,
            transformer_shortcut_bias=False,
            transformer_norm_layer="batchnorm2d",
        ),
    ),  # fmt: skip
    "coatnet_rmlp_nano_rw": dict(
        _S["nano"], **_rw_max(conv_output_bias=True, conv_attn_ratio=0.25, rel_pos_type="mlp", rel_pos_dim=384)
    ),
    "coatnet_rmlp_0_rw": dict(_S["0"], **_rw_coat(stride_mode="dw", rel_pos_type="mlp")),
    "coatnet_rmlp_1_rw": dict(
        _S["1"],
        **_rw_coat(
            pool_type="max",
            conv_attn_early=True,
            transformer_shortcut_bias=False,
            rel_pos_type="mlp",
            rel_pos_dim=384,
        ),
    ),  # fmt: skip
    "coatnet_rmlp_1_rw2": dict(_S["1"], **_rw_coat(stride_mode="dw", rel_pos_type="mlp")),
    "coatnet_rmlp_2_rw": dict(
        _S["2"], **_rw_coat(stride_mode="dw", conv_attn_act_layer="silu", init_values=1e-6, rel_pos_type="mlp")
    ),
    "coatnet_rmlp_3_rw": dict(
        _S["3"], **_rw_coat(stride_mode="dw", conv_attn_act_layer="silu", init_values=1e-6, rel_pos_type="mlp")
    ),
    "coatnet_nano_cc": dict(_S["nano"], block_type=("C", "C", ("C", "T"), ("C", "T")), **_rw_coat()),
    "coatnext_nano_rw": dict(_S["nano"], **_next(rel_pos_type="bias", init_values=(1e-5, None))),
    "coatnet_0": dict(embed_dim=(96, 192, 384, 768), depths=(2, 3, 5, 2), stem_width=64, head_hidden_size=768),
    "coatnet_1": dict(embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=64, head_hidden_size=768),
    "coatnet_2": dict(embed_dim=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=128, head_hidden_size=1024),
    "coatnet_3": dict(embed_dim=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=192, head_hidden_size=1536),
    "coatnet_4": dict(embed_dim=(192, 384, 768, 1536), depths=(2, 12, 28, 2), stem_width=192, head_hidden_size=1536),
    "coatnet_5": dict(embed_dim=(256, 512, 1280, 2048), depths=(2, 12, 28, 2), stem_width=192, head_hidden_size=2048),
    "maxvit_pico_rw": dict(_S["mpico"], **_rw_max()),
    "maxvit_nano_rw": dict(_S["mnano"], **_rw_max()),
    "maxvit_tiny_rw": dict(_S["mtiny"], **_rw_max()),
    "maxvit_tiny_pm": dict(_S["mtiny"], block_type=("PM",) * 4, **_rw_max()),
    "maxvit_rmlp_pico_rw": dict(_S["mpico"], **_rw_max(rel_pos_type="mlp")),
    "maxvit_rmlp_nano_rw": dict(_S["mnano"], **_rw_max(rel_pos_type="mlp")),
    "maxvit_rmlp_tiny_rw": dict(_S["mtiny"], **_rw_max(rel_pos_type="mlp")),
    "maxvit_rmlp_small_rw": dict(_S["msmall"], **_rw_max(rel_pos_type="mlp", init_values=1e-6)),
    "maxvit_rmlp_base_rw": dict(
        _S["msmall"], depths=(2, 6, 14, 2), head_hidden_size=768, **_rw_max(rel_pos_type="mlp")
    ),
    "maxxvit_rmlp_nano_rw": dict(_S["mnano"], **_next()),
    "maxxvit_rmlp_tiny_rw": dict(_S["mtiny"], **_next()),
    "maxxvit_rmlp_small_rw": dict(_S["msmall"], stem_width=(48, 96), **_next()),
    "maxxvitv2_nano_rw": dict(
        _S["mnano"],
        embed_dim=(96, 192, 384, 768),
        stem_width=(48, 96),
        **_next(no_block_attn=True, rel_pos_type="bias"),
    ),
    "maxxvitv2_rmlp_base_rw": dict(
        embed_dim=(128, 256, 512, 1024),
        depths=(2, 6, 12, 2),
        block_type=_M4,
        stem_width=(64, 128),
        **_next(no_block_attn=True),
    ),  # fmt: skip
    "maxxvitv2_rmlp_large_rw": dict(
        embed_dim=(160, 320, 640, 1280),
        depths=(2, 6, 16, 2),
        block_type=_M4,
        stem_width=(80, 160),
        head_hidden_size=1280,
        **_next(no_block_attn=True),
    ),  # fmt: skip
    "maxvit_tiny_tf": dict(_S["mtiny"], stem_width=64, head_hidden_size=512, **_TF),
    "maxvit_small_tf": dict(_S["msmall"], stem_width=64, head_hidden_size=768, **_TF),
    "maxvit_base_tf": dict(_S["msmall"], depths=(2, 6, 14, 2), stem_width=64, head_hidden_size=768, **_TF),
    "maxvit_large_tf": dict(_S["2"], block_type=_M4, stem_width=128, head_hidden_size=1024, **_TF),
    "maxvit_xlarge_tf": dict(_S["3"], block_type=_M4, stem_width=192, head_hidden_size=1536, **_TF),
    "test_maxvit": dict(
        embed_dim=(32, 64, 96, 128), depths=(1, 1, 1, 1), block_type=_M4, stem_width=(16, 32), **_rw_max()
    ),
    "test_coatnet": dict(
        embed_dim=(32, 64, 96, 128),
        depths=(1, 1, 2, 1),
        stem_width=(16, 32),
        **_rw_max(stride_mode="pool", conv_output_bias=True, conv_attn_ratio=0.25),
    ),  # fmt: skip
}
# timm's registered names: config, input size (timm's default pretrained cfg fixes it) and, where the default
# weights are not ImageNet-1k, their class count
_NAMES = {
    **{f"{c}_224": (c, 224) for c in _CFGS if c.startswith("coat") and c != "coatnet_3_rw"},
    "coatnet_3_rw_224": ("coatnet_3_rw", 224, 11821),
    "coatnet_rmlp_2_rw_384": ("coatnet_rmlp_2_rw", 384),
    "maxvit_pico_rw_256": ("maxvit_pico_rw", 256),
    "maxvit_nano_rw_256": ("maxvit_nano_rw", 256),
    "maxvit_tiny_rw_224": ("maxvit_tiny_rw", 224),
    "maxvit_tiny_rw_256": ("maxvit_tiny_rw", 256),
    "maxvit_tiny_pm_256": ("maxvit_tiny_pm", 256),
    "maxvit_rmlp_pico_rw_256": ("maxvit_rmlp_pico_rw", 256),
    "maxvit_rmlp_nano_rw_256": ("maxvit_rmlp_nano_rw", 256),
    "maxvit_rmlp_tiny_rw_256": ("maxvit_rmlp_tiny_rw", 256),
    "maxvit_rmlp_small_rw_224": ("maxvit_rmlp_small_rw", 224),
    "maxvit_rmlp_small_rw_256": ("maxvit_rmlp_small_rw", 256),
    "maxvit_rmlp_base_rw_224": ("maxvit_rmlp_base_rw", 224),
    "maxvit_rmlp_base_rw_384": ("maxvit_rmlp_base_rw", 384),
    **{f"maxxvit_rmlp_{s}_rw_256": (f"maxxvit_rmlp_{s}_rw", 256) for s in ("nano", "tiny", "small")},
    "maxxvitv2_nano_rw_256": ("maxxvitv2_nano_rw", 256),
    "maxxvitv2_rmlp_base_rw_224": ("maxxvitv2_rmlp_base_rw", 224),
    "maxxvitv2_rmlp_base_rw_384": ("maxxvitv2_rmlp_base_rw", 384),
    "maxxvitv2_rmlp_large_rw_224": ("maxxvitv2_rmlp_large_rw", 224),
    **{
        f"maxvit_{s}_tf_{r}": (f"maxvit_{s}_tf", r, 21843 if (s, r) == ("xlarge", 224) else 1000)
        for s in ("tiny", "small", "base", "large", "xlarge")
        for r in (224, 384, 512)
    },
    "test_maxvit": ("test_maxvit", 160),
    "test_coatnet": ("test_coatnet", 160),
}
_TABLE = {
    name: dict(_CFGS[row[0]], img_size=row[1], num_classes=row[2] if len(row) > 2 else 1000)
    for name, row in sorted(_NAMES.items())
}

MODELS = variants("maxxvit", MaxxVitConfig, MaxxVit, _TABLE)
