"""Squeeze-and-Excitation (arXiv:1709.01507), timm ``layers/squeeze_excite.py`` ``SEModule``.

``x * gate(fc2(act(fc1(mean_hw(x)))))``. timm's ``fc1``/``fc2`` are 1x1 convs on a 1x1 map; here they are
Linear layers on the pooled ``(B, C)`` vector (the converter reshapes the weights).
"""

from __future__ import annotations

import jax
from flax import nnx

from vitjax.layers.act import get_act
from vitjax.layers.channels import make_divisible
from vitjax.layers.linear import Dense
from vitjax.sharding import EMBED, MLP, with_axes

_fc_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _fc(n_in: int, n_out: int, bias: bool, axes: tuple, rngs: nnx.Rngs) -> Dense:
    return Dense(
        n_in,
        n_out,
        use_bias=bias,
        kernel_init=with_axes(_fc_init, axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


class SEModule(nnx.Module):
    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        add_maxpool: bool = False,
        bias: bool = True,
        act_layer: str = "relu",
        gate_layer: str = "sigmoid",
        rngs: nnx.Rngs,
    ):
        rd = rd_channels or make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.add_maxpool = add_maxpool
        self.fc1 = _fc(channels, rd, bias, (EMBED, MLP), rngs)
        self.act = get_act(act_layer)
        self.fc2 = _fc(rd, channels, bias, (MLP, EMBED), rngs)
        self.gate = get_act(gate_layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.mean(axis=(1, 2))  # B, C
        if self.add_maxpool:
            s = 0.5 * s + 0.5 * x.max(axis=(1, 2))
        s = self.gate(self.fc2(self.act(self.fc1(s))))  # B, C
        return x * s[:, None, None, :]
