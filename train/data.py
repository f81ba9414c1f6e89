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

Train augmentation: timm's train transform (``train.augment.TrainAugment``: random-resized crop, flips,
RandAugment / AutoAugment / AugMix or colour jitter, random erasing), drawn from a generator seeded by the run's
seed and the example's position in the stream, so a resumed run sees the same pixels. ``aug_repeats``: timm's
repeated-augmentation sampler (``train.sampler``) with one rank per process. Mixup / cutmix / label smoothing
happen on the device (``train.steps``). Eval: digits as they are; ImageFolder images
resized to ``img_size / crop_pct`` on the short side and centre-cropped, as timm's eval transform, with the
model's ``crop_pct`` / interpolation / mean / std from ``vitjax.data.resolve_model_data_config``. Images leave
the pipeline as uint8 NHWC; normalisation happens on the device.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import threading
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

    def load(self, i: int) -> Image.Image:
        item = self.images[i]
        if isinstance(item, np.ndarray):
            return Image.fromarray(item)
        try:
            with Image.open(item) as im:
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


def load_dataset(spec: str, img_size: int) -> Dataset:
    if spec == "digits":
        return digits(img_size)
    return packed(spec) if records.is_packed(spec) else image_folder(spec)


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


def _load(split, i: int, bad: BadImages | None) -> tuple[Image.Image, int]:
    """Example ``i``'s image and the index it came from: ``i``, or under ``bad`` the next readable one."""
    if bad is None:
        return split.load(i), i
    for k in range(len(split)):
        j = (i + k) % len(split)
        try:
            return split.load(j), j
        except _UNREADABLE as e:
            bad.record(split, j, e)
    raise ValueError(f"--skip-bad-images: none of the {len(split)} images of the split is readable")


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


def _local_view(n_batches: int, global_batch: int, process_index: int, process_count: int, fetch):
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    b = global_batch // process_count

    def local(i: int):
        step, k = divmod(i, b)
        return fetch(step * global_batch + process_index * b + k)

    return grain.MapDataset.range(n_batches * b).map(local).batch(b, drop_remainder=True)


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
    bad_images: BadImages | None = None,
) -> grain.IterDataset:
    """This process's share of the global training batches for steps ``0 .. steps - 1``.

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
        rng = np.random.default_rng((seed, 1, key))  # the example's own draws: a function of seed and position
        image, index = _load(split, index, bad_images)
        return {"image": augment(image, rng), "label": np.int32(split.labels[index])}

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

    batches = grain.MapDataset.range(steps * b).map(local).batch(b, drop_remainder=True)
    opts = grain.ReadOptions(num_threads=max(workers, 1), prefetch_buffer_size=max(2 * workers, 1))
    return batches.to_iter_dataset(opts)


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
) -> grain.MapDataset:
    """This process's share of the validation set in global batches; the last batch is padded (``valid`` 0), as
    is an unreadable image under ``bad_images``."""
    n = len(data.val)
    blank = np.zeros((img_size, img_size, 3), np.uint8)

    def fetch(g: int) -> dict:
        if g >= n:
            return {"image": blank, "label": np.int32(0), "valid": np.int32(0)}
        if bad_images is not None:
            try:
                image = data.val.load(g)
            except _UNREADABLE as e:
                bad_images.record(data.val, g, e)
                return {"image": blank, "label": np.int32(0), "valid": np.int32(0)}
        else:
            image = None
        img = eval_image(data.val, g, img_size, data.resized, crop_pct, interpolation, image)
        return {"image": img, "label": np.int32(data.val.labels[g]), "valid": np.int32(1)}

    return _local_view(math.ceil(n / global_batch), global_batch, process_index, process_count, fetch)


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
