"""Shared bits of the examples: the photo and the weights."""

from __future__ import annotations

import argparse

from PIL import Image

import vitjax


def add_args(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument("--model", default=default_model, help=f"a vitjax model name (default {default_model})")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="weights: a local .safetensors/.pth/.npz file, a vitjax checkpoint directory (python -m converters "
        "to-jax), or NAME.TAG; default: the model's default weights from the Hugging Face hub",
    )
    parser.add_argument(
        "--image", default=None, help="an image file (default: scikit-image's bundled photo of Chelsea the cat)"
    )


def load_image(path: str | None, sample: str = "chelsea") -> Image.Image:
    if path:
        return Image.open(path).convert("RGB")
    import skimage.data  # ships its sample photos inside the package: no download

    return Image.fromarray(getattr(skimage.data, sample)())


def load_model(args, **kwargs):
    return vitjax.create_model(args.model, pretrained=args.checkpoint or True, **kwargs)
