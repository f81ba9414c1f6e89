"""vitjax checkpoints: a directory holding the weights as an orbax checkpoint and a ``vitjax.json`` manifest.

    out/vitjax.json   {"format": "vitjax-checkpoint", "model": ..., "family": ..., "overrides": {...},
                       "pretrained_cfg": {...}, "weights": {path: [shape, dtype]}, ...}
    out/state/        orbax (``StandardCheckpointer``) tree {weight path: array}

``vitjax.create_model(name, pretrained="out")`` reads it back (:func:`restore`): straight into the model's
arrays (and shardings) when it was built with the same weight shapes; otherwise (another ``img_size``,
``num_classes`` ...) through the family's torch naming, so resampling and head replacement behave exactly as
for a timm / transformers checkpoint. The directory is written next to its destination and renamed into place
only when complete. orbax is imported only here (vitjax never needs it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from converters import to_torch
from converters.adapt import load_state_dict_into
from converters.engine import ConversionError, unwrap, weights
from converters.io import CheckpointError
from converters.tables import sources_for

META = "vitjax.json"
FORMAT = "vitjax-checkpoint"
VERSION = 1


def _jsonable(v: Any) -> Any:
    json.dumps(v)  # raises TypeError for values a manifest cannot hold
    return v


def config_overrides(inner: nnx.Module) -> dict[str, Any]:
    """The config fields in which this model differs from its registered variant (what create_model was given)."""
    import vitjax

    cfg = inner.cfg
    base = vitjax.get_spec(inner.model_name).config()
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v != getattr(base, f.name):
            try:
                out[f.name] = _jsonable(list(v) if isinstance(v, tuple) else v)
            except TypeError:
                raise ConversionError(
                    f"config field {f.name}={v!r} cannot be recorded in a vitjax checkpoint"
                ) from None
    return out


def _overrides_from_json(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def save(model: nnx.Module, out: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and manifest to the directory ``out`` (replaced atomically if it exists and is
    a vitjax checkpoint; any other existing path is refused)."""
    import orbax.checkpoint as ocp

    import vitjax

    inner, prefix = unwrap(model)
    features = bool(prefix)
    if features:
        raise ConversionError("save the full model, not its features_only wrapper")
    out = Path(out).absolute()
    if out.exists() and not (out.is_dir() and ((out / META).is_file() or not any(out.iterdir()))):
        raise CheckpointError(f"{out}: exists and is not a vitjax checkpoint directory; refusing to replace it")
    state = {k: var.get_value() for k, var in weights(inner).items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "vitjax_version": vitjax.__version__,
        "model": inner.model_name,
        "family": inner.family,
        "overrides": config_overrides(inner),
        "pretrained_cfg": json.loads(json.dumps(getattr(inner, "pretrained_cfg", {}) or {}, default=str)),
        "weights": {k: [list(v.shape), str(v.dtype)] for k, v in state.items()},
        **(extra or {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(tmp / "state", state)
        ckpt.wait_until_finished()
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists() and _exchange(tmp, out):  # one atomic step: `out` is never missing
            shutil.rmtree(tmp)
        else:
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


_DTYPES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint32", "uint8", "bool"}


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a vitjax checkpoint directory, checked field by field (a :class:`CheckpointError`
    naming the directory and the field otherwise)."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError, RecursionError) as e:  # missing, not UTF-8, not JSON, nested too deeply
        raise CheckpointError(f"{path}: not a vitjax checkpoint directory ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not (path / "state").is_dir():
        raise CheckpointError(f"{path}: not a vitjax checkpoint directory (bad manifest or no state/)")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: bad manifest: version {version!r}")
    if version > VERSION:
        raise CheckpointError(f"{path}: written by a newer vitjax (format version {meta['version']})")
    bad = _bad_meta(meta)
    if bad:
        raise CheckpointError(f"{path}: bad manifest ({META}): {bad}")
    return meta


def _bad_meta(meta: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's fields (None if nothing)."""
    for key in ("model", "family"):
        if not isinstance(meta.get(key), str):
            return f"{key} is {meta.get(key)!r}, not a name"
    if not isinstance(meta.get("overrides", {}), dict):
        return "overrides is not a mapping"
    if not isinstance(meta.get("pretrained_cfg") or {}, dict):
        return "pretrained_cfg is not a mapping"
    weights_ = meta.get("weights")
    if not isinstance(weights_, dict) or not weights_:
        return "no weights listed"
    for k, entry in weights_.items():
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry[0])
        if not ok or entry[1] not in _DTYPES:
            return f"weight {k}: {entry!r} is not [shape, dtype]"
    return None


def _restore_tree(path: Path, meta: dict[str, Any], shardings: dict[str, Any] | None = None) -> dict[str, jax.Array]:
    import orbax.checkpoint as ocp

    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {
        k: jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=(shardings or {}).get(k) or default)
        for k, (shape, dtype) in meta["weights"].items()
    }
    try:  # orbax accepts only absolute paths
        return ocp.StandardCheckpointer().restore(path.absolute() / "state", target)
    except Exception as e:  # orbax / tensorstore raise many types for damaged files
        raise CheckpointError(f"{path}: the checkpoint's arrays cannot be read ({type(e).__name__}: {e})") from e


def restore(
    model: nnx.Module,
    path: str | os.PathLike,
    *,
    init: Callable[[], nnx.Module] | None = None,
    progress: bool = False,
) -> nnx.Module:
    """Fill ``model`` from a vitjax checkpoint directory (see the module docstring)."""
    import vitjax

    path = Path(path)
    meta = read_meta(path)
    inner, prefix = unwrap(model)
    features = bool(prefix)
    if meta["family"].partition("+")[0] != inner.family:  # (older manifests carry maxxvit's layout suffix)
        raise ConversionError(
            f"{path} holds a {meta['model']} ({meta['family']} family); it cannot fill a {inner.model_name}"
        )
    targets = weights(inner)
    saved = {k: (tuple(s), d) for k, (s, d) in meta["weights"].items()}
    same = all(k in saved and saved[k][0] == tuple(v.get_value().shape) for k, v in targets.items())
    if same and (features or set(saved) == set(targets)):
        shardings = {}
        for k, v in targets.items():
            sh = getattr(v.get_value(), "sharding", None)
            if isinstance(sh, jax.sharding.Sharding):
                shardings[k] = sh
        tree = _restore_tree(path, meta, shardings)
        for k, var in targets.items():
            var.set_value(tree[k].astype(var.get_value().dtype))
        return model
    # another size / classifier: go through the torch naming, which knows how to adapt
    try:
        source = vitjax.create_model(meta["model"], abstract=True, **_overrides_from_json(meta["overrides"]))
    except (ValueError, TypeError) as e:  # an unknown model, or overrides its config refuses
        raise CheckpointError(f"{path}: its manifest names a model that cannot be built ({e})") from e
    declared = {k: tuple(v.get_value().shape) for k, v in weights(source).items()}
    if {k: s for k, (s, _) in saved.items()} != declared:  # what is read is bounded by the model's size
        raise CheckpointError(f"{path}: its manifest lists other weights than its model ({meta['model']}) has")
    tree = _restore_tree(path, meta)
    for k, var in weights(source).items():
        var.set_value(tree[k])
    del tree
    naming = sources_for(inner.family)[0]
    sd = to_torch(source, target=naming)
    src_cfg = dict(meta.get("pretrained_cfg") or {})
    if hasattr(source.cfg, "img_size"):  # the saved model's own size locates its position grid
        src_cfg["input_size"] = [3, *_pair(source.cfg.img_size)]
    return load_state_dict_into(
        model, sd, pretrained_cfg=src_cfg, init=init, naming=naming, what=str(path), progress=progress
    )


def _pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))
