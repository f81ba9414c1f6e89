"""timm's MLPs, channels-last (so also timm's 1x1-conv ``ConvMlp``).

* :class:`Mlp`: fc1 -> act -> dropout -> [norm] -> fc2 -> dropout.
* :class:`SwiGLU`: ``act(fc1_g(x)) * fc1_x(x)`` -> dropout -> [norm] -> fc2 -> dropout, two fc1 Linears of the
  full hidden width (timm ``SwiGLU``; AIMv2).
* :class:`GluMlp`: one packed fc1 of the hidden width whose halves are the value and the gate, fc2 from half
  the hidden width (timm ``GluMlp``; ``SwiGLUPacked`` is it with SiLU and the gate first, as in DINOv2 giant).

The optional norm on the hidden features is BEiT3's ``scale_mlp_norm``.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.act import get_act
from vitjax.layers.drop import Dropout, maybe
from vitjax.layers.linear import Linear
from vitjax.layers.norm import NormFactory
from vitjax.sharding import EMBED, MLP


def _drops(drop: float | tuple[float, float]) -> tuple[float, float]:
    return drop if isinstance(drop, tuple) else (drop, drop)


class Mlp(nnx.Module):
    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        act: str = "gelu",
        bias: bool = True,
        drop: float | tuple[float, float] = 0.0,
        norm: NormFactory | None = None,
        in_axis: str | None = EMBED,
        hidden_axis: str | None = MLP,
        rngs: nnx.Rngs,
    ):
        drop1, drop2 = _drops(drop)
        out_features = out_features or in_features
        self.act = get_act(act)
        self.fc1 = Linear(in_features, hidden_features, bias=bias, axes=(in_axis, hidden_axis), rngs=rngs)
        self.drop1 = Dropout(drop1, rngs=rngs)
        self.norm = norm(hidden_features, axis_name=hidden_axis) if norm is not None else None
        self.fc2 = Linear(hidden_features, out_features, bias=bias, axes=(hidden_axis, in_axis), rngs=rngs)
        self.drop2 = Dropout(drop2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = maybe(self.drop1, self.act(self.fc1(x)))
        return maybe(self.drop2, self.fc2(maybe(self.norm, x)))


class SwiGLU(nnx.Module):
    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        act: str = "silu",
        bias: bool = True,
        drop: float | tuple[float, float] = 0.0,
        norm: NormFactory | None = None,
        rngs: nnx.Rngs,
    ):
        drop1, drop2 = _drops(drop)
        out_features = out_features or in_features
        self.act = get_act(act)
        self.fc1_g = Linear(in_features, hidden_features, bias=bias, axes=(EMBED, MLP), rngs=rngs)
        self.fc1_x = Linear(in_features, hidden_features, bias=bias, axes=(EMBED, MLP), rngs=rngs)
        self.drop1 = Dropout(drop1, rngs=rngs)
        self.norm = norm(hidden_features, axis_name=MLP) if norm is not None else None
        self.fc2 = Linear(hidden_features, out_features, bias=bias, axes=(MLP, EMBED), rngs=rngs)
        self.drop2 = Dropout(drop2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = maybe(self.drop1, self.act(self.fc1_g(x)) * self.fc1_x(x))  # B, N, hidden
        return maybe(self.drop2, self.fc2(maybe(self.norm, x)))


class GluMlp(nnx.Module):
    """``gate_last``: the second half of fc1's output is the gate (timm's default); False: the first half."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        act: str = "sigmoid",
        bias: bool = True,
        drop: float | tuple[float, float] = 0.0,
        norm: NormFactory | None = None,
        gate_last: bool = True,
        rngs: nnx.Rngs,
    ):
        if hidden_features % 2:
            raise ValueError(f"a GLU MLP needs an even hidden width, got {hidden_features}")
        drop1, drop2 = _drops(drop)
        out_features = out_features or in_features
        self.act = get_act(act)
        self.gate_last = gate_last
        self.fc1 = Linear(in_features, hidden_features, bias=bias, axes=(EMBED, MLP), rngs=rngs)
        self.drop1 = Dropout(drop1, rngs=rngs)
        self.norm = norm(hidden_features // 2, axis_name=MLP) if norm is not None else None
        self.fc2 = Linear(hidden_features // 2, out_features, bias=bias, axes=(MLP, EMBED), rngs=rngs)
        self.drop2 = Dropout(drop2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x1, x2 = jnp.split(self.fc1(x), 2, axis=-1)  # each B, N, hidden / 2
        x = x1 * self.act(x2) if self.gate_last else self.act(x1) * x2
        x = maybe(self.drop1, x)
        return maybe(self.drop2, self.fc2(maybe(self.norm, x)))
