"""timm's augmentation operations (``timm/data/auto_augment.py``) on PIL images: each op's PIL calls, the rule that
turns a magnitude (0-10) into its arguments, and :class:`AugmentOp`, one op of a policy with its random draws from
a ``numpy.random.Generator``. The policies, colour jitter, random erasing and the train transform that use them
are in :mod:`train.augment`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from vitjax.data import PIL_INTERPOLATIONS

LEVEL_DENOM = 10.0  # magnitude M is the fraction M / 10 of each op's range
FILL = (128, 128, 128)
RESAMPLE = PIL_INTERPOLATIONS  # timm's interpolation names -> PIL filters, as the eval transform uses
INTERPOLATIONS = ("random", *RESAMPLE)
RANDOM_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)  # timm's 'random' interpolation
ERASE_MODES = ("const", "rand", "pixel")


# ---- image operations: (image, *args, fill, resample) -> image, the PIL calls of timm's auto_augment ----


def _affine(img, matrix, fill, resample):
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def shear_x(img, factor, fill=FILL, resample=Image.Resampling.BICUBIC):
    return _affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(img, factor, fill=FILL, resample=Image.Resampling.BICUBIC):
    return _affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x(img, pixels, fill=FILL, resample=Image.Resampling.BICUBIC):
    return _affine(img, (1, 0, pixels, 0, 1, 0), fill, resample)


def translate_y(img, pixels, fill=FILL, resample=Image.Resampling.BICUBIC):
    return _affine(img, (1, 0, 0, 0, 1, pixels), fill, resample)


def translate_x_rel(img, fraction, fill=FILL, resample=Image.Resampling.BICUBIC):
    return translate_x(img, fraction * img.size[0], fill, resample)


def translate_y_rel(img, fraction, fill=FILL, resample=Image.Resampling.BICUBIC):
    return translate_y(img, fraction * img.size[1], fill, resample)


def rotate(img, degrees, fill=FILL, resample=Image.Resampling.BICUBIC):
    return img.rotate(degrees, resample=resample, fillcolor=fill)


def auto_contrast(img, **_):
    return ImageOps.autocontrast(img)


def invert(img, **_):
    return ImageOps.invert(img)


def equalize(img, **_):
    return ImageOps.equalize(img)


def solarize(img, threshold, **_):
    return ImageOps.solarize(img, threshold)


def solarize_add(img, add, threshold=128, **_):
    """Adds ``add`` (saturating at 255) to the values below ``threshold``; other modes than L / RGB pass."""
    if img.mode not in ("L", "RGB"):
        return img
    table = [min(255, v + add) if v < threshold else v for v in range(256)]
    return img.point(table * (3 if img.mode == "RGB" else 1))


def posterize(img, bits, **_):
    """Keeps the top ``bits`` of each channel. 0 bits gives black, as Pillow did before version 11 refused it
    (timm's posterize then raises at the magnitudes that keep no bits, e.g. PosterizeIncreasing at 10)."""
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits)


def contrast(img, factor, **_):
    return ImageEnhance.Contrast(img).enhance(factor)


def color(img, factor, **_):
    return ImageEnhance.Color(img).enhance(factor)


def brightness(img, factor, **_):
    return ImageEnhance.Brightness(img).enhance(factor)


def sharpness(img, factor, **_):
    return ImageEnhance.Sharpness(img).enhance(factor)


def gaussian_blur(img, radius, **_):
    return img.filter(ImageFilter.GaussianBlur(radius=radius))


def desaturate(img, amount, **_):
    return ImageEnhance.Color(img).enhance(min(1.0, max(0.0, 1.0 - amount)))


# ---- magnitude -> arguments; ``negate`` is the op's coin for the sign (timm: random() > 0.5) ----


def _signed(scale):
    return lambda level, hp, negate: (-(level / LEVEL_DENOM) * scale if negate else (level / LEVEL_DENOM) * scale,)


def _enhance(level, hp, negate):
    return ((level / LEVEL_DENOM) * 1.8 + 0.1,)


def _enhance_increasing(level, hp, negate):
    delta = (level / LEVEL_DENOM) * 0.9
    return (max(0.1, 1.0 + (-delta if negate else delta)),)


def _minmax(lo, hi):
    return lambda level, hp, negate: (max(lo, min(hi, lo + (hi - lo) * (level / LEVEL_DENOM))),)


def _translate_abs(level, hp, negate):
    v = (level / LEVEL_DENOM) * float(hp["translate_const"])
    return (-v if negate else v,)


def _translate_rel(level, hp, negate):
    v = (level / LEVEL_DENOM) * hp.get("translate_pct", 0.45)
    return (-v if negate else v,)


def _posterize(level, hp, negate):
    return (int((level / LEVEL_DENOM) * 4),)


def _posterize_increasing(level, hp, negate):
    return (4 - int((level / LEVEL_DENOM) * 4),)


def _posterize_original(level, hp, negate):
    return (int((level / LEVEL_DENOM) * 4) + 4,)


def _solarize(level, hp, negate):
    return (min(256, int((level / LEVEL_DENOM) * 256)),)


def _solarize_increasing(level, hp, negate):
    return (256 - min(256, int((level / LEVEL_DENOM) * 256)),)


def _solarize_add(level, hp, negate):
    return (min(128, int((level / LEVEL_DENOM) * 110)),)


def _none(level, hp, negate):
    return ()


# name -> (operation, level -> arguments, whether the level draws a sign), timm's op names
OPS: dict[str, tuple[Callable, Callable, bool]] = {
    "AutoContrast": (auto_contrast, _none, False),
    "Equalize": (equalize, _none, False),
    "Invert": (invert, _none, False),
    "Rotate": (rotate, _signed(30.0), True),
    "Posterize": (posterize, _posterize, False),
    "PosterizeIncreasing": (posterize, _posterize_increasing, False),
    "PosterizeOriginal": (posterize, _posterize_original, False),
    "Solarize": (solarize, _solarize, False),
    "SolarizeIncreasing": (solarize, _solarize_increasing, False),
    "SolarizeAdd": (solarize_add, _solarize_add, False),
    "Color": (color, _enhance, False),
    "ColorIncreasing": (color, _enhance_increasing, True),
    "Contrast": (contrast, _enhance, False),
    "ContrastIncreasing": (contrast, _enhance_increasing, True),
    "Brightness": (brightness, _enhance, False),
    "BrightnessIncreasing": (brightness, _enhance_increasing, True),
    "Sharpness": (sharpness, _enhance, False),
    "SharpnessIncreasing": (sharpness, _enhance_increasing, True),
    "ShearX": (shear_x, _signed(0.3), True),
    "ShearY": (shear_y, _signed(0.3), True),
    "TranslateX": (translate_x, _translate_abs, True),
    "TranslateY": (translate_y, _translate_abs, True),
    "TranslateXRel": (translate_x_rel, _translate_rel, True),
    "TranslateYRel": (translate_y_rel, _translate_rel, True),
    "Desaturate": (desaturate, _minmax(0.5, 1.0), False),
    "GaussianBlur": (gaussian_blur, _minmax(0.1, 2.0), False),
    "GaussianBlurRand": (gaussian_blur, _minmax(0.0, 1.0), False),  # radius drawn in 0.1 .. 2 * level
}


def op_args(name: str, magnitude: float, hparams: dict, negate: bool = False) -> tuple:
    """The arguments timm's op ``name`` gets at ``magnitude`` (already clipped), with the sign coin ``negate``."""
    return OPS[name][1](magnitude, hparams, negate)


def apply_op(img: Image.Image, name: str, args: tuple, fill=FILL, resample=Image.Resampling.BICUBIC) -> Image.Image:
    return OPS[name][0](img, *args, fill=fill, resample=resample)


@dataclass(frozen=True)
class AugmentOp:
    """One op of a policy: applied with probability ``prob``; its magnitude jittered by ``hparams['magnitude_std']``
    (normal, or uniform in ``[0, magnitude]`` when infinite) and clipped to ``[0, magnitude_max or 10]``."""

    name: str
    prob: float = 0.5
    magnitude: float = 10
    hparams: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in OPS:
            raise ValueError(f"unknown augmentation op {self.name!r}; known: {sorted(OPS)}")

    def draw(self, rng: np.random.Generator) -> tuple | None:
        """The op's random parameters, timm's rule: ``None`` (skipped) or ``(args, resample)``."""
        if self.prob < 1.0 and rng.random() > self.prob:
            return None
        m = self.magnitude
        std = self.hparams.get("magnitude_std", 0)
        if std == float("inf"):
            m = rng.uniform(0, m)
        elif std > 0:
            m = rng.normal(m, std)
        m = max(0.0, min(m, self.hparams.get("magnitude_max") or LEVEL_DENOM))
        negate = OPS[self.name][2] and rng.random() > 0.5
        args = op_args(self.name, m, self.hparams, negate)
        if self.name == "GaussianBlurRand":
            args = (rng.uniform(0.1, 2.0 * args[0]),)
        interp = self.hparams.get("interpolation")
        resample = RESAMPLE[interp] if interp else RANDOM_RESAMPLE[int(rng.integers(2))]
        return args, resample

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        drawn = self.draw(rng)
        if drawn is None:
            return img
        args, resample = drawn
        return apply_op(img, self.name, args, self.hparams.get("img_mean", FILL), resample)
