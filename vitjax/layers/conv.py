"""Convolutions with timm's padding modes (``layers/create_conv2d.py``, ``padding.py``, ``conv2d_same.py``).

Flax layout: a Conv kernel is ``[kh, kw, in/groups, out]`` (torch ``weight.transpose(2, 3, 1, 0)``); inputs are
NHWC. :func:`create_conv2d` is the one convolution builder. Its ``padding`` is timm's string, or an int for an
explicit symmetric padding (torch ``nn.Conv2d(padding=p)``):

* ``''`` (default): PyTorch-style symmetric padding ``((s - 1) + d (k - 1)) // 2`` per side (:func:`get_padding`).
* ``'same'``: TensorFlow 'SAME': total ``max((ceil(n / s) - 1) s + d (k - 1) + 1 - n, 0)``, the smaller half
  before. timm pads statically when that is symmetric for every size (stride 1, odd kernel) and per input
  otherwise (``Conv2dSame``). XLA's ``'SAME'`` is this same rule, evaluated on the (static) input shape.
* ``'valid'``: no padding.
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.sharding import CONV_IN, CONV_OUT, Axes, with_axes
from vitjax.xla_cpu import conv_general_dilated

Padding = str | int  # '', 'same', 'valid' or pixels per side
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # EfficientNet-style, as timm


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """PyTorch-style symmetric padding (per side) that timm uses for odd kernels."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial axis of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(x: jax.Array, kernel_size: int, stride: int, dilation: int = 1, value: float = 0.0) -> jax.Array:
    """Pad an NHWC map for a TF-'SAME' window op (timm ``pad_same``)."""
    ph = same_padding(x.shape[1], kernel_size, stride, dilation)
    pw = same_padding(x.shape[2], kernel_size, stride, dilation)
    return jnp.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=value)


def conv_out_size(size: int, kernel_size: int, stride: int, padding: Padding = "", dilation: int = 1) -> int:
    """Output length of a conv (or pool) window op with timm's padding mode."""
    if padding == "same":
        return math.ceil(size / stride)
    pad = _symmetric(padding, kernel_size, stride, dilation)
    return (size + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1


def create_conv2d(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    padding: Padding = "",
    axes: Axes = (None, None, CONV_IN, CONV_OUT),
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """An NHWC ``nnx.Conv`` padded the way timm's ``create_conv2d(..., padding=padding)`` pads (an int: that many
    pixels on every side), He-normal (fan out) weights, zero bias, logical axes ``axes``."""
    if padding == "same":
        pad = "SAME"
    else:
        p = _symmetric(padding, kernel_size, stride, dilation)
        pad = ((p, p), (p, p))
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=pad,
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        conv_general_dilated=conv_general_dilated,  # the CPU kernels for depthwise and 1x1 convolutions
        use_bias=bias,
        kernel_init=with_axes(_conv_init, axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axes[-1],)),
        rngs=rngs,
    )


def _symmetric(padding: Padding, kernel_size: int, stride: int, dilation: int) -> int:
    """Pixels per side for ``''`` (timm's default), ``'valid'`` or an int."""
    if isinstance(padding, bool) or not (padding in ("", "valid") or (isinstance(padding, int) and padding >= 0)):
        raise ValueError(f"padding must be '', 'same', 'valid' or a non-negative int, got {padding!r}")
    if isinstance(padding, int):
        return padding
    return 0 if padding == "valid" else get_padding(kernel_size, stride, dilation)
