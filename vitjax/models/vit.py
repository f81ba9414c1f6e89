"""Vision Transformer (arXiv:2010.11929) and its timm variants, in one configurable class.

Mirrors timm ``models/vision_transformer.py`` (classic ViT, register tokens, GAP / MAP / PRR heads, parallel,
parallel-things and differential-attention blocks, SwiGLU MLPs, RmsNorm, BEiT3's scale norms),
``models/deit.py`` (the distilled models' second token and head) and ``models/vision_transformer_relpos.py``
(relative-position ViTs: no absolute position embedding, a relative-position bias in every attention layer).
Hugging Face's ``ViTModel`` is the classic layout with LayerNorm eps 1e-12 and a tanh "pooler" (``pre_logits``).

Attribute paths follow timm (``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.rel_pos.mlp.fc1``) so the converter
tables are lists of transposes. Inputs are NHWC; tokens are ``(B, N, C)`` with prefix tokens first
(class token, then registers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers import (
    NORM_KINDS,
    Attention,
    AttentionPoolLatent,
    AttentionPoolPrr,
    DiffAttention,
    Dropout,
    DropPath,
    GluMlp,
    Linear,
    Mlp,
    NormFactory,
    PatchEmbed,
    RelPosBias,
    RelPosMlp,
    RmsNorm,
    SwiGLU,
    attend,
    drop_path_rates,
    get_act,
    layer_scale,
    maybe,
    norm_factory,
    to_2tuple,
)
from vitjax.layers.attention import diff_lambda_init, diff_mix, merge_heads
from vitjax.layers.classifier import PreLogits
from vitjax.layers.linear import normal_param, zeros_param
from vitjax.layers.pos_embed import resample_abs_pos_embed
from vitjax.models.common import ClassifierMixin, feature_take_indices, run_block
from vitjax.registry import variants
from vitjax.sharding import CLASSES, EMBED, MLP, QKV

Pool = Literal["", "avg", "avgmax", "max", "token", "map", "prr"]
POOLS = ("", "avg", "avgmax", "max", "token", "map", "prr")
MLP_LAYERS = ("mlp", "swiglu", "swiglu_packed")
PARALLEL = ("parallel", "diff_parallel")


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Architecture of a ViT; field names and defaults are timm ``VisionTransformer``'s.

    Beyond timm's own names: ``norm_layer`` / ``norm_eps`` stand for timm's ``norm_layer`` class and its eps,
    ``embed_norm`` for ``embed_norm_layer`` (the same norm), ``mlp_layer`` for timm's ``Mlp`` / ``SwiGLU`` /
    ``SwiGLUPacked`` (hidden width ``int(embed_dim * mlp_ratio)`` in each; the packed one's fc2 takes half),
    ``block`` for ``block_fn`` and ``dist_token`` for deit.py's ``VisionTransformerDistilled``.
    """

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
    scale_attn_norm: bool = False  # BEiT3: a norm on the attention output before proj
    scale_mlp_norm: bool = False  # BEiT3: a norm on the MLP's hidden features before fc2
    proj_bias: bool = True
    init_values: float | None = None
    class_token: bool = True
    dist_token: bool = False  # DeiT distilled: a second prefix token read by `head_dist`
    pos_embed: Literal["learn", "none"] = "learn"
    no_embed_class: bool = False
    reg_tokens: int = 0
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool | None = None  # None: on when the pool averages
    pool_include_prefix: bool = False  # pool over the prefix tokens too (always so for 'prr')
    block: Literal["block", "res_post", "parallel", "diff_parallel", "parallel_things"] = "block"
    num_parallel: int = 2  # branches of a 'parallel_things' block
    attn_layer: Literal["attention", "diff"] = "attention"
    mlp_layer: Literal["mlp", "swiglu", "swiglu_packed"] = "mlp"
    rel_pos: Literal["none", "mlp", "bias"] = "none"  # relative-position bias (vision_transformer_relpos)
    rel_pos_dim: int = 128  # hidden width of the RelPosMlp
    shared_rel_pos: bool = False  # one bias module for all blocks (vit_srelpos_*)
    representation_size: int | None = None  # tanh pre-logits layer (original ViT in21k, HF's pooler)
    norm_layer: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-6
    embed_norm: bool = False  # a norm on each patch embedding (AIMv2)
    act: str = "gelu"
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dynamic_img_size: bool = False  # any input size: pos_embed resampled to its grid on every call
    dynamic_img_pad: bool = False  # inputs padded to a patch multiple

    def __post_init__(self):
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.global_pool in POOLS, f"global_pool must be one of {POOLS}, got {self.global_pool!r}")
        need(self.global_pool != "token" or self.class_token, "global_pool='token' needs class_token=True")
        need(
            self.embed_dim % self.num_heads == 0,
            f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}",
        )
        need(self.mlp_layer in MLP_LAYERS, f"mlp_layer must be one of {MLP_LAYERS}, got {self.mlp_layer!r}")
        need(self.norm_layer in NORM_KINDS, f"norm_layer must be one of {NORM_KINDS}, got {self.norm_layer!r}")
        need(
            self.rel_pos == "none" or self.pos_embed == "none",
            "relative-position models have no absolute position embedding (pos_embed='none')",
        )
        need(
            self.rel_pos == "none" or self.block in ("block", "res_post"),
            "relative-position bias is supported in 'block' and 'res_post' blocks",
        )
        need(not (self.block == "diff_parallel" and self.qk_norm), "qk_norm is not supported in 'diff_parallel' blocks")
        need(
            self.block not in PARALLEL or not (self.scale_attn_norm or self.scale_mlp_norm),
            "scale_attn_norm / scale_mlp_norm are not supported in parallel blocks (as in timm)",
        )
        need(
            self.block not in PARALLEL or self.mlp_layer == "mlp",
            f"block={self.block!r} has its own fused MLP; mlp_layer={self.mlp_layer!r} does not apply",
        )
        need(
            self.attn_layer != "diff" or not (self.qk_norm or self.scale_attn_norm),
            "attn_layer='diff' has no qk_norm / scale_attn_norm",
        )
        need(self.num_parallel >= 1, f"num_parallel must be at least 1, got {self.num_parallel}")
        if self.mlp_layer == "swiglu_packed":
            need(
                self.mlp_hidden % 2 == 0, f"mlp_layer='swiglu_packed' needs an even hidden width, got {self.mlp_hidden}"
            )
        if self.dist_token:
            need(self.class_token, "dist_token=True needs class_token=True (DeiT distilled)")
            need(
                self.global_pool == "token",
                "dist_token=True reads the class and distillation tokens: global_pool='token'",
            )
            need(
                not self.reg_tokens and not self.no_embed_class,
                "dist_token=True has no register tokens or no_embed_class",
            )
            need(not self.use_fc_norm and not self.representation_size, "dist_token=True has no fc_norm / pre-logits")
        need(
            not (self.dynamic_img_size and self.rel_pos != "none"),
            "dynamic_img_size is not supported with a relative-position bias (its grid is fixed)",
        )
        to_2tuple(self.img_size)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool in ("avg", "avgmax", "max") if self.fc_norm is None else self.fc_norm

    @property
    def include_prefix(self) -> bool:
        """Whether pooling sees the prefix tokens: ``pool_include_prefix``, which timm forces on for 'prr'."""
        return self.pool_include_prefix or self.global_pool == "prr"

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = to_2tuple(self.img_size)
        return h // self.patch_size, w // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


def _norm(cfg: ViTConfig, rngs: nnx.Rngs) -> NormFactory:
    return norm_factory(cfg.norm_layer, eps=cfg.norm_eps, rngs=rngs)


def _mlp(cfg: ViTConfig, rngs: nnx.Rngs) -> Mlp | SwiGLU | GluMlp:
    """The block MLP: timm passes the model's act, proj_bias and proj_drop, and its norm for scale_mlp_norm."""
    kw = dict(act=cfg.act, bias=cfg.proj_bias, drop=cfg.proj_drop_rate, rngs=rngs)
    kw["norm"] = _norm(cfg, rngs) if cfg.scale_mlp_norm else None
    dim, hidden = cfg.embed_dim, cfg.mlp_hidden
    if cfg.mlp_layer == "swiglu":
        return SwiGLU(dim, hidden, **kw)
    if cfg.mlp_layer == "swiglu_packed":
        return GluMlp(dim, hidden, gate_last=False, **kw)
    return Mlp(dim, hidden, **kw)


def _attention(cfg: ViTConfig, index: int, rngs: nnx.Rngs) -> Attention | DiffAttention:
    common = dict(
        qkv_bias=cfg.qkv_bias,
        proj_bias=cfg.proj_bias,
        attn_drop=cfg.attn_drop_rate,
        proj_drop=cfg.proj_drop_rate,
        rngs=rngs,
    )
    if cfg.attn_layer == "diff":
        return DiffAttention(cfg.embed_dim, cfg.num_heads, depth=index, **common)
    return Attention(
        cfg.embed_dim,
        cfg.num_heads,
        qk_norm=cfg.qk_norm,
        scale_norm=cfg.scale_attn_norm,
        norm=_norm(cfg, rngs),
        **common,
    )


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
        norm = _norm(cfg, rngs)
        self.post_norm = cfg.block == "res_post"
        self.norm1 = norm(dim)
        self.attn = _attention(cfg, index, rngs)
        if cfg.attn_layer != "diff" and cfg.rel_pos != "none" and not cfg.shared_rel_pos:
            self.attn.rel_pos = _rel_pos_module(cfg, rngs)
        # res_post blocks have no LayerScale: timm uses init_values only to initialise the norm weights there
        self.ls1 = None if self.post_norm else layer_scale(dim, cfg.init_values)
        self.drop_path1 = DropPath(drop_path, rngs=rngs)
        self.norm2 = norm(dim)
        self.mlp = _mlp(cfg, rngs)
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
        norm = _norm(cfg, rngs)
        self.diff = cfg.block == "diff_parallel"
        self.num_heads = cfg.num_heads
        self.hidden = hidden
        self.in_norm = norm(dim)
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
            self.q_norm = norm(self.head_dim, axis_name=None) if cfg.qk_norm else None
            self.k_norm = norm(self.head_dim, axis_name=None) if cfg.qk_norm else None
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
            q, k = maybe(self.q_norm, q), maybe(self.k_norm, k)
            x_attn = merge_heads(attend(q, k, v, scale=d**-0.5, dropout=self.attn_drop))  # B, N, C
            y = self.attn_out_proj(x_attn) + self.mlp_out_proj(x_mlp)
        return x + maybe(self.drop_path, maybe(self.ls, y))


class Branch(nnx.Module):
    """One residual branch of a ``parallel_things`` block: norm -> attn (or mlp) -> LayerScale -> DropPath, named
    as timm's ``nn.Sequential(norm, attn|mlp, ls, drop_path)``."""

    def __init__(self, norm: nnx.Module, name: str, layer: nnx.Module, ls, drop_path):
        self.norm, self.ls, self.drop_path, self.layer_name = norm, ls, drop_path, name
        setattr(self, name, layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = getattr(self, self.layer_name)(self.norm(x))
        return maybe(self.drop_path, maybe(self.ls, y))


class ParallelThingsBlock(nnx.Module):
    """``num_parallel`` attention branches summed into the residual, then as many MLP branches ("Three things
    everyone should know about Vision Transformers", arXiv:2203.09795; timm ``ParallelThingsBlock``)."""

    def __init__(self, cfg: ViTConfig, index: int, drop_path: float, *, rngs: nnx.Rngs):
        dim, norm = cfg.embed_dim, _norm(cfg, rngs)

        def branch(name: str, layer: nnx.Module) -> Branch:
            ls = layer_scale(dim, cfg.init_values)
            return Branch(norm(dim), name, layer, ls, DropPath(drop_path, rngs=rngs))

        n = cfg.num_parallel
        self.attns = nnx.List([branch("attn", _attention(cfg, index, rngs)) for _ in range(n)])
        self.ffns = nnx.List([branch("mlp", _mlp(cfg, rngs)) for _ in range(n)])

    def __call__(self, x: jax.Array, shared_bias: jax.Array | None = None) -> jax.Array:
        x = x + sum(attn(x) for attn in self.attns)
        return x + sum(ffn(x) for ffn in self.ffns)


_BLOCKS = {"parallel": ParallelBlock, "diff_parallel": ParallelBlock, "parallel_things": ParallelThingsBlock}


class VisionTransformer(ClassifierMixin, nnx.Module):
    default_out_indices = 3  # features_only: the last three blocks

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dim = cfg.embed_dim
        norm = _norm(cfg, rngs)
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
            norm=norm(dim) if cfg.embed_norm else None,
            rngs=rngs,
        )
        self.cls_token = normal_param(rngs, (1, 1, dim), (None, None, EMBED), 1e-6) if cfg.class_token else None
        self.dist_token = normal_param(rngs, (1, 1, dim), (None, None, EMBED)) if cfg.dist_token else None
        self.reg_token = (
            normal_param(rngs, (1, cfg.reg_tokens, dim), (None, None, EMBED), 1e-6) if cfg.reg_tokens else None
        )
        if cfg.pos_embed == "learn":
            embed_len = self.patch_embed.num_patches + (0 if cfg.no_embed_class else self.num_prefix_tokens)
            self.pos_embed = normal_param(rngs, (1, embed_len, dim), (None, None, EMBED))
        else:
            self.pos_embed = None
        self.pos_drop = Dropout(cfg.pos_drop_rate, rngs=rngs)
        self.norm_pre = norm(dim) if cfg.pre_norm else None
        self.shared_rel_pos = _rel_pos_module(cfg, rngs) if cfg.rel_pos != "none" and cfg.shared_rel_pos else None
        block_cls = _BLOCKS.get(cfg.block, Block)
        dpr = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        self.blocks = nnx.List([block_cls(cfg, i, dpr[i], rngs=rngs) for i in range(cfg.depth)])
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=dim, reduction=cfg.patch_size) for i in range(cfg.depth)
        ]
        self.norm = norm(dim) if cfg.final_norm and not cfg.use_fc_norm else None
        if cfg.global_pool == "map":
            self.attn_pool = AttentionPoolLatent(
                dim, cfg.num_heads, norm=norm, mlp_ratio=cfg.mlp_ratio, act=cfg.act, rngs=rngs
            )
        elif cfg.global_pool == "prr":
            self.attn_pool = AttentionPoolPrr(dim, cfg.num_heads, pool_type="token" if cfg.class_token else "avg")
        else:
            self.attn_pool = None
        self.fc_norm = norm(dim) if cfg.final_norm and cfg.use_fc_norm else None
        self.pre_logits = PreLogits(dim, cfg.representation_size, rngs=rngs) if cfg.representation_size else None
        self.head_drop = Dropout(cfg.drop_rate, rngs=rngs)
        self._new_heads(cfg.num_classes, rngs)
        # DeiT distilled: in train mode with distilled_training set, the head returns both logits (timm's)
        self.distilled_training = False
        self.deterministic = True  # set by model.train() / model.eval()
        self.grad_checkpointing = False

    def _new_heads(self, num_classes: int, rngs: nnx.Rngs) -> None:
        def fc():
            return Linear(self.num_features, num_classes, axes=(EMBED, CLASSES), rngs=rngs) if num_classes > 0 else None

        self.head = fc()
        self.head_dist = fc() if self.cfg.dist_token else None

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, *, rngs: nnx.Rngs | None = None):
        """A fresh classifier for ``num_classes`` (none for 0), optionally with another ``global_pool``, as timm:
        an attention pool is kept, or dropped for a plain pool, but cannot be added or swapped; the norm stays
        where it is (before or after the pool)."""
        cfg = self.cfg
        pool = cfg.global_pool if global_pool is None else global_pool
        if pool != cfg.global_pool and (pool in ("map", "prr") or cfg.dist_token):
            raise ValueError(f"cannot change global_pool from {cfg.global_pool!r} to {pool!r} in reset_classifier")
        self.cfg = dataclasses.replace(cfg, num_classes=num_classes, global_pool=pool, fc_norm=cfg.use_fc_norm)
        if pool not in ("map", "prr"):
            self.attn_pool = None
        self._new_heads(num_classes, rngs or nnx.Rngs(0))

    def _embed(self, x: jax.Array) -> jax.Array:
        x = self.patch_embed(x)  # B, Gh, Gw, C
        b, gh, gw, c = x.shape
        x = x.reshape(b, -1, c)  # B, N, C
        prefix = [
            jnp.broadcast_to(t[...], (b, *t.shape[1:]))
            for t in (self.cls_token, self.dist_token, self.reg_token)
            if t is not None
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
        """timm's ``pool``: the attention pool where the model has one (``pool_type`` is then ignored), else
        the class token or a reduction over the patch tokens (all tokens with ``pool_include_prefix``)."""
        if self.attn_pool is not None:
            return self.attn_pool(x if self.cfg.include_prefix else x[:, self.num_prefix_tokens :])
        pool_type = self.cfg.global_pool if pool_type is None else pool_type
        if not pool_type:
            return x
        if pool_type == "token":
            return x[:, 0]
        x = x if self.cfg.include_prefix else x[:, self.num_prefix_tokens :]
        if pool_type == "avg":
            return x.mean(axis=1)
        if pool_type == "max":
            return x.max(axis=1)
        return 0.5 * (x.max(axis=1) + x.mean(axis=1))  # avgmax

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        if self.cfg.dist_token:
            return self._distilled_head(x, pre_logits)
        x = maybe(self.fc_norm, self.pool(x))
        x = maybe(self.pre_logits, x)
        x = maybe(self.head_drop, x)
        return x if pre_logits else maybe(self.head, x)

    def _distilled_head(self, x: jax.Array, pre_logits: bool) -> jax.Array | tuple[jax.Array, jax.Array]:
        """deit.py's distilled head: the class token through ``head``, the distillation token through
        ``head_dist``, averaged (pre-logits: the two tokens averaged)."""
        x, x_dist = maybe(self.head_drop, x[:, 0]), maybe(self.head_drop, x[:, 1])
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = maybe(self.head, x), maybe(self.head_dist, x_dist)
        if self.distilled_training and not self.deterministic:
            return x, x_dist
        return (x + x_dist) / 2

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
        self.attn_pool = self.fc_norm = self.pre_logits = self.head = self.head_dist = None
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
