"""Array transforms between torch and Flax layouts, each with its inverse.

A transform maps the torch tensor(s) of one weight to the vitjax array (``to_jax``) and back (``to_torch``).
Both directions are pure permutations, reshapes or concatenations, so a round trip is bit-exact. They work
on numpy arrays and, for shape inference, on ``jax.ShapeDtypeStruct`` via ``jax.eval_shape``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from jax import numpy as jnp


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


@dataclass(frozen=True)
class Transform:
    name: str
    to_jax: Callable  # (*torch arrays) -> jax-layout array
    to_torch: Callable  # jax-layout array -> torch array, or a tuple of them (one per torch key)


IDENTITY = Transform("identity", lambda w: w, lambda a: a)
# nn.Linear weight [out, in] <-> kernel [in, out]
LINEAR = Transform("linear", lambda w: w.T, lambda k: k.T)
# nn.Conv2d weight [out, in/g, kh, kw] <-> kernel [kh, kw, in/g, out]
CONV = Transform("conv", lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))
# a 1x1 nn.Conv2d used as a Linear on channels-last maps: [out, in, 1, 1] <-> kernel [in, out]
CONV1X1_AS_LINEAR = Transform("conv1x1_as_linear", lambda w: w[:, :, 0, 0].T, lambda k: k.T[:, :, None, None])

# BatchNorm's num_batches_tracked: int64 in torch, int32 here (JAX without x64)
COUNTER = Transform(
    "counter", lambda w: w.astype(np.int32), lambda k: k.astype(np.int64) if isinstance(k, np.ndarray) else k
)


def concat_linear(n: int) -> Transform:
    """``n`` nn.Linear weights (e.g. q, k, v) <-> one fused kernel ``[in, n * out]``."""

    def to_jax(*ws):
        return _xp(ws[0]).concatenate(ws, axis=0).T

    def to_torch(k):
        return tuple(_xp(k).split(k.T, n, axis=0))

    return Transform(f"concat{n}_linear", to_jax, to_torch)


def concat_bias(n: int) -> Transform:
    """``n`` biases <-> one fused bias."""

    def to_jax(*bs):
        return _xp(bs[0]).concatenate(bs, axis=0)

    def to_torch(b):
        return tuple(_xp(b).split(b, n, axis=0))

    return Transform(f"concat{n}_bias", to_jax, to_torch)
