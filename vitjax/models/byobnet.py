"""Bring-Your-Own-Blocks networks: one configurable conv/attention backbone (timm ``models/byobnet.py``
``ByobNet``), the builder behind timm's ``byoanet.py`` models (BoTNet arXiv:2101.11605, LambdaNetworks
arXiv:2102.08602, HaloNet arXiv:2103.12731) and its ResNet/RegNet-style ``byobnet.py`` relatives.

A model is data: a :class:`ByoModelCfg` with a stem, stages of :class:`ByoBlockCfg` (block type, depth,
width, stride, group size, bottleneck ratio; :func:`interleave_blocks` alternates two types), activation,
BatchNorm, and the channel attention (SE / ECA) and self-attention (halo / bottleneck / lambda) layers of the
blocks. timm's ``attn_layer`` + ``attn_kwargs`` (and ``self_attn_*``, ``block_kwargs``) pairs are one typed,
frozen value here (``SeCfg(rd_ratio=0.25)``, ``HaloCfg(block_size=8, halo_size=3)``); a block's value
replaces the model's, as timm's block kwargs do.

Attribute paths follow timm (``stem.conv1.conv``, ``stages.{s}.{b}.conv2_kxk.bn``,
``stages.{s}.{b}.self_attn.pos_embed.height_rel``, ``post_attn`` holding its BatchNorm weights, ``head.fc``),
so the converter table is a handful of 1x1-conv-as-Linear rules. Inputs are NHWC. Block types: basic,
bottle, dark, edge, self_attn (timm's rep/one re-parameterisable blocks and DropBlock are not ported); heads:
timm's ``classifier`` head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers import Dropout, DropPath, get_act, maybe, to_2tuple
from vitjax.layers.act import Act
from vitjax.layers.bottleneck_attn import BottleneckAttn
from vitjax.layers.channels import make_divisible, num_groups
from vitjax.layers.conv_bn_act import BatchNormAct, ConvNormAct
from vitjax.layers.eca import EcaModule
from vitjax.layers.halo import HaloAttn
from vitjax.layers.lambda_layer import LambdaLayer
from vitjax.layers.linear import Conv
from vitjax.layers.spatial_pool import (
    GLOBAL_POOLS,
    avg_pool2d,
    avg_pool2d_same,
    global_pool,
    global_pool_mult,
    max_pool2d,
)
from vitjax.layers.squeeze_excite import SEModule
from vitjax.models.common import ClassifierMixin, feature_take_indices, run_block
from vitjax.sharding import CLASSES, EMBED, with_axes


# -- attention-layer and block options (timm's *_layer + *_kwargs) ------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SeCfg:
    """timm ``attn_layer='se'`` (``SEModule``) with its kwargs."""

    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    add_maxpool: bool = False
    bias: bool = True
    act_layer: str = "relu"
    gate_layer: str = "sigmoid"


@dataclass(frozen=True, kw_only=True)
class EcaCfg:
    """timm ``attn_layer='eca'`` (``EcaModule``)."""

    kernel_size: int = 3
    gamma: float = 2
    beta: float = 1
    gate_layer: str = "sigmoid"


@dataclass(frozen=True, kw_only=True)
class HaloCfg:
    """timm ``self_attn_layer='halo'`` (``HaloAttn``)."""

    num_heads: int = 8
    dim_head: int | None = None
    block_size: int = 8
    halo_size: int = 3
    qk_ratio: float = 1.0
    qkv_bias: bool = False
    avg_down: bool = False
    scale_pos_embed: bool = False


@dataclass(frozen=True, kw_only=True)
class BottleneckAttnCfg:
    """timm ``self_attn_layer='bottleneck'`` (``BottleneckAttn``, needs the model's ``img_size``)."""

    num_heads: int = 4
    dim_head: int | None = None
    qk_ratio: float = 1.0
    qkv_bias: bool = False
    scale_pos_embed: bool = False


@dataclass(frozen=True, kw_only=True)
class LambdaCfg:
    """timm ``self_attn_layer='lambda'`` (``LambdaLayer``; ``r=None`` uses relative positions and ``img_size``)."""

    num_heads: int = 4
    dim_head: int | None = 16
    r: int | None = 9
    qk_ratio: float = 1.0
    qkv_bias: bool = False


AttnCfg = SeCfg | EcaCfg
SelfAttnCfg = HaloCfg | BottleneckAttnCfg | LambdaCfg


@dataclass(frozen=True, kw_only=True)
class BlockKwargs:
    """timm ``block_kwargs``. ``attn_last=None`` keeps the block type's default (True for basic/dark)."""

    kernel_size: int = 3
    bottle_in: bool = False
    linear_out: bool = False
    extra_conv: bool = False
    attn_last: bool | None = None
    post_attn_na: bool = True


# options each block type accepts beyond kernel_size / linear_out (timm raises on others)
_BLOCK_OPTIONS = {
    "basic": {"attn_last"},
    "dark": {"attn_last"},
    "edge": {"attn_last"},
    "bottle": {"attn_last", "extra_conv", "bottle_in"},
    "self_attn": {"extra_conv", "bottle_in", "post_attn_na"},
}
BlockType = Literal["basic", "bottle", "dark", "edge", "self_attn"]


@dataclass(frozen=True, kw_only=True)
class ByoBlockCfg:
    """One stage (``d`` blocks) of a type: ``c`` output channels, stride ``s`` on its first block, group size
    ``gs`` (0/None dense, 1 depthwise), bottleneck ratio ``br``. Layer options left None use the model's."""

    type: BlockType
    d: int
    c: int
    s: int = 2
    gs: int | None = None
    br: float = 1.0
    attn_layer: AttnCfg | None = None
    self_attn_layer: SelfAttnCfg | None = None
    block_kwargs: BlockKwargs | None = None

    def __post_init__(self):
        if self.type not in _BLOCK_OPTIONS:
            raise ValueError(f"unknown block type {self.type!r}; known: {sorted(_BLOCK_OPTIONS)}")


def interleave_blocks(
    types: tuple[BlockType, BlockType], d: int, every: int | list[int] = 1, first: bool = False, **kwargs
) -> tuple[ByoBlockCfg, ...]:
    """``d`` single blocks of ``types[0]`` with ``types[1]`` at the positions ``every`` (a list) or every
    ``every + 1``-th from ``every`` (from 0 when ``first``); when that leaves none, the last block."""
    if isinstance(every, int):
        every = list(range(0 if first else every, d, every + 1)) or [d - 1]
    return tuple(ByoBlockCfg(type=types[1] if i in every else types[0], d=1, **kwargs) for i in range(d))


StemType = Literal["", "quad", "quad2", "tiered", "deep", "7x7", "3x3"]
StemPool = Literal["", "max", "maxpool", "avg", "avgpool", "max2", "avg2"]


@dataclass(frozen=True, kw_only=True)
class ByoModelCfg:
    """timm's ``ByoModelCfg`` fields, then ``ByobNet``'s constructor arguments (timm overlays the latter's
    extra kwargs on the cfg too), then BatchNorm settings."""

    blocks: tuple[ByoBlockCfg | tuple[ByoBlockCfg, ...], ...]
    downsample: Literal["avg", "conv1x1", ""] = "conv1x1"
    stem_type: StemType = "3x3"
    stem_pool: StemPool = "maxpool"
    stem_chs: int | tuple[int, ...] = 32
    width_factor: float = 1.0
    num_features: int = 0  # width of a final 1x1 ConvNormAct; 0: none
    fixed_input_size: bool = False
    act_layer: str = "relu"
    norm_layer: Literal["batchnorm"] = "batchnorm"
    head_type: Literal["classifier"] = "classifier"
    attn_layer: AttnCfg | None = None
    self_attn_layer: SelfAttnCfg | None = None
    block_kwargs: BlockKwargs = field(default_factory=BlockKwargs)
    # ByobNet(...)
    num_classes: int = 1000
    in_chans: int = 3
    global_pool: str = "avg"
    output_stride: int = 32
    img_size: int | tuple[int, int] | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool = True
    # BatchNorm2d: torch's eps and momentum; data_axis averages batch statistics over a mapped axis
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    bn_data_axis: str | None = None

    def __post_init__(self):
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
        if self.fixed_input_size and self.img_size is None:
            raise ValueError("this model has a fixed input size: give img_size")
        if self.stem_type not in StemType.__args__:
            raise ValueError(f"stem_type must be one of {StemType.__args__} (rep/one stems are not ported)")
        if self.stem_pool not in StemPool.__args__:
            raise ValueError(f"stem_pool must be one of {StemPool.__args__}, got {self.stem_pool!r}")
        get_act(self.act_layer)
        for bc in self.stage_cfgs:
            bk = bc.block_kwargs or self.block_kwargs
            bad = {
                f.name
                for f in fields(bk)
                if getattr(bk, f.name) != f.default and f.name not in ("kernel_size", "linear_out")
            } - _BLOCK_OPTIONS[bc.type]
            if bad:
                raise ValueError(f"{bc.type!r} blocks do not take {sorted(bad)}")

    @property
    def stage_cfgs(self) -> list[ByoBlockCfg]:
        return [b for stage in self.stages_expanded for b in stage]

    @property
    def stages_expanded(self) -> list[list[ByoBlockCfg]]:
        """Per stage, one config per block (timm ``expand_blocks_cfg``)."""
        out = []
        for stage in self.blocks:
            stage = stage if isinstance(stage, tuple) else (stage,)
            out.append([bc for bc in stage for _ in range(bc.d)])
        return out


# -- blocks --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layers:
    """What the blocks build their layers from (timm ``LayerFn``); ``bn``: BatchNorm eps, momentum, data_axis."""

    act: Act
    attn: AttnCfg | None
    self_attn: SelfAttnCfg | None
    bn: dict

    def cna(self, cin: int, cout: int, k: int = 1, *, apply_act: bool = True, **kw) -> ConvNormAct:
        """conv -> BN -> act (``apply_act=False``: no act)."""
        return ConvNormAct(cin, cout, k, act=self.act if apply_act else None, **self.bn, **kw)

    def norm_act(self, c: int) -> BatchNormAct:
        return BatchNormAct(c, act=self.act, **self.bn)

    def make_attn(self, c: int, rngs: nnx.Rngs) -> nnx.Module | None:
        if self.attn is None:
            return None
        layer = SEModule if isinstance(self.attn, SeCfg) else EcaModule
        return layer(c, **_kwargs(self.attn), rngs=rngs)

    def make_self_attn(self, c: int, stride: int, feat_size, rngs: nnx.Rngs) -> nnx.Module:
        cfg = self.self_attn
        if cfg is None:
            raise ValueError("a self_attn block needs a self_attn_layer (model or block config)")
        if isinstance(cfg, HaloCfg):
            return HaloAttn(c, stride=stride, **_kwargs(cfg), rngs=rngs)
        if isinstance(cfg, BottleneckAttnCfg):
            return BottleneckAttn(c, feat_size=feat_size, stride=stride, **_kwargs(cfg), rngs=rngs)
        bn = dict(bn_eps=self.bn["eps"], bn_momentum=self.bn["momentum"], data_axis=self.bn["data_axis"])
        return LambdaLayer(c, feat_size=feat_size, stride=stride, **_kwargs(cfg), **bn, rngs=rngs)


def _kwargs(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


class DownsampleAvg(nnx.Module):
    """``avg`` shortcut: 2x2 average pool (ceil mode, padding not counted; a 'same' pool when dilated) then a
    1x1 ConvNormAct without activation (timm ``DownsampleAvg``)."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, layers: _Layers, *, rngs: nnx.Rngs):
        self.pool = "none" if stride == 1 and dilation == 1 else ("avg" if dilation == 1 else "same")
        self.pool_stride = stride if dilation == 1 else 1
        self.conv = layers.cna(cin, cout, 1, apply_act=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool == "avg":
            x = avg_pool2d(x, 2, self.pool_stride, ceil_mode=True, count_include_pad=False)
        elif self.pool == "same":
            x = avg_pool2d_same(x, 2, 1)
        return self.conv(x)


class ResidualBlock(nnx.Module):
    """``act(drop_path(branch(x)) + shortcut(x))``. timm's three shortcut cases: identity, a projection when
    the width, stride or dilation changes, or none at all (``downsample=''`` on such a block).

    Every block takes ``(cin, cout, stride, dilation, gs, br, downsample, bk, drop_path, layers, zero_init)``
    (``bk``: its :class:`BlockKwargs`); its attribute names are timm's."""

    def _init_shortcut(self, downsample, cin, cout, stride, dilation, layers: _Layers, rngs) -> None:
        shortcut, self.has_residual = None, True
        if cin != cout or stride != 1 or dilation[0] != dilation[1]:
            if not downsample:
                self.has_residual = False
            elif downsample == "avg":
                shortcut = DownsampleAvg(cin, cout, stride, dilation[0], layers, rngs=rngs)
            else:
                shortcut = layers.cna(cin, cout, 1, stride=stride, dilation=dilation[0], apply_act=False, rngs=rngs)
        self.shortcut = shortcut

    def _init_tail(self, drop_path: float, linear_out: bool, layers: _Layers, zero_init_last: bool, last, rngs):
        self.drop_path = DropPath(drop_path, ndim=4, rngs=rngs)
        self.act = None if linear_out else layers.act
        if zero_init_last and self.has_residual:  # timm zero-inits the last BN gamma of residual blocks
            last.bn.scale[...] = jnp.zeros_like(last.bn.scale[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = maybe(self.drop_path, self.branch(x))
        if self.has_residual:
            y = y + (x if self.shortcut is None else self.shortcut(x))
        return y if self.act is None else self.act(y)


class BasicBlock(ResidualBlock):
    """kxk -> kxk (timm ``BasicBlock``)."""

    def __init__(self, cin, cout, *, stride, dilation, gs, br, downsample, bk, drop_path, layers, zero_init, rngs):
        mid, k = make_divisible(cout * br), bk.kernel_size
        attn_last = True if bk.attn_last is None else bk.attn_last
        self._init_shortcut(downsample, cin, cout, stride, dilation, layers, rngs)
        self.conv1_kxk = layers.cna(cin, mid, k, stride=stride, dilation=dilation[0], rngs=rngs)
        self.attn = None if attn_last else layers.make_attn(mid, rngs)
        g = num_groups(gs, mid)
        self.conv2_kxk = layers.cna(mid, cout, k, dilation=dilation[1], groups=g, apply_act=False, rngs=rngs)
        self.attn_last = layers.make_attn(cout, rngs) if attn_last else None
        self._init_tail(drop_path, bk.linear_out, layers, zero_init, self.conv2_kxk, rngs)

    def branch(self, x):
        x = maybe(self.attn, self.conv1_kxk(x))
        return maybe(self.attn_last, self.conv2_kxk(x))


class BottleneckBlock(ResidualBlock):
    """1x1 -> kxk (stride, groups) -> [kxk] -> 1x1 (timm ``BottleneckBlock``)."""

    def __init__(self, cin, cout, *, stride, dilation, gs, br, downsample, bk, drop_path, layers, zero_init, rngs):
        mid = make_divisible((cin if bk.bottle_in else cout) * br)
        g, k = num_groups(gs, mid), bk.kernel_size
        self._init_shortcut(downsample, cin, cout, stride, dilation, layers, rngs)
        self.conv1_1x1 = layers.cna(cin, mid, 1, rngs=rngs)
        self.conv2_kxk = layers.cna(mid, mid, k, stride=stride, dilation=dilation[0], groups=g, rngs=rngs)
        extra = layers.cna(mid, mid, k, dilation=dilation[1], groups=g, rngs=rngs) if bk.extra_conv else None
        self.conv2b_kxk = extra
        self.attn = None if bk.attn_last else layers.make_attn(mid, rngs)
        self.conv3_1x1 = layers.cna(mid, cout, 1, apply_act=False, rngs=rngs)
        self.attn_last = layers.make_attn(cout, rngs) if bk.attn_last else None
        self._init_tail(drop_path, bk.linear_out, layers, zero_init, self.conv3_1x1, rngs)

    def branch(self, x):
        x = maybe(self.conv2b_kxk, self.conv2_kxk(self.conv1_1x1(x)))
        return maybe(self.attn_last, self.conv3_1x1(maybe(self.attn, x)))


class DarkBlock(ResidualBlock):
    """1x1 -> kxk with stride (timm ``DarkBlock``)."""

    def __init__(self, cin, cout, *, stride, dilation, gs, br, downsample, bk, drop_path, layers, zero_init, rngs):
        mid = make_divisible(cout * br)
        attn_last = True if bk.attn_last is None else bk.attn_last
        self._init_shortcut(downsample, cin, cout, stride, dilation, layers, rngs)
        self.conv1_1x1 = layers.cna(cin, mid, 1, rngs=rngs)
        self.attn = None if attn_last else layers.make_attn(mid, rngs)
        kw = dict(stride=stride, dilation=dilation[0], groups=num_groups(gs, mid), apply_act=False)
        self.conv2_kxk = layers.cna(mid, cout, bk.kernel_size, **kw, rngs=rngs)
        self.attn_last = layers.make_attn(cout, rngs) if attn_last else None
        self._init_tail(drop_path, bk.linear_out, layers, zero_init, self.conv2_kxk, rngs)

    def branch(self, x):
        x = maybe(self.attn, self.conv1_1x1(x))
        return maybe(self.attn_last, self.conv2_kxk(x))


class EdgeBlock(ResidualBlock):
    """kxk with stride -> 1x1 (timm ``EdgeBlock``)."""

    def __init__(self, cin, cout, *, stride, dilation, gs, br, downsample, bk, drop_path, layers, zero_init, rngs):
        mid = make_divisible(cout * br)
        self._init_shortcut(downsample, cin, cout, stride, dilation, layers, rngs)
        kw = dict(stride=stride, dilation=dilation[0], groups=num_groups(gs, mid))
        self.conv1_kxk = layers.cna(cin, mid, bk.kernel_size, **kw, rngs=rngs)
        self.attn = None if bk.attn_last else layers.make_attn(mid, rngs)
        self.conv2_1x1 = layers.cna(mid, cout, 1, apply_act=False, rngs=rngs)
        self.attn_last = layers.make_attn(cout, rngs) if bk.attn_last else None
        self._init_tail(drop_path, bk.linear_out, layers, zero_init, self.conv2_1x1, rngs)

    def branch(self, x):
        x = maybe(self.attn, self.conv1_kxk(x))
        return maybe(self.attn_last, self.conv2_1x1(x))


class SelfAttnBlock(ResidualBlock):
    """1x1 -> [kxk] -> self-attention -> BN + act -> 1x1 (timm ``SelfAttnBlock``)."""

    def __init__(
        self, cin, cout, *, stride, dilation, gs, br, downsample, bk, drop_path, layers, zero_init, feat_size, rngs
    ):
        mid = make_divisible((cin if bk.bottle_in else cout) * br)
        self._init_shortcut(downsample, cin, cout, stride, dilation, layers, rngs)
        self.conv1_1x1 = layers.cna(cin, mid, 1, rngs=rngs)
        conv2 = None
        if bk.extra_conv:  # the conv strides, the attention runs at stride 1 after it
            kw = dict(stride=stride, dilation=dilation[0], groups=num_groups(gs, mid))
            conv2, stride = layers.cna(mid, mid, bk.kernel_size, **kw, rngs=rngs), 1
        self.conv2_kxk = conv2
        self.self_attn = layers.make_self_attn(mid, stride, feat_size, rngs)
        self.post_attn = layers.norm_act(mid) if bk.post_attn_na else None
        self.conv3_1x1 = layers.cna(mid, cout, 1, apply_act=False, rngs=rngs)
        self._init_tail(drop_path, bk.linear_out, layers, zero_init, self.conv3_1x1, rngs)

    def branch(self, x):
        x = maybe(self.conv2_kxk, self.conv1_1x1(x))
        return self.conv3_1x1(maybe(self.post_attn, self.self_attn(x)))


_BLOCKS = {
    "basic": BasicBlock,
    "bottle": BottleneckBlock,
    "dark": DarkBlock,
    "edge": EdgeBlock,
    "self_attn": SelfAttnBlock,
}


# -- stem ----------------------------------------------------------------------------------------------------------
class Stem(nnx.Module):
    """A stack of 3x3 (or one kxk) convs and an optional pool, total stride 4 (timm ``Stem``). Its feature tap
    is the last conv before the final stride (``last_feat_idx``)."""

    def __init__(self, cin, chs: tuple[int, ...], kernel_size, pool, num_act, layers: _Layers, *, rngs):
        n = len(chs)
        strides = [2] + [1] * (n - 1)
        if not pool:
            strides[-1] = 2  # no pool: the last conv makes the second stride
        acts = [False] * (n - num_act) + [True] * num_act
        self.feature_info, self.names = [], []
        prev_chs, prev_feat, red, tap = cin, "", 1, -1
        for i, (c, s, na) in enumerate(zip(chs, strides, acts, strict=True)):
            name = f"conv{i + 1}"
            if i > 0 and s > 1:
                tap = i - 1
                self.feature_info.append(dict(num_chs=prev_chs, reduction=red, module=prev_feat))
            conv = (
                layers.cna(prev_chs, c, kernel_size, stride=s, rngs=rngs)
                if na
                else Conv(prev_chs, c, kernel_size, stride=s, bias=False, rngs=rngs)
            )
            setattr(self, name, conv)
            self.names.append(name)
            prev_chs, red, prev_feat = c, red * s, name
        self.pool = pool.lower() if pool else ""
        if self.pool:
            tap = n - 1
            self.feature_info.append(dict(num_chs=prev_chs, reduction=red, module=prev_feat))
            self.names.append("pool")
            red, prev_feat = red * 2, "pool"
        self.last_feat_idx = tap if tap >= 0 else None
        self.feature_info.append(dict(num_chs=prev_chs, reduction=red, module=prev_feat))
        # (kind, stride, ceil?) per layer, for the input-size check
        self.geometry = [("conv", s, True) for s in strides]
        if self.pool:
            self.geometry.append(("pool", 2, self.pool not in ("max2", "avg2")))

    def _apply(self, name: str, x: jax.Array) -> jax.Array:
        if name != "pool":
            return getattr(self, name)(x)
        if self.pool in ("max2", "avg2"):
            return max_pool2d(x, 2, 2) if self.pool == "max2" else avg_pool2d(x, 2, 2)
        if "max" in self.pool:
            return max_pool2d(x, 3, 2, 1)
        return avg_pool2d(x, 3, 2, 1, count_include_pad=False)

    def forward_intermediates(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        tap = None
        for i, name in enumerate(self.names):
            x = self._apply(name, x)
            if i == self.last_feat_idx:
                tap = x
        return x, tap

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward_intermediates(x)[0]

    def prune_to_tap(self) -> None:
        """Drop the layers after the feature tap (timm ``Stem.prune_to_tap``)."""
        if self.last_feat_idx is not None:
            for name in self.names[self.last_feat_idx + 1 :]:
                if name != "pool":
                    setattr(self, name, None)
            self.names = self.names[: self.last_feat_idx + 1]


def create_stem(cfg: ByoModelCfg, chs, layers: _Layers, rngs) -> tuple[nnx.Module, list[dict]]:
    """timm ``create_byob_stem``: the stem and its feature_info (the last entry is the stem output)."""
    st, pool, cin = cfg.stem_type, cfg.stem_pool, cfg.in_chans

    def stem(chs_, k=3, num_act=None):
        return Stem(cin, tuple(chs_), k, pool, len(chs_) if num_act is None else num_act, layers, rngs=rngs)

    def decayed(n, decay=0.5):
        return [round(chs * decay**i) for i in range(n)][::-1]

    if "quad" in st:
        s = stem(chs if isinstance(chs, tuple) else decayed(4), num_act=2 if st == "quad2" else None)
    elif st == "tiered":
        s = stem((3 * chs // 8, chs // 2, chs))
    elif st == "deep":
        s = stem(chs if isinstance(chs, tuple) else decayed(3, 1.0))
    elif isinstance(chs, tuple):
        s = stem(chs, 7 if st == "7x7" else 3)
    elif pool:
        s = stem((chs,), 7 if st == "7x7" else 3)
    else:
        s = layers.cna(cin, chs, 7 if st == "7x7" else 3, stride=2, rngs=rngs)
        return s, [dict(num_chs=chs, reduction=2, module="stem")]
    return s, [dict(f, module=f"stem.{f['module']}") for f in s.feature_info]


# -- the network -----------------------------------------------------------------------------------------------------
class ClassifierHead(nnx.Module):
    """Global pool -> dropout -> Linear (timm ``ClassifierHead``; ``fc`` is None when ``num_classes=0``)."""

    def __init__(self, dim: int, num_classes: int, pool_type: str, drop_rate: float, *, rngs: nnx.Rngs):
        self.global_pool = pool_type
        self.num_features = dim * global_pool_mult(pool_type)
        self.drop = Dropout(drop_rate, rngs=rngs)
        self.fc = (
            nnx.Linear(
                self.num_features,
                num_classes,
                kernel_init=with_axes(nnx.initializers.normal(0.01), (EMBED, CLASSES)),
                bias_init=with_axes(nnx.initializers.zeros_init(), (CLASSES,)),
                rngs=rngs,
            )
            if num_classes > 0
            else None
        )

    def __call__(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        x = maybe(self.drop, global_pool(x, self.global_pool))
        return x if pre_logits else maybe(self.fc, x)


def _reduce(size: tuple[int, int] | None, stride: int) -> tuple[int, int] | None:
    return None if size is None else (size[0] // stride, size[1] // stride)


class ByobNet(ClassifierMixin, nnx.Module):
    default_out_indices = (0, 1, 2, 3, 4)  # timm's FeatureListNet default: stem tap, 3 stages, final features

    def __init__(self, cfg: ByoModelCfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        act = get_act(cfg.act_layer)
        bn = dict(eps=cfg.bn_eps, momentum=cfg.bn_momentum, data_axis=cfg.bn_data_axis)
        wf = cfg.width_factor
        stem_chs = (
            tuple(int(round(c * wf)) for c in cfg.stem_chs)
            if isinstance(cfg.stem_chs, tuple)
            else int(round((cfg.stem_chs or cfg.stages_expanded[0][0].c) * wf))
        )
        self.stem, stem_feat = create_stem(cfg, stem_chs, _Layers(act, None, None, bn), rngs)
        self.feature_info = list(stem_feat[:-1])
        geometry = list(self.stem.geometry) if isinstance(self.stem, Stem) else [("conv", 2, True)]
        feat_size = _reduce(to_2tuple(cfg.img_size) if cfg.img_size is not None else None, stem_feat[-1]["reduction"])

        stage_cfgs = cfg.stages_expanded
        depths = [len(s) for s in stage_cfgs]
        total = sum(depths)
        dpr = [cfg.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        dilation, net_stride = 1, stem_feat[-1]["reduction"]
        prev_chs, prev_feat = stem_feat[-1]["num_chs"], stem_feat[-1]
        stages, idx = [], 0
        for si, block_cfgs in enumerate(stage_cfgs):
            stride = block_cfgs[0].s
            if stride != 1 and prev_feat:
                self.feature_info.append(prev_feat)
            if net_stride >= cfg.output_stride and stride > 1:
                dilation *= stride
                stride = 1
            net_stride *= stride
            first_dilation = 1 if dilation in (1, 2) else 2
            blocks = []
            for bi, bc in enumerate(block_cfgs):
                out_chs = make_divisible(bc.c * wf)
                layers = _Layers(
                    act,
                    bc.attn_layer if bc.attn_layer is not None else cfg.attn_layer,
                    bc.self_attn_layer if bc.self_attn_layer is not None else cfg.self_attn_layer,
                    bn,
                )
                s = stride if bi == 0 else 1
                kw = dict(
                    stride=s,
                    dilation=(first_dilation, dilation),
                    gs=bc.gs,
                    br=bc.br,
                    downsample=cfg.downsample,
                    bk=bc.block_kwargs or cfg.block_kwargs,
                    drop_path=dpr[idx],
                    layers=layers,
                    zero_init=cfg.zero_init_last,
                    rngs=rngs,
                )
                if bc.type == "self_attn":
                    kw["feat_size"] = feat_size
                blk = _BLOCKS[bc.type](prev_chs, out_chs, **kw)
                blocks.append(blk)
                geometry.append(_block_geometry(blk, f"stages.{si}.{bi}", s))
                first_dilation, prev_chs, idx = dilation, out_chs, idx + 1
                if s > 1:
                    feat_size = _reduce(feat_size, s)
            stages.append(nnx.List(blocks))
            prev_feat = dict(num_chs=prev_chs, reduction=net_stride, module=f"stages.{si}")
        self.stages = nnx.List(stages)
        for f in self.feature_info:
            f.setdefault("stage", 0 if f["module"].startswith("stem") else int(f["module"].split(".")[1]) + 1)
        self.geometry = geometry

        if cfg.num_features:
            self.num_features = int(round(wf * cfg.num_features))
            self.final_conv = _Layers(act, None, None, bn).cna(prev_chs, self.num_features, 1, rngs=rngs)
        else:
            self.num_features, self.final_conv = prev_chs, None
        self.feature_info.append(
            dict(num_chs=self.num_features, reduction=net_stride, module="final_conv", stage=len(stages))
        )
        self.stage_ends = [f["stage"] for f in self.feature_info]
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.global_pool, cfg.drop_rate, rngs=rngs)
        self.head_hidden_size = self.head.num_features
        self.grad_checkpointing = False

    # -- input size ----------------------------------------------------------------------------------------------------
    def check_input_size(self, h: int, w: int) -> None:
        """Raise a ValueError naming the layer and the sizes that work when an ``h x w`` input does not fit
        the attention layers' geometry (the sizes timm rejects, where it fails in a reshape or an assert)."""
        size, red, mult, problem = (h, w), 1, 1, None
        for step in self.geometry:
            if step[0] in ("conv", "pool"):
                _, s, ceil = step
                size = tuple(-(-n // s) if ceil else n // s for n in size)
                red *= s
                continue
            _, path, conv_stride, kind, arg, stride, pooled, strided_residual = step
            size = tuple(-(-n // conv_stride) for n in size)
            red *= conv_stride
            why = None
            if kind == "halo":
                mult = math.lcm(mult, red * arg)
                if size[0] % arg or size[1] % arg:
                    why = f"halo attention needs both sides divisible by its block_size {arg}"
            elif kind == "fixed":
                mult = math.lcm(mult, red)
                if size != arg:
                    why = f"the layer was built for a {arg[0]}x{arg[1]} map (from img_size)"
            if pooled:
                mult = math.lcm(mult, red * 2)
                if why is None and strided_residual and (size[0] % 2 or size[1] % 2):
                    why = "its 2x2 average pool cannot match the strided shortcut on an odd-sized map"
            if why and problem is None:
                problem = f"a {h}x{w} input gives a {size[0]}x{size[1]} map at {path}.self_attn, but {why}"
            size = tuple((n // 2 if pooled else -(-n // stride)) for n in size)
            red *= stride
        if problem:
            name = getattr(self, "model_name", "ByobNet")
            if any(st[0] == "block" and st[3] == "fixed" for st in self.geometry):
                img = to_2tuple(self.cfg.img_size)
                hint = (
                    f"this model was built for {img[0]}x{img[1]} inputs; build it with img_size=(H, W) for another "
                    f"size (sizes that work include multiples of {mult})"
                )
            else:
                hint = f"input sizes that work include multiples of {mult}"
            raise ValueError(f"{name}: {problem}; {hint}")

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward_features(self, x: jax.Array) -> jax.Array:
        """NHWC images -> the final NHWC feature map (after ``final_conv`` when the model has one)."""
        self.check_input_size(*x.shape[1:3])
        x = self.stem(x)
        for stage in self.stages:
            for blk in stage:
                x = run_block(blk, x, remat=self.grad_checkpointing)
        return maybe(self.final_conv, x)

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(
        self, x: jax.Array, indices: int | tuple[int, ...] | None = None, exclude_final_conv: bool = False
    ) -> list[jax.Array]:
        """NHWC maps at the chosen ``feature_info`` indices (timm's ``forward_intermediates(...,
        intermediates_only=True)``): the stem tap, stage outputs, the final features."""
        self.check_input_size(*x.shape[1:3])
        take, _ = feature_take_indices(len(self.stage_ends), indices)
        take = [self.stage_ends[i] for i in take]
        out = []
        if isinstance(self.stem, Stem):
            x, tap = self.stem.forward_intermediates(x)
        else:
            x, tap = self.stem(x), None
        if 0 in take:
            out.append(x if tap is None else tap)
        last = self.stage_ends[-1]
        for i, stage in enumerate(self.stages, start=1):
            for blk in stage:
                x = run_block(blk, x, remat=self.grad_checkpointing)
            if not exclude_final_conv and i == last:
                x = maybe(self.final_conv, x)
            if i in take:
                out.append(x)
        return out

    def prune_intermediate_layers(self, indices: int | tuple[int, ...] | None = 1) -> list[int]:
        """Keep only what feeds the chosen features; the head goes (timm ``prune_intermediate_layers``)."""
        take, max_index = feature_take_indices(len(self.stage_ends), indices)
        num_chs = self.feature_info[max_index]["num_chs"]
        end = self.stage_ends[max_index]
        self.stages = nnx.List(list(self.stages)[:end])
        self.geometry = [g for g in self.geometry if g[0] != "block" or int(g[1].split(".")[1]) < end]
        if end < self.stage_ends[-1]:
            self.final_conv = None
            self.num_features = num_chs
        if end == 0 and isinstance(self.stem, Stem):
            self.stem.prune_to_tap()
        self.head = ClassifierHead(self.num_features, 0, "", 0.0, rngs=nnx.Rngs(0))
        self.head_hidden_size = self.num_features
        return take


def _block_geometry(blk: ResidualBlock, path: str, stride: int) -> tuple:
    """How a block changes the map size and what its attention needs, for :meth:`ByobNet.check_input_size`:
    ``("block", path, conv_stride, kind, arg, attn_stride, pooled, strided_residual)``."""
    attn = getattr(blk, "self_attn", None)
    if attn is None:
        return ("conv", stride, True)
    conv_stride = stride if blk.conv2_kxk is not None else 1  # with extra_conv the conv strides
    attn_stride = stride // conv_stride
    if isinstance(attn, HaloAttn):
        kind, arg, pooled = "halo", attn.block_size, attn.avg_pool
    elif isinstance(attn, BottleneckAttn):
        kind, arg, pooled = "fixed", (attn.pos_embed.height, attn.pos_embed.width), attn.stride == 2
    elif attn.feat_size is not None:
        kind, arg, pooled = "fixed", attn.feat_size, attn.stride == 2
    else:
        kind, arg, pooled = "any", None, attn.stride == 2
    return ("block", path, conv_stride, kind, arg, attn_stride, pooled, blk.has_residual and attn_stride > 1)
