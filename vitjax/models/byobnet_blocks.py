"""Bring-Your-Own-Blocks building blocks (timm ``models/byobnet.py``): the residual blocks and the stem. See
:mod:`vitjax.models.byobnet`."""

from __future__ import annotations

from dataclasses import dataclass, fields

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers import DropPath, maybe
from vitjax.layers.act import Act
from vitjax.layers.bottleneck_attn import BottleneckAttn
from vitjax.layers.channels import make_divisible, num_groups
from vitjax.layers.conv import create_conv2d
from vitjax.layers.conv_bn_act import BatchNormAct, ConvNormAct
from vitjax.layers.eca import EcaModule
from vitjax.layers.halo import HaloAttn
from vitjax.layers.lambda_layer import LambdaLayer
from vitjax.layers.spatial_pool import (
    avg_pool2d,
    avg_pool2d_same,
    max_pool2d,
)
from vitjax.layers.squeeze_excite import SEModule
from vitjax.models.byobnet_config import AttnCfg, BottleneckAttnCfg, ByoModelCfg, HaloCfg, SeCfg, SelfAttnCfg

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
                else create_conv2d(prev_chs, c, kernel_size, stride=s, bias=False, rngs=rngs)
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
