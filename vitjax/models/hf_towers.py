"""transformers' image towers as rows of the ViT config: ``Dinov2Model`` (and ``Dinov2WithRegistersModel``),
``CLIPVisionModel`` and ``SiglipVisionModel``, named by their hub ids (``facebook/dinov2-base``, ...).

For every id ``forward_features(x)`` equals transformers' ``last_hidden_state`` and ``model(x)`` (the default
``num_classes=0``) its ``pooler_output``:

* DINOv2: pre-norm blocks with LayerScale on both branches, the final LayerNorm on every token, the pooler is
  the normed class token (``global_pool='token'``). Its position table is resampled *on every call* whose
  input is not the size it was built for (transformers' ``interpolate_pos_encoding``: bicubic without
  antialias for DINOv2, with antialias for the registers model; torch's weights, from
  :mod:`vitjax.layers.pos_embed`, in float32 at least), so one model takes any input size; pixels beyond the
  last whole patch are dropped as transformers' strided conv does.
  The register tokens sit between the class token and the patches and get no position embedding. The
  checkpoints' ``mask_token`` (used by transformers only for masked-image pretraining) is kept as an unused
  parameter so that checkpoints round-trip.
* CLIP: a LayerNorm before the blocks (``pre_norm``, a patch embedding without bias), QuickGELU, no norm on
  the tokens; the pooler is ``post_layernorm`` of the class token (vitjax's ``fc_norm`` after token pooling).
* SigLIP (and SigLIP 2's fixed-resolution towers): no class token, GELU-tanh, the final norm on every token,
  and the pooler is the multi-head attention-pooling head (``global_pool='map'``).

The rows are transformers' published ``config.json`` architectures; ``embed_dim``, ``depth``, ``num_heads``,
``mlp_ratio``, ``img_size`` and ``patch_size`` overrides build the matching smaller tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers import maybe
from vitjax.layers.linear import normal_param, zeros_param
from vitjax.layers.pos_embed import resample_abs_pos_embed
from vitjax.models.vit import VisionTransformer, ViTConfig
from vitjax.registry import variants
from vitjax.sharding import EMBED


# -- DINOv2 ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Dinov2Config(ViTConfig):
    """A ViT config plus how transformers resamples the position table per call: ``pos_antialias`` is False
    for ``Dinov2Model`` and True for ``Dinov2WithRegistersModel``."""

    pos_antialias: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.class_token or self.no_embed_class or self.pos_embed != "learn" or self.global_pool != "token":
            raise ValueError("DINOv2 towers have a class token with a learned position embedding, token pooling")


class Dinov2(VisionTransformer):
    """transformers' ``Dinov2Model`` / ``Dinov2WithRegistersModel`` on vitjax's ViT blocks."""

    def __init__(self, cfg: Dinov2Config, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        dim = cfg.embed_dim
        # transformers' table covers the class token and the patches, never the registers
        self.pos_embed = normal_param(rngs, (1, 1 + self.patch_embed.num_patches, dim), (None, None, EMBED))
        self.mask_token = zeros_param((1, dim), (None, EMBED))  # kept for checkpoints; the forward ignores it

    def _pos_embed_for(self, gh: int, gw: int, h: int, w: int) -> jax.Array:
        """transformers' ``interpolate_pos_encoding``: the table as stored unless the patch count or the input's
        squareness differs from the build, else its grid resampled to ``(gh, gw)``."""
        pos = self.pos_embed[...]
        g0h, g0w = self.patch_embed.grid_size
        if gh * gw == g0h * g0w and h == w:
            return pos
        return resample_abs_pos_embed(pos, (gh, gw), (g0h, g0w), 1, "bicubic", self.cfg.pos_antialias)

    def _embed(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"expected an NHWC image batch, got shape {x.shape}")
        b, h, w, _ = x.shape
        p = self.cfg.patch_size
        gh, gw = h // p, w // p
        if not gh or not gw:
            raise ValueError(f"input size {(h, w)} is smaller than one {p}x{p} patch")
        x = self.patch_embed.proj(x[:, : gh * p, : gw * p])  # B, gh, gw, C (a strided conv drops the rest)
        x = x.reshape(b, gh * gw, -1)  # B, N, C
        cls = jnp.broadcast_to(self.cls_token[...], (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self._pos_embed_for(gh, gw, h, w)  # B, 1 + N, C
        if self.reg_token is not None:
            reg = jnp.broadcast_to(self.reg_token[...], (b, *self.reg_token.shape[1:]))
            x = jnp.concatenate([x[:, :1], reg, x[:, 1:]], axis=1)  # B, 1 + R + N, C
        x = maybe(self.pos_drop, x)
        return maybe(self.norm_pre, x)


def dinov2_config(*, mlp_ratio: float = 4, swiglu: bool = False, **fields) -> Dinov2Config:
    """A DINOv2 config with transformers' MLP rule: ``mlp_ratio`` is its ratio, and the giant's SwiGLU keeps
    two thirds of ``int(embed_dim * mlp_ratio)`` rounded up to a multiple of 8 per half, which vitjax holds as
    a packed SwiGLU (``mlp_layer='swiglu_packed'``, its fc1 twice as wide, SiLU whatever ``hidden_act`` says)."""
    if swiglu:
        half = (int(int(fields["embed_dim"] * mlp_ratio) * 2 / 3) + 7) // 8 * 8
        fields.update(mlp_layer="swiglu_packed", mlp_ratio=(2 * half + 0.5) / fields["embed_dim"], act="silu")
    else:
        fields["mlp_ratio"] = mlp_ratio
    return Dinov2Config(**fields)


_DINOV2 = dict(patch_size=14, img_size=518, init_values=1.0, norm_eps=1e-6, num_classes=0, global_pool="token")
_DINOV2_SIZES = {
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "giant": dict(embed_dim=1536, depth=40, num_heads=24, swiglu=True),
}
_DINOV2_TABLE = {f"facebook/dinov2-{s}": dict(args) for s, args in _DINOV2_SIZES.items()} | {
    f"facebook/dinov2-with-registers-{s}": dict(args, reg_tokens=4, pos_antialias=True)
    for s, args in _DINOV2_SIZES.items()
}

# -- CLIP ---------------------------------------------------------------------------------------------------------
_CLIP = dict(pre_norm=True, fc_norm=True, global_pool="token", act="quick_gelu", norm_eps=1e-5, num_classes=0)
_CLIP_B = dict(embed_dim=768, depth=12, num_heads=12)
_CLIP_L = dict(embed_dim=1024, depth=24, num_heads=16, patch_size=14)
_CLIP_TABLE = {
    "openai/clip-vit-base-patch32": dict(_CLIP_B, patch_size=32, img_size=224),
    "openai/clip-vit-base-patch16": dict(_CLIP_B, patch_size=16, img_size=224),
    "openai/clip-vit-large-patch14": dict(_CLIP_L, img_size=224),
    "openai/clip-vit-large-patch14-336": dict(_CLIP_L, img_size=336),
}

# -- SigLIP (and SigLIP 2's fixed-resolution towers, which transformers runs as SigLIP) ---------------------------
# no class token; the final norm on every token; the MAP head (global_pool='map') is transformers' pooler
_SIGLIP = dict(class_token=False, global_pool="map", fc_norm=False, act="gelu_tanh", norm_eps=1e-6, num_classes=0)
_SIGLIP_SIZES = {
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "so400m": dict(embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362),  # MLP 4304 wide
    "giant-opt": dict(embed_dim=1536, depth=40, num_heads=16),
}
_SIGLIP_IDS = {
    "google/siglip-base-patch16-224": ("base", 16, 224),
    "google/siglip-base-patch16-256": ("base", 16, 256),
    "google/siglip-base-patch16-384": ("base", 16, 384),
    "google/siglip-base-patch16-512": ("base", 16, 512),
    "google/siglip-base-patch16-256-multilingual": ("base", 16, 256),
    "google/siglip-large-patch16-256": ("large", 16, 256),
    "google/siglip-large-patch16-384": ("large", 16, 384),
    "google/siglip-so400m-patch14-224": ("so400m", 14, 224),
    "google/siglip-so400m-patch14-384": ("so400m", 14, 384),
    "google/siglip-so400m-patch16-256-i18n": ("so400m", 16, 256),
    "google/siglip2-base-patch16-224": ("base", 16, 224),
    "google/siglip2-base-patch16-256": ("base", 16, 256),
    "google/siglip2-base-patch16-384": ("base", 16, 384),
    "google/siglip2-base-patch16-512": ("base", 16, 512),
    "google/siglip2-base-patch32-256": ("base", 32, 256),
    "google/siglip2-large-patch16-256": ("large", 16, 256),
    "google/siglip2-large-patch16-384": ("large", 16, 384),
    "google/siglip2-large-patch16-512": ("large", 16, 512),
    "google/siglip2-so400m-patch14-224": ("so400m", 14, 224),
    "google/siglip2-so400m-patch14-384": ("so400m", 14, 384),
    "google/siglip2-so400m-patch16-256": ("so400m", 16, 256),
    "google/siglip2-so400m-patch16-384": ("so400m", 16, 384),
    "google/siglip2-so400m-patch16-512": ("so400m", 16, 512),
    "google/siglip2-giant-opt-patch16-256": ("giant-opt", 16, 256),
    "google/siglip2-giant-opt-patch16-384": ("giant-opt", 16, 384),
}
_SIGLIP_TABLE = {
    name: dict(_SIGLIP_SIZES[size], patch_size=p, img_size=img) for name, (size, p, img) in _SIGLIP_IDS.items()
}

MODELS = {
    **variants("hf_dinov2", dinov2_config, Dinov2, _DINOV2_TABLE, **_DINOV2),
    **variants("hf_clip", ViTConfig, VisionTransformer, _CLIP_TABLE, **_CLIP),
    **variants("hf_siglip", ViTConfig, VisionTransformer, _SIGLIP_TABLE, **_SIGLIP),
}
