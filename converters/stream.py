"""Streaming a model out to safetensors, one tensor at a time (reading is :class:`converters.io.SafetensorsFile`).

:func:`converters.to_torch` returns the whole state_dict, which doubles the memory of a large model.
:func:`save_torch` instead computes the file's header from the conversion plan (names, shapes, dtypes), then
converts and writes each tensor in turn, so peak memory stays at the model plus its largest tensor. The file
is the safetensors format (8-byte little-endian header length, a JSON header with each tensor's dtype, shape
and byte range, then the raw little-endian data), written to a temporary file and renamed into place.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from converters.engine import plan, unwrap, weights
from converters.io import atomic_write
from converters.tables import tables_for

_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def _safetensors_dtype(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        return "BF16"
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be written to safetensors") from None


class _Lazy(Mapping[str, np.ndarray]):
    """The exported state_dict, each tensor computed when read (for a table's ``extra_torch``)."""

    def __init__(self, producers: dict):
        self._p = producers

    def __getitem__(self, key: str) -> np.ndarray:
        return self._p[key]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._p)

    def __len__(self) -> int:
        return len(self._p)


def torch_tensors(model: nnx.Module, target: str = "timm") -> dict[str, tuple[tuple[int, ...], np.dtype, object]]:
    """``{torch key: (shape, dtype, producer)}`` for the model's ``target`` state_dict; ``producer()`` converts
    that one tensor (the same arrays :func:`converters.to_torch` returns)."""
    inner, prefix = unwrap(model)
    table = tables_for(inner, target)[0]
    targets = weights(inner)
    out: dict = {}
    for st in plan(inner, table):
        var = targets[st.jax_key]
        spec = jax.ShapeDtypeStruct(tuple(var.get_value().shape), var.get_value().dtype)
        shapes = jax.eval_shape(st.transform.to_torch, spec)
        shapes = shapes if isinstance(shapes, tuple) else (shapes,)
        for i, (key, s) in enumerate(zip(st.torch_keys, shapes, strict=True)):

            def produce(st=st, var=var, i=i):
                arrays = st.transform.to_torch(np.asarray(jax.device_get(var.get_value())))
                arrays = arrays if isinstance(arrays, tuple) else (arrays,)
                return np.ascontiguousarray(arrays[i])

            out[prefix + key] = (tuple(s.shape), np.dtype(s.dtype), produce)
    if table.extra_torch is not None:
        extra = table.extra_torch(_Lazy({k: v[2] for k, v in out.items()}))
        for k, a in extra.items():
            a = np.ascontiguousarray(a)
            out[prefix + k] = (a.shape, a.dtype, lambda a=a: a)
    for f in table.fused:  # parts written as the one tensor that holds them
        keys = [prefix + p for p in f.parts]
        if all(k in out for k in keys):
            parts = [out.pop(k) for k in keys]
            shape = (sum(s[0] for s, _, _ in parts), *parts[0][0][1:])
            out[prefix + f.key] = (shape, parts[0][1], lambda ps=parts: np.concatenate([p() for _, _, p in ps]))
    return out


def save_torch(
    model: nnx.Module,
    path: str | os.PathLike,
    target: str = "timm",
    *,
    metadata: Mapping[str, str] | None = None,
    progress: bool = False,
) -> Path:
    """Write the model's ``target`` ("timm" / "hf") state_dict to a ``.safetensors`` file, tensor by tensor;
    ``load_state_dict(..., strict=True)`` of the reference model accepts it."""
    tensors = torch_tensors(model, target)
    header: dict = {}
    offset = 0
    for key in sorted(tensors):
        shape, dtype, _ = tensors[key]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[key] = {
            "dtype": _safetensors_dtype(dtype),
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)

    def write(tmp: str) -> None:
        keys = sorted(tensors)
        bar = keys
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(keys, desc=f"writing {Path(path).name}", unit="tensor", leave=False)
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for key in bar:
                shape, dtype, produce = tensors[key]
                a = produce()
                if a.shape != shape or a.dtype != dtype:
                    raise AssertionError(f"{key}: produced {a.shape} {a.dtype}, planned {shape} {dtype}")
                f.write(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).data)

    return atomic_write(path, write)
