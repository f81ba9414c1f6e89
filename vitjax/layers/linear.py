"""Dense and convolution layers with vitjax's initialisers and logical axis names.

Flax layouts: a Linear kernel is ``[in, out]`` (torch ``weight.T``); a Conv kernel is ``[kh, kw, in/groups, out]``
(torch ``weight.transpose(2, 3, 1, 0)``). Convolutions take NHWC inputs and explicit, PyTorch-style symmetric
padding (see :func:`get_padding`), never XLA's ``'SAME'``.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.sharding import CONV_IN, CONV_OUT, Axes, param, with_axes
from vitjax.xla_cpu import conv_general_dilated, dense

_trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class Dense(nnx.Linear):
    """``nnx.Linear``; compiled for the CPU, computed on the 2-D view ``(prod(leading axes), in)`` of its input
    (:func:`vitjax.xla_cpu.dense`), with the same values. With ``out_sharding`` the N-D form is kept everywhere."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        linear = super().__call__
        if inputs.ndim <= 2 or out_sharding is not None:
            return linear(inputs, out_sharding)
        return dense(linear, inputs)


def Linear(
    in_features: int,
    out_features: int,
    *,
    bias: bool = True,
    axes: Axes = (None, None),
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """:class:`Dense` with truncated-normal(0.02) weights, zero bias and logical axes ``axes = (in, out)``."""
    return Dense(
        in_features,
        out_features,
        use_bias=bias,
        kernel_init=with_axes(_trunc_normal, axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """PyTorch-style symmetric padding (per side) that timm uses for odd kernels."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def Conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    axes: Axes = (None, None, CONV_IN, CONV_OUT),
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D NHWC convolution with timm's symmetric padding unless ``padding`` is given."""
    pad = get_padding(kernel_size, stride, dilation) if padding is None else padding
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        conv_general_dilated=conv_general_dilated,  # depthwise convs as shifted slices on the CPU
        use_bias=bias,
        kernel_init=with_axes(_conv_init, axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axes[-1],)),
        rngs=rngs,
    )


def zeros_param(shape: tuple[int, ...], axes: Axes) -> nnx.Param:
    """A zero-initialised parameter (tokens, gammas) carrying logical axes."""
    return param(jnp.zeros(shape, jnp.float32), axes)


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: Axes, std: float = 0.02) -> nnx.Param:
    """A truncated-normal parameter carrying logical axes."""
    init = nnx.initializers.truncated_normal(stddev=std)
    return param(init(rngs.params(), shape, jnp.float32), axes)
