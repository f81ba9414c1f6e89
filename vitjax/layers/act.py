"""Activations by timm's names."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax

Act = Callable[[jax.Array], jax.Array]

_ACTS: dict[str, Act] = {
    "gelu": partial(jax.nn.gelu, approximate=False),  # torch nn.GELU(), the exact erf form
    "gelu_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jax.numpy.tanh,
    "identity": lambda x: x,
}


def get_act(name: str) -> Act:
    try:
        return _ACTS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTS)}") from None
