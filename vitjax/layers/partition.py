"""Window and grid partitions of an NHWC map into groups of tokens (MaxViT's block and grid attention).

MaxViT (arXiv:2204.01697) attends within two kinds of ``p x p`` groups; timm ``models/maxxvit.py``
(``window_partition`` / ``grid_partition`` and their reverses) is the reference:

* window (block): contiguous ``p x p`` tiles; window ``(a, b)`` holds pixels ``(a*p + i, b*p + j)``.
* grid: a dilated ``p x p`` lattice with stride ``H / p``; group ``(a, b)`` holds pixels ``(i*(H/p) + a, j*(W/p) + b)``.

Inside a group, token ``i*p + j`` is row-major in ``(i, j)`` (the order relative-position biases assume). Groups
are stacked along the batch axis, image-major: ``(B * groups, p_h, p_w, C)``.
"""

from __future__ import annotations

import jax


def _check(h: int, w: int, size: tuple[int, int], kind: str) -> None:
    if h % size[0] or w % size[1]:
        raise ValueError(
            f"a {h}x{w} feature map cannot be split into a {kind} of {size[0]}x{size[1]}: both sides must be "
            f"divisible (build the model with an img_size whose partition fits, see the model's input sizes)"
        )


def window_partition(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``(B, H, W, C)`` -> ``(B * H/ph * W/pw, ph, pw, C)`` contiguous tiles."""
    b, h, w, c = x.shape
    ph, pw = size
    _check(h, w, size, "window")
    x = x.reshape(b, h // ph, ph, w // pw, pw, c)  # B, nh, ph, nw, pw, C
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, ph, pw, c)  # B*nh*nw, ph, pw, C


def window_reverse(windows: jax.Array, size: tuple[int, int], hw: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`window_partition` back to ``(B, H, W, C)``."""
    h, w = hw
    ph, pw = size
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ph, w // pw, ph, pw, c)  # B, nh, nw, ph, pw, C
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)  # B, H, W, C


def grid_partition(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``(B, H, W, C)`` -> ``(B * H/gh * W/gw, gh, gw, C)`` dilated lattices."""
    b, h, w, c = x.shape
    gh, gw = size
    _check(h, w, size, "grid")
    x = x.reshape(b, gh, h // gh, gw, w // gw, c)  # B, gh, sh, gw, sw, C
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(-1, gh, gw, c)  # B*sh*sw, gh, gw, C


def grid_reverse(windows: jax.Array, size: tuple[int, int], hw: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`grid_partition` back to ``(B, H, W, C)``."""
    h, w = hw
    gh, gw = size
    c = windows.shape[-1]
    x = windows.reshape(-1, h // gh, w // gw, gh, gw, c)  # B, sh, sw, gh, gw, C
    return x.transpose(0, 3, 1, 4, 2, 5).reshape(-1, h, w, c)  # B, H, W, C
