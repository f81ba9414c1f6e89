"""Bring-Your-Own-Attention networks: timm ``models/byoanet.py``'s registered models as data for
:class:`~vitjax.models.byobnet.ByobNet`.

* BoTNet (Bottleneck Transformers, arXiv:2101.11605): ``botnet*``, ``sebotnet*``, ``eca_botnext*``;
* LambdaNetworks (arXiv:2102.08602): ``lambda_resnet*``;
* HaloNet (arXiv:2103.12731): ``halonet*``, ``sehalonet*``, ``eca_halonext*``, ``haloregnetz_b``;
* mixtures: ``lamhalobotnet50ts_256``, ``halo2botnet50ts_256``.

``img_size`` is timm's default input size (256; 224 for ``haloregnetz_b``). Models with bottleneck attention
or relative-position lambdas are built for it (``img_size=...`` builds them for another size, as in timm);
halo models take sizes whose maps divide by the halo block size at every halo layer (multiples of 256 for
most, of 224 for ``haloregnetz_b``); lambda-conv models take any size whose maps are even at their strided
lambda layers.
"""

from __future__ import annotations

from vitjax.models.byobnet import (
    BlockKwargs,
    BottleneckAttnCfg,
    ByoBlockCfg,
    ByobNet,
    ByoModelCfg,
    EcaCfg,
    HaloCfg,
    LambdaCfg,
    SeCfg,
    interleave_blocks,
)
from vitjax.registry import variants

_B, _SA = "bottle", "self_attn"
_MIX = (_B, _SA)


def _resnet26(gs: int = 0, **attn) -> tuple:
    """ResNet-26 layout: 2 bottlenecks per stage; the third stage ends with self-attention, the last is all
    self-attention."""
    return (
        ByoBlockCfg(type=_B, d=2, c=256, s=1, gs=gs, br=0.25),
        ByoBlockCfg(type=_B, d=2, c=512, s=2, gs=gs, br=0.25),
        interleave_blocks(types=_MIX, d=2, c=1024, s=2, gs=gs, br=0.25),
        ByoBlockCfg(type=_SA, d=2, c=2048, s=2, gs=gs, br=0.25, **attn),
    )


def _resnet33() -> tuple:
    return (
        ByoBlockCfg(type=_B, d=2, c=256, s=1, gs=0, br=0.25),
        interleave_blocks(types=_MIX, every=[2], d=3, c=512, s=2, gs=0, br=0.25),
        interleave_blocks(types=_MIX, every=[2], d=3, c=1024, s=2, gs=0, br=0.25),
        ByoBlockCfg(type=_SA, d=2, c=1536, s=2, gs=0, br=0.333),
    )


def _resnet50(s1: dict | None = None, s2: dict | None = None, s3: dict | None = None, every1: int = 1) -> tuple:
    """ResNet-50 layout (3, 4, 6, 3); self-attention interleaved in the last three stages; ``sN`` override the
    self-attention layer of stage N."""
    return (
        ByoBlockCfg(type=_B, d=3, c=256, s=1, gs=0, br=0.25),
        interleave_blocks(types=_MIX, every=every1, d=4, c=512, s=2, gs=0, br=0.25, **(s1 or {})),
        interleave_blocks(types=_MIX, d=6, c=1024, s=2, gs=0, br=0.25, **(s2 or {})),
        interleave_blocks(types=_MIX, d=3, c=2048, s=2, gs=0, br=0.25, **(s3 or {})),
    )


_T = dict(stem_chs=64, stem_type="tiered")  # ResNet-T tiered 3x3 stem
_FIXED = dict(fixed_input_size=True, img_size=256)
_256 = dict(img_size=256)  # timm passes the pretrained input size to these fixed-size models

_VARIANTS = {
    "botnet26t_256": dict(blocks=_resnet26(), **_T, stem_pool="maxpool", **_FIXED, self_attn_layer=BottleneckAttnCfg()),
    "sebotnet33ts_256": dict(
        blocks=_resnet33(),
        **_T,
        stem_pool="",
        act_layer="silu",
        num_features=1280,
        attn_layer=SeCfg(),
        **_256,
        self_attn_layer=BottleneckAttnCfg(),
    ),
    "botnet50ts_256": dict(
        blocks=_resnet50(every1=4),
        **_T,
        stem_pool="maxpool",
        act_layer="silu",
        **_FIXED,
        self_attn_layer=BottleneckAttnCfg(),
    ),
    "eca_botnext26ts_256": dict(
        blocks=_resnet26(gs=16),
        **_T,
        stem_pool="maxpool",
        act_layer="silu",
        attn_layer=EcaCfg(),
        **_FIXED,
        self_attn_layer=BottleneckAttnCfg(dim_head=16),
    ),
    "halonet_h1": dict(
        blocks=(
            ByoBlockCfg(type=_SA, d=3, c=64, s=1, gs=0, br=1.0),
            ByoBlockCfg(type=_SA, d=3, c=128, s=2, gs=0, br=1.0),
            ByoBlockCfg(type=_SA, d=10, c=256, s=2, gs=0, br=1.0),
            ByoBlockCfg(type=_SA, d=3, c=512, s=2, gs=0, br=1.0),
        ),
        stem_chs=64,
        stem_type="7x7",
        stem_pool="maxpool",
        self_attn_layer=HaloCfg(block_size=8, halo_size=3),
    ),
    "halonet26t": dict(
        blocks=_resnet26(), **_T, stem_pool="maxpool", self_attn_layer=HaloCfg(block_size=8, halo_size=2)
    ),
    "sehalonet33ts": dict(
        blocks=_resnet33(),
        **_T,
        stem_pool="",
        act_layer="silu",
        num_features=1280,
        attn_layer=SeCfg(),
        self_attn_layer=HaloCfg(block_size=8, halo_size=3),
    ),
    "halonet50ts": dict(
        blocks=_resnet50(s1=dict(self_attn_layer=HaloCfg(block_size=8, halo_size=3, num_heads=4)), every1=4),
        **_T,
        stem_pool="maxpool",
        act_layer="silu",
        self_attn_layer=HaloCfg(block_size=8, halo_size=3),
    ),
    "eca_halonext26ts": dict(
        blocks=_resnet26(gs=16),
        **_T,
        stem_pool="maxpool",
        act_layer="silu",
        attn_layer=EcaCfg(),
        self_attn_layer=HaloCfg(block_size=8, halo_size=2, dim_head=16),
    ),
    "lambda_resnet26t": dict(blocks=_resnet26(), **_T, stem_pool="maxpool", self_attn_layer=LambdaCfg(r=9)),
    "lambda_resnet50ts": dict(
        blocks=_resnet50(every1=4), **_T, stem_pool="maxpool", act_layer="silu", self_attn_layer=LambdaCfg(r=9)
    ),
    "lambda_resnet26rpt_256": dict(
        blocks=_resnet26(), **_T, stem_pool="maxpool", img_size=256, self_attn_layer=LambdaCfg(r=None)
    ),
    "haloregnetz_b": dict(
        blocks=(
            ByoBlockCfg(type=_B, d=2, c=48, s=2, gs=16, br=3),
            ByoBlockCfg(type=_B, d=6, c=96, s=2, gs=16, br=3),
            interleave_blocks(types=_MIX, every=3, d=12, c=192, s=2, gs=16, br=3),
            ByoBlockCfg(type=_SA, d=2, c=288, s=2, gs=16, br=3),
        ),
        stem_chs=32,
        stem_pool="",
        downsample="",
        num_features=1536,
        act_layer="silu",
        attn_layer=SeCfg(rd_ratio=0.25),
        block_kwargs=BlockKwargs(bottle_in=True, linear_out=True),
        self_attn_layer=HaloCfg(block_size=7, halo_size=2, qk_ratio=0.33),
    ),
    "lamhalobotnet50ts_256": dict(
        blocks=_resnet50(
            s1=dict(self_attn_layer=LambdaCfg(r=13)),
            s2=dict(self_attn_layer=HaloCfg(halo_size=3)),
            s3=dict(self_attn_layer=BottleneckAttnCfg()),
        ),
        **_T,
        stem_pool="",
        act_layer="silu",
        **_256,
    ),
    "halo2botnet50ts_256": dict(
        blocks=_resnet50(
            s1=dict(self_attn_layer=HaloCfg(halo_size=3)),
            s2=dict(self_attn_layer=HaloCfg(halo_size=3)),
            s3=dict(self_attn_layer=BottleneckAttnCfg()),
        ),
        **_T,
        stem_pool="",
        act_layer="silu",
        **_256,
    ),
}

for _name, _args in _VARIANTS.items():  # the default input size (timm's pretrained input_size); only
    _args.setdefault("img_size", 224 if _name == "haloregnetz_b" else 256)  # attention layers that need it use it

MODELS = variants("byoanet", ByoModelCfg, ByobNet, _VARIANTS)
