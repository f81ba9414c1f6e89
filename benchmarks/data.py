"""The input pipeline of ``python -m train`` against timm's DataLoader, side by side, on this machine's CPU.

    python -m benchmarks.data make --out /tmp/jpegs --images 1000 --classes 10
    python -m benchmarks.data --data /tmp/jpegs --workers 2 --batch-size 64 --img-size 224 \\
        --aa rand-m9-mstd0.5-inc1 --reprob 0.25 --format both --json data_bench.json

``make`` writes an ImageFolder (``train/<class>/*.jpg``, ``val/<class>/*.jpg``) of ImageNet-sized JPEGs: random
crops of scikit-image's sample photos, resized to 500x375 or 375x500 and saved at quality 90, so the benchmark
runs from a fresh clone with nothing to download.

The benchmark times, in one process, alternating run by run (vitjax, timm, vitjax, timm, ...; ``--repeats`` each):

* vitjax: the training pipeline exactly as ``python -m train`` builds it: ``train.data.load_dataset`` and
  ``train.data.train_batches`` with the transform ``train.data.train_augment`` makes of a ``TrainConfig`` holding
  this command's augmentation flags, ``workers`` = ``--workers`` (processes), ``data_workers`` = ``--threads``.
  From the ImageFolder and (``--format arrayrecord|both``) from its ArrayRecord packing, written once into a
  temporary directory by the function behind ``python -m train.data pack``.
* timm: ``timm.data.create_dataset('', root, split='train')`` (its ImageFolder reader over the same files) and
  ``timm.data.create_loader(is_training=True, num_workers=--workers)`` with the same image size, RandAugment,
  random erasing (probability, mode, count), colour jitter, interpolation, scale, ratio, flips, mean and std.

timm runs as its ``train.py`` does by default, with ``use_prefetcher=True``, and the benchmark times the
``DataLoader`` inside its ``PrefetchLoader``: the workers decode, crop, flip and augment, and hand over uint8
tensors (``MaybePILToTensor``, ``fast_collate``); the prefetcher's device work (normalisation and random erasing, on the
GPU) is left out, as our normalisation on the TPU is. That is the fair peer: our workers also stop at uint8;
they erase as well, which timm leaves to its device (at ``--reprob 0.25``, a few per cent of a worker's time:
``--profile``), so the comparison is slightly conservative for vitjax. Without the prefetcher
(``--no-timm-prefetcher``) timm's workers also convert to float and normalise (``ToTensor``, ``Normalize``),
about an eighth of their time, host work that ours leaves to the device. torch runs with one intra-op thread in
the main process (``torch.set_num_threads(1)``, restored after; its workers use one each anyway), so
``--workers 0`` is one core on both sides.

timm 1.0.31's RandAugment passes 0 bits to Pillow's posterize at the largest magnitudes, which this Pillow
refuses: ``timm_posterize_at_zero_bits`` gives those ops Pillow's old result, as ``train.augment_ops`` does.

Each run builds its loader anew. The time from building it to the first batch (worker start-up, and filling the
first batch) is reported on its own; the steady rate is over the ``--batches`` batches that follow the first
``1 + 2 * workers``: while the first batch is being made (a grain worker process starts in seconds: it imports
jax), the workers fill their buffers (timm's two batches a worker, grain's a batch between them and its read
threads' buffers), and counting those batches as steady would flatter the side that starts slowest. Neither
stream ends with the window (vitjax's goes on for ``2 * workers + 2`` batches more; timm's is its
``MultiEpochsDataLoader``, ``use_multi_epochs_loader=True``, whose workers go on into the next epoch instead of
idling while the last batches of one are taken), so the workers are as busy at its end as at its start, as in
training. A side's figure is the median over its runs. Per core: images/s divided by the workers (by one for
``--workers 0``: everything happens in the main process); and, measured rather than assumed, images per
CPU-second: the CPU time (user + system) of this process and all its descendants, read from ``/proc`` over the
steady window (Linux only; ``null`` elsewhere). On a shared machine the second is the honest one: a worker that
waits for a core is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
SIZES = ((500, 375), (375, 500))  # (width, height): ImageNet's most common shapes
FORMATS = ("imagefolder", "arrayrecord", "both")


# ----------------------------------------------------------------------------------------------- the data maker
def make_images(out: str | Path, images: int, classes: int, val_images: int, seed: int = 0) -> Path:
    """An ImageFolder of JPEGs at ``out``: ``images`` train and ``val_images`` val files, dealt round-robin over
    ``classes`` folders. Written under ``<out>.partial`` and renamed when complete; ``out`` must not exist."""
    import skimage.data

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new directory")
    photos = [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]
    rng = np.random.default_rng(seed)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        raise FileExistsError(f"{tmp} exists (an interrupted make?); remove it first")
    for split, n in (("train", images), ("val", val_images)):
        for c in range(classes):
            (tmp / split / f"class_{c:03d}").mkdir(parents=True)
        for i in range(n):
            photo = photos[int(rng.integers(len(photos)))]
            w, h = SIZES[int(rng.random() < 0.3)]  # mostly landscape, as ImageNet
            ph, pw = photo.shape[:2]
            scale = min(pw / w, ph / h) * rng.uniform(0.5, 1.0)  # the largest window of that shape, shrunk
            cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
            x, y = int(rng.integers(pw - cw + 1)), int(rng.integers(ph - ch + 1))
            im = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((w, h), Image.BICUBIC)  # ch, cw, 3
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im.save(tmp / split / f"class_{i % classes:03d}" / f"{split}_{i:06d}.jpg", quality=90)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------- the two sides
def vitjax_config(args: argparse.Namespace, data_spec: str):
    """The ``TrainConfig`` that ``python -m train`` would hold for these flags (the model is not read)."""
    from train.config import TrainConfig

    return TrainConfig(
        model="vit_base_patch16_224",
        data=data_spec,
        img_size=args.img_size,
        batch_size=args.batch_size,
        steps=1,
        workers=args.workers,
        data_workers=args.threads,
        aa=args.aa,
        reprob=args.reprob,
        remode=args.remode,
        recount=args.recount,
        color_jitter=args.color_jitter,
        train_interpolation=args.train_interpolation,
        seed=args.seed,
    )


class VitjaxSide:
    """Runs of ``train.data.train_batches`` over one dataset (ImageFolder or packed)."""

    def __init__(self, args: argparse.Namespace, data_spec: str):
        from train import data as data_lib
        from vitjax.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        self.data_lib, self.args = data_lib, args
        self.cfg = vitjax_config(args, data_spec)
        self.data = data_lib.load_dataset(data_spec, args.img_size)
        self.augment = data_lib.train_augment(
            self.cfg, self.data, args.img_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        )

    def batches(self, n: int, run: int):
        """A fresh iterator of ``n`` batches (a different shuffle per run), from a stream that goes on after
        them, so the workers are still busy when the last is taken, as they are in training."""
        it = iter(
            self.data_lib.train_batches(
                self.data,
                img_size=self.args.img_size,
                global_batch=self.cfg.batch_size,
                steps=n + 2 * self.cfg.workers + 2,
                seed=self.cfg.seed + run,
                augment=self.augment,
                aug_repeats=self.cfg.aug_repeats,
                workers=self.cfg.workers,
                threads=self.cfg.data_workers,
            )
        )
        try:
            for _ in range(n):
                yield next(it)["image"]
        finally:
            it.close()  # its worker processes end here

    def profile_batches(self, n: int):
        """``n`` batches made one by one in this thread (what one worker does, plus the collation)."""
        batches = self.data_lib.train_batches(
            self.data,
            img_size=self.args.img_size,
            global_batch=self.cfg.batch_size,
            steps=n,
            seed=self.cfg.seed,
            augment=self.augment,
        )
        for i in range(n):
            yield batches[i]["image"]

    def parts(self) -> dict:
        """The functions whose time (with what they call) makes each share of the profile (see ``profile``)."""
        from train import augment, records

        return {
            "read + decode": ([self.data_lib.Split.load, records.PackedSplit.load], []),
            "augment": [augment.TrainAugment.__call__],
            "RandAugment": [augment.RandAugment.__call__, augment.AutoAugment.__call__, augment.AugMix.__call__],
            "colour jitter": [augment.color_jitter_apply],
            "random erasing": [augment.erase],
            "to array / tensor + normalise": [],
            "collation": [self.data_lib.Batches._collect],
        }


_POSTERIZE = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def _posterize_zero_bits_black(img, bits_to_keep, **kw):
    from timm.data import auto_augment

    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return auto_augment.posterize(img, bits_to_keep, **kw)


@contextlib.contextmanager
def timm_posterize_at_zero_bits():
    """While timm builds a transform inside this block, its posterize ops give the 0-bit result Pillow gave before
    version 11 (a black image), as ``train.augment_ops.posterize`` does. timm 1.0.31 passes 0 bits at the
    magnitudes that keep none (with ``rand-m9-mstd0.5-inc1``, PosterizeIncreasing at magnitude 10, a few images
    in a thousand), which this Pillow refuses with a ValueError: unpatched, timm's DataLoader stops within an
    epoch. timm's ops take their function when the transform is built, so the table is restored on leaving the
    block (timm stays as installed for everything else in the process)."""
    from timm.data import auto_augment

    saved = {name: auto_augment.NAME_TO_OP[name] for name in _POSTERIZE}
    auto_augment.NAME_TO_OP.update(dict.fromkeys(_POSTERIZE, _posterize_zero_bits_black))
    try:
        yield
    finally:
        auto_augment.NAME_TO_OP.update(saved)


class TimmSide:
    """Runs of timm's ``create_loader`` over the ImageFolder, with the transform settings of ``augment``."""

    def __init__(self, args: argparse.Namespace, augment):
        import timm.data
        import torch

        self.torch, self.timm_data, self.args, self.aug = torch, timm.data, args, augment
        self.dataset = timm.data.create_dataset("", root=args.data, split="train", is_training=True)

    def batches(self, n: int, run: int):
        return self._epochs(self.loader(self.args.workers, run, repeat=True), n)

    def profile_batches(self, n: int):
        return self._epochs(self.loader(0, 0), n)

    def loader(self, workers: int, run: int, repeat: bool = False):
        a = self.aug
        self.torch.manual_seed(self.args.seed + run)
        with timm_posterize_at_zero_bits():
            loader = self.timm_data.create_loader(
                self.dataset,
                input_size=(3, self.args.img_size, self.args.img_size),
                batch_size=self.args.batch_size,
                is_training=True,
                use_prefetcher=self.args.timm_prefetcher,
                re_prob=a.reprob,
                re_mode=a.remode,
                re_count=a.recount,
                scale=a.scale,
                ratio=a.ratio,
                hflip=a.hflip,
                vflip=a.vflip,
                color_jitter=a.color_jitter[0] if a.color_jitter else None,
                auto_augment=a.aa,
                interpolation=a.interpolation,
                mean=a.mean,
                std=a.std,
                num_workers=workers,
                use_multi_epochs_loader=repeat,
                device=self.torch.device("cpu"),
            )
        return loader.loader if self.args.timm_prefetcher else loader  # the DataLoader, without the device part

    def parts(self) -> dict:
        """As ``VitjaxSide.parts``: timm reads and decodes in ``ImageDataset.__getitem__``, before its transform."""
        from timm.data import auto_augment, dataset, loader, random_erasing, transforms
        from torch.utils.data._utils.collate import default_collate
        from torchvision import transforms as tv

        return {
            "read + decode": ([dataset.ImageDataset.__getitem__], [tv.Compose.__call__]),
            "augment": [tv.Compose.__call__],
            "RandAugment": [
                auto_augment.RandAugment.__call__,
                auto_augment.AutoAugment.__call__,
                auto_augment.AugMixAugment.__call__,
            ],
            "colour jitter": [tv.ColorJitter.forward],
            "random erasing": [random_erasing.RandomErasing.__call__],
            "to array / tensor + normalise": [
                transforms.MaybePILToTensor.__call__,
                transforms.MaybeToTensor.__call__,
                tv.Normalize.forward,
            ],
            "collation": [loader.fast_collate if self.args.timm_prefetcher else default_collate],
        }

    def _epochs(self, loader, n: int):
        count = 0
        while count < n:  # further epochs when one is too short
            for images, _ in loader:
                yield images
                count += 1
                if count == n:
                    break
        del loader


def cpu_seconds() -> tuple[float, float] | None:
    """User + system CPU seconds of this process and of all its live descendants, from ``/proc`` (None off
    Linux)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    parent, times = {}, {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parent[int(d.name)] = int(fields[1])  # fields after the name: state, ppid, ...; utime, stime are 12, 13
        times[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
    mine, changed = {os.getpid()}, True
    while changed:  # add children of the processes found until none is new
        changed = False
        for pid, pp in parent.items():
            if pp in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return times[os.getpid()], sum(times[pid] for pid in mine if pid in times)


def profile(side, n: int) -> dict:
    """Where one worker's time goes: ``n`` batches of ``side`` made in this thread under cProfile, split by the
    cumulative time of the functions ``side.parts()`` names. "crop, resize, flip" is the transform's time less
    its named parts (RandAugment, jitter, erasing, to tensor); "other" the total less reading, transform and
    collation (sampling, the pipeline's own bookkeeping). cProfile's overhead weighs on Python-heavy parts most.
    cProfile times the wall clock, which on a busy machine includes the time the process waits for a core; the
    process's CPU time over the same loop (``cpu_s``) gives the shares' CPU milliseconds (``cpu_ms_per_image``)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    batches = side.profile_batches(n)
    start, cpu = time.perf_counter(), time.process_time()
    prof.enable()
    for _ in range(n):
        next(batches)
    prof.disable()
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    batches.close()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive calls, own s, cumulative s, callers)

    def cum(fns) -> float:
        keys = {(f.__code__.co_filename, f.__code__.co_firstlineno, f.__code__.co_name) for f in fns}
        return sum(v[3] for k, v in stats.items() if k in keys)

    parts = side.parts()
    plus, minus = parts.pop("read + decode")
    read, augment, collation = cum(plus) - cum(minus), cum(parts.pop("augment")), cum(parts.pop("collation"))
    named = {k: cum(v) for k, v in parts.items()}
    seconds = {
        "read + decode": read,
        "crop, resize, flip": augment - sum(named.values()),
        **named,
        "collation": collation,
        "other": total - read - augment - collation,
    }
    images = n * side.args.batch_size
    shares = {k: v / total for k, v in seconds.items()}
    return {
        "total_s": total,
        "cpu_s": cpu,
        "images": images,
        "seconds": seconds,
        "shares": shares,
        "cpu_ms_per_image": {k: 1e3 * cpu * v / images for k, v in shares.items()},
    }


def time_run(batches, batch_size: int, warm: int, steady: int) -> dict:
    """Times one iterator: seconds to its first batch, then images/s over ``steady`` batches after ``warm``."""
    start = time.perf_counter()
    first = next(batches)
    first_s = time.perf_counter() - start
    if first.shape[0] != batch_size:
        raise RuntimeError(f"a batch of {first.shape[0]} images, expected {batch_size}")
    for _ in range(warm - 1):
        next(batches)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(steady):
        next(batches)
    t1, cpu1 = time.perf_counter(), cpu_seconds()
    batches.close()
    gc.collect()  # worker processes and threads go with their iterator
    images = steady * batch_size
    main, cpu = (None, None) if cpu0 is None else (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
    return {
        "first_batch_s": first_s,
        "images_per_sec": images / (t1 - t0),
        "cpu_s": cpu,
        "main_process_cpu_s": main,  # of cpu_s: the process that receives (and, for grain, batches) the records
        "images_per_cpu_sec": None if not cpu else images / cpu,
    }


# ------------------------------------------------------------------------------------------------ the benchmark
def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict], workers: int) -> dict:
    rate = _median(runs, "images_per_sec")
    return {
        "images_per_sec": rate,
        "images_per_sec_min": min(r["images_per_sec"] for r in runs),
        "images_per_sec_max": max(r["images_per_sec"] for r in runs),
        "per_core_images_per_sec": rate / max(workers, 1),
        "images_per_cpu_sec": _median(runs, "images_per_cpu_sec"),
        "main_process_cpu_share": _median(
            [{"share": r["main_process_cpu_s"] / r["cpu_s"] if r["cpu_s"] else None} for r in runs], "share"
        ),
        "first_batch_s": _median(runs, "first_batch_s"),
        "runs": runs,
    }


def benchmark(args: argparse.Namespace) -> dict:
    """Alternating runs of each side; the result dictionary written as JSON."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # restored after: a caller in the same process keeps its setting
    try:
        return _benchmark(args)
    finally:
        torch.set_num_threads(threads)


def _benchmark(args: argparse.Namespace) -> dict:
    from train import data as data_lib

    formats = ["imagefolder", "arrayrecord"] if args.format == "both" else [args.format]
    warm, steady = 1 + 2 * args.workers, args.batches  # the first batch, then what the buffers held
    n = warm + steady
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        sides = {}
        if "imagefolder" in formats:
            sides["vitjax/imagefolder"] = VitjaxSide(args, args.data)
        if "arrayrecord" in formats:
            packed = str(Path(tmp) / "arrayrecord")
            data_lib.main(
                ["pack", "--src", args.data, "--out", packed, "--format", "arrayrecord"]
                + ["--shards", str(args.shards), "--no-progress"]
            )
            sides["vitjax/arrayrecord"] = VitjaxSide(args, packed)
        augment = next(iter(sides.values())).augment
        sides["timm/imagefolder"] = TimmSide(args, augment)
        order = [k for k in ("vitjax/imagefolder", "timm/imagefolder", "vitjax/arrayrecord") if k in sides]
        total = len(sides["timm/imagefolder"].dataset)
        if n * args.batch_size > total * 4:
            print(f"[bench] note: {n} batches of {args.batch_size} go round the {total} images more than 4 times")
        load_before = os.getloadavg()
        runs: dict[str, list[dict]] = {k: [] for k in order}
        for r in range(args.repeats):
            for key in order:
                run = time_run(sides[key].batches(n, r), args.batch_size, warm, steady)
                runs[key].append(run)
                print(
                    f"[bench] round {r + 1}/{args.repeats} {key}: first batch {run['first_batch_s']:.2f} s, "
                    f"{run['images_per_sec']:.1f} images/s",
                    file=sys.stderr,
                    flush=True,
                )
        load_after = os.getloadavg()
        profiles = {k: profile(sides[k], steady) for k in order} if args.profile else None
    result = _result(args, {k: summarise(v, args.workers) for k, v in runs.items()}, formats)
    if profiles:
        result["profile"] = profiles
    result["load_average_before"], result["load_average_after"] = list(load_before), list(load_after)
    return result


def _result(args: argparse.Namespace, sides: dict[str, dict], formats: list[str]) -> dict:
    import grain
    import PIL
    import timm
    import torch

    timm_side = sides["timm/imagefolder"]
    out: dict = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("command", "json")},
        "cpu_count": os.cpu_count(),
        "versions": {
            "grain": grain.__version__,
            "timm": timm.__version__,
            "torch": torch.__version__,
            "pillow": PIL.__version__,
        },
        "timm_images_per_sec": timm_side["images_per_sec"],
        "timm_per_core_images_per_sec": timm_side["per_core_images_per_sec"],
        "timm_images_per_cpu_sec": timm_side["images_per_cpu_sec"],
        "timm_first_batch_s": timm_side["first_batch_s"],
        "formats": {},
        "sides": sides,
    }
    for fmt in formats:
        v = sides[f"vitjax/{fmt}"]
        out["formats"][fmt] = {
            "vitjax_images_per_sec": v["images_per_sec"],
            "vitjax_per_core_images_per_sec": v["per_core_images_per_sec"],
            "vitjax_images_per_cpu_sec": v["images_per_cpu_sec"],
            "vitjax_first_batch_s": v["first_batch_s"],
            "ratio_to_timm": v["images_per_sec"] / timm_side["images_per_sec"],
        }
        out[f"vitjax_{fmt}_images_per_sec"] = v["images_per_sec"]
    main = out["formats"][formats[0]]  # the ImageFolder figure when measured: the same files timm reads
    out["vitjax_images_per_sec"] = main["vitjax_images_per_sec"]
    out["vitjax_per_core_images_per_sec"] = main["vitjax_per_core_images_per_sec"]
    out["vitjax_images_per_cpu_sec"] = main["vitjax_images_per_cpu_sec"]
    out["ratio"] = main["ratio_to_timm"]
    return out


def table(result: dict) -> str:
    s = result["settings"]
    head = (
        f"{s['img_size']} px, batch {s['batch_size']}, {s['workers']} workers, aa {s['aa']}, reprob {s['reprob']}; "
        f"median of {s['repeats']} runs of {s['batches']} batches; load {result['load_average_before'][0]:.2f}"
    )
    rows = [
        "| pipeline | images/s (min-max) | per core | images per CPU-s | first batch s | vs timm |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, side: dict, ratio: str) -> str:
        ipc = side["images_per_cpu_sec"]
        return (
            f"| {name} | {side['images_per_sec']:.1f} ({side['images_per_sec_min']:.0f}-"
            f"{side['images_per_sec_max']:.0f}) | {side['per_core_images_per_sec']:.1f} | "
            f"{'-' if ipc is None else f'{ipc:.1f}'} | {side['first_batch_s']:.2f} | {ratio} |"
        )

    for fmt, f in result["formats"].items():
        rows.append(row(f"vitjax, {fmt}", result["sides"][f"vitjax/{fmt}"], f"{f['ratio_to_timm']:.2f}x"))
    rows.append(row("timm DataLoader, imagefolder", result["sides"]["timm/imagefolder"], "1.00x"))
    if "profile" in result:
        prof = result["profile"]
        names = list(next(iter(prof.values()))["seconds"])
        rows += ["", "Where one worker's time goes (cProfile, --workers 0, share of the time; CPU ms per image):", ""]
        rows += ["| part | " + " | ".join(prof) + " |", "|---|" + "---|" * len(prof)]
        for name in names:
            cells = [f"{p['shares'][name]:.0%} ({p['cpu_ms_per_image'][name]:.2f})" for p in prof.values()]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        cells = [f"100% ({1e3 * p['cpu_s'] / p['images']:.2f})" for p in prof.values()]
        rows.append("| total | " + " | ".join(cells) + " |")
    return "\n".join([head, *rows])


# ------------------------------------------------------------------------------------------------------- CLI
def _at_least(low: int):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v} is below {low}")
        return v

    return conv


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1]")
    return v


def bench_parser() -> argparse.ArgumentParser:
    from train.augment import ERASE_MODES, INTERPOLATIONS
    from train.config import AUG_FLAGS

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.data",
        description="Times python -m train's input pipeline against timm's DataLoader (and `make` writes JPEGs).",
        epilog="python -m benchmarks.data make --out DIR --images N --classes C: an ImageFolder of JPEGs to time.",
    )
    p.add_argument("--data", required=True, help="ImageFolder root with train/<class>/ and val/<class>/")
    p.add_argument("--workers", type=_at_least(0), default=0, help="worker processes of each side (0: in process)")
    p.add_argument(
        "--threads", type=_at_least(0), default=0, help="vitjax: grain read threads a process (--data-workers)"
    )
    p.add_argument("--batch-size", type=_at_least(1), default=64)
    p.add_argument("--img-size", type=_at_least(8), default=224)
    p.add_argument("--aa", type=AUG_FLAGS["aa"], default=None, help="as python -m train (rand-m9-mstd0.5-inc1, ...)")
    p.add_argument("--reprob", type=_probability, default=0.0)
    p.add_argument("--remode", choices=ERASE_MODES, default="pixel")
    p.add_argument("--recount", type=_at_least(1), default=1)
    p.add_argument("--color-jitter", type=float, default=None, help="None: 0.4 (off with --aa, as timm)")
    p.add_argument("--train-interpolation", choices=INTERPOLATIONS, default=None, help="None: random")
    p.add_argument("--format", choices=FORMATS, default="both", help="what vitjax reads (timm: the ImageFolder)")
    p.add_argument("--shards", type=_at_least(1), default=8, help="ArrayRecord shards of the packing")
    p.add_argument("--batches", type=_at_least(1), default=10, help="batches timed per run, after the warm-up")
    p.add_argument("--repeats", type=_at_least(1), default=3, help="runs of each side, alternating")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--timm-prefetcher",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="timm's loader as with its prefetcher (uint8 out; normalise and erase on the device, not timed)",
    )
    p.add_argument("--profile", action="store_true", help="also profile each side's work in one process (cProfile)")
    p.add_argument("--json", help="write the results here")
    return p


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data make", description=make_images.__doc__)
    p.add_argument("--out", required=True, help="new directory for train/ and val/")
    p.add_argument("--images", type=_at_least(1), required=True, help="train images")
    p.add_argument("--classes", type=_at_least(1), required=True)
    p.add_argument("--val-images", type=_at_least(0), default=None, help="default: images / 10, at least classes")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["make"]:
        parser = make_parser()
        args = parser.parse_args(argv[1:])
        val = max(args.classes, args.images // 10) if args.val_images is None else args.val_images
        if args.images < args.classes:
            parser.error(f"--images {args.images} is fewer than --classes {args.classes}: a class would be empty")
        try:
            out = make_images(args.out, args.images, args.classes, val, args.seed)
        except FileExistsError as e:
            parser.error(str(e))
        print(f"[make] {out}: {args.images} train and {val} val JPEGs in {args.classes} classes", file=sys.stderr)
        return 0
    parser = bench_parser()
    args = parser.parse_args(argv)
    from train import data as data_lib

    try:
        data_lib.image_folder(args.data)  # checked once here, so a bad --data is named before anything starts
    except (OSError, ValueError) as e:
        parser.error(f"--data {args.data}: {e}")
    result = benchmark(args)
    print(table(result))
    if args.json:
        path = Path(args.json)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
