"""timm's ``Mlp``: fc1 -> act -> dropout -> fc2 -> dropout (channels-last, so also timm's 1x1-conv ``ConvMlp``)."""

from __future__ import annotations

import jax
from flax import nnx

from vitjax.layers.act import get_act
from vitjax.layers.drop import Dropout, maybe
from vitjax.layers.linear import Linear
from vitjax.sharding import EMBED, MLP


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
        in_axis: str | None = EMBED,
        hidden_axis: str | None = MLP,
        rngs: nnx.Rngs,
    ):
        drop1, drop2 = drop if isinstance(drop, tuple) else (drop, drop)
        out_features = out_features or in_features
        self.act = get_act(act)
        self.fc1 = Linear(in_features, hidden_features, bias=bias, axes=(in_axis, hidden_axis), rngs=rngs)
        self.drop1 = Dropout(drop1, rngs=rngs)
        self.fc2 = Linear(hidden_features, out_features, bias=bias, axes=(hidden_axis, in_axis), rngs=rngs)
        self.drop2 = Dropout(drop2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = maybe(self.drop1, self.act(self.fc1(x)))
        return maybe(self.drop2, self.fc2(x))
