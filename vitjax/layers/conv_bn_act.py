"""Conv -> BatchNorm -> activation, the unit every timm conv net is made of (timm ``layers/conv_bn_act.py``
``ConvNormAct`` and ``layers/norm_act.py`` ``BatchNormAct2d``).

Paths match timm: ``conv`` (bias-free by default) and ``bn``; a :class:`BatchNormAct` keeps its weights on
itself (``post_attn.weight``, not ``post_attn.bn.weight``), as timm's ``BatchNormAct2d`` does.
"""

from __future__ import annotations

import jax
from flax import nnx

from vitjax.layers.act import Act
from vitjax.layers.conv import create_conv2d
from vitjax.layers.norm import BatchNorm


class BatchNormAct(BatchNorm):
    """BatchNorm (torch numerics, see :class:`~vitjax.layers.norm.BatchNorm`) followed by an optional activation."""

    def __init__(
        self,
        dim: int,
        *,
        act: Act | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
        data_axis: str | None = None,
    ):
        super().__init__(dim, eps=eps, momentum=momentum, data_axis=data_axis)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        x = super().__call__(x)
        return x if self.act is None else self.act(x)


class ConvNormAct(nnx.Module):
    """``act(bn(conv(x)))`` on NHWC maps, torch-style symmetric padding; ``act=None`` leaves it linear.
    ``eps``/``momentum``/``data_axis`` are the BatchNorm's (torch's momentum convention)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        act: Act | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
        data_axis: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.conv = create_conv2d(
            in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, groups=groups, bias=bias, rngs=rngs
        )
        self.bn = BatchNormAct(out_chs, act=act, eps=eps, momentum=momentum, data_axis=data_axis)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))
