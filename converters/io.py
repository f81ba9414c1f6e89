"""Reading and writing checkpoints: safetensors (read tensor by tensor, :class:`SafetensorsFile`) and PyTorch
``.pth`` / ``.bin`` files (``torch.load(weights_only=True)``: never unpickles code).

Bad files fail with a :class:`CheckpointError` that names the file and what is wrong with it. Writes go to a
temporary file in the target directory and are renamed into place only once complete, so an interrupted or
failed write never leaves a half-written file nor clobbers an existing one.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A file that is missing, truncated, or not a checkpoint."""


def to_numpy(t: Any) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (bf16/fp16 torch tensors are widened to float32)."""
    if isinstance(t, np.ndarray):
        return t
    if hasattr(t, "detach"):  # torch.Tensor, without importing torch
        t = t.detach().cpu()
        if str(t.dtype) in ("torch.bfloat16",):
            t = t.float()
        return t.numpy()
    return np.asarray(t)


# safetensors dtype -> numpy dtype as stored (little-endian); BF16 is read as uint16 and widened to float32
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2"}
_ST_DTYPES |= {"I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
MAX_HEADER = 100 * 2**20  # the safetensors library's own bound on the JSON header

# How tensors are read: "pread" copies each tensor's bytes straight from the file into a fresh array, so the
# file's pages are never mapped into the process and a conversion's resident memory stays at the converted
# copy (the OS may still cache the file, reclaimably); "mmap" maps the file and copies each tensor out of the
# mapping, which counts the pages read in the resident set too. Both give the same arrays; the benchmark
# (``benchmarks/run.py``) measures the two.
SAFETENSORS_READ = "pread"


class SafetensorsFile(Mapping[str, np.ndarray]):
    """A lazy, read-only state_dict over a safetensors file: the header is read and validated on opening
    (:func:`read_safetensors_header`), each tensor is read into its own writable array when accessed.

    ``read``: ``"pread"`` or ``"mmap"`` (default :data:`SAFETENSORS_READ`). ``BF16`` tensors are widened to
    float32 (numpy has no bfloat16).
    """

    def __init__(self, path: str | os.PathLike, read: str | None = None):
        self.path = Path(path)
        self.read = read or SAFETENSORS_READ
        if self.read not in ("pread", "mmap"):
            raise ValueError(f"read must be 'pread' or 'mmap', not {self.read!r}")
        self._base, self._meta, self.metadata = read_safetensors_header(self.path)
        self._map = None
        if self.read == "mmap":
            import mmap

            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __getitem__(self, key: str) -> np.ndarray:
        info = self._meta[key]  # KeyError for an unknown key, as a dict
        start, end = info["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        out = np.empty(tuple(info["shape"]), dtype)
        if end > start:
            buf = memoryview(out.reshape(-1).view(np.uint8))
            try:
                if self._map is not None:
                    got = end - start
                    buf[:] = self._map[self._base + start : self._base + end]
                else:
                    with open(self.path, "rb", buffering=0) as f:
                        got = os.preadv(f.fileno(), [buf], self._base + start)
            except (OSError, ValueError) as e:  # the file changed since it was opened
                raise CheckpointError(f"{self.path}: tensor {key} cannot be read ({e})") from e
            if got != end - start:
                raise CheckpointError(f"{self.path}: tensor {key} is truncated (the file shrank since opening)")
        if info["dtype"] == "BF16":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v["shape"]) for k, v in self._meta.items()}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def read_safetensors_header(path: Path) -> tuple[int, dict[str, dict], dict[str, str]]:
    """(where the data starts, {tensor: its header entry}, the ``__metadata__``) of a safetensors file.

    Checked as the format demands, so that no later read goes astray: a header of at most 100 MiB inside the
    file, JSON without duplicate keys, every entry a known dtype, a shape of non-negative integers and byte
    offsets that match it, and the tensors tiling the data section exactly (no gap, no overlap, nothing past
    the end: a truncated file is caught here). Anything else is a :class:`CheckpointError` naming the file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{path}: not a safetensors file, or truncated (header claims {n} bytes of {size - 8})"
                )
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e})") from e
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is a {type(header).__name__})")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: bad safetensors header (__metadata__ must map strings to strings)")
    spans = []
    for key, info in header.items():
        bad = _bad_entry(info)
        if bad:
            raise CheckpointError(f"{path}: bad safetensors header entry for {key!r}: {bad}")
        start, end = info["data_offsets"]
        spans.append((start, end, key))
    data = size - 8 - n
    pos, prev = 0, None
    for start, end, key in sorted(spans):
        if start != pos:
            what = f"overlaps {prev!r}" if start < pos else f"leaves a gap of {start - pos} bytes before it"
            raise CheckpointError(f"{path}: bad safetensors header: tensor {key!r} {what}")
        pos, prev = end, key
    if pos > data:
        raise CheckpointError(f"{path}: truncated safetensors file: {size} bytes, its header needs {8 + n + pos}")
    if pos < data:
        raise CheckpointError(f"{path}: not a safetensors file: {data - pos} bytes after the last tensor")
    return 8 + n, header, metadata


def _bad_entry(info: Any) -> str | None:
    """What is wrong with one tensor's header entry (None if nothing)."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        return "expected exactly dtype, shape and data_offsets"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        return f"unsupported dtype {dtype!r}"

    def ints(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x)

    if not ints(shape):
        return f"shape {shape!r} is not a list of non-negative integers"
    if not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        return f"data_offsets {offsets!r} are not [start, end]"
    nbytes = math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        return f"{offsets[1] - offsets[0]} bytes for shape {shape} of {dtype} ({nbytes} bytes)"
    return None


MAX_INFLATED = 64 * 2**20  # the most a compressed member of a .pth zip may inflate to (torch.save stores)


def _check_torch_zip(path: Path) -> None:
    """Refuse a zip bomb: ``torch.save`` stores every member uncompressed, and torch inflates a compressed one
    (its pickle, say) whole into memory, so a compressed member may inflate to at most :data:`MAX_INFLATED`."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated ({e})") from e
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATED:
            raise CheckpointError(
                f"{path}: refused to load: member {info.filename} is compressed and would inflate to "
                f"{info.file_size:,} bytes (torch.save writes uncompressed files)"
            )


def _load_torch(path: Path) -> dict[str, Any]:
    import pickle
    import zipfile

    import torch

    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_torch_zip(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        detail = next((ln for ln in lines if "unsupported global" in ln.lower()), None)
        if detail:  # a class or function: loading it would run the file's code
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects, not just weights ({detail})"
            ) from e
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated ({lines[0]})") from e
    except MemoryError as e:
        raise CheckpointError(f"{path}: needs more memory than there is to load (a damaged or hostile file?)") from e
    except Exception as e:  # torch's loaders raise many types on damaged files (RuntimeError, EOFError, ...)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated ({type(e).__name__}: {e})") from e
    for wrapper in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: does not hold a state_dict (found {type(obj).__name__})")
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: does not hold a state_dict ({bad!r} is a {type(obj[bad]).__name__})")
    return obj


def load_state_dict(path: str | os.PathLike) -> Mapping[str, Any]:
    """A state_dict from ``.safetensors`` (lazy) or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _load_torch(path)
    raise CheckpointError(f"{path}: unknown checkpoint format {path.suffix!r} (use .safetensors, .pth or .bin)")


def shapes_of(sd: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    if hasattr(sd, "shapes"):  # lazy mappings (SafetensorsFile, converters.adapt.StateDictView) know them unread
        return sd.shapes()
    return {k: tuple(v.shape) for k, v in sd.items()}


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded. The file gets the
    permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes it private to its owner)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.strerror and e.filename is None:  # a full disk names no file: name ours
            e.filename = str(path)
        raise
    return path


def save_safetensors(sd: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in sd.items()}

    def write(tmp: str) -> None:
        try:
            save_file(arrays, tmp, metadata=metadata)
        except Exception as e:  # safetensors reports a failed write (a full disk) as its own SafetensorError
            if isinstance(e, OSError):
                raise
            raise OSError(f"{path}: could not be written ({e})") from e

    return atomic_write(path, write)
