"""Image embeddings: the pooled, pre-classifier features of a few photos and their cosine similarities.

    python examples/embed.py --model vit_base_patch16_224 --checkpoint vit_b16.safetensors
    python examples/embed.py --model facebook/dinov2-small           # DINOv2: the normed class token
    python examples/embed.py --model google/siglip-base-patch16-224  # SigLIP: the attention-pool (MAP) output

``num_classes=0`` removes the classifier, so the model returns its pooled features (timm's
``forward_head(..., pre_logits=True)``); for the transformers ids (``google/vit-*-in21k``, ``facebook/dinov2-*``,
``google/siglip-*``, ``openai/clip-vit-*``) that is the model's ``pooler_output``.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import add_args, load_image, load_model  # examples/ is on sys.path when a script runs
from flax import nnx

import vitjax.data

PHOTOS = ("chelsea", "astronaut", "coffee")


def main(argv: list[str] | None = None) -> np.ndarray:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(parser, "vit_base_patch16_224")
    args = parser.parse_args(argv)

    model = load_model(args, num_classes=0)
    transform = vitjax.data.create_transform(**vitjax.data.resolve_model_data_config(model))
    names = [args.image] if args.image else list(PHOTOS)
    x = transform([load_image(args.image, n) for n in names])  # N, H, W, 3
    emb = np.asarray(nnx.jit(lambda m, v: m(v))(model, x))  # N, D
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    print(f"{args.model}: embeddings {emb.shape}")
    print(
        "cosine similarity:\n"
        + "\n".join(
            f"  {n:10s} " + " ".join(f"{s:6.3f}" for s in row) for n, row in zip(names, unit @ unit.T, strict=True)
        )
    )
    return emb


if __name__ == "__main__":
    main()
