"""Resampling size-dependent weights when a checkpoint is loaded into a model built for another size.

This is what timm's checkpoint filters do (``timm/layers/pos_embed.py:resample_abs_pos_embed``,
``timm/layers/patch_embed.py:resample_patch_embed``, called from ``vision_transformer.py:checkpoint_filter_fn``)
and what transformers' ``ViTEmbeddings.interpolate_pos_encoding`` does at run time, written with numpy so
converters need no torch:

* :func:`vitjax.layers.pos_embed.resize_matrix` is one axis of ``torch.nn.functional.interpolate``
  (``align_corners=False``, with or without antialias) as an ``(out, in)`` float64 matrix; it lives in vitjax
  because models built with ``dynamic_img_size`` resize their position table with it on every call.
* :func:`resample_abs_pos_embed`: prefix rows kept, the grid rows resized as an image.
* :func:`resample_patch_embed`: FlexiViT's pseudo-inverse resize of a patch-embedding kernel (the kernel that
  keeps ``<resize(patch), kernel>`` unchanged).

* :func:`resize_rel_pos_bias_table`: BEiT's geometric-grid resize of relative-position bias tables
  (``timm/layers/pos_embed_rel.py``), for window attention whose window grows with the input (MaxViT, CoAtNet).

Each family registers a state_dict filter in :data:`FILTERS` (keyed by vitjax family and torch naming) that
applies these to the keys it knows, given the target model; the loader in :mod:`converters.hub` calls it.
Families absent from the table have no size-dependent weights (relative-position MLPs, HaloNet) or load only
at their own size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitjax.layers.pos_embed import Method, resize_matrix


@dataclass(frozen=True)
class Resize:
    """How size-dependent weights are resampled: timm's defaults (bicubic, antialiased)."""

    method: Method = "bicubic"
    antialias: bool = True


TIMM = Resize("bicubic", True)  # timm checkpoint_filter_fn
TIMM_NPZ = Resize("bilinear", False)  # timm _load_weights (original .npz files)
HF = Resize("bicubic", False)  # transformers interpolate_pos_encoding


def resize_grid(x: np.ndarray, size: tuple[int, int], resize: Resize = TIMM) -> np.ndarray:
    """Resize the two leading axes of ``x`` (``(H, W, ...)``) to ``size``, computed in float64."""
    mh = resize_matrix(x.shape[0], size[0], resize.method, resize.antialias)  # h', H
    mw = resize_matrix(x.shape[1], size[1], resize.method, resize.antialias)  # w', W
    y = np.tensordot(mh, x.astype(np.float64), axes=(1, 0))  # h', W, ...
    return np.moveaxis(np.tensordot(mw, y, axes=(1, 1)), 0, 1)  # h', w', ...


def resample_abs_pos_embed(
    posemb: np.ndarray,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    resize: Resize = TIMM,
) -> np.ndarray:
    """``(1, prefix + Gh*Gw, C)`` position table resized to the ``new_size`` grid; prefix rows unchanged.
    ``old_size=None`` assumes a square grid."""
    n = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"cannot infer the grid of a {n}-token position table; pass old_size")
        old_size = (side, side)
    if tuple(old_size) == tuple(new_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    grid = grid.reshape(old_size[0], old_size[1], -1)  # Gh, Gw, C
    grid = resize_grid(grid, new_size, resize).reshape(1, new_size[0] * new_size[1], -1)  # 1, Gh'*Gw', C
    return np.concatenate([prefix, grid.astype(posemb.dtype)], axis=1)


def resample_patch_embed(weight: np.ndarray, new_size: tuple[int, int], resize: Resize = TIMM) -> np.ndarray:
    """torch-layout patch kernel ``(O, I, p, p)`` resampled to ``(O, I, *new_size)`` so that embedding a
    resized patch with the new kernel approximates embedding the original patch (pseudo-inverse of the
    resize, FlexiViT)."""
    old = weight.shape[-2:]
    if tuple(old) == tuple(new_size):
        return weight
    ph = np.linalg.pinv(resize_matrix(old[0], new_size[0], resize.method, resize.antialias))  # H, h'
    pw = np.linalg.pinv(resize_matrix(old[1], new_size[1], resize.method, resize.antialias))  # W, w'
    out = np.einsum("oihw,hy,wx->oiyx", weight.astype(np.float64), ph, pw)  # O, I, h', w'
    return out.astype(weight.dtype)


def _geometric_coords(src: int, dst: int) -> np.ndarray:
    """BEiT's source coordinates for a ``src``-long relative-position axis stretched to ``dst``: offsets that grow
    geometrically away from 0, the ratio found by bisection so that the last one reaches ``dst // 2``."""
    left, right, q = 1.01, 1.5, 1.01
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0.0] + dis)


def _linear_on_grid(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(len(targets), len(points))`` linear-interpolation matrix on an uneven grid (ends clamped)."""
    n = len(points)
    right = np.minimum(np.searchsorted(points, targets, side="left"), n - 1)
    left = np.clip(right - 1, 0, n - 1)
    d_left = np.maximum(targets - points[left], 0.0)
    d_right = np.maximum(points[right] - targets, 0.0)
    both = (d_left == 0) & (d_right == 0)
    d_left, d_right = np.where(both, 1.0, d_left), np.where(both, 1.0, d_right)
    m = np.zeros((len(targets), n))
    rows = np.arange(len(targets))
    np.add.at(m, (rows, left), d_right / (d_left + d_right))
    np.add.at(m, (rows, right), d_left / (d_left + d_right))
    return m


def resize_rel_pos_bias_table(table: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """A relative-position bias table for another window (timm ``resize_rel_pos_bias_table``, its default
    linear mode): ``(heads, 2h-1, 2w-1)`` (TF MaxViT) or flat ``((2h-1)(2w-1), heads)``; square source
    windows for flat tables, as timm assumes when loading checkpoints."""
    if table.ndim == 3:
        dst = tuple(new_shape[1:])
        grids = table.astype(np.float64)  # heads, src_h, src_w
    elif table.ndim == 2:
        side = int(round(new_shape[0] ** 0.5))
        src_side = int(round(table.shape[0] ** 0.5))
        if side * side != new_shape[0] or src_side * src_side != table.shape[0]:
            raise ValueError(f"cannot infer square windows for tables {table.shape} -> {tuple(new_shape)}")
        dst = (side, side)
        grids = table.T.reshape(-1, src_side, src_side).astype(np.float64)  # heads, src, src
    else:
        raise ValueError(f"unsupported relative-position table shape {table.shape}")
    src = grids.shape[1:]
    if tuple(src) == dst:
        return table
    my = _linear_on_grid(_geometric_coords(src[0], dst[0]), np.arange(-(dst[0] // 2), dst[0] // 2 + 1.0))
    mx = _linear_on_grid(_geometric_coords(src[1], dst[1]), np.arange(-(dst[1] // 2), dst[1] // 2 + 1.0))
    out = np.einsum("yh,nhw,xw->nyx", my, grids, mx)  # heads, dst_h, dst_w
    out = out if table.ndim == 3 else out.reshape(out.shape[0], -1).T  # (dst_h * dst_w, heads)
    return out.astype(table.dtype)


# -- per-family state_dict filters --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What a filter needs to know about the model being loaded."""

    cfg: Any  # the model's config dataclass
    source_input_size: tuple[int, int] | None  # the checkpoint's training resolution, when known
    expected: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # torch key -> shape the model needs


Filter = Callable[[MutableMapping[str, Any], Target, Resize], MutableMapping[str, Any]]


def _as_np(v: Any) -> np.ndarray:
    from converters.io import to_numpy

    return to_numpy(v)


def _pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _vit_resample(
    sd: MutableMapping[str, Any], t: Target, resize: Resize, pos_key: str, patch_key: str
) -> MutableMapping[str, Any]:
    cfg = t.cfg
    p = cfg.patch_size
    src_patch = tuple(sd[patch_key].shape[-2:]) if patch_key in sd else None
    if src_patch is not None and src_patch != (p, p):
        sd[patch_key] = resample_patch_embed(_as_np(sd[patch_key]), (p, p), resize)
    if pos_key not in sd or getattr(cfg, "pos_embed", "learn") != "learn":
        return sd
    prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
    posemb = sd[pos_key]
    new = tuple(cfg.grid_size)
    n_old = posemb.shape[1] - prefix
    # the checkpoint's grid: its training size over its own patch size, if that accounts for every row
    # (timm's get_pretrained_grid_size); otherwise a square grid is assumed
    old = None
    if t.source_input_size is not None and src_patch is not None:
        g = tuple(s // q for s, q in zip(_pair(t.source_input_size), src_patch, strict=True))
        old = g if g[0] * g[1] == n_old else None
    if posemb.shape[1] != prefix + new[0] * new[1] or (old is not None and old != new):
        sd[pos_key] = resample_abs_pos_embed(_as_np(posemb), new, old, prefix, resize)
    return sd


def filter_vit_timm(sd: MutableMapping[str, Any], t: Target, resize: Resize = TIMM) -> MutableMapping[str, Any]:
    """timm ViT: resample ``patch_embed.proj.weight`` and ``pos_embed`` (``checkpoint_filter_fn``)."""
    return _vit_resample(sd, t, resize, "pos_embed", "patch_embed.proj.weight")


def filter_vit_hf(sd: MutableMapping[str, Any], t: Target, resize: Resize = HF) -> MutableMapping[str, Any]:
    """transformers ViT: the position table resized as ``interpolate_pos_encoding`` does (bicubic, no
    antialias), so the model equals ``ViTModel(..., interpolate_pos_encoding=True)`` at the new size."""
    return _vit_resample(
        sd, t, resize, "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.weight"
    )


def filter_maxxvit_timm(sd: MutableMapping[str, Any], t: Target, resize: Resize = TIMM) -> MutableMapping[str, Any]:
    """timm MaxxViT / CoAtNet: relative-position bias tables whose window changed with the input size."""
    for key in [k for k in sd if k.endswith("relative_position_bias_table")]:
        want = t.expected.get(key)
        if want is not None and tuple(sd[key].shape) != tuple(want):
            sd[key] = resize_rel_pos_bias_table(_as_np(sd[key]), tuple(want))
    return sd


def filter_none(sd: MutableMapping[str, Any], t: Target, resize: Resize = TIMM) -> MutableMapping[str, Any]:
    """Families whose weights do not depend on the input size (relative-position MLP ViTs)."""
    return sd


# (vitjax family, torch naming) -> (filter, default resize). Families not listed load only at their own size.
FILTERS: dict[tuple[str, str], tuple[Filter, Resize]] = {
    ("vision_transformer", "timm"): (filter_vit_timm, TIMM),
    ("deit", "timm"): (filter_vit_timm, TIMM),
    ("vision_transformer_relpos", "timm"): (filter_none, TIMM),
    ("hf_vit", "hf"): (filter_vit_hf, HF),
    ("maxxvit", "timm"): (filter_maxxvit_timm, TIMM),
}


def apply_filter(
    family: str, source: str, sd: MutableMapping[str, Any], target: Target, resize: Resize | None = None
) -> MutableMapping[str, Any]:
    """Resample the size-dependent tensors of ``sd`` for ``target``, in place (only the tensors that change
    are read: pass a lazy view such as :class:`converters.adapt.StateDictView` to keep the rest on disk)."""
    entry = FILTERS.get((family, source))
    if entry is None:
        return sd
    fn, default = entry
    return fn(sd, target, resize or default)
