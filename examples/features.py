"""Feature maps: a backbone's intermediate outputs as NHWC arrays (timm's ``features_only``).

    python examples/features.py --model vit_base_patch16_224 --checkpoint vit_b16.safetensors --out-indices 3 7 11
    python examples/features.py --model google/siglip-base-patch16-224 --out-indices 5 11   # SigLIP patch maps

Each map is ``(1, H / reduction, W / reduction, channels)``; ViTs give their blocks' patch tokens as a grid.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import add_args, load_image, load_model  # examples/ is on sys.path when a script runs
from flax import nnx

import vitjax.data


def main(argv: list[str] | None = None) -> list[np.ndarray]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(parser, "vit_base_patch16_224")
    parser.add_argument("--out-indices", type=int, nargs="*", default=None, help="which layers (default: timm's)")
    args = parser.parse_args(argv)

    kwargs = {"features_only": True}
    if args.out_indices:
        kwargs["out_indices"] = tuple(args.out_indices)
    model = load_model(args, **kwargs)
    transform = vitjax.data.create_transform(**vitjax.data.resolve_model_data_config(model))
    x = transform(load_image(args.image))[None]  # 1, H, W, 3
    maps = [np.asarray(m) for m in nnx.jit(lambda m, v: m(v))(model, x)]
    print(f"{args.model}: {len(maps)} feature maps from input {x.shape}")
    for info, fmap in zip(model.feature_info, maps, strict=True):
        print(
            f"  {info['module']:12s} reduction {info['reduction']:3d}  {fmap.shape}  mean |x| {np.abs(fmap).mean():.3f}"
        )
    return maps


if __name__ == "__main__":
    main()
