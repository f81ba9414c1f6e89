"""Input pipelines on grain: the embedded ``digits`` set and ImageFolder trees, sharded by process.

Order and augmentation are functions of the *global* example position: the training stream is the dataset
shuffled anew each epoch (``seed``), augmented with a per-position RNG (grain ``random_map``), and cut into
global batches. Process ``p`` of ``P`` reads only rows ``[p * B/P, (p + 1) * B/P)`` of every global batch, so
the global batch at step ``s`` holds the same examples whatever the number of processes, and element ``s`` of
each process's batched dataset *is* step ``s``: the grain iterator state (saved with each checkpoint) is
valid for any process count.

* ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (shipped with scikit-learn), split 80/20 with a
  fixed stratified shuffle, grey levels scaled to uint8, upscaled (bilinear) to the model's input size, and
  repeated over 3 channels.
* ImageFolder: ``root/train/<class>/*`` and ``root/val/<class>/*``; classes sorted by name, as torchvision.

Train augmentation: random-resized crop (timm's ``RandomResizedCropAndInterpolation`` sampling rule: ten tries
of area in ``scale`` and log-uniform aspect in ``ratio``, else a centre crop) and horizontal flip; mixup /
cutmix / label smoothing happen on the device (``train.steps``). Eval: digits as they are; ImageFolder images
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


def crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(left, top, right, bottom)``."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def train_transform(ds: Split, img_size: int, scale, ratio, hflip: float):
    def fn(i: int, rng: np.random.Generator) -> dict:
        im = ds.load(i)
        box = crop_box(im.width, im.height, scale, ratio, rng)
        im = im.resize((img_size, img_size), Image.BILINEAR, box=box)
        arr = np.asarray(im, np.uint8)
        if rng.uniform() < hflip:
            arr = arr[:, ::-1]
        return {"image": np.ascontiguousarray(arr), "label": np.int32(ds.labels[i])}

    return fn


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
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: float,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
) -> grain.IterDataset:
    """This process's share of the global training batches for steps ``0 .. steps - 1``."""
    n = len(data.train)
    epochs = math.ceil(steps * global_batch / n) + 1
    order = grain.MapDataset.range(n).shuffle(seed=seed).repeat(epochs)
    stream = order.random_map(
        lambda i, rng: train_transform(data.train, img_size, scale, ratio, hflip)(i, rng), seed=seed
    )
    batches = _local_view(steps, global_batch, process_index, process_count, lambda g: stream[g])
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
