"""Patch embedding: a stride-``patch`` convolution, flattened row-major to tokens (timm ``PatchEmbed``).

``strict_img_size=False`` accepts any input whose sides are patch multiples (timm's models built with
``dynamic_img_size``); ``dynamic_img_pad`` first pads the bottom and right edges with zeros up to the next patch
multiple, as timm's ``dynamic_img_pad`` does, so any size is accepted and the grid is ``ceil(size / patch)``.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

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
        dynamic_img_pad: bool = False,
        norm: nnx.Module | None = None,
        rngs: nnx.Rngs,
    ):
        """``norm``: a norm over each patch embedding (timm's ``embed_norm_layer``, AIMv2)."""
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError("only square patches are supported")
        # an img_size that is not a patch multiple is kept, as timm keeps it: the stride-p convolution drops the
        # remainder (vit_so400m_patch14_siglip_384: 384 px, a 27 x 27 grid)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
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
        if not self.strict_img_size and not self.dynamic_img_pad and (h % self.patch_size[0] or w % self.patch_size[1]):
            raise ValueError(
                f"input size {(h, w)} is not divisible by the patch size {self.patch_size}; "
                "build the model with dynamic_img_pad=True to pad it"
            )

    def dynamic_feat_size(self, h: int, w: int) -> tuple[int, int]:
        """The patch grid of an ``h`` x ``w`` input (rounded up under ``dynamic_img_pad``)."""
        ph, pw = self.patch_size
        if self.dynamic_img_pad:
            return -(-h // ph), -(-w // pw)
        return h // ph, w // pw

    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC image -> NHWC grid of patch embeddings ``(B, Gh, Gw, C)``."""
        if x.ndim != 4:
            raise ValueError(f"expected an NHWC image batch, got shape {x.shape}")
        _, h, w, _ = x.shape
        self.check_size(h, w)
        if self.dynamic_img_pad:
            gh, gw = self.dynamic_feat_size(h, w)
            pads = ((0, 0), (0, gh * self.patch_size[0] - h), (0, gw * self.patch_size[1] - w), (0, 0))
            x = jnp.pad(x, pads)  # B, Gh*p, Gw*p, Cin
        return maybe(self.norm, self.proj(x))  # B, Gh, Gw, C
