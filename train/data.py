"""Input pipelines on grain: the embedded ``digits`` set and ImageFolder trees, sharded by process.

Order and augmentation are functions of the *global* example position: the training stream is the dataset
shuffled anew each epoch (``seed``), augmented with a generator seeded by ``(seed, position)``, and cut into
global batches. Process ``p`` of ``P`` reads only rows ``[p * B/P, (p + 1) * B/P)`` of every global batch, so
the global batch at step ``s`` holds the same examples whatever the number of processes, and element ``s`` of
each process's batched dataset *is* step ``s``: the grain iterator state (saved with each checkpoint) is
valid for any process count (with ``aug_repeats``, for the same process count: see ``train_batches``).

* ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (shipped with scikit-learn), split 80/20 with a
  fixed stratified shuffle, grey levels scaled to uint8, upscaled (bilinear) to the model's input size, and
  repeated over 3 channels.
* ImageFolder: ``root/train/<class>/*`` and ``root/val/<class>/*``; classes sorted by name, as torchvision. An
  empty class folder, or a val class folder that train lacks, is an error naming it.
* A packed directory (``train.records``: ArrayRecord or webdataset tar shards and their ``dataset.json``), written
  from an ImageFolder by ``python -m train.data pack --src IMAGEFOLDER --out DIR --format arrayrecord|tar
  --shards N``; it yields the examples of that ImageFolder, in its order, and is checked when opened.
* Webdataset tar shards from elsewhere: ``root/train/*.tar`` and ``root/val/*.tar`` without ``dataset.json``,
  labels from ``.cls`` (or ``.txt``) members; no class names, the class count is the largest label plus one.

Train augmentation: timm's train transform (``train.augment.TrainAugment``: random-resized crop, flips,
RandAugment / AutoAugment / AugMix or colour jitter, random erasing), drawn from a generator seeded by the run's
seed and the example's position in the stream, so a resumed run sees the same pixels. ``aug_repeats``: timm's
repeated-augmentation sampler (``train.sampler``) with one rank per process. Mixup / cutmix / label smoothing
happen on the device (``train.steps``). Eval: digits as they are; ImageFolder images
resized to ``img_size / crop_pct`` on the short side and centre-cropped, as timm's eval transform, with the
model's ``crop_pct`` / interpolation / mean / std from ``vitjax.data.resolve_model_data_config``. Images leave
the pipeline as uint8 NHWC; normalisation happens on the device.

Throughput: ``workers`` processes (``--workers``, ``Batches``) each read, decode, augment and stack whole batches,
which reach the training process in shared memory; the batches are the same for any number of workers, and the
iterator state is the batch index, so a checkpoint resumes under any worker or process count. ``DevicePrefetch``
keeps the next batches on their way to the devices while a step runs. A JPEG whose random-resized crop is at least
twice the output size is decoded at reduced scale (``plan_decode``).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np
from PIL import Image

from train import records
from train.augment import TrainAugment, crop_box
from train.sampler import RepeatAugStream

__all__ = ["crop_box"]  # re-exported: the random-resized-crop rule lives in train.augment
_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}  # torchvision ImageFolder's


@dataclass(frozen=True)
class Split:
    """One split as a random-access source of ``(PIL image, label)``."""

    images: Sequence  # uint8 HWC arrays, or image file paths
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int, prepare=None) -> Image.Image:
        """Example ``i``'s image, RGB; ``prepare(image)`` is called on it before it is decoded (``plan_decode``)."""
        item = self.images[i]
        if isinstance(item, np.ndarray):
            im = Image.fromarray(item)
            if prepare is not None:
                prepare(im)
            return im
        try:
            with Image.open(item) as im:
                if prepare is not None:
                    prepare(im)
                return im.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's errors for bad files
            raise ImageError(f"{item}: cannot read this image ({type(e).__name__}: {e})") from e


class ImageError(ValueError):
    """An image file of the dataset that is missing, truncated or not an image."""


@dataclass(frozen=True)
class Dataset:
    train: Split | records.PackedSplit
    val: Split | records.PackedSplit
    num_classes: int
    resized: bool  # images are stored at the model's input size already (digits)
    default_scale: tuple[float, float]
    default_hflip: float
    default_interpolation: str = "random"  # timm's train default
    default_color_jitter: float = 0.4  # timm's default (used when no --aa is given)
    classes: tuple[str, ...] = ()  # class names by label, where the source has them


@functools.cache
def digits(img_size: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    grey = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # N, 8, 8
    big = np.stack([np.asarray(Image.fromarray(g).resize((img_size, img_size), Image.BILINEAR)) for g in grey])
    rgb = np.repeat(big[..., None], 3, axis=-1)  # N, S, S, 3
    idx_train, idx_val = train_test_split(np.arange(len(grey)), test_size=0.2, random_state=0, stratify=d.target)
    labels = d.target.astype(np.int32)
    return Dataset(
        train=Split(list(rgb[idx_train]), labels[idx_train]),
        val=Split(list(rgb[idx_val]), labels[idx_val]),
        num_classes=10,
        resized=True,
        default_scale=(0.5, 1.0),
        default_hflip=0.0,
        default_interpolation="bilinear",
        default_color_jitter=0.0,
    )


def image_folder(root: str | Path) -> Dataset:
    root = Path(root)
    splits = {}
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}/train has no class folders")
    extra = sorted({p.name for p in (root / "val").glob("*") if p.is_dir()} - set(classes))
    if extra:
        raise ValueError(f"{root}/val has class folders that {root}/train lacks: {', '.join(extra)}")
    for split in ("train", "val"):
        paths, labels = [], []
        for c, name in enumerate(classes):
            folder = root / split / name
            files = sorted(f for f in folder.glob("*") if f.suffix.lower() in _EXTS)
            if folder.is_dir() and not files:
                raise ValueError(f"{folder} is an empty class folder (no {'/'.join(sorted(_EXTS))} files)")
            paths += [str(f) for f in files]
            labels += [c] * len(files)
        if not paths:
            raise ValueError(f"{root}/{split} has no images")
        splits[split] = Split(paths, np.asarray(labels, np.int32))
    return Dataset(splits["train"], splits["val"], len(classes), False, (0.08, 1.0), 0.5, classes=tuple(classes))


def packed(root: str) -> Dataset:
    """A directory written by ``pack``: its shards opened and checked (``train.records.open_packed``)."""
    classes, splits = records.open_packed(root)
    return Dataset(splits["train"], splits["val"], len(classes), False, (0.08, 1.0), 0.5, classes=tuple(classes))


def tar_dir(root: str) -> Dataset:
    """Webdataset tar shards written by other tools (``train.records.open_tar_dir``): no class names, and the
    class count is the largest label plus one."""
    num_classes, splits = records.open_tar_dir(root)
    return Dataset(splits["train"], splits["val"], num_classes, False, (0.08, 1.0), 0.5)


def load_dataset(spec: str, img_size: int) -> Dataset:
    """``digits``, a packed directory (``dataset.json``), a directory of webdataset ``train/*.tar`` and
    ``val/*.tar`` shards, or an ImageFolder."""
    if spec == "digits":
        return digits(img_size)
    if records.is_packed(spec):
        return packed(spec)
    return tar_dir(spec) if records.is_tar_dir(spec) else image_folder(spec)


def train_augment(cfg, data: Dataset, img_size: int, mean, std) -> TrainAugment:
    """The train transform of a ``TrainConfig`` (its augmentation flags; ``None`` fields take the dataset's
    defaults), normalising with the model's ``mean`` / ``std``."""
    jitter = data.default_color_jitter if cfg.color_jitter is None else cfg.color_jitter
    return TrainAugment(
        img_size,
        scale=tuple(cfg.scale or data.default_scale),
        ratio=tuple(cfg.ratio),
        hflip=data.default_hflip if cfg.hflip is None else cfg.hflip,
        vflip=cfg.vflip,
        interpolation=cfg.train_interpolation or data.default_interpolation,
        aa=cfg.aa,
        color_jitter=(jitter,) * 3 if jitter else None,
        reprob=cfg.reprob,
        remode=cfg.remode,
        recount=cfg.recount,
        mean=tuple(mean),
        std=tuple(std),
    )


_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError)  # what PIL and train.records raise for a bad image


class BadImages:
    """The unreadable images met under ``--skip-bad-images``. A training example whose image cannot be read is
    replaced by the next readable example of its split (image and label; a function of the position, so runs
    and resumes stay exact); an eval example is left out (``valid`` 0). Each file is named on stderr the first
    time; ``count`` counts every replacement."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self.errors: dict[str, str] = {}  # file (or example) -> its first error

    def __getstate__(self) -> dict:  # a worker process gets its own copy; its lock cannot travel
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def record(self, split, i: int, error: Exception) -> None:
        if isinstance(split, records.PackedSplit):
            shard, j = split.locate(i)
            name = f"{shard.path} record {j}"
        else:
            item = split.images[i]
            name = item if isinstance(item, str) else f"example {i}"
        with self._lock:
            self.count += 1
            if name in self.errors:
                return
            self.errors[name] = f"{type(error).__name__}: {error}"
        print(f"[data] skipping unreadable image {name} ({self.errors[name]})", file=sys.stderr, flush=True)


def _load(split, i: int, bad: BadImages | None, prepare=None) -> tuple[Image.Image, int]:
    """Example ``i``'s image and the index it came from: ``i``, or under ``bad`` the next readable one."""
    if bad is None:
        return split.load(i, prepare), i
    for k in range(len(split)):
        j = (i + k) % len(split)
        try:
            return split.load(j, prepare), j
        except _UNREADABLE as e:
            bad.record(split, j, e)
    raise ValueError(f"--skip-bad-images: none of the {len(split)} images of the split is readable")


def plan_decode(img: Image.Image, augment: TrainAugment, rng: np.random.Generator, draft: bool = True):
    """The crop box of ``augment``'s random-resized crop, drawn from ``rng`` on ``img`` before it is decoded (its
    size is the file header's), and the scale to decode it at. With ``draft``, a JPEG whose crop window is at
    least twice the output size on both sides is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling through
    PIL's ``Image.draft``: the most that keeps the window at least the output size, so the resize still only
    shrinks), which saves most of the decode; else (and for other formats) the scale is 1 and the image is
    decoded and cropped exactly as without this step. Returns ``(box, scale)`` for ``augment(image, rng, box,
    scale)``. The drafted pixels are those of the full decode up to the filtering of the reduction."""
    box = crop_box(img.width, img.height, augment.scale, augment.ratio, rng)
    short = min(box[2] - box[0], box[3] - box[1])
    want = next((s for s in (8, 4, 2) if short >= s * augment.img_size), 1) if draft else 1
    if want == 1:
        return box, 1
    width = img.width  # draft changes img.size to the reduced one
    got = img.draft("RGB", (width // want, img.height // want))  # None: not a JPEG (decoded in full)
    return box, 1 if got is None else round(width / got[1][2])  # got[1]: (0, 0, width / s, height / s)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def eval_image(
    ds: Split,
    i: int,
    img_size: int,
    resized: bool,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    image: Image.Image | None = None,
) -> np.ndarray:
    """timm's ``center`` eval transform up to normalisation (which happens on the device): the shorter side
    resized to ``floor(img_size / crop_pct)`` keeping the aspect ratio, then a centre crop (of ``image`` when
    given, else of example ``i`` of ``ds``)."""
    im = ds.load(i) if image is None else image
    if not resized:
        short = int(math.floor(img_size / crop_pct))
        w, h = im.size
        if w <= h:
            size = (short, int(short * h / w))
        else:
            size = (int(short * w / h), short)
        if size != (w, h):
            im = im.resize(size, _RESAMPLE.get(interpolation, Image.BICUBIC))
        top, left = int(round((im.height - img_size) / 2.0)), int(round((im.width - img_size) / 2.0))
        im = im.crop((left, top, left + img_size, top + img_size))
    return np.asarray(im, np.uint8)


def _worker_init(index: int, count: int, *, parent: int) -> None:
    """Runs first in each data worker process. SIGTERM / SIGINT sent to the whole process group are left to the
    training process, which checkpoints and then stops its workers; and a worker exits by itself once that
    process is gone (killed outright, nobody would stop it)."""
    del index, count
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


_NO_SHM = 1 << 62  # the size from which grain would put an array in shared memory (see Batches.pipeline)


class Batches:
    """Batches of ``batch`` consecutive records of ``records`` (a ``grain.MapDataset`` of per-example dicts),
    read by ``workers`` processes. ``iter()`` gives a ``BatchIterator``; ``len`` and ``[i]`` (batch ``i``, read
    in this process) are there too.

    ``workers`` 0: batches are made in this process, ``threads`` grain threads each making whole batches.
    ``workers`` N: grain's ``mp_prefetch`` starts N processes (spawned; each gets a pickled copy of the records'
    functions and opens its own file handles) that each make whole batches (read, decode, augment, stack;
    ``threads`` read threads each). Worker ``w`` makes batches ``w, w + N, ...`` and grain interleaves them back
    in order, so the batches do not depend on ``workers``. Whole batches rather than single records: handing
    records over one at a time and stacking them here made the training process a bottleneck of its own
    (docs/performance.md, the input pipeline)."""

    def __init__(self, records: grain.MapDataset, batch: int, *, workers: int = 0, threads: int = 0, bad=None):
        if workers < 0 or threads < 0:
            raise ValueError(f"workers ({workers}) and threads ({threads}) must be >= 0")
        self.records, self.batch, self.workers, self.threads, self.bad = records, batch, workers, threads, bad

    def __len__(self) -> int:
        return len(self.records) // self.batch

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        return self._collect([self.records[i * self.batch + k] for k in range(self.batch)])

    def __iter__(self) -> BatchIterator:
        return BatchIterator(self)

    def _collect(self, examples: list[dict]) -> dict:
        return self._count({k: np.stack([e[k] for e in examples]) for k in examples[0]}, remote=False)

    def _count(self, batch: dict, remote: bool) -> dict:
        """Drops the per-example count of unreadable reads, adding it to ``bad`` when it was made in a worker
        process (``remote``: that process's copy of ``bad`` counted it, not ours)."""
        reads = batch.pop("bad_reads", None)
        if remote and self.bad is not None and reads is not None:
            with self.bad._lock:
                self.bad.count += int(reads.sum())
        return batch

    def pipeline(self, start: int) -> grain.IterDataset:
        """The grain dataset of batches ``start, start + 1, ...``."""
        records = self.records[start * self.batch : len(self) * self.batch]
        if not self.workers:
            batched = records.batch(self.batch, drop_remainder=True)
            return batched.to_iter_dataset(
                grain.ReadOptions(num_threads=max(self.threads, 1), prefetch_buffer_size=max(2 * self.threads, 1))
            )
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads an absl flag when it starts workers (once jax's profiler
            flags.FLAGS.mark_as_parsed()  # is loaded); outside absl.app nobody parsed them: take the defaults
        batched = records.batch(self.batch, drop_remainder=True).to_iter_dataset(
            grain.ReadOptions(num_threads=max(self.threads, 1), prefetch_buffer_size=max(2 * self.threads, 1))
        )
        # batches go through the workers' queues by pickle, not in shared-memory blocks: grain frees those
        # asynchronously, and a process ending right after its last batch left some to the resource tracker
        batched = grain.experimental.WithOptionsIterDataset(
            batched, grain.experimental.DatasetOptions(min_shm_size=_NO_SHM)
        )
        return batched.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2),
            worker_init_fn=functools.partial(_worker_init, parent=os.getpid()),
        )


class BatchIterator:
    """An iterator over ``Batches`` whose state is the index of its next batch (``{"next_index": i}``, the state
    grain's own batch iterator has, so checkpoints of either load): ``set_state`` restarts the pipeline there,
    whatever the number of workers or processes. The pipeline (and its worker processes) starts at the first
    ``next`` and stops at the end, on ``set_state`` and on ``close`` (or leaving a ``with`` block)."""

    def __init__(self, batches: Batches):
        self._batches = batches
        self._next = 0
        self._it = None

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict:
        if self._next >= len(self._batches):
            self.close()
            raise StopIteration
        if self._it is None:
            self._it = iter(self._batches.pipeline(self._next))
        batch = next(self._it)
        self._next += 1
        return self._batches._count(dict(batch), remote=self._batches.workers > 0)

    def get_state(self) -> dict:
        return {"next_index": self._next}

    def set_state(self, state: dict) -> None:
        self.close()
        self._next = int(state["next_index"])

    def close(self) -> None:
        if self._it is not None:
            it, self._it = self._it, None
            it.close()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DevicePrefetch:
    """Keeps ``depth`` batches of an iterator already handed to ``put`` (e.g. ``jax.device_put`` or
    ``jax.make_array_from_process_local_data``, which return before the copy is done) ahead of the consumer,
    so the copy to the device overlaps the step. ``get_state`` is the state after the batches handed out so
    far (not those queued), so a checkpoint taken between steps resumes at the right batch."""

    def __init__(self, it: BatchIterator, put, depth: int = 2):
        self._it, self._put, self._depth = it, put, depth
        self._queue: list = []
        self._taken = it.get_state()["next_index"]

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self):
        while len(self._queue) < self._depth + 1:
            try:
                self._queue.append(self._put(next(self._it)))
            except StopIteration:
                break
        if not self._queue:
            raise StopIteration
        self._taken += 1
        return self._queue.pop(0)

    def get_state(self) -> dict:
        return {"next_index": self._taken}

    def close(self) -> None:
        self._queue.clear()
        self._it.close()


def train_batches(
    data: Dataset,
    *,
    img_size: int,
    global_batch: int,
    steps: int,
    seed: int,
    augment: TrainAugment | None = None,
    aug_repeats: float = 0,
    scale: tuple[float, float] | None = None,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float | None = None,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    threads: int = 0,
    bad_images: BadImages | None = None,
    draft: bool = True,
) -> Batches:
    """This process's share of the global training batches for steps ``0 .. steps - 1``, uint8 NHWC images
    and int32 labels.

    The training iterator for a given number of worker processes, without running training::

        data = load_dataset("path/to/imagefolder_or_packed_dir", 224)
        aug = train_augment(TrainConfig(model=..., steps=..., aa=...), data, 224, mean, std)  # or TrainAugment
        with iter(train_batches(data, img_size=224, global_batch=256, steps=1000, seed=0, augment=aug,
                                workers=8)) as it:
            for batch in it: ...

    ``workers``: decoding processes (``Batches``; 0 decodes in this process); ``threads``: grain read threads
    in each reading process. ``draft``: JPEGs decoded at reduced scale where the crop allows (``plan_decode``).

    ``augment``: the train transform; without it, a random-resized crop (``scale``, ``ratio``, the dataset's
    interpolation) and horizontal flip (``hflip``) only. Without ``aug_repeats``, the stream is the dataset
    shuffled anew each epoch and the global batch at a step is the same for any process count. With it, each
    process is a rank of timm's ``RepeatAugSampler``: its rows are its rank's list, so a global batch holds
    the copies of each example on different processes (its row order, like timm's, depends on the count).
    ``bad_images``: skip and count unreadable images (``BadImages``) instead of stopping at the first."""
    if augment is None:
        augment = TrainAugment(
            img_size,
            scale=tuple(scale or data.default_scale),
            ratio=tuple(ratio),
            hflip=data.default_hflip if hflip is None else hflip,
            interpolation=data.default_interpolation,
            color_jitter=None,
        )
    if augment.img_size != img_size:
        raise ValueError(f"the train transform makes {augment.img_size} px images, the model takes {img_size}")
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    split, b = data.train, global_batch // process_count

    def example(index: int, key: int) -> dict:
        drawn = {}

        def prepare(image: Image.Image) -> None:  # before decoding: the crop box, and the decode scale it allows
            rng = np.random.default_rng((seed, 1, key))  # the example's own draws: a function of seed and position
            drawn["rng"] = rng  # (afresh for each image tried under --skip-bad-images)
            drawn["box"], drawn["scale"] = plan_decode(image, augment, rng, draft)

        image, read = _load(split, index, bad_images, prepare)
        img = augment(image, drawn["rng"], drawn["box"], drawn["scale"])
        bad_reads = np.int32((read - index) % len(split))
        return {"image": img, "label": np.int32(split.labels[read]), "bad_reads": bad_reads}

    if aug_repeats:
        stream = RepeatAugStream(len(split), aug_repeats, process_count, seed, batch=b)

        def local(t: int) -> dict:
            return example(stream.index(process_index, t), stream.key(process_index, t))

    else:
        epochs = math.ceil(steps * global_batch / len(split)) + 1
        order = grain.MapDataset.range(len(split)).shuffle(seed=seed).repeat(epochs)

        def local(t: int) -> dict:
            step, k = divmod(t, b)
            g = step * global_batch + process_index * b + k
            return example(order[g], g)

    records = grain.MapDataset.range(steps * b).map(local)
    return Batches(records, b, workers=workers, threads=threads, bad=bad_images)


def eval_batches(
    data: Dataset,
    *,
    img_size: int,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    bad_images: BadImages | None = None,
    workers: int = 0,
    threads: int = 0,
) -> Batches:
    """This process's share of the validation set in global batches (``Batches``, read by ``workers``
    processes); the last batch is padded (``valid`` 0), as is an unreadable image under ``bad_images``."""
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    n, b = len(data.val), global_batch // process_count
    blank = np.zeros((img_size, img_size, 3), np.uint8)

    def fetch(t: int) -> dict:
        step, k = divmod(t, b)
        g = step * global_batch + process_index * b + k
        if g >= n:
            return {"image": blank, "label": np.int32(0), "valid": np.int32(0), "bad_reads": np.int32(0)}
        if bad_images is not None:
            try:
                image = data.val.load(g)
            except _UNREADABLE as e:
                bad_images.record(data.val, g, e)
                return {"image": blank, "label": np.int32(0), "valid": np.int32(0), "bad_reads": np.int32(1)}
        else:
            image = None
        img = eval_image(data.val, g, img_size, data.resized, crop_pct, interpolation, image)
        return {"image": img, "label": np.int32(data.val.labels[g]), "valid": np.int32(1), "bad_reads": np.int32(0)}

    records = grain.MapDataset.range(math.ceil(n / global_batch) * b).map(fetch)
    return Batches(records, b, workers=workers, threads=threads, bad=bad_images)


def _shards(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"--shards must be at least 1, got {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    """``python -m train.data pack --src IMAGEFOLDER --out DIR --format arrayrecord|tar --shards N``."""
    parser = argparse.ArgumentParser(prog="python -m train.data", description="Dataset tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write an ImageFolder's train/ and val/ splits as shards (train.records)")
    p.add_argument("--src", required=True, help="ImageFolder root with train/<class>/ and val/<class>/")
    p.add_argument("--out", required=True, help="new directory (local or gs://) for the shards and dataset.json")
    p.add_argument("--format", required=True, choices=records.FORMATS)
    p.add_argument("--shards", type=_shards, required=True, help="shards per split (fewer if a split is smaller)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    try:
        folder = image_folder(args.src)
    except (OSError, ValueError) as e:
        parser.error(f"--src: {e}")
    splits = {}
    for name, split in (("train", folder.train), ("val", folder.val)):
        base = Path(args.src) / name
        splits[name] = [
            (p, Path(p).relative_to(base).as_posix(), int(c)) for p, c in zip(split.images, split.labels, strict=True)
        ]
    if records.is_packed(args.out):
        parser.error(f"--out {args.out} already holds a packed dataset ({records.META}); choose a new directory")
    meta = records.pack(args.out, splits, folder.classes, fmt=args.format, shards=args.shards, progress=args.progress)
    counts = ", ".join(f"{k}: {sum(e['count'] for e in v)} in {len(v)} shards" for k, v in meta["splits"].items())
    print(f"[pack] {args.out}: {args.format}, {len(folder.classes)} classes; {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
