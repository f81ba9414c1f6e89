"""timm's training augmentations on PIL / numpy, drawn from a per-example ``numpy.random.Generator``.

timm builds its train transform (``timm.data.create_transform(is_training=True)``) as: random-resized crop with
``--train-interpolation``, horizontal / vertical flip, then one of AutoAugment / RandAugment / AugMix (``--aa``) or
else colour jitter, normalisation, and random erasing (``--reprob``) on the normalised tensor. ``TrainAugment``
does the same to one PIL image and returns uint8 HWC (normalisation happens on the device). The image operations
are the PIL calls timm makes, with timm's magnitude-to-argument rules, so an op at a given magnitude gives timm's
pixels; only the random draws differ in source: timm draws from Python's ``random``, numpy's global state and
torch, here everything comes from the generator passed in, so an example's augmentation is a pure function of
the seed and its position in the stream (exact resume).

Random erasing: timm erases after normalisation, filling with 0 (``const``), a normal draw per channel
(``rand``) or per pixel (``pixel``) in normalised units. The pipeline's images are uint8, so a fill value ``z``
is stored as the pixel whose normalisation is nearest ``z``: ``round(255 * (mean + std * z))`` clipped to
0..255. The boxes follow timm's rule exactly; fills differ from timm's by this rounding and by the clip of
normal draws beyond the pixel range (|z| above about 2.1 for ImageNet's statistics).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from train.augment_ops import (  # noqa: F401  (re-exported: the ops are part of this module's surface)
    ERASE_MODES,
    FILL,
    INTERPOLATIONS,
    LEVEL_DENOM,
    OPS,
    RANDOM_RESAMPLE,
    RESAMPLE,
    AugmentOp,
    apply_op,
    brightness,
    color,
    contrast,
    op_args,
)

# ---- policies ----


def _table(text: str) -> list[list[tuple[str, float, int]]]:
    rows = []
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        rows.append([(n, float(p), int(m)) for n, p, m in (op.split() for op in line.split(","))])
    return rows


# AutoAugment's ImageNet policies (name probability magnitude, two ops per sub-policy): 'v0' of the TPU
# EfficientNet code, 'original' of the paper (arXiv:1805.09501), and DeiT III's '3a'.
_POLICY_V0 = _table("""
    Equalize 0.8 1, ShearY 0.8 4
    Color 0.4 9, Equalize 0.6 3
    Color 0.4 1, Rotate 0.6 8
    Solarize 0.8 3, Equalize 0.4 7
    Solarize 0.4 2, Solarize 0.6 2
    Color 0.2 0, Equalize 0.8 8
    Equalize 0.4 8, SolarizeAdd 0.8 3
    ShearX 0.2 9, Rotate 0.6 8
    Color 0.6 1, Equalize 1.0 2
    Invert 0.4 9, Rotate 0.6 0
    Equalize 1.0 9, ShearY 0.6 3
    Color 0.4 7, Equalize 0.6 0
    Posterize 0.4 6, AutoContrast 0.4 7
    Solarize 0.6 8, Color 0.6 9
    Solarize 0.2 4, Rotate 0.8 9
    Rotate 1.0 7, TranslateYRel 0.8 9
    ShearX 0.0 0, Solarize 0.8 4
    ShearY 0.8 0, Color 0.6 4
    Color 1.0 0, Rotate 0.6 2
    Equalize 0.8 4, Equalize 0.0 8
    Equalize 1.0 4, AutoContrast 0.6 2
    ShearY 0.4 7, SolarizeAdd 0.6 7
    Posterize 0.8 2, Solarize 0.6 10
    Solarize 0.6 8, Equalize 0.6 1
    Color 0.8 6, Rotate 0.4 5
""")
_POLICY_ORIGINAL = _table("""
    PosterizeOriginal 0.4 8, Rotate 0.6 9
    Solarize 0.6 5, AutoContrast 0.6 5
    Equalize 0.8 8, Equalize 0.6 3
    PosterizeOriginal 0.6 7, PosterizeOriginal 0.6 6
    Equalize 0.4 7, Solarize 0.2 4
    Equalize 0.4 4, Rotate 0.8 8
    Solarize 0.6 3, Equalize 0.6 7
    PosterizeOriginal 0.8 5, Equalize 1.0 2
    Rotate 0.2 3, Solarize 0.6 8
    Equalize 0.6 8, PosterizeOriginal 0.4 6
    Rotate 0.8 8, Color 0.4 0
    Rotate 0.4 9, Equalize 0.6 2
    Equalize 0.0 7, Equalize 0.8 8
    Invert 0.6 4, Equalize 1.0 8
    Color 0.6 4, Contrast 1.0 8
    Rotate 0.8 8, Color 1.0 2
    Color 0.8 8, Solarize 0.8 7
    Sharpness 0.4 7, Invert 0.6 8
    ShearX 0.6 5, Equalize 1.0 9
    Color 0.4 0, Equalize 0.6 3
    Equalize 0.4 7, Solarize 0.2 4
    Solarize 0.6 5, AutoContrast 0.6 5
    Invert 0.6 4, Equalize 1.0 8
    Color 0.6 4, Contrast 1.0 8
    Equalize 0.8 8, Equalize 0.6 3
""")
_POLICY_3A = _table("""
    Solarize 1.0 5
    Desaturate 1.0 10
    GaussianBlurRand 1.0 10
""")


def _rename(policy, old: str, new: str):
    return [[(new if n == old else n, p, m) for n, p, m in sub] for sub in policy]


POLICIES = {
    "v0": _POLICY_V0,
    "v0r": _rename(_POLICY_V0, "Posterize", "PosterizeIncreasing"),  # bits dropped grow with magnitude
    "original": _POLICY_ORIGINAL,
    "originalr": _rename(_POLICY_ORIGINAL, "PosterizeOriginal", "PosterizeIncreasing"),
    "3a": _POLICY_3A,
}

RAND_OPS = (
    "AutoContrast Equalize Invert Rotate Posterize Solarize SolarizeAdd Color Contrast Brightness Sharpness "
    "ShearX ShearY TranslateXRel TranslateYRel"
).split()
RAND_OPS_INCREASING = (
    "AutoContrast Equalize Invert Rotate PosterizeIncreasing SolarizeIncreasing SolarizeAdd ColorIncreasing "
    "ContrastIncreasing BrightnessIncreasing SharpnessIncreasing ShearX ShearY TranslateXRel TranslateYRel"
).split()
RAND_OPS_3A = ["SolarizeIncreasing", "Desaturate", "GaussianBlur"]
# weighted op sets of RandAugment's 't' option (chosen without replacement, by weight)
RAND_WEIGHTS = {
    "weights": {
        "Rotate": 3, "ShearX": 2, "ShearY": 2, "TranslateXRel": 1, "TranslateYRel": 1, "ColorIncreasing": 0.25,
        "SharpnessIncreasing": 0.25, "AutoContrast": 0.25, "SolarizeIncreasing": 0.05, "SolarizeAdd": 0.05,
        "ContrastIncreasing": 0.05, "BrightnessIncreasing": 0.05, "Equalize": 0.05, "PosterizeIncreasing": 0.05,
        "Invert": 0.05,
    },
    "3aw": {
        "SolarizeIncreasing": 6, "Desaturate": 6, "GaussianBlur": 6, "Rotate": 3, "ShearX": 2, "ShearY": 2,
        "PosterizeIncreasing": 1, "AutoContrast": 1, "ColorIncreasing": 1, "SharpnessIncreasing": 1,
        "ContrastIncreasing": 1, "BrightnessIncreasing": 1, "Equalize": 1, "Invert": 1,
    },
}  # fmt: skip
AUGMIX_OPS = (
    "AutoContrast ColorIncreasing ContrastIncreasing BrightnessIncreasing SharpnessIncreasing Equalize Rotate "
    "PosterizeIncreasing SolarizeIncreasing ShearX ShearY TranslateXRel TranslateYRel"
).split()


@dataclass(frozen=True)
class AutoAugment:
    """One sub-policy, chosen uniformly, applied op by op."""

    policy: list[list[AugmentOp]]

    def __call__(self, img, rng):
        for op in self.policy[int(rng.integers(len(self.policy)))]:
            img = op(img, rng)
        return img


@dataclass(frozen=True)
class RandAugment:
    """``num_layers`` ops chosen uniformly with replacement, or by ``weights`` without replacement."""

    ops: list[AugmentOp]
    num_layers: int = 2
    weights: np.ndarray | None = None

    def choose(self, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.ops), self.num_layers, replace=self.weights is None, p=self.weights)

    def __call__(self, img, rng):
        for i in self.choose(rng):
            img = self.ops[i](img, rng)
        return img


@dataclass(frozen=True)
class AugMix:
    """``width`` chains of ``depth`` ops (1..3 at random when ``depth <= 0``), mixed with Dirichlet(``alpha``)
    weights, then blended with the original by a Beta(``alpha``, ``alpha``) draw. ``blended``: timm's cheaper
    variant that blends each chain into the running image instead."""

    ops: list[AugmentOp]
    alpha: float = 1.0
    width: int = 3
    depth: int = -1
    blended: bool = False

    def chain(self, img, rng):
        depth = self.depth if self.depth > 0 else int(rng.integers(1, 4))
        for i in rng.choice(len(self.ops), depth, replace=True):
            img = self.ops[i](img, rng)
        return img

    def __call__(self, img, rng):
        weights = np.float32(rng.dirichlet([self.alpha] * self.width))
        m = np.float32(rng.beta(self.alpha, self.alpha))
        chains = [self.chain(img, rng) for _ in range(self.width)]
        return (mix_blended if self.blended else mix_chains)(img, chains, weights, m)


def mix_chains(img: Image.Image, chains: Sequence[Image.Image], weights: np.ndarray, m: np.float32) -> Image.Image:
    """AugMix's mix: the weighted float32 sum of the chains, clipped and truncated to uint8, blended by ``m``."""
    mixed = np.zeros_like(np.asarray(img), dtype=np.float32)
    for w, im in zip(weights, chains, strict=True):
        mixed += w * np.asarray(im, dtype=np.float32)
    np.clip(mixed, 0, 255.0, out=mixed)
    return Image.blend(img, Image.fromarray(mixed.astype(np.uint8)), m)


def mix_blended(img: Image.Image, chains: Sequence[Image.Image], weights: np.ndarray, m: np.float32) -> Image.Image:
    ws = weights * m
    left, alphas = 1.0, []
    for w in ws[::-1]:
        a = w / left
        left *= 1 - a
        alphas.append(a)
    for a, im in zip(np.array(alphas[::-1], np.float32), chains, strict=True):
        img = Image.blend(img, im, a)
    return img


def _sections(spec: str, head: str) -> list[tuple[str, str]]:
    parts = spec.split("-")
    if parts[0] != head:
        raise ValueError(f"augmentation {spec!r}: expected it to start with {head!r}")
    out = []
    for part in parts[1:]:
        if head == "rand" and part.startswith("t"):
            out.append(("t", part[1:]))
            continue
        m = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if m is None:
            raise ValueError(f"augmentation {spec!r}: section {part!r} is not a name followed by a number")
        out.append(m.groups())
    return out


def aa_transform(spec: str, img_size: int = 224, mean=(0.485, 0.456, 0.406), interpolation: str = "random"):
    """timm's ``--aa`` string -> a transform ``(PIL image, rng) -> PIL image``, with the hyper-parameters timm's
    train transform gives it: translations up to 0.45 x ``img_size`` px, fill = the mean colour, the train
    interpolation (random bilinear / bicubic per op when 'random'). Raises ``ValueError`` on a bad string.

    * ``rand-m{M}-n{N}-mstd{S}-mmax{X}-inc{0,1}-p{P}-t{weights,3a,3aw}`` (RandAugment; defaults m10 n2 p0.5)
    * ``v0``, ``v0r``, ``original``, ``originalr``, ``3a`` with optional ``-mstd{S}`` (AutoAugment)
    * ``augmix-m{M}-w{W}-d{D}-a{A}-b{0,1}-mstd{S}`` (defaults m3 w3 d-1 a1 b0, magnitude uniform in [0, M])
    """
    hp: dict = {"translate_const": int(img_size * 0.45), "img_mean": tuple(min(255, round(255 * x)) for x in mean)}
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} not in {INTERPOLATIONS}")
    if interpolation != "random":
        hp["interpolation"] = interpolation
    head = spec.split("-")[0]
    try:
        if head == "rand":
            return _rand(spec, hp)
        if head == "augmix":
            return _augmix(spec, hp)
        if head in POLICIES:
            for key, val in _sections(spec, head):
                if key != "mstd":
                    raise ValueError(f"augmentation {spec!r}: unknown section {key!r} (AutoAugment takes mstd)")
                hp["magnitude_std"] = float(val)
            return AutoAugment([[AugmentOp(n, p, m, hp) for n, p, m in sub] for sub in POLICIES[head]])
    except ValueError as e:
        if str(e).startswith("augmentation"):
            raise
        raise ValueError(f"augmentation {spec!r}: {e}") from None
    raise ValueError(f"augmentation {spec!r}: expected rand-..., augmix-... or one of {sorted(POLICIES)}")


def _rand(spec: str, hp: dict) -> RandAugment:
    magnitude, layers, increasing, prob, choice = 10, 2, False, 0.5, None
    for key, val in _sections(spec, "rand"):
        if key == "t":
            if val not in ("weights", "3a", "3aw"):
                raise ValueError(f"augmentation {spec!r}: op set t{val} not in tweights, t3a, t3aw")
            choice = val
        elif key == "mstd":
            hp["magnitude_std"] = float("inf") if float(val) > 100 else float(val)
        elif key == "mmax":
            hp["magnitude_max"] = int(val)
        elif key == "inc":
            increasing = bool(int(val))
        elif key == "m":
            magnitude = int(val)
        elif key == "n":
            layers = int(val)
        elif key == "p":
            prob = float(val)
        else:
            raise ValueError(f"augmentation {spec!r}: unknown section {key!r}")
    weights = None
    if choice in RAND_WEIGHTS:
        names, w = zip(*RAND_WEIGHTS[choice].items(), strict=True)
        weights = np.asarray(w, np.float64) / np.sum(w)
    elif choice == "3a":
        names = RAND_OPS_3A
    else:
        names = RAND_OPS_INCREASING if increasing else RAND_OPS
    return RandAugment([AugmentOp(n, prob, magnitude, hp) for n in names], layers, weights)


def _augmix(spec: str, hp: dict) -> AugMix:
    magnitude, width, depth, alpha, blended = 3, 3, -1, 1.0, False
    hp["translate_pct"] = 0.3
    for key, val in _sections(spec, "augmix"):
        if key == "mstd":
            hp["magnitude_std"] = float(val)
        elif key == "m":
            magnitude = int(val)
        elif key == "w":
            width = int(val)
        elif key == "d":
            depth = int(val)
        elif key == "a":
            alpha = float(val)
        elif key == "b":
            blended = bool(int(val))
        else:
            raise ValueError(f"augmentation {spec!r}: unknown section {key!r}")
    hp.setdefault("magnitude_std", float("inf"))
    return AugMix([AugmentOp(n, 1.0, magnitude, hp) for n in AUGMIX_OPS], alpha, width, depth, blended)


# ---- colour jitter (torchvision's ColorJitter on PIL images) ----


def adjust_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotates the HSV hue by ``shift`` turns (in [-0.5, 0.5]); the uint8 hue wraps around."""
    if img.mode in ("L", "1", "I", "F"):
        return img
    h, s, v = img.convert("HSV").split()
    hue = np.array(h, np.uint8)
    hue += np.int32(shift * 255).astype(np.uint8)  # wraps, as intended
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert(img.mode)


_JITTER = (brightness, contrast, color, adjust_hue)


def color_jitter_draw(strength: Sequence[float], rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """torchvision's rule: a random order of (brightness, contrast, saturation, hue), each factor uniform in
    ``[max(0, 1 - s), 1 + s]`` (hue: ``[-s, s]``); a zero strength leaves that adjustment out (``None``)."""
    order = rng.permutation(4)
    factors = []
    for k in range(4):
        s = strength[k] if k < len(strength) else 0.0
        if not s:
            factors.append(None)
        elif k == 3:
            factors.append(float(rng.uniform(-s, s)))
        else:
            factors.append(float(rng.uniform(max(0.0, 1.0 - s), 1.0 + s)))
    return order, factors


def color_jitter_apply(img: Image.Image, order, factors) -> Image.Image:
    for k in order:
        if factors[k] is not None:
            img = _JITTER[k](img, factors[k])
    return img


# ---- random erasing ----


def erase_boxes(
    height: int,
    width: int,
    rng: np.random.Generator,
    prob: float,
    max_count: int = 1,
    min_count: int = 1,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
) -> list[tuple[int, int, int, int]]:
    """timm's RandomErasing boxes ``(top, left, h, w)``: none with probability ``1 - prob``; else a count in
    ``[min_count, max_count]``, each box of area ``uniform(min_area, max_area) * H * W / count`` and log-uniform
    aspect in ``[min_aspect, 1 / min_aspect]``, up to ten tries for one strictly inside the image."""
    if rng.random() > prob:
        return []
    count = min_count if min_count == max_count else int(rng.integers(min_count, max_count + 1))
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    boxes = []
    for _ in range(count):
        for _ in range(10):
            target = rng.uniform(min_area, max_area) * height * width / count
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                boxes.append((top, left, h, w))
                break
    return boxes


def erase(arr: np.ndarray, rng, prob, mode, max_count, mean, std) -> np.ndarray:
    """Random erasing on a uint8 HWC image in normalised units (module docstring): fills are standard-normal
    draws (or 0 for ``const``) mapped back to pixels."""
    boxes = erase_boxes(arr.shape[0], arr.shape[1], rng, prob, max_count)
    if not boxes:
        return arr
    arr = arr.copy()
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    for top, left, h, w in boxes:
        c = arr.shape[2]
        if mode == "pixel":
            z = rng.standard_normal((h, w, c))
        elif mode == "rand":
            z = rng.standard_normal((1, 1, c))
        else:
            z = np.zeros((1, 1, c))
        arr[top : top + h, left : left + w] = np.clip(np.round(255.0 * (mean + std * z)), 0, 255).astype(np.uint8)
    return arr


# ---- the train transform ----


def crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """timm's ``RandomResizedCropAndInterpolation`` box ``(left, top, right, bottom)``: ten tries of area
    ``uniform(scale)`` and log-uniform aspect in ``ratio``, else the largest centred crop within ``ratio``."""
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


@dataclass(frozen=True)
class TrainAugment:
    """timm's train transform up to normalisation (plus erasing in uint8, see the module docstring)."""

    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    interpolation: str = "random"
    aa: str | None = None
    color_jitter: tuple[float, ...] | None = (0.4, 0.4, 0.4)  # off with ``aa``, unless it is a '3a' one, as timm
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    policy: Callable | None = field(init=False, default=None, compare=False, repr=False)

    def __post_init__(self):
        check(self.aa, self.interpolation, self.remode, self.reprob, self.recount)
        if self.aa:
            object.__setattr__(self, "policy", aa_transform(self.aa, self.img_size, self.mean, self.interpolation))

    def __call__(
        self,
        img: Image.Image,
        rng: np.random.Generator,
        box: tuple[int, int, int, int] | None = None,
        scale: int = 1,
    ) -> np.ndarray:
        """``img`` augmented with draws from ``rng``. ``box``: the crop box, already drawn from ``rng`` on the full
        image, of which ``img`` is a decode at ``1 / scale`` of its size (``train.data.plan_decode``)."""
        if box is None:
            box = crop_box(img.width, img.height, self.scale, self.ratio, rng)
        interp = self.interpolation
        resample = RANDOM_RESAMPLE[int(rng.integers(2))] if interp == "random" else RESAMPLE[interp]
        if scale == 1:
            img = img.crop(box).resize((self.img_size, self.img_size), resample)
        else:  # the same window on the reduced image (its pixel k covers full-size pixels [k * scale, (k + 1) * scale))
            img = img.resize((self.img_size, self.img_size), resample, box=tuple(v / scale for v in box))
        if self.hflip > 0 and rng.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.vflip > 0 and rng.random() < self.vflip:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if self.policy is not None:
            img = self.policy(img, rng)
        if self.color_jitter and any(self.color_jitter) and (self.policy is None or "3a" in self.aa):
            img = color_jitter_apply(img, *color_jitter_draw(self.color_jitter, rng))
        arr = np.asarray(img, np.uint8)
        if self.reprob > 0:
            arr = erase(arr, rng, self.reprob, self.remode, self.recount, self.mean, self.std)
        return np.ascontiguousarray(arr)


def check(aa: str | None, interpolation: str, remode: str, reprob: float, recount: int) -> None:
    """Validates the augmentation settings; ``ValueError`` names the flag at fault."""
    if aa:
        try:
            aa_transform(aa)
        except ValueError as e:
            raise ValueError(f"--aa: {e}") from None
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"--train-interpolation {interpolation!r} not in {INTERPOLATIONS}")
    if remode not in ERASE_MODES:
        raise ValueError(f"--remode {remode!r} not in {ERASE_MODES}")
    if not 0 <= reprob <= 1:
        raise ValueError(f"--reprob {reprob} not in [0, 1]")
    if recount < 1:
        raise ValueError(f"--recount {recount} must be >= 1")
