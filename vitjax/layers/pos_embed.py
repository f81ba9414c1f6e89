"""Resizing an absolute position table to another patch grid, as torch's ``F.interpolate`` would.

timm resizes a ViT's ``pos_embed`` in two places with the same function (``timm/layers/pos_embed.py:
resample_abs_pos_embed``): when a checkpoint is loaded at another size, and, for models built with
``dynamic_img_size=True``, on every call at the input's patch grid. Both are bicubic with antialias (torch's
``align_corners=False``). ``jax.image.resize`` is not that interpolation (another cubic constant, other edge
handling), so the resize here is one matrix per axis with torch's weights:

* :func:`resize_matrix` builds the ``(out, in)`` matrix of one axis in numpy float64. ``antialias=True`` is the
  separable filter torch uses for its ``*_aa`` kernels (Keys cubic with a = -0.5, or the triangle; its support
  widened by the downsampling factor; weights renormalised at the borders); ``antialias=False`` is torch's plain
  kernel (cubic a = -0.75 or linear, source index ``(dst + 0.5) * in / out - 0.5``, taps clamped to the border).
* :func:`resample_abs_pos_embed` applies the two matrices to a ``(1, prefix + Gh*Gw, C)`` table with jnp inside
  the traced forward pass. The matrices depend only on static shapes, so they are built once per trace and
  enter the program as constants.

The converters (``converters/resample.py``) use the same matrices on numpy arrays when loading checkpoints.
"""

from __future__ import annotations

from typing import Literal

import jax
import numpy as np
from jax import numpy as jnp

Method = Literal["bicubic", "bilinear"]


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _linear(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


def resize_matrix(in_size: int, out_size: int, method: Method = "bicubic", antialias: bool = True) -> np.ndarray:
    """``(out_size, in_size)`` float64 matrix ``M`` with ``resized = M @ signal`` along one axis."""
    if method not in ("bicubic", "bilinear"):
        raise ValueError(f"unsupported resize method {method!r} (bicubic or bilinear)")
    if in_size == out_size:
        return np.eye(in_size)
    m = np.zeros((out_size, in_size))
    scale = in_size / out_size
    if antialias:
        half = 2.0 if method == "bicubic" else 1.0  # filter support (taps / 2)
        support = half * scale if scale >= 1 else half
        inv = 1.0 / scale if scale >= 1 else 1.0
        for i in range(out_size):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), in_size)
            x = (np.arange(lo, hi) - center + 0.5) * inv
            w = _cubic(x, -0.5) if method == "bicubic" else _linear(x)
            total = w.sum()
            m[i, lo:hi] = w / total if total != 0 else w
        return m
    src = scale * (np.arange(out_size) + 0.5) - 0.5  # out
    if method == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = src.astype(np.int64)
        i1 = np.minimum(i0 + 1, in_size - 1)
        frac = src - i0
        np.add.at(m, (np.arange(out_size), i0), 1.0 - frac)
        np.add.at(m, (np.arange(out_size), i1), frac)
        return m
    base = np.floor(src).astype(np.int64)
    t = src - base
    taps = (_cubic(t + 1, -0.75), _cubic(t, -0.75), _cubic(1 - t, -0.75), _cubic(2 - t, -0.75))
    for k, w in zip(range(-1, 3), taps, strict=True):
        np.add.at(m, (np.arange(out_size), np.clip(base + k, 0, in_size - 1)), w)
    return m


def resample_abs_pos_embed(
    posemb: jax.Array,
    new_size: tuple[int, int],
    old_size: tuple[int, int],
    num_prefix_tokens: int,
    method: Method = "bicubic",
    antialias: bool = True,
) -> jax.Array:
    """A ``(1, prefix + Gh*Gw, C)`` position table for the ``new_size`` grid: the first ``num_prefix_tokens``
    rows kept, the ``old_size`` grid resized as an image. Computed in float32 at least (as timm does for bf16
    tables), returned in the table's dtype; the table itself when the grid is unchanged."""
    new_size, old_size = tuple(new_size), tuple(old_size)
    if new_size == old_size:
        return posemb
    _, n, c = posemb.shape
    if n != num_prefix_tokens + old_size[0] * old_size[1]:
        raise ValueError(f"a position table of {n} rows is not {num_prefix_tokens} prefix rows and a {old_size} grid")
    acc = jnp.promote_types(posemb.dtype, jnp.float32)
    mh = jnp.asarray(resize_matrix(old_size[0], new_size[0], method, antialias), acc)  # h', H
    mw = jnp.asarray(resize_matrix(old_size[1], new_size[1], method, antialias), acc)  # w', W
    grid = posemb[0, num_prefix_tokens:].astype(acc).reshape(old_size[0], old_size[1], c)  # H, W, C
    hp = jax.lax.Precision.HIGHEST
    grid = jnp.einsum("yh,hwc->ywc", mh, grid, precision=hp)  # h', W, C
    grid = jnp.einsum("xw,ywc->yxc", mw, grid, precision=hp)  # h', w', C
    grid = grid.reshape(1, new_size[0] * new_size[1], c).astype(posemb.dtype)  # 1, h'*w', C
    return jnp.concatenate([posemb[:, :num_prefix_tokens], grid], axis=1)  # 1, prefix + h'*w', C
