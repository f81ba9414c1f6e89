"""MaxViT / MaxxViT / CoAtNet configs: timm's ``MaxxVitTransformerCfg``, ``MaxxVitConvCfg`` and ``MaxxVitCfg``
(:class:`MaxxVitConfig`, which also carries the constructor arguments). See :mod:`vitjax.models.maxxvit`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vitjax.layers import (
    to_2tuple,
)

PoolType = Literal["avg2", "max2", "avg", "max"]
Size = int | tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class MaxxVitTransformerCfg:
    """Attention blocks (timm ``MaxxVitTransformerCfg``)."""

    dim_head: int = 32
    head_first: bool = True  # qkv output channels grouped per head [q_h|k_h|v_h] (else [q; k; v])
    expand_ratio: float = 4.0
    expand_first: bool = True  # widen in qkv (else in proj) when a strided T block changes width
    shortcut_bias: bool = True
    attn_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    pool_type: PoolType = "avg2"
    rel_pos_type: Literal["bias", "mlp", "bias_tf", "none"] = "bias"
    rel_pos_dim: int = 512
    partition_ratio: int = 32
    window_size: Size | None = None
    grid_size: Size | None = None
    no_block_attn: bool = False
    use_nchw_attn: bool = False  # timm keeps attention blocks NCHW with 1x1 convs: only the weight layout differs
    init_values: float | None = None
    act_layer: str = "gelu"
    norm_layer: str = "layernorm2d"
    norm_layer_cl: str = "layernorm"
    norm_eps: float = 1e-6

    def partition_sizes(self, img_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, grid) sizes: the configured ones (grid defaults to window), else ``img_size // ratio``."""
        if self.window_size is not None:
            window = to_2tuple(self.window_size)
            return window, to_2tuple(self.grid_size) if self.grid_size is not None else window
        size = (img_size[0] // self.partition_ratio, img_size[1] // self.partition_ratio)
        return size, size


@dataclass(frozen=True, kw_only=True)
class MaxxVitConvCfg:
    """Conv blocks (timm ``MaxxVitConvCfg``); empty norm fields take the block type's default."""

    block_type: Literal["mbconv", "convnext"] = "mbconv"
    expand_ratio: float = 4.0
    expand_output: bool = True  # MBConv width from the output (else input) channels
    kernel_size: int = 3  # MBConv only; ConvNeXt blocks are 7x7
    group_size: int = 1  # 1: depthwise
    pre_norm_act: bool = False
    output_bias: bool = True
    stride_mode: Literal["pool", "1x1", "dw"] = "dw"
    pool_type: PoolType = "avg2"
    downsample_pool_type: PoolType = "avg2"
    padding: Literal["", "same"] = ""
    attn_early: bool = False  # SE before norm2 (else after)
    attn_layer: Literal["se", ""] = "se"
    attn_act_layer: str = "silu"
    attn_ratio: float = 0.25
    init_values: float | None = 1e-6  # ConvNeXt LayerScale
    act_layer: str = "gelu"
    norm_layer: str = ""  # '': batchnorm2d (mbconv), layernorm2d (convnext)
    norm_layer_cl: str = ""
    norm_eps: float | None = None  # None: 1e-5 (mbconv), 1e-6 (convnext)

    def __post_init__(self):
        if self.block_type == "convnext" and self.stride_mode == "1x1":
            raise ValueError("ConvNeXt blocks stride with 'pool' or 'dw'")

    @property
    def norm(self) -> str:
        return self.norm_layer or ("batchnorm2d" if self.block_type == "mbconv" else "layernorm2d")

    @property
    def eps(self) -> float:
        return self.norm_eps if self.norm_eps is not None else (1e-5 if self.block_type == "mbconv" else 1e-6)


@dataclass(frozen=True, kw_only=True)
class MaxxVitConfig:
    """The network (timm ``MaxxVitCfg``) and timm ``MaxxVit``'s constructor arguments."""

    embed_dim: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (2, 3, 5, 2)
    block_type: tuple[str | tuple[str, ...], ...] = ("C", "C", "T", "T")
    stem_width: Size = 64
    stem_bias: bool = False
    conv_cfg: MaxxVitConvCfg = field(default_factory=MaxxVitConvCfg)
    transformer_cfg: MaxxVitTransformerCfg = field(default_factory=MaxxVitTransformerCfg)
    head_hidden_size: int | None = None  # NormMlpClassifierHead (pool, norm, tanh pre-logits) instead of norm + fc
    img_size: Size = 224
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: Literal["", "avg", "max", "avgmax", "catavgmax"] = "avg"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        n = len(self.embed_dim)
        if len(self.depths) != n or len(self.block_type) != n:
            raise ValueError("embed_dim, depths and block_type need one entry per stage")
        for types in self.block_type:
            for t in (types,) if isinstance(types, str) else types:
                if t not in ("C", "T", "M", "PM"):
                    raise ValueError(f"block type {t!r} is not one of 'C', 'T', 'M', 'PM'")
        if self.head_hidden_size and self.global_pool == "catavgmax":
            raise ValueError("NormMlpClassifierHead does not support 'catavgmax' pooling")
        if not self.global_pool and self.num_classes > 0 and not self.head_hidden_size:
            raise ValueError("global_pool='' needs num_classes=0 (timm's ClassifierHead has no per-pixel classifier)")
        window, grid = self.transformer_cfg.partition_sizes(to_2tuple(self.img_size))
        if min(*window, *grid) < 1:
            raise ValueError(f"img_size {self.img_size} gives an empty partition (window {window}, grid {grid})")

    def stage_block_types(self, i: int) -> tuple[str, ...]:
        """timm ``extend_tuple``: one type per block, the last given type repeated."""
        types = self.block_type[i]
        types = (types,) if isinstance(types, str) else tuple(types)
        return types + (types[-1],) * (self.depths[i] - len(types))
