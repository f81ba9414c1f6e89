"""Efficient Channel Attention (arXiv:1910.03151), timm ``layers/eca.py`` ``EcaModule``.

``x * sigmoid(conv1d(mean_hw(x)))``: a bias-free 1-D conv slides along the channel axis of the pooled
vector, zero padded, with an odd kernel chosen from the channel count (``t = int(|log2 C + beta| / gamma)``,
kernel ``max(t or t + 1 if even, 3)``). The conv is an ``nnx.Conv`` over channels: kernel ``(k, 1, 1)``,
torch ``conv.weight`` ``(1, 1, k)``.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from vitjax.layers.act import get_act
from vitjax.sharding import with_axes


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class EcaModule(nnx.Module):
    def __init__(
        self,
        channels: int | None = None,
        *,
        kernel_size: int = 3,
        gamma: float = 2,
        beta: float = 1,
        gate_layer: str = "sigmoid",
        rngs: nnx.Rngs,
    ):
        if channels is not None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        if kernel_size % 2 != 1:
            raise ValueError(f"ECA needs an odd kernel size, got {kernel_size}")
        pad = (kernel_size - 1) // 2
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")
        self.conv = nnx.Conv(
            1,
            1,
            kernel_size=(kernel_size,),
            padding=((pad, pad),),
            use_bias=False,
            kernel_init=with_axes(init, (None, None, None)),
            rngs=rngs,
        )
        self.gate = get_act(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.mean(axis=(1, 2))[:, :, None]  # B, C, 1: channels as the 1-D "length"
        s = self.gate(self.conv(s))[:, :, 0]  # B, C
        return x * s[:, None, None, :]
