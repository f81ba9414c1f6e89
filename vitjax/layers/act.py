"""Activations by timm's names."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax

Act = Callable[[jax.Array], jax.Array]


def gelu(x: jax.Array) -> jax.Array:
    """torch's ``nn.GELU()``, the exact form, as torch writes it: ``x / 2 * (1 + erf(x / sqrt(2)))``.

    ``jax.nn.gelu(approximate=False)`` writes it with ``erfc``, which XLA:CPU expands into a longer polynomial
    with divisions; erf runs 2-5x faster there, forward and backward (maxxvitv2_rmlp_base_rw_224 inference at
    batch 8: 2.11 -> 2.00 s), and differs from torch's float32 result by as little as erfc's form does.
    """
    return x * 0.5 * (1.0 + jax.lax.erf(x * (1 / math.sqrt(2))))


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU, ``x * sigmoid(1.702 x)`` (timm ``quick_gelu``)."""
    return x * jax.nn.sigmoid(1.702 * x)


_ACTS: dict[str, Act] = {
    "gelu": gelu,
    "gelu_tanh": partial(jax.nn.gelu, approximate=True),
    "quick_gelu": quick_gelu,
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
