"""Packed datasets: ArrayRecord shards and tar shards in the webdataset layout, with their packer.

A packed directory holds ``train/`` and ``val/`` shards and a ``dataset.json`` beside them:

* ``format``: ``arrayrecord`` or ``tar``; ``classes``: the class names, label ``c`` being ``classes[c]``;
* ``splits``: for each split, its shards in order, each with its file name, its example count and its labels
  run-length encoded (``[[label, count], ...]``: the packer writes examples in ImageFolder order, so a shard's
  labels are a few runs), so labels are known and range-checked before any image is read.

The examples of a split are its shards' records in order; example ``i`` of a packed split is example ``i`` of the
ImageFolder it was packed from, its image bytes stored as they were in the file (never re-encoded).

* ArrayRecord: one record per example, ``<i4 label><u2 n><n bytes: the source file's name>`` then the image
  bytes; written with ``group_size:1`` so reading one record decodes one record (random access, as grain reads).
* tar: members ``NNNNNN.<ext>`` (the image, ``ext`` its source's, ``jpeg`` spelt ``jpg``) and ``NNNNNN.cls``
  (the label in ASCII decimal), ``NNNNNN`` the example's index in the split; read through an index of member
  offsets built once per shard when the dataset is opened.

A directory of webdataset tar shards from elsewhere (``train/*.tar``, ``val/*.tar``, no ``dataset.json``) is read
too (``open_tar_dir``): labels from each example's ``.cls`` (or ``.txt``) member, no class names.

Paths go through ``etils.epath``, so a ``gs://`` directory works where its filesystem package is installed.
The packer writes each shard under a temporary name and renames it when complete, and ``dataset.json`` last:
a directory without it is not a dataset, so an interrupted pack is never read as a whole one.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import struct
import tarfile
import tempfile
import threading
from collections.abc import Sequence

import numpy as np
from etils import epath
from PIL import Image

META = "dataset.json"
FORMATS = ("arrayrecord", "tar")
_SUFFIX = {"arrayrecord": ".array_record", "tar": ".tar"}
_IMAGE_EXTS = {"jpg", "jpeg", "png", "bmp", "webp", "ppm", "tif", "tiff"}
_HEADER = struct.Struct("<iH")


class ShardError(ValueError):
    """A shard that is missing, short, damaged or inconsistent with ``dataset.json``; the message names it."""


def is_packed(root: str | os.PathLike) -> bool:
    return epath.Path(root).joinpath(META).exists()


def _encode(label: int, name: str, image: bytes) -> bytes:
    n = name.encode()
    return _HEADER.pack(label, len(n)) + n + image


def _decode(record: bytes) -> tuple[int, str, bytes]:
    label, n = _HEADER.unpack_from(record)
    start = _HEADER.size + n
    return label, record[_HEADER.size : start].decode(), record[start:]


class _ArrayRecordShard:
    def __init__(self, path: epath.Path):
        import grain

        self.path = path
        try:
            self._source = grain.sources.ArrayRecordDataSource([os.fspath(path)])
            self._len = len(self._source)
        except Exception as e:  # array_record raises a bare RuntimeError on a truncated file
            raise ShardError(f"{path}: not a readable ArrayRecord shard ({type(e).__name__}: {e})") from e

    def __len__(self) -> int:
        return self._len

    def read(self, j: int) -> tuple[int, str, bytes]:
        try:
            return _decode(self._source[j])
        except Exception as e:
            raise ShardError(f"{self.path}: record {j} is damaged ({type(e).__name__}: {e})") from e


class _TarShard:
    """A webdataset tar shard read at random: the index (one pass over the member headers) maps each example to
    its image member's offset and size and its ``.cls`` label."""

    def __init__(self, path: epath.Path):
        self.path = path
        self._local = threading.local()  # one open file per reading thread
        members: dict[str, dict] = {}
        try:
            size = path.stat().length
            with path.open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    if m.offset_data + m.size > size:
                        raise ShardError(f"{path}: member {m.name} runs past the end of the file (short shard)")
                    folder, _, base = m.name.rpartition("/")
                    stem, _, ext = base.partition(".")  # webdataset's key: the name up to the basename's first dot
                    entry = members.setdefault(f"{folder}/{stem}", {})
                    ext = ext.lower()
                    if ext in ("cls", "txt"):
                        text = tar.extractfile(m).read().decode(errors="replace").strip()
                        try:
                            entry[ext] = int(text)
                        except ValueError:
                            raise ShardError(
                                f"{path}: member {m.name}: label {text[:40]!r} is not an integer"
                            ) from None
                    elif ext in _IMAGE_EXTS:
                        entry["image"] = (m.offset_data, m.size, m.name)
        except ShardError:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise ShardError(f"{path}: not a readable tar shard ({type(e).__name__}: {e})") from e
        self._entries = []
        for key, entry in members.items():  # in the order of the members, as webdataset reads them
            label = entry.get("cls", entry.get("txt"))
            if "image" not in entry or label is None:
                missing = "image" if "image" not in entry else ".cls (or .txt) label"
                raise ShardError(f"{path}: example {key.lstrip('/')} has no {missing}")
            self._entries.append((label, entry["image"]))

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict:  # for worker processes: the index travels, open files do not
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()  # each process (and thread) reopens the shard at its first read

    def labels(self) -> list[int]:
        return [label for label, _ in self._entries]

    def read(self, j: int) -> tuple[int, str, bytes]:
        label, (offset, size, name) = self._entries[j]
        f = getattr(self._local, "file", None)
        if f is None:
            f = self._local.file = self.path.open("rb")
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise ShardError(f"{self.path}: member {name} is cut short ({len(data)} of {size} bytes)")
        return label, name, data


def _runs(labels: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for label in labels:
        if out and out[-1][0] == label:
            out[-1][1] += 1
        else:
            out.append([int(label), 1])
    return out


def _unrun(runs) -> np.ndarray:
    return np.concatenate([np.full(n, c, np.int32) for c, n in runs]) if runs else np.zeros(0, np.int32)


class PackedSplit:
    """One split of a packed directory as a random-access source of ``(PIL image, label)``, like
    ``train.data.Split``: ``labels`` (from ``dataset.json``), ``len``, ``load(i)``, and ``read(i)`` (the stored
    image bytes)."""

    def __init__(self, shards: list, labels: np.ndarray):
        self.shards = shards
        self.labels = labels
        self._starts = np.cumsum([0] + [len(s) for s in shards[:-1]]).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def locate(self, i: int) -> tuple[object, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of a split of {len(self)}")
        k = bisect.bisect_right(self._starts, i) - 1
        return self.shards[k], i - self._starts[k]

    def read(self, i: int) -> bytes:
        shard, j = self.locate(i)
        label, name, data = shard.read(j)
        if label != self.labels[i]:
            raise ShardError(f"{shard.path}: record {j} ({name}) has label {label}, {META} says {self.labels[i]}")
        return data

    def load(self, i: int, prepare=None) -> Image.Image:
        """Example ``i``'s image, RGB; ``prepare(image)`` is called on it before it is decoded."""
        data = self.read(i)
        try:
            with Image.open(io.BytesIO(data)) as im:
                if prepare is not None:
                    prepare(im)
                return im.convert("RGB")
        except Exception as e:
            shard, j = self.locate(i)
            raise ShardError(f"{shard.path}: record {j} is not a readable image ({type(e).__name__}: {e})") from e


def open_packed(root: str | os.PathLike) -> tuple[list[str], dict[str, PackedSplit]]:
    """The class names and the ``train`` / ``val`` splits of a packed directory. Every shard is opened (tar
    shards indexed) and checked against ``dataset.json`` here, before training starts: a missing, short or
    damaged shard, or a label outside the classes, is a ``ShardError`` naming the shard (and the label)."""
    root = epath.Path(root)
    try:
        meta = json.loads(root.joinpath(META).read_text())
        fmt, classes, splits = meta["format"], list(meta["classes"]), meta["splits"]
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{root / META}: not a packed-dataset description ({type(e).__name__}: {e})") from e
    if fmt not in FORMATS:
        raise ShardError(f"{root / META}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not classes:
        raise ShardError(f"{root / META}: no classes")
    out = {}
    for split in ("train", "val"):
        if not splits.get(split):
            raise ShardError(f"{root / META}: no {split} shards")
        shards, labels = [], []
        for entry in splits[split]:
            path = root / split / entry["file"]
            shard_labels = _unrun(entry["labels"])
            bad = shard_labels[(shard_labels < 0) | (shard_labels >= len(classes))]
            if bad.size:
                raise ShardError(f"{path}: label {int(bad[0])} is outside the {len(classes)} classes of {META}")
            if len(shard_labels) != entry["count"]:
                raise ShardError(f"{root / META}: {path.name} lists {len(shard_labels)} labels for {entry['count']}")
            if not path.exists():
                raise ShardError(f"{path}: shard listed in {META} is missing")
            shard = _ArrayRecordShard(path) if fmt == "arrayrecord" else _TarShard(path)
            if len(shard) != entry["count"]:
                raise ShardError(f"{path}: {len(shard)} examples, {META} says {entry['count']} (short or damaged)")
            if fmt == "tar" and shard.labels() != shard_labels.tolist():
                first = next(j for j, (a, b) in enumerate(zip(shard.labels(), shard_labels, strict=True)) if a != b)
                raise ShardError(f"{path}: example {first}'s .cls label differs from {META}'s")
            shards.append(shard)
            labels.append(shard_labels)
        out[split] = PackedSplit(shards, np.concatenate(labels))
    return classes, out


def is_tar_dir(root: str | os.PathLike) -> bool:
    """A directory of webdataset tar shards not written by ``pack`` (no ``dataset.json``): ``train/*.tar`` and
    ``val/*.tar``."""
    root = epath.Path(root)
    return not is_packed(root) and any(root.joinpath("train").glob("*.tar"))


def open_tar_dir(root: str | os.PathLike) -> tuple[int, dict[str, PackedSplit]]:
    """The class count and the ``train`` / ``val`` splits of a directory of webdataset tar shards written by other
    tools (``is_tar_dir``): each split's ``*.tar`` shards in name order, each shard's examples in member order; an
    example is the members sharing a key (the name up to the basename's first dot): an image (``.jpg``,
    ``.jpeg``, ``.png``, ...) and an integer label (``.cls``, else ``.txt``). Without ``dataset.json`` there are
    no class names: the class count is the largest label of either split plus one. Every shard is indexed here,
    so a damaged shard, an example without image or label, or a label that is not a non-negative integer is a
    ``ShardError`` naming the shard before training starts."""
    root = epath.Path(root)
    out = {}
    for split in ("train", "val"):
        paths = sorted(root.joinpath(split).glob("*.tar"))
        if not paths:
            raise ShardError(f"{root / split}: no .tar shards (a tar directory holds train/*.tar and val/*.tar)")
        shards = [_TarShard(p) for p in paths]
        for shard in shards:
            if not len(shard):
                raise ShardError(f"{shard.path}: no examples (an image and a .cls label under one key)")
            if min(shard.labels()) < 0:
                raise ShardError(f"{shard.path}: label {min(shard.labels())} is negative")
        out[split] = PackedSplit(shards, np.asarray([y for s in shards for y in s.labels()], np.int32))
    return int(max(split.labels.max() for split in out.values())) + 1, out


def _write_arrayrecord(path: str, examples) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1,uncompressed")  # JPEG bytes do not compress further
    try:
        for label, name, data in examples:
            writer.write(_encode(label, name, data))
    finally:
        writer.close()


def _write_tar(path: str, examples, first: int, digits: int) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (label, name, data) in enumerate(examples, first):
            ext = name.rpartition(".")[2].lower()
            ext = "jpg" if ext == "jpeg" else ext
            key = f"{i:0{digits}d}"
            for member, payload in ((f"{key}.{ext}", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(member)
                info.size, info.mode, info.mtime = len(payload), 0o644, 0  # fixed: the shard is a function of the input
                tar.addfile(info, io.BytesIO(payload))


def pack(
    out: str | os.PathLike,
    splits: dict[str, list[tuple[str, str, int]]],
    classes: Sequence[str],
    *,
    fmt: str,
    shards: int,
    progress: bool = True,
) -> dict:
    """Write ``splits`` (``split -> [(source file, name, label), ...]`` in order) as ``shards`` shards per split
    (fewer where a split has fewer examples) in ``fmt`` under ``out``, then ``dataset.json``; returns the
    description written. ``out`` must not already hold a packed dataset (nothing is overwritten)."""
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    out = epath.Path(out)
    if out.joinpath(META).exists():
        raise FileExistsError(f"{out} already holds a packed dataset ({META}); pack into a new directory")
    local = "://" not in os.fspath(out)
    meta = {"format": fmt, "classes": list(classes), "splits": {}}
    for split, examples in splits.items():
        n_shards = min(shards, len(examples))
        bounds = [round(k * len(examples) / n_shards) for k in range(n_shards + 1)]
        digits = max(6, len(str(len(examples) - 1)))
        (out / split).mkdir(parents=True, exist_ok=True)
        entries = []
        bar = tqdm(total=len(examples), desc=f"pack {split}", unit="img", disable=not progress)
        for k in range(n_shards):
            part = examples[bounds[k] : bounds[k + 1]]
            name = f"{split}-{k:05d}-of-{n_shards:05d}{_SUFFIX[fmt]}"

            def read(part=part, bar=bar):
                for src, rel, label in part:
                    data = epath.Path(src).read_bytes()
                    bar.update(1)
                    yield label, rel, data

            final = out / split / name
            with tempfile.TemporaryDirectory(dir=os.fspath(out / split) if local else None) as tmp:
                tmp_path = os.path.join(tmp, name)
                if fmt == "arrayrecord":
                    _write_arrayrecord(tmp_path, read())
                else:
                    _write_tar(tmp_path, read(), bounds[k], digits)
                if local:
                    os.replace(tmp_path, os.fspath(final))
                else:  # copy under a temporary name, then rename: no reader sees a partial shard by its name
                    partial = out / split / f".{name}.partial"
                    epath.Path(tmp_path).copy(partial, overwrite=True)
                    partial.rename(final)
            entries.append({"file": name, "count": len(part), "labels": _runs([label for _, _, label in part])})
        bar.close()
        meta["splits"][split] = entries
    tmp_meta = out / f".{META}.partial"
    tmp_meta.write_text(json.dumps(meta))
    tmp_meta.rename(out / META)
    return meta
