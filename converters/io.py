"""Reading and writing checkpoints: safetensors (memory-mapped, read tensor by tensor) and PyTorch
``.pth`` / ``.bin`` files (``torch.load(weights_only=True)``: never unpickles code).

Bad files fail with a :class:`CheckpointError` that names the file and what is wrong with it. Writes go to a
temporary file in the target directory and are renamed into place only once complete, so an interrupted or
failed write never leaves a half-written file nor clobbers an existing one.
"""

from __future__ import annotations

import json
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


class SafetensorsDict(Mapping[str, np.ndarray]):
    """A lazy, read-only state_dict over a memory-mapped safetensors file: tensors are read on access."""

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open

        self.path = Path(path)
        _check_safetensors_header(self.path)
        try:
            self._f = safe_open(str(self.path), framework="np")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({e})") from e
        self._keys = list(self._f.keys())

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        try:
            return self._f.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{self.path}: tensor {key} cannot be read ({e})") from e

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(self._f.get_slice(k).get_shape()) for k in self._keys}


def _check_safetensors_header(path: Path) -> None:
    """Validate the header and that the file is as long as the header says (catches truncation)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (header claims {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {e})") from e
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated safetensors file: {size} bytes, its header needs {8 + n + end}")


def _load_torch(path: Path) -> dict[str, Any]:
    import pickle
    import zipfile

    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), str(e).splitlines()[0])
        if "Unsupported global" in detail:  # a class or function: loading it would run the file's code
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects, not just weights ({detail})"
            ) from e
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated ({detail})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated ({e})") from e
    for wrapper in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: does not hold a state_dict (found {type(obj).__name__})")
    return obj


def load_state_dict(path: str | os.PathLike) -> Mapping[str, Any]:
    """A state_dict from ``.safetensors`` (lazy) or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return SafetensorsDict(path)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _load_torch(path)
    raise CheckpointError(f"{path}: unknown checkpoint format {path.suffix!r} (use .safetensors, .pth or .bin)")


def shapes_of(sd: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    if hasattr(sd, "shapes"):  # lazy mappings (SafetensorsDict, converters.hub.StateDictView) know them unread
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
