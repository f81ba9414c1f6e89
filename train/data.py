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
* ImageFolder: ``root/train/<class>/*`` and ``root/val/<class>/*``; classes sorted by name, as torchvision.

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

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np
from PIL import Image

from train.augment import TrainAugment, crop_box
from train.sampler import RepeatAugStream

__all__ = ["crop_box"]  # re-exported: the random-resized-crop rule lives in train.augment
_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


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
        with Image.open(item) as im:
            return im.convert("RGB")


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    num_classes: int
    resized: bool  # images are stored at the model's input size already (digits)
    default_scale: tuple[float, float]
    default_hflip: float
    default_interpolation: str = "random"  # timm's train default
    default_color_jitter: float = 0.4  # timm's default (used when no --aa is given)


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
    for split in ("train", "val"):
        paths, labels = [], []
        for c, name in enumerate(classes):
            files = sorted(f for f in (root / split / name).glob("*") if f.suffix.lower() in _EXTS)
            paths += [str(f) for f in files]
            labels += [c] * len(files)
        if not paths:
            raise ValueError(f"{root}/{split} has no images")
        splits[split] = Split(paths, np.asarray(labels, np.int32))
    return Dataset(splits["train"], splits["val"], len(classes), False, (0.08, 1.0), 0.5)


def load_dataset(spec: str, img_size: int) -> Dataset:
    return digits(img_size) if spec == "digits" else image_folder(spec)


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


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def eval_image(
    ds: Split, i: int, img_size: int, resized: bool, crop_pct: float = 0.875, interpolation: str = "bicubic"
) -> np.ndarray:
    """timm's ``center`` eval transform up to normalisation (which happens on the device): the shorter side
    resized to ``floor(img_size / crop_pct)`` keeping the aspect ratio, then a centre crop."""
    im = ds.load(i)
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
) -> grain.IterDataset:
    """This process's share of the global training batches for steps ``0 .. steps - 1``.

    ``augment``: the train transform; without it, a random-resized crop (``scale``, ``ratio``, the dataset's
    interpolation) and horizontal flip (``hflip``) only. Without ``aug_repeats``, the stream is the dataset
    shuffled anew each epoch and the global batch at a step is the same for any process count. With it, each
    process is a rank of timm's ``RepeatAugSampler``: its rows are its rank's list, so a global batch holds
    the copies of each example on different processes (its row order, like timm's, depends on the count)."""
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
        return {"image": augment(split.load(index), rng), "label": np.int32(split.labels[index])}

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
) -> grain.MapDataset:
    """This process's share of the validation set in global batches; the last batch is padded (``valid`` 0)."""
    n = len(data.val)
    blank = np.zeros((img_size, img_size, 3), np.uint8)

    def fetch(g: int) -> dict:
        if g >= n:
            return {"image": blank, "label": np.int32(0), "valid": np.int32(0)}
        img = eval_image(data.val, g, img_size, data.resized, crop_pct, interpolation)
        return {"image": img, "label": np.int32(data.val.labels[g]), "valid": np.int32(1)}

    return _local_view(math.ceil(n / global_batch), global_batch, process_index, process_count, fetch)
