"""The original Google ViT checkpoints (``.npz``), in and out.

``google-research/vision_transformer`` (the format the ``google/vit-*-in21k`` weights were first released in)
and ``big_vision`` save a ViT as a flat ``.npz`` of Flax parameters, keys joined by ``/``. Flax layouts are
vitjax's, so the mapping is a table of names with four reshapes (attention heads are kept as separate axes):

==========================================================  ==================================  ===================
npz key (vision_transformer layout)                          vitjax weight                       npz shape
==========================================================  ==================================  ===================
``embedding/kernel``, ``embedding/bias``                     ``patch_embed.proj``                (p, p, C, D), (D,)
``cls``                                                      ``cls_token``                       (1, 1, D)
``Transformer/posembed_input/pos_embedding``                 ``pos_embed``                       (1, N, D)
``Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias}``    ``blocks.{i}.norm1``                (D,)
``.../MultiHeadDotProductAttention_1/{query,key,value}``     ``blocks.{i}.attn.qkv`` (fused)     (D, H, d), (H, d)
``.../MultiHeadDotProductAttention_1/out``                   ``blocks.{i}.attn.proj``            (H, d, D), (D,)
``Transformer/encoderblock_{i}/LayerNorm_2``                 ``blocks.{i}.norm2``                (D,)
``Transformer/encoderblock_{i}/MlpBlock_3/Dense_{0,1}``      ``blocks.{i}.mlp.fc{1,2}``          (D, M), (M, D)
``Transformer/encoder_norm``                                 ``norm``                            (D,)
``pre_logits/{kernel,bias}``                                 ``pre_logits.fc`` (HF's pooler)     (D, D)
``head/{kernel,bias}``                                       ``head``                            (D, K)
``MAPHead_0/probe``                                          ``attn_pool.latent``                (1, 1, D)
``MAPHead_0/MultiHeadDotProductAttention_0/query``           ``attn_pool.q``                     (D, H, d), (H, d)
``MAPHead_0/MultiHeadDotProductAttention_0/{key,value}``     ``attn_pool.kv`` (fused)            (D, H, d), (H, d)
``MAPHead_0/MultiHeadDotProductAttention_0/out``             ``attn_pool.proj``                  (H, d, D), (D,)
``MAPHead_0/LayerNorm_0``, ``MAPHead_0/MlpBlock_0/Dense_*``  ``attn_pool.norm``, ``.mlp.fc*``    (D,), (D, M)
==========================================================  ==================================  ===================

``big_vision`` names the block's modules ``LayerNorm_0/1``, ``MultiHeadDotProductAttention_0``, ``MlpBlock_0``,
stores the position table as ``pos_embedding`` at the top, and may prefix everything with ``params/``; its
scanned models stack the blocks on a leading axis under ``Transformer/encoderblock/``. Checkpoints saved with
optimiser state carry ``opt/target/``. Its SigLIP towers are ViTs without a class token, pooled by the MAP
head (``MAPHead_0``, ``global_pool='map'``) or by the average (the GAP towers); a two-tower checkpoint keeps the
image tower under ``params/img/`` (the text tower beside it is not read). ``layout="big_vision"`` writes
``params/`` names, unscanned. timm's ``vision_transformer._load_weights`` reads the same names, and
these loaders follow it: weights made for another size are resampled (bilinear, no antialias, as timm does for
``.npz``), a head of another size is left at its fresh initialisation, and ``pre_logits`` is loaded only into
models that have it (the Hugging Face in21k ids).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from flax import nnx
from jax import numpy as jnp

from converters import other_classifier
from converters.adapt import fresh_weights
from converters.engine import ConversionError, unwrap, weights
from converters.io import CheckpointError, atomic_write
from converters.resample import TIMM_NPZ, resample_abs_pos_embed, resample_patch_embed

Layout = Literal["vit", "big_vision"]
FAMILIES = ("vision_transformer", "hf_vit")
_PREFIXES = ("", "opt/target/", "params/", "params/img/")


@dataclass(frozen=True)
class _Names:
    pos: str
    mha: str
    ln2: str
    mlp: str


_LAYOUTS = {
    "vit": _Names(
        "Transformer/posembed_input/pos_embedding", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"
    ),
    "big_vision": _Names("pos_embedding", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
}


@dataclass(frozen=True)
class _Entry:
    """One vitjax weight <-> npz key(s): ``to_jax(*arrays)`` / ``to_npz(array) -> tuple``."""

    jax: str
    npz: tuple[str, ...]
    to_jax: Callable
    to_npz: Callable


def _copy(jax_key: str, npz_key: str) -> _Entry:
    return _Entry(jax_key, (npz_key,), lambda a: a, lambda a: (a,))


def _entries(model: nnx.Module, names: _Names, block: Callable[[int], str], num_heads: int) -> list[_Entry]:
    """The mapping for every weight this ViT has (keys of absent modules are simply not listed)."""
    h = num_heads
    out = [
        _copy("patch_embed.proj.kernel", "embedding/kernel"),
        _copy("patch_embed.proj.bias", "embedding/bias"),
        _copy("cls_token", "cls"),
        _copy("pos_embed", names.pos),
        _copy("norm.scale", "Transformer/encoder_norm/scale"),
        _copy("norm.bias", "Transformer/encoder_norm/bias"),
        _copy("pre_logits.fc.kernel", "pre_logits/kernel"),
        _copy("pre_logits.fc.bias", "pre_logits/bias"),
        _copy("head.kernel", "head/kernel"),
        _copy("head.bias", "head/bias"),
    ]
    out += _map_head_entries(h)
    for i in range(len(model.blocks)):
        b = block(i)
        mha = f"{b}{names.mha}/"
        qkv = tuple(f"{mha}{n}/kernel" for n in ("query", "key", "value"))
        qkv_b = tuple(f"{mha}{n}/bias" for n in ("query", "key", "value"))
        out += [
            _copy(f"blocks.{i}.norm1.scale", f"{b}LayerNorm_0/scale"),
            _copy(f"blocks.{i}.norm1.bias", f"{b}LayerNorm_0/bias"),
            _Entry(
                f"blocks.{i}.attn.qkv.kernel",
                qkv,
                lambda *ws: np.concatenate([w.reshape(w.shape[0], -1) for w in ws], axis=1),  # D, 3D
                lambda k, h=h: tuple(w.reshape(w.shape[0], h, -1) for w in np.split(k, 3, axis=1)),  # 3 x D, H, d
            ),
            _Entry(
                f"blocks.{i}.attn.qkv.bias",
                qkv_b,
                lambda *bs: np.concatenate([b_.reshape(-1) for b_ in bs]),  # 3D
                lambda v, h=h: tuple(b_.reshape(h, -1) for b_ in np.split(v, 3)),  # 3 x H, d
            ),
            _Entry(
                f"blocks.{i}.attn.proj.kernel",
                (f"{mha}out/kernel",),
                lambda w: w.reshape(-1, w.shape[-1]),  # H*d, D
                lambda k, h=h: (k.reshape(h, -1, k.shape[-1]),),  # H, d, D
            ),
            _copy(f"blocks.{i}.attn.proj.bias", f"{mha}out/bias"),
            _copy(f"blocks.{i}.norm2.scale", f"{b}{names.ln2}/scale"),
            _copy(f"blocks.{i}.norm2.bias", f"{b}{names.ln2}/bias"),
            _copy(f"blocks.{i}.mlp.fc1.kernel", f"{b}{names.mlp}/Dense_0/kernel"),
            _copy(f"blocks.{i}.mlp.fc1.bias", f"{b}{names.mlp}/Dense_0/bias"),
            _copy(f"blocks.{i}.mlp.fc2.kernel", f"{b}{names.mlp}/Dense_1/kernel"),
            _copy(f"blocks.{i}.mlp.fc2.bias", f"{b}{names.mlp}/Dense_1/bias"),
        ]
    return out


def _map_head_entries(h: int) -> list[_Entry]:
    """big_vision's ``MAPHead_0`` <-> timm's ``AttentionPoolLatent`` (``attn_pool``): the probe is the latent
    query; ``query`` becomes ``q``, ``key`` and ``value`` one fused ``kv`` (keys first), as timm's loader does."""
    mha = "MAPHead_0/MultiHeadDotProductAttention_0/"

    def heads(k: np.ndarray) -> np.ndarray:
        return k.reshape(k.shape[0], h, -1)  # D, H, d

    return [
        _copy("attn_pool.latent", "MAPHead_0/probe"),
        _Entry(
            "attn_pool.q.kernel",
            (f"{mha}query/kernel",),
            lambda w: w.reshape(w.shape[0], -1),  # D, H*d
            lambda k: (heads(k),),
        ),
        _Entry(
            "attn_pool.q.bias", (f"{mha}query/bias",), lambda b_: b_.reshape(-1), lambda v, h=h: (v.reshape(h, -1),)
        ),
        _Entry(
            "attn_pool.kv.kernel",
            (f"{mha}key/kernel", f"{mha}value/kernel"),
            lambda *ws: np.concatenate([w.reshape(w.shape[0], -1) for w in ws], axis=1),  # D, 2 H*d
            lambda k: tuple(heads(w) for w in np.split(k, 2, axis=1)),  # 2 x D, H, d
        ),
        _Entry(
            "attn_pool.kv.bias",
            (f"{mha}key/bias", f"{mha}value/bias"),
            lambda *bs: np.concatenate([b_.reshape(-1) for b_ in bs]),  # 2 H*d
            lambda v, h=h: tuple(b_.reshape(h, -1) for b_ in np.split(v, 2)),  # 2 x H, d
        ),
        _Entry(
            "attn_pool.proj.kernel",
            (f"{mha}out/kernel",),
            lambda w: w.reshape(-1, w.shape[-1]),  # H*d, D
            lambda k, h=h: (k.reshape(h, -1, k.shape[-1]),),  # H, d, D
        ),
        _copy("attn_pool.proj.bias", f"{mha}out/bias"),
        _copy("attn_pool.norm.scale", "MAPHead_0/LayerNorm_0/scale"),
        _copy("attn_pool.norm.bias", "MAPHead_0/LayerNorm_0/bias"),
        _copy("attn_pool.mlp.fc1.kernel", "MAPHead_0/MlpBlock_0/Dense_0/kernel"),
        _copy("attn_pool.mlp.fc1.bias", "MAPHead_0/MlpBlock_0/Dense_0/bias"),
        _copy("attn_pool.mlp.fc2.kernel", "MAPHead_0/MlpBlock_0/Dense_1/kernel"),
        _copy("attn_pool.mlp.fc2.bias", "MAPHead_0/MlpBlock_0/Dense_1/bias"),
    ]


def _check_family(inner: nnx.Module) -> None:
    if getattr(inner, "family", None) not in FAMILIES:
        raise ConversionError(f"the original ViT .npz layout holds {FAMILIES} models, not {inner.family}")


def _detect(keys: set[str], path: Path) -> tuple[str, Layout, bool]:
    """(prefix, layout, scanned) of an npz checkpoint, as timm's _load_weights detects them."""
    prefix = next((p for p in _PREFIXES if f"{p}embedding/kernel" in keys), None)
    if prefix is None:
        raise CheckpointError(f"{path}: not an original ViT checkpoint: no embedding/kernel (under any known prefix)")
    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in keys
    big_vision = prefix.startswith("params/") or f"{prefix}pos_embedding" in keys or scanned
    return prefix, ("big_vision" if big_vision else "vit"), scanned


MIN_MEMBER_LIMIT = 256 * 2**20
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _open_npz(path: Path, limit: int) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """The open ``NpzFile`` and every array's shape, read from the members' ``.npy`` headers without loading
    any data. Refused (a :class:`CheckpointError` naming the file): anything but a zip of ``.npy`` arrays of
    numbers, an array whose header claims more bytes than its member holds, and a member larger than
    ``limit`` bytes once inflated (a zip bomb: no weight of the model, even resampled, is that large)."""
    import zipfile

    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy / zipfile raise many types on damaged files
        raise CheckpointError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: not a .npz archive (a single .npy array)")
    shapes = {}
    try:
        for key in npz.files:
            info = npz.zip.getinfo(key + ".npy") if key + ".npy" in npz.zip.namelist() else npz.zip.getinfo(key)
            if info.file_size > limit:
                raise CheckpointError(f"{path}: {key} would inflate to {info.file_size:,} bytes; refused (zip bomb?)")
            with npz.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = _NPY_HEADERS.get(version)
                if read_header is None:
                    raise CheckpointError(f"{path}: {key} is a .npy of version {version}, not of numbers")
                shape, _, dtype = read_header(f)
                header_end = f.tell()
            if dtype.kind not in "biuf" or dtype.hasobject:
                raise CheckpointError(f"{path}: {key} holds {dtype}, not numbers")
            if math.prod(shape) * dtype.itemsize > info.file_size - header_end:
                raise CheckpointError(f"{path}: {key} claims {shape} {dtype}, more than its {info.file_size} bytes")
            shapes[key] = tuple(shape)
    except CheckpointError:
        npz.close()
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        npz.close()
        raise CheckpointError(f"{path}: a damaged .npz archive ({type(e).__name__}: {e})") from e
    return npz, shapes


def load_npz(
    model: nnx.Module,
    path: str | os.PathLike,
    *,
    init: Callable[[], nnx.Module] | None = None,
) -> nnx.Module:
    """Fill a ViT from an original ``.npz`` checkpoint (strict: every weight filled, every parameter of the
    file used, except ``pre_logits`` for models without it and a head of another size)."""
    path = Path(path)
    inner, wrapper = unwrap(model)
    features = bool(wrapper)
    _check_family(inner)
    targets = weights(inner)
    model_bytes = sum(math.prod(v.get_value().shape) * v.get_value().dtype.itemsize for v in targets.values())
    npz, shapes = _open_npz(path, limit=max(MIN_MEMBER_LIMIT, 2 * model_bytes))
    with npz:
        keys = set(npz.files)
        prefix, layout, scanned = _detect(keys, path)
        names = _LAYOUTS[layout]

        def block(i: int) -> str:
            return "Transformer/encoderblock/" if scanned else f"Transformer/encoderblock_{i}/"

        def read(key: str, i: int | None) -> np.ndarray:
            try:
                a = npz[key]
            except Exception as e:  # zipfile / zlib / numpy errors of a damaged member
                raise CheckpointError(f"{path}: {key} cannot be read ({type(e).__name__}: {e})") from e
            return a[i] if scanned and key.startswith(f"{prefix}Transformer/encoderblock/") else a

        cfg = inner.cfg
        entries = {e.jax: e for e in _entries(inner, names, block, cfg.num_heads)}
        uncovered = sorted(set(targets) - set(entries))
        if uncovered:
            raise ConversionError(f"{path}: the original ViT layout has no weights for {uncovered}")
        used, values, problems, fresh = set(), {}, [], []
        heads = (("head.weight", "head.kernel", "head/kernel"), ("head.bias", "head.bias", "head/bias"))
        ck = {t: tuple(shapes[prefix + n])[::-1] for t, _, n in heads if prefix + n in keys}  # torch's (K, D), (K,)
        mk = {t: targets[j].get_value().shape[::-1] for t, j, _ in heads if j in targets}
        other_head = other_classifier(ck, mk, str(path))
        for key in targets:
            e = entries[key]
            full = [prefix + k for k in e.npz]
            missing = [k for k in full if k not in keys]
            if key.startswith("head.") and other_head:
                fresh.append(key)
                continue
            if missing:
                problems.append(f"  missing    {missing[0]} (for {key})")
                continue
            idx = int(key.split(".")[1]) if key.startswith("blocks.") else None
            value = e.to_jax(*(read(k, idx) for k in full))
            want = tuple(targets[key].get_value().shape)
            if key == "pos_embed" and value.shape != want:
                prefix_tokens = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
                value = resample_abs_pos_embed(value, cfg.grid_size, None, prefix_tokens, TIMM_NPZ)
            if key == "patch_embed.proj.kernel" and value.shape[:2] != want[:2]:
                torch_w = value.transpose(3, 2, 0, 1)  # O, I, p, p
                value = resample_patch_embed(torch_w, want[:2], TIMM_NPZ).transpose(2, 3, 1, 0)  # p', p', I, O
            if value.shape != want:
                problems.append(f"  shape      {full[0]}: gives {value.shape}, model needs {want} (for {key})")
            used.update(full)
            values[key] = value
        ignorable = (f"{prefix}pre_logits/", f"{prefix}head/")
        unused = sorted(k for k in keys if k.startswith(prefix) and k not in used and not k.startswith(ignorable))
        if prefix == "" and not features:
            unused = [k for k in unused if not k.startswith(("opt/", "params/"))]
        if features:  # a features_only model takes the blocks it kept and nothing after them
            unused = []
        problems += [f"  unexpected {k} {shapes[k]}" for k in unused]
        if problems:
            raise ConversionError(
                f"{path} does not fit {inner.model_name} (original ViT layout):\n" + "\n".join(problems)
            )
    if fresh:
        if init is None:
            raise ConversionError(f"{path}: its head does not fit the model and no initialiser was given for it")
        for k, v in fresh_weights(init, fresh).items():
            targets[k].set_value(v)
    for key, value in values.items():
        targets[key].set_value(jnp.asarray(value.astype(targets[key].get_value().dtype, copy=False)))
    return model


def to_npz(model: nnx.Module, layout: Layout = "vit") -> dict[str, np.ndarray]:
    """The weights of a ViT as an original checkpoint's arrays (``layout="big_vision"``: ``params/`` names)."""
    inner, wrapper = unwrap(model)
    features = bool(wrapper)
    if features:
        raise ConversionError("export the full model, not its features_only wrapper")
    _check_family(inner)
    cfg = inner.cfg
    names = _LAYOUTS[layout]
    prefix = "params/" if layout == "big_vision" else ""
    entries = {e.jax: e for e in _entries(inner, names, lambda i: f"Transformer/encoderblock_{i}/", cfg.num_heads)}
    targets = weights(inner)
    uncovered = sorted(set(targets) - set(entries))
    if uncovered or cfg.no_embed_class or cfg.reg_tokens:
        raise ConversionError(
            f"{inner.model_name} does not fit the original ViT layout "
            f"(no place for {uncovered or 'its register tokens'})"
        )
    out = {}
    for key, var in targets.items():
        arrays = entries[key].to_npz(np.asarray(jax.device_get(var.get_value())))
        for k, a in zip(entries[key].npz, arrays, strict=True):
            out[prefix + k] = np.ascontiguousarray(a)
    return out


def save_npz(model: nnx.Module, path: str | os.PathLike, layout: Layout = "vit") -> Path:
    """Write :func:`to_npz` to ``path`` atomically (uncompressed, as the originals)."""
    arrays = to_npz(model, layout)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
