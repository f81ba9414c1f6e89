"""Eval preprocessing with timm's numbers: PIL image in, NHWC float32 out.

    cfg = vitjax.data.resolve_model_data_config(model)    # input_size, interpolation, mean, std, crop_pct, ...
    transform = vitjax.data.create_transform(**cfg)      # is_training=False
    x = transform(image)                                 # (H, W, 3) float32; a list of images gives (N, H, W, 3)

Mirrors timm ``data/config.py:resolve_data_config`` (values from the model's ``pretrained_cfg``, overridden by
``args``) and ``data/transforms_factory.py:transforms_imagenet_eval``: resize by ``1 / crop_pct`` (``center``:
the shorter side, keeping the aspect ratio; ``squash``: both sides; ``border``: the longer side, then pad with
the mean colour), centre crop (offset rounded as Python ``round``; zero padding if the image is smaller), scale
to [0, 1], normalise. Resizing is PIL's, as torchvision does on PIL images, so the output equals timm's.

The Hugging Face ViT ids use transformers' ``ViTImageProcessor`` instead (``resize_backend=
"torchvision_uint8"``): a squash resize with torchvision's antialiased bilinear kernel on the uint8 image, which
rounds differently from PIL; it is reimplemented here in integer arithmetic (int16 weights with a per-axis
precision, as torch's uint8 kernel), and the rescale and normalisation are fused as transformers fuses them.

Training augmentation is not part of vitjax (see ``train/``); ``is_training=True`` is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
DEFAULT_CROP_MODE = "center"

PIL_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def _pretrained_cfg_of(model: Any) -> Mapping[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is None and hasattr(model, "model"):  # features_only wrapper
        cfg = getattr(model.model, "pretrained_cfg", None)
    return cfg or {}


def resolve_data_config(
    args: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
    model: Any = None,
    use_test_size: bool = False,
) -> dict[str, Any]:
    """timm's ``resolve_data_config``: ``args`` override ``pretrained_cfg`` (default: ``model.pretrained_cfg``),
    which overrides timm's defaults. As in timm, the size comes from the pretrained config, not from an
    ``img_size`` the model was built with: pass ``args={"input_size": (3, H, W)}`` for another size."""
    args = dict(args or {})
    cfg = dict(pretrained_cfg or (_pretrained_cfg_of(model) if model is not None else {}))
    in_chans = args.get("in_chans") or args.get("chans") or 3
    if args.get("input_size") is not None:
        input_size = tuple(args["input_size"])
        if len(input_size) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {input_size}")
        in_chans = input_size[0]
    elif args.get("img_size") is not None:
        input_size = (in_chans, int(args["img_size"]), int(args["img_size"]))
    elif use_test_size and cfg.get("test_input_size") is not None:
        input_size = tuple(cfg["test_input_size"])
    elif cfg.get("input_size") is not None:
        input_size = tuple(cfg["input_size"])
    else:
        input_size = (in_chans, 224, 224)

    def stat(key: str, default: tuple[float, ...]) -> tuple[float, ...]:
        if args.get(key) is not None:
            v = tuple(args[key])
            return v * in_chans if len(v) == 1 else v
        return tuple(cfg[key]) if cfg.get(key) else default

    if args.get("crop_pct"):
        crop_pct = args["crop_pct"]
    elif use_test_size and cfg.get("test_crop_pct"):
        crop_pct = cfg["test_crop_pct"]
    else:
        crop_pct = cfg.get("crop_pct") or DEFAULT_CROP_PCT
    out = {
        "input_size": input_size,
        "interpolation": args.get("interpolation") or cfg.get("interpolation") or "bicubic",
        "mean": stat("mean", IMAGENET_DEFAULT_MEAN),
        "std": stat("std", IMAGENET_DEFAULT_STD),
        "crop_pct": crop_pct,
        "crop_mode": args.get("crop_mode") or cfg.get("crop_mode") or DEFAULT_CROP_MODE,
    }
    backend = args.get("resize_backend") or cfg.get("resize_backend")
    if backend:
        out["resize_backend"] = backend
    return out


def resolve_model_data_config(
    model: Any,
    args: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
    use_test_size: bool = False,
) -> dict[str, Any]:
    """:func:`resolve_data_config` with the model first (timm's ``resolve_model_data_config``)."""
    return resolve_data_config(args, pretrained_cfg, model, use_test_size)


# -- resizing ---------------------------------------------------------------------------------------------------
def _shorter_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the shorter side becomes ``size``, the longer one is truncated."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def _keep_ratio_size(h: int, w: int, target: tuple[int, int], longest: float) -> tuple[int, int]:
    """timm ``ResizeKeepRatio`` (no random scaling)."""
    rh, rw = h / target[0], w / target[1]
    ratio = max(rh, rw) * longest + min(rh, rw) * (1.0 - longest)
    return round(h / ratio), round(w / ratio)


def _aa_bilinear_weights(in_size: int, out_size: int) -> tuple[np.ndarray, int]:
    """torch's uint8 antialiased bilinear kernel along one axis: an ``(out, in)`` int64 matrix of int16 weights
    and its precision in bits."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    rows = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = np.clip(1.0 - np.abs((np.arange(lo, hi) - center + 0.5) * inv), 0.0, None)
        total = w.sum()
        rows[i, lo:hi] = w / total if total != 0 else w
    precision = 0
    while precision < 22 and int(0.5 + rows.max() * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = rows * (1 << precision)
    return np.where(v < 0, np.trunc(v - 0.5), np.trunc(v + 0.5)).astype(np.int64), precision


def _resize_uint8_axis(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    if a.shape[axis] == size:
        return a
    m, precision = _aa_bilinear_weights(a.shape[axis], size)
    x = np.moveaxis(a, axis, 0).astype(np.int64)
    y = np.tensordot(m, x, axes=(1, 0)) + (1 << (precision - 1))  # size, ...
    return np.moveaxis(np.clip(y >> precision, 0, 255).astype(np.uint8), 0, axis)


def resize_uint8_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` uint8 -> ``size``: torchvision v2 ``resize(antialias=True)`` on a uint8 tensor, bit-exact
    (width pass first, then height, each rounded to uint8)."""
    return _resize_uint8_axis(_resize_uint8_axis(img, size[1], 1), size[0], 0)


# -- the transform ------------------------------------------------------------------------------------------------
class EvalTransform:
    """Callable eval preprocessing; see the module docstring. ``__call__`` takes a PIL image (or an ``(H, W, 3)``
    uint8 array) and returns ``(H, W, C)`` float32, or a sequence of them and returns ``(N, H, W, C)``."""

    def __init__(
        self,
        img_size: tuple[int, int],
        crop_pct: float,
        crop_mode: str,
        interpolation: str,
        mean: Sequence[float],
        std: Sequence[float],
        resize_backend: str = "pil",
    ):
        if crop_mode not in ("center", "squash", "border"):
            raise ValueError(f"crop_mode must be 'center', 'squash' or 'border', got {crop_mode!r}")
        if interpolation not in PIL_INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; one of {sorted(PIL_INTERPOLATIONS)}")
        if resize_backend not in ("pil", "torchvision_uint8"):
            raise ValueError(f"resize_backend must be 'pil' or 'torchvision_uint8', got {resize_backend!r}")
        if resize_backend == "torchvision_uint8" and (interpolation != "bilinear" or crop_mode != "squash"):
            raise ValueError("resize_backend='torchvision_uint8' implements the bilinear squash resize only")
        self.img_size = img_size
        self.crop_pct = crop_pct
        self.crop_mode = crop_mode
        self.interpolation = interpolation
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.resize_backend = resize_backend
        self.scale_size = tuple(math.floor(s / crop_pct) for s in img_size)

    def __repr__(self) -> str:
        return (
            f"EvalTransform(img_size={self.img_size}, resize={self.scale_size} ({self.crop_mode}, "
            f"{self.interpolation}, {self.resize_backend}), mean={self.mean.tolist()}, std={self.std.tolist()})"
        )

    def __call__(self, img: Any) -> np.ndarray:
        if isinstance(img, Sequence) and not isinstance(img, np.ndarray):
            return np.stack([self(i) for i in img])
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image or a uint8 array, got {type(img).__name__}")
        if img.mode != "RGB" and len(self.mean) == 3:
            img = img.convert("RGB")
        if self.resize_backend == "torchvision_uint8":
            x = resize_uint8_bilinear(np.asarray(img), self.scale_size)
            x = self._center_crop(x, fill=(0,) * x.shape[-1])
            # transformers fuses rescale (1/255) into the normalisation: (x - 255 mean) / (255 std)
            return ((x.astype(np.float32) - self.mean * 255) / (self.std * 255)).astype(np.float32)
        fill = (0,) * len(self.mean)
        w, h = img.size
        resample = PIL_INTERPOLATIONS[self.interpolation]
        if self.crop_mode == "squash":
            size = self.scale_size
        elif self.crop_mode == "border":
            size = _keep_ratio_size(h, w, self.scale_size, longest=1.0)
            fill = tuple(round(255 * m) for m in self.mean)
        elif self.scale_size[0] == self.scale_size[1]:
            size = _shorter_side_size(h, w, self.scale_size[0])
        else:
            size = _keep_ratio_size(h, w, self.scale_size, longest=0.0)
        if (h, w) != tuple(size):
            img = img.resize((size[1], size[0]), resample)
        x = np.asarray(img)
        x = x[..., None] if x.ndim == 2 else x
        x = self._center_crop(x, fill)
        return ((x.astype(np.float32) / np.float32(255.0) - self.mean) / self.std).astype(np.float32)

    def _center_crop(self, x: np.ndarray, fill: Sequence[int]) -> np.ndarray:
        """torchvision ``CenterCrop`` / timm ``CenterCropOrPad`` on an ``(H, W, C)`` array."""
        ch, cw = self.img_size
        h, w = x.shape[:2]
        if ch > h or cw > w:
            top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
            pad = np.empty((max(ch, h), max(cw, w), x.shape[2]), x.dtype)
            pad[...] = np.asarray(fill, x.dtype)
            pad[top : top + h, left : left + w] = x
            x, (h, w) = pad, pad.shape[:2]
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return x[top : top + ch, left : left + cw]


def create_transform(
    input_size: int | Sequence[int] = 224,
    is_training: bool = False,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    resize_backend: str = "pil",
) -> EvalTransform:
    """timm's ``create_transform(..., is_training=False)``; takes :func:`resolve_model_data_config`'s dict as
    keyword arguments. ``input_size`` is ``(C, H, W)``, ``(H, W)`` or an int."""
    if is_training:
        raise ValueError("vitjax.data builds eval preprocessing only; training augmentation belongs to train/")
    if isinstance(input_size, int):
        img_size = (input_size, input_size)
    else:
        img_size = tuple(int(s) for s in input_size[-2:])
    return EvalTransform(
        img_size,
        crop_pct or DEFAULT_CROP_PCT,
        crop_mode or DEFAULT_CROP_MODE,
        interpolation,
        mean,
        std,
        resize_backend,
    )
