"""Bring-Your-Own-Blocks configs (timm ``models/byobnet.py``): the model, block and attention-layer
dataclasses and :func:`interleave_blocks`. See :mod:`vitjax.models.byobnet`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from vitjax.layers import get_act
from vitjax.layers.spatial_pool import (
    GLOBAL_POOLS,
)

# -- attention-layer and block options (timm's *_layer + *_kwargs) ------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SeCfg:
    """timm ``attn_layer='se'`` (``SEModule``) with its kwargs."""

    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    add_maxpool: bool = False
    bias: bool = True
    act_layer: str = "relu"
    gate_layer: str = "sigmoid"


@dataclass(frozen=True, kw_only=True)
class EcaCfg:
    """timm ``attn_layer='eca'`` (``EcaModule``)."""

    kernel_size: int = 3
    gamma: float = 2
    beta: float = 1
    gate_layer: str = "sigmoid"


@dataclass(frozen=True, kw_only=True)
class HaloCfg:
    """timm ``self_attn_layer='halo'`` (``HaloAttn``)."""

    num_heads: int = 8
    dim_head: int | None = None
    block_size: int = 8
    halo_size: int = 3
    qk_ratio: float = 1.0
    qkv_bias: bool = False
    avg_down: bool = False
    scale_pos_embed: bool = False


@dataclass(frozen=True, kw_only=True)
class BottleneckAttnCfg:
    """timm ``self_attn_layer='bottleneck'`` (``BottleneckAttn``, needs the model's ``img_size``)."""

    num_heads: int = 4
    dim_head: int | None = None
    qk_ratio: float = 1.0
    qkv_bias: bool = False
    scale_pos_embed: bool = False


@dataclass(frozen=True, kw_only=True)
class LambdaCfg:
    """timm ``self_attn_layer='lambda'`` (``LambdaLayer``; ``r=None`` uses relative positions and ``img_size``)."""

    num_heads: int = 4
    dim_head: int | None = 16
    r: int | None = 9
    qk_ratio: float = 1.0
    qkv_bias: bool = False


AttnCfg = SeCfg | EcaCfg
SelfAttnCfg = HaloCfg | BottleneckAttnCfg | LambdaCfg


@dataclass(frozen=True, kw_only=True)
class BlockKwargs:
    """timm ``block_kwargs``. ``attn_last=None`` keeps the block type's default (True for basic/dark)."""

    kernel_size: int = 3
    bottle_in: bool = False
    linear_out: bool = False
    extra_conv: bool = False
    attn_last: bool | None = None
    post_attn_na: bool = True


# options each block type accepts beyond kernel_size / linear_out (timm raises on others)
_BLOCK_OPTIONS = {
    "basic": {"attn_last"},
    "dark": {"attn_last"},
    "edge": {"attn_last"},
    "bottle": {"attn_last", "extra_conv", "bottle_in"},
    "self_attn": {"extra_conv", "bottle_in", "post_attn_na"},
}
BlockType = Literal["basic", "bottle", "dark", "edge", "self_attn"]


@dataclass(frozen=True, kw_only=True)
class ByoBlockCfg:
    """One stage (``d`` blocks) of a type: ``c`` output channels, stride ``s`` on its first block, group size
    ``gs`` (0/None dense, 1 depthwise), bottleneck ratio ``br``. Layer options left None use the model's."""

    type: BlockType
    d: int
    c: int
    s: int = 2
    gs: int | None = None
    br: float = 1.0
    attn_layer: AttnCfg | None = None
    self_attn_layer: SelfAttnCfg | None = None
    block_kwargs: BlockKwargs | None = None

    def __post_init__(self):
        if self.type not in _BLOCK_OPTIONS:
            raise ValueError(f"unknown block type {self.type!r}; known: {sorted(_BLOCK_OPTIONS)}")


def interleave_blocks(
    types: tuple[BlockType, BlockType], d: int, every: int | list[int] = 1, first: bool = False, **kwargs
) -> tuple[ByoBlockCfg, ...]:
    """``d`` single blocks of ``types[0]`` with ``types[1]`` at the positions ``every`` (a list) or every
    ``every + 1``-th from ``every`` (from 0 when ``first``); when that leaves none, the last block."""
    if isinstance(every, int):
        every = list(range(0 if first else every, d, every + 1)) or [d - 1]
    return tuple(ByoBlockCfg(type=types[1] if i in every else types[0], d=1, **kwargs) for i in range(d))


StemType = Literal["", "quad", "quad2", "tiered", "deep", "7x7", "3x3"]
StemPool = Literal["", "max", "maxpool", "avg", "avgpool", "max2", "avg2"]


@dataclass(frozen=True, kw_only=True)
class ByoModelCfg:
    """timm's ``ByoModelCfg`` fields, then ``ByobNet``'s constructor arguments (timm overlays the latter's
    extra kwargs on the cfg too), then BatchNorm settings."""

    blocks: tuple[ByoBlockCfg | tuple[ByoBlockCfg, ...], ...]
    downsample: Literal["avg", "conv1x1", ""] = "conv1x1"
    stem_type: StemType = "3x3"
    stem_pool: StemPool = "maxpool"
    stem_chs: int | tuple[int, ...] = 32
    width_factor: float = 1.0
    num_features: int = 0  # width of a final 1x1 ConvNormAct; 0: none
    fixed_input_size: bool = False
    act_layer: str = "relu"
    norm_layer: Literal["batchnorm"] = "batchnorm"
    head_type: Literal["classifier"] = "classifier"
    attn_layer: AttnCfg | None = None
    self_attn_layer: SelfAttnCfg | None = None
    block_kwargs: BlockKwargs = field(default_factory=BlockKwargs)
    # ByobNet(...)
    num_classes: int = 1000
    in_chans: int = 3
    global_pool: str = "avg"
    output_stride: int = 32
    img_size: int | tuple[int, int] | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool = True
    # BatchNorm2d: torch's eps and momentum; data_axis averages batch statistics over a mapped axis
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    bn_data_axis: str | None = None

    def __post_init__(self):
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
        if self.fixed_input_size and self.img_size is None:
            raise ValueError("this model has a fixed input size: give img_size")
        if self.stem_type not in StemType.__args__:
            raise ValueError(f"stem_type must be one of {StemType.__args__} (rep/one stems are not ported)")
        if self.stem_pool not in StemPool.__args__:
            raise ValueError(f"stem_pool must be one of {StemPool.__args__}, got {self.stem_pool!r}")
        get_act(self.act_layer)
        for bc in self.stage_cfgs:
            bk = bc.block_kwargs or self.block_kwargs
            bad = {
                f.name
                for f in fields(bk)
                if getattr(bk, f.name) != f.default and f.name not in ("kernel_size", "linear_out")
            } - _BLOCK_OPTIONS[bc.type]
            if bad:
                raise ValueError(f"{bc.type!r} blocks do not take {sorted(bad)}")

    @property
    def stage_cfgs(self) -> list[ByoBlockCfg]:
        return [b for stage in self.stages_expanded for b in stage]

    @property
    def stages_expanded(self) -> list[list[ByoBlockCfg]]:
        """Per stage, one config per block (timm ``expand_blocks_cfg``)."""
        out = []
        for stage in self.blocks:
            stage = stage if isinstance(stage, tuple) else (stage,)
            out.append([bc for bc in stage for _ in range(bc.d)])
        return out
