"""Classify a photo: top-5 ImageNet classes with their probabilities.

    python examples/classify.py --model vit_base_patch16_224 --checkpoint vit_b16.safetensors

Preprocessing is the model's own (``vitjax.data``: timm's eval numbers); class names come from timm's
``ImageNetInfo`` (the subset is inferred from the classifier size: 1k, 12k, 21k/22k).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from _common import add_args, load_image, load_model  # examples/ is on sys.path when a script runs
from flax import nnx

import vitjax.data


def class_names(model) -> list[str] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": model.cfg.num_classes})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(info.num_classes())]


def main(argv: list[str] | None = None) -> list[tuple[int, str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(parser, "vit_base_patch16_224")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    args = parser.parse_args(argv)

    model = load_model(args)
    transform = vitjax.data.create_transform(**vitjax.data.resolve_model_data_config(model))
    x = transform(load_image(args.image))[None]  # 1, H, W, 3
    logits = nnx.jit(lambda m, v: m(v))(model, x)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))[0]
    top = np.argsort(-probs)[: args.top]
    names = class_names(model) or [f"class {i}" for i in range(len(probs))]
    result = [(int(i), names[i], float(probs[i])) for i in top]
    print(f"{args.model} ({model.pretrained_cfg.get('source', 'random init')}):")
    for i, name, p in result:
        print(f"  {p:7.2%}  {i:5d}  {name}")
    return result


if __name__ == "__main__":
    main()
