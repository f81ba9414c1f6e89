"""Vision Transformer (arXiv:2010.11929) and its timm variants, in one configurable class.

Mirrors timm ``models/vision_transformer.py`` (classic ViT, register tokens, GAP heads, parallel and
differential-attention blocks) and ``models/vision_transformer_relpos.py`` (relative-position ViTs: no
absolute position embedding, a relative-position bias in every attention layer). Hugging Face's
``ViTModel`` is the classic layout with LayerNorm eps 1e-12 and a tanh "pooler" (``pre_logits``).

Attribute paths follow timm (``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.rel_pos.mlp.fc1``) so the converter
tables are lists of transposes. Inputs are NHWC; tokens are ``(B, N, C)`` with prefix tokens first
(class token, then registers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers import (
    Attention,
    DiffAttention,
    Dropout,
    DropPath,
    LayerNorm,
    Linear,
    Mlp,
    PatchEmbed,
    RelPosBias,
    RelPosMlp,
    RmsNorm,
    attend,
    drop_path_rates,
    get_act,
    layer_scale,
    maybe,
    to_2tuple,
)
from vitjax.layers.attention import diff_lambda_init, diff_mix, merge_heads
from vitjax.layers.classifier import PreLogits
from vitjax.layers.linear import normal_param, zeros_param
from vitjax.layers.pos_embed import resample_abs_pos_embed
from vitjax.models.common import ClassifierMixin, feature_take_indices, run_block
from vitjax.registry import variants
from vitjax.sharding import CLASSES, EMBED, MLP, QKV

Pool = Literal["", "avg", "avgmax", "max", "token"]


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Architecture of a ViT; field names and defaults are timm ``VisionTransformer``'s."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: Pool = "token"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    proj_bias: bool = True
    init_values: float | None = None
    class_token: bool = True
    pos_embed: Literal["learn", "none"] = "learn"
    no_embed_class: bool = False
    reg_tokens: int = 0
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool | None = None  # None: on when the pool averages
    block: Literal["block", "res_post", "parallel", "diff_parallel"] = "block"
    attn_layer: Literal["attention", "diff"] = "attention"
    rel_pos: Literal["none", "mlp", "bias"] = "none"  # relative-position bias (vision_transformer_relpos)
    rel_pos_dim: int = 128  # hidden width of the RelPosMlp
    shared_rel_pos: bool = False  # one bias module for all blocks (vit_srelpos_*)
    representation_size: int | None = None  # tanh pre-logits layer (original ViT in21k, HF's pooler)
    norm_eps: float = 1e-6
    act: str = "gelu"
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dynamic_img_size: bool = False  # any input size: pos_embed resampled to its grid on every call
    dynamic_img_pad: bool = False  # inputs padded to a patch multiple

    def __post_init__(self):
        if self.global_pool not in ("", "avg", "avgmax", "max", "token"):
            raise ValueError(f"global_pool must be '', 'avg', 'avgmax', 'max' or 'token', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.rel_pos != "none" and self.pos_embed != "none":
            raise ValueError("relative-position models have no absolute position embedding (pos_embed='none')")
        if self.rel_pos != "none" and self.block not in ("block", "res_post"):
            raise ValueError("relative-position bias is supported in 'block' and 'res_post' blocks")
        if self.block in ("parallel", "diff_parallel") and self.qk_norm:
            raise ValueError("qk_norm is not supported in parallel blocks")
        if self.dynamic_img_size and self.rel_pos != "none":
            raise ValueError("dynamic_img_size is not supported with a relative-position bias (its grid is fixed)")
        to_2tuple(self.img_size)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool in ("avg", "avgmax", "max") if self.fc_norm is None else self.fc_norm

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = to_2tuple(self.img_size)
        return h // self.patch_size, w // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


def _rel_pos_module(cfg: ViTConfig, rngs: nnx.Rngs) -> RelPosMlp | RelPosBias:
    prefix = cfg.num_prefix_tokens
    if cfg.rel_pos == "mlp":
        return RelPosMlp(cfg.grid_size, cfg.num_heads, hidden_dim=cfg.rel_pos_dim, prefix_tokens=prefix, rngs=rngs)
    return RelPosBias(cfg.grid_size, cfg.num_heads, prefix_tokens=prefix, rngs=rngs)


class Block(nnx.Module):
    """Pre-norm block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))`` (timm ``Block``/``RelPosBlock``);
    ``res_post`` puts the norm on the branch output instead (timm ``ResPostBlock``/``ResPostRelPosBlock``)."""

    def __init__(self, cfg: ViTConfig, index: int, drop_path: float, *, rngs: nnx.Rngs):
        dim = cfg.embed_dim
        self.post_norm = cfg.block == "res_post"
        self.norm1 = LayerNorm(dim, eps=cfg.norm_eps, rngs=rngs)
        if cfg.attn_layer == "diff":
            self.attn = DiffAttention(
                dim,
                cfg.num_heads,
                depth=index,
                qkv_bias=cfg.qkv_bias,
                proj_bias=cfg.proj_bias,
                attn_drop=cfg.attn_drop_rate,
                proj_drop=cfg.proj_drop_rate,
                rngs=rngs,
            )
        else:
            self.attn = Attention(
                dim,
                cfg.num_heads,
                qkv_bias=cfg.qkv_bias,
                proj_bias=cfg.proj_bias,
                qk_norm=cfg.qk_norm,
                norm_eps=cfg.norm_eps,
                attn_drop=cfg.attn_drop_rate,
                proj_drop=cfg.proj_drop_rate,
                rngs=rngs,
            )
            if cfg.rel_pos != "none" and not cfg.shared_rel_pos:
                self.attn.rel_pos = _rel_pos_module(cfg, rngs)
        # res_post blocks have no LayerScale: timm uses init_values only to initialise the norm weights there
        self.ls1 = None if self.post_norm else layer_scale(dim, cfg.init_values)
        self.drop_path1 = DropPath(drop_path, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=cfg.norm_eps, rngs=rngs)
        self.mlp = Mlp(dim, cfg.mlp_hidden, act=cfg.act, bias=cfg.proj_bias, drop=cfg.proj_drop_rate, rngs=rngs)
        self.ls2 = None if self.post_norm else layer_scale(dim, cfg.init_values)
        self.drop_path2 = DropPath(drop_path, rngs=rngs)

    def _attn(self, x: jax.Array, shared_bias: jax.Array | None) -> jax.Array:
        if isinstance(self.attn, DiffAttention):
            return self.attn(x)
        rel_pos = getattr(self.attn, "rel_pos", None)
        bias = rel_pos() if rel_pos is not None else shared_bias
        return self.attn(x, bias=bias)

    def __call__(self, x: jax.Array, shared_bias: jax.Array | None = None) -> jax.Array:
        if self.post_norm:
            x = x + maybe(self.drop_path1, self.norm1(self._attn(x, shared_bias)))
            return x + maybe(self.drop_path2, self.norm2(self.mlp(x)))
        x = x + maybe(self.drop_path1, maybe(self.ls1, self._attn(self.norm1(x), shared_bias)))
        return x + maybe(self.drop_path2, maybe(self.ls2, self.mlp(self.norm2(x))))


class ParallelBlock(nnx.Module):
    """Attention and MLP in parallel from one fused input projection (ViT-22B; timm ``ParallelScalingBlock``
    and, with ``diff_parallel``, ``DiffParallelScalingBlock``)."""

    def __init__(self, cfg: ViTConfig, index: int, drop_path: float, *, rngs: nnx.Rngs):
        dim, hidden = cfg.embed_dim, cfg.mlp_hidden
        self.diff = cfg.block == "diff_parallel"
        self.num_heads = cfg.num_heads
        self.hidden = hidden
        self.in_norm = LayerNorm(dim, eps=cfg.norm_eps, rngs=rngs)
        self.in_proj = Linear(dim, hidden + 3 * dim, bias=cfg.qkv_bias, axes=(EMBED, MLP), rngs=rngs)
        self.mlp_bias = None if cfg.qkv_bias else zeros_param((hidden,), (MLP,))
        self.act = get_act(cfg.act)
        self.attn_drop = Dropout(cfg.attn_drop_rate, rngs=rngs)
        self.mlp_drop = Dropout(cfg.proj_drop_rate, rngs=rngs)
        if self.diff:
            self.head_dim = dim // cfg.num_heads // 2
            self.lambda_init = diff_lambda_init(index)
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                setattr(self, name, normal_param(rngs, (self.head_dim,), (None,), std=0.1))
            self.sub_norm = RmsNorm(2 * self.head_dim, eps=1e-5)
            self.out_proj = Linear(dim + hidden, dim, bias=cfg.proj_bias, axes=(MLP, EMBED), rngs=rngs)
        else:
            self.head_dim = dim // cfg.num_heads
            self.attn_out_proj = Linear(dim, dim, bias=cfg.proj_bias, axes=(QKV, EMBED), rngs=rngs)
            self.mlp_out_proj = Linear(hidden, dim, bias=cfg.proj_bias, axes=(MLP, EMBED), rngs=rngs)
        self.ls = None if cfg.init_values is None else layer_scale(dim, cfg.init_values)
        self.drop_path = DropPath(drop_path, rngs=rngs)

    def __call__(self, x: jax.Array, shared_bias: jax.Array | None = None) -> jax.Array:
        b, n, c = x.shape
        y = self.in_proj(self.in_norm(x))  # B, N, hidden + 3C
        x_mlp, q, k, v = jnp.split(y, [self.hidden, self.hidden + c, self.hidden + 2 * c], axis=-1)
        if self.mlp_bias is not None:
            x_mlp = x_mlp + self.mlp_bias[...].reshape(1, 1, -1)
        x_mlp = maybe(self.mlp_drop, self.act(x_mlp))
        if self.diff:
            x_attn = diff_mix(self, q, k, v)  # B, N, C
            y = self.out_proj(jnp.concatenate([x_attn, x_mlp], axis=-1))
        else:
            h, d = self.num_heads, self.head_dim
            q, k, v = (t.reshape(b, n, h, d).transpose(0, 2, 1, 3) for t in (q, k, v))  # B, H, N, D
            x_attn = merge_heads(attend(q, k, v, scale=d**-0.5, dropout=self.attn_drop))  # B, N, C
            y = self.attn_out_proj(x_attn) + self.mlp_out_proj(x_mlp)
        return x + maybe(self.drop_path, maybe(self.ls, y))


class VisionTransformer(ClassifierMixin, nnx.Module):
    default_out_indices = 3  # features_only: the last three blocks

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dim = cfg.embed_dim
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.num_features = self.head_hidden_size = cfg.representation_size or dim
        self.patch_embed = PatchEmbed(
            cfg.img_size,
            cfg.patch_size,
            cfg.in_chans,
            dim,
            bias=not cfg.pre_norm,
            strict_img_size=not cfg.dynamic_img_size,
            dynamic_img_pad=cfg.dynamic_img_pad,
            rngs=rngs,
        )
        self.cls_token = normal_param(rngs, (1, 1, dim), (None, None, EMBED), 1e-6) if cfg.class_token else None
        self.reg_token = (
            normal_param(rngs, (1, cfg.reg_tokens, dim), (None, None, EMBED), 1e-6) if cfg.reg_tokens else None
        )
        if cfg.pos_embed == "learn":
            embed_len = self.patch_embed.num_patches + (0 if cfg.no_embed_class else self.num_prefix_tokens)
            self.pos_embed = normal_param(rngs, (1, embed_len, dim), (None, None, EMBED))
        else:
            self.pos_embed = None
        self.pos_drop = Dropout(cfg.pos_drop_rate, rngs=rngs)
        self.norm_pre = LayerNorm(dim, eps=cfg.norm_eps, rngs=rngs) if cfg.pre_norm else None
        self.shared_rel_pos = _rel_pos_module(cfg, rngs) if cfg.rel_pos != "none" and cfg.shared_rel_pos else None
        block_cls = ParallelBlock if cfg.block in ("parallel", "diff_parallel") else Block
        dpr = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        self.blocks = nnx.List([block_cls(cfg, i, dpr[i], rngs=rngs) for i in range(cfg.depth)])
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=dim, reduction=cfg.patch_size) for i in range(cfg.depth)
        ]
        self.norm = LayerNorm(dim, eps=cfg.norm_eps, rngs=rngs) if cfg.final_norm and not cfg.use_fc_norm else None
        self.fc_norm = LayerNorm(dim, eps=cfg.norm_eps, rngs=rngs) if cfg.final_norm and cfg.use_fc_norm else None
        self.pre_logits = PreLogits(dim, cfg.representation_size, rngs=rngs) if cfg.representation_size else None
        self.head_drop = Dropout(cfg.drop_rate, rngs=rngs)
        self.head = (
            Linear(self.num_features, cfg.num_classes, axes=(EMBED, CLASSES), rngs=rngs)
            if cfg.num_classes > 0
            else None
        )
        self.grad_checkpointing = False

    def _embed(self, x: jax.Array) -> jax.Array:
        x = self.patch_embed(x)  # B, Gh, Gw, C
        b, gh, gw, c = x.shape
        x = x.reshape(b, -1, c)  # B, N, C
        prefix = [
            jnp.broadcast_to(t[...], (b, *t.shape[1:])) for t in (self.cls_token, self.reg_token) if t is not None
        ]
        pos = None if self.pos_embed is None else self.pos_embed[...]
        if pos is not None and self.cfg.dynamic_img_size:  # timm resamples the table to the input's grid
            rows = 0 if self.cfg.no_embed_class else self.num_prefix_tokens
            pos = resample_abs_pos_embed(pos, (gh, gw), self.patch_embed.grid_size, rows)  # 1, rows + N, C
        if pos is not None and self.cfg.no_embed_class:
            x = x + pos
        x = jnp.concatenate([*prefix, x], axis=1) if prefix else x  # B, P + N, C
        if pos is not None and not self.cfg.no_embed_class:
            x = x + pos
        x = maybe(self.pos_drop, x)
        return maybe(self.norm_pre, x)

    def _shared_bias(self) -> jax.Array | None:
        return self.shared_rel_pos() if self.shared_rel_pos is not None else None

    def forward_features(self, x: jax.Array) -> jax.Array:
        """NHWC images -> tokens ``(B, prefix + patches, C)``, after the final norm where the model has one."""
        x = self._embed(x)
        bias = self._shared_bias()
        for blk in self.blocks:
            x = run_block(blk, x, bias, remat=self.grad_checkpointing)
        return maybe(self.norm, x)

    def pool(self, x: jax.Array, pool_type: str | None = None) -> jax.Array:
        pool_type = self.cfg.global_pool if pool_type is None else pool_type
        if not pool_type:
            return x
        if pool_type == "token":
            return x[:, 0]
        x = x[:, self.num_prefix_tokens :]
        if pool_type == "avg":
            return x.mean(axis=1)
        if pool_type == "max":
            return x.max(axis=1)
        return 0.5 * (x.max(axis=1) + x.mean(axis=1))  # avgmax

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        x = maybe(self.fc_norm, self.pool(x))
        x = maybe(self.pre_logits, x)
        x = maybe(self.head_drop, x)
        return x if pre_logits else maybe(self.head, x)

    def forward_intermediates(
        self, x: jax.Array, indices: int | tuple[int, ...] | None = None, norm: bool = False
    ) -> list[jax.Array]:
        """Outputs of the chosen blocks as NHWC maps ``(B, Gh, Gw, C)``, prefix tokens removed (timm's
        ``forward_intermediates(..., intermediates_only=True)``)."""
        take, _ = feature_take_indices(len(self.blocks), indices)
        b, h, w, _ = x.shape
        gh, gw = self.patch_embed.dynamic_feat_size(h, w)
        x = self._embed(x)
        bias = self._shared_bias()
        out = []
        for i, blk in enumerate(self.blocks):
            x = run_block(blk, x, bias, remat=self.grad_checkpointing)
            if i in take:
                y = maybe(self.norm, x) if norm else x
                out.append(y[:, self.num_prefix_tokens :].reshape(b, gh, gw, -1))  # B, Gh, Gw, C
        return out

    def prune_intermediate_layers(
        self, indices: int | tuple[int, ...] | None = None, prune_norm: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = nnx.List(list(self.blocks)[: max_index + 1])
        if prune_norm:
            self.norm = None
        self.fc_norm = self.pre_logits = self.head = None
        return take


# -- registered variants of timm's vision_transformer.py ------------------------------------------------------
_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
_CLASSIC = {
    f"vit_{size}_patch{p}_{res}": dict(patch_size=p, embed_dim=d, depth=n, num_heads=h, img_size=res)
    for size, (d, n, h) in _SIZES.items()
    for p in (16, 32)
    for res in (224, 384)
    if not (size == "tiny" and p == 32)
}
_REG = dict(class_token=False, no_embed_class=True, global_pool="avg", init_values=1e-5)
_WEE = dict(_REG, embed_dim=256, depth=14, num_heads=4, mlp_ratio=5, reg_tokens=1)
_LITTLE = dict(_REG, embed_dim=320, depth=14, num_heads=5, mlp_ratio=5.6)
_SO150M = dict(
    embed_dim=896,
    depth=18,
    num_heads=14,
    mlp_ratio=2.572,
    class_token=False,
    reg_tokens=4,
    global_pool="avg",
    fc_norm=False,
)
_SO150M2 = dict(
    embed_dim=832,
    depth=21,
    num_heads=13,
    mlp_ratio=34 / 13,
    init_values=1e-5,
    qkv_bias=False,
    class_token=False,
    reg_tokens=1,
    global_pool="avg",
)
_REG_GAP = {
    "vit_wee_patch16_reg1_gap_256": dict(_WEE),
    "vit_dwee_patch16_reg1_gap_256": dict(_WEE, attn_layer="diff"),
    "vit_pwee_patch16_reg1_gap_256": dict(_WEE, depth=16, block="parallel"),
    "vit_dpwee_patch16_reg1_gap_256": dict(_WEE, depth=16, block="diff_parallel"),
    "vit_little_patch16_reg1_gap_256": dict(_LITTLE, reg_tokens=1),
    "vit_dlittle_patch16_reg1_gap_256": dict(_LITTLE, reg_tokens=1, attn_layer="diff"),
    "vit_little_patch16_reg4_gap_256": dict(_LITTLE, reg_tokens=4),
    "vit_medium_patch16_reg1_gap_256": dict(_REG, embed_dim=512, depth=12, num_heads=8, reg_tokens=1),
    "vit_medium_patch16_reg4_gap_256": dict(_REG, embed_dim=512, depth=12, num_heads=8, reg_tokens=4),
    "vit_mediumd_patch16_reg4_gap_256": dict(_REG, embed_dim=512, depth=20, num_heads=8, reg_tokens=4),
    "vit_mediumd_patch16_reg4_gap_384": dict(_REG, embed_dim=512, depth=20, num_heads=8, reg_tokens=4),
    "vit_betwixt_patch16_reg1_gap_256": dict(_REG, embed_dim=640, depth=12, num_heads=10, reg_tokens=1),
    "vit_betwixt_patch16_reg4_gap_256": dict(_REG, embed_dim=640, depth=12, num_heads=10, reg_tokens=4),
    "vit_betwixt_patch16_reg4_gap_384": dict(_REG, embed_dim=640, depth=12, num_heads=10, reg_tokens=4),
    "vit_base_patch16_reg4_gap_256": dict(_REG, embed_dim=768, depth=12, num_heads=12, reg_tokens=4, init_values=None),
    "vit_so150m_patch16_reg4_gap_256": dict(_SO150M),
    "vit_so150m_patch16_reg4_gap_384": dict(_SO150M),
    "vit_so150m2_patch16_reg1_gap_256": dict(_SO150M2),
    "vit_so150m2_patch16_reg1_gap_384": dict(_SO150M2),
    "vit_so150m2_patch16_reg1_gap_448": dict(_SO150M2),
}
# timm's default pretrained tag for this one is the in21k original, released without a head
_CLASSIC["vit_large_patch32_224"]["num_classes"] = 0
for _name, _args in _REG_GAP.items():
    _args.setdefault("img_size", int(_name.rsplit("_", 1)[1]))

MODELS = variants("vision_transformer", ViTConfig, VisionTransformer, {**_CLASSIC, **_REG_GAP})
