"""Patch embedding: a stride-``patch`` convolution, flattened row-major to tokens (timm ``PatchEmbed``)."""

from __future__ import annotations

import jax
from flax import nnx

from vitjax.layers.conv import create_conv2d
from vitjax.layers.drop import maybe
from vitjax.sharding import EMBED


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchEmbed(nnx.Module):
    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        in_chans: int,
        embed_dim: int,
        *,
        bias: bool = True,
        strict_img_size: bool = True,
        norm: nnx.Module | None = None,
        rngs: nnx.Rngs,
    ):
        """``norm``: a norm over each patch embedding (timm's ``embed_norm_layer``, AIMv2)."""
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError("only square patches are supported")
        for s, p in zip(self.img_size, self.patch_size, strict=True):
            if s % p:
                raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        p = self.patch_size[0]
        self.proj = create_conv2d(
            in_chans, embed_dim, p, stride=p, padding=0, bias=bias, axes=(None, None, None, EMBED), rngs=rngs
        )
        self.norm = norm

    def check_size(self, h: int, w: int) -> None:
        if self.strict_img_size and (h, w) != self.img_size:
            raise ValueError(
                f"input size {(h, w)} does not match the model's img_size {self.img_size}; "
                f"build the model with create_model(..., img_size={(h, w)})"
            )
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(f"input size {(h, w)} is not divisible by the patch size {self.patch_size}")

    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC image -> NHWC grid of patch embeddings ``(B, H/p, W/p, C)``."""
        if x.ndim != 4:
            raise ValueError(f"expected an NHWC image batch, got shape {x.shape}")
        self.check_size(x.shape[1], x.shape[2])
        return maybe(self.norm, self.proj(x))  # B, Gh, Gw, C
