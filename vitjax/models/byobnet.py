"""Bring-Your-Own-Blocks networks: one configurable conv/attention backbone (timm ``models/byobnet.py``
``ByobNet``), the builder behind timm's ``byoanet.py`` models (BoTNet arXiv:2101.11605, LambdaNetworks
arXiv:2102.08602, HaloNet arXiv:2103.12731) and its ResNet/RegNet-style ``byobnet.py`` relatives.

A model is data: a :class:`ByoModelCfg` with a stem, stages of :class:`ByoBlockCfg` (block type, depth,
width, stride, group size, bottleneck ratio; :func:`interleave_blocks` alternates two types), activation,
BatchNorm, and the channel attention (SE / ECA) and self-attention (halo / bottleneck / lambda) layers of the
blocks. timm's ``attn_layer`` + ``attn_kwargs`` (and ``self_attn_*``, ``block_kwargs``) pairs are one typed,
frozen value here (``SeCfg(rd_ratio=0.25)``, ``HaloCfg(block_size=8, halo_size=3)``); a block's value
replaces the model's, as timm's block kwargs do.

Attribute paths follow timm (``stem.conv1.conv``, ``stages.{s}.{b}.conv2_kxk.bn``,
``stages.{s}.{b}.self_attn.pos_embed.height_rel``, ``post_attn`` holding its BatchNorm weights, ``head.fc``),
so the converter table is a handful of 1x1-conv-as-Linear rules. Inputs are NHWC. Block types: basic,
bottle, dark, edge, self_attn (timm's rep/one re-parameterisable blocks and DropBlock are not ported); heads:
timm's ``classifier`` head. The configs live in :mod:`vitjax.models.byobnet_config`, the blocks in
:mod:`vitjax.models.byobnet_blocks`; this module holds the network.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from vitjax.layers import get_act, maybe, to_2tuple
from vitjax.layers.bottleneck_attn import BottleneckAttn
from vitjax.layers.channels import make_divisible
from vitjax.layers.classifier import ClassifierHead
from vitjax.layers.halo import HaloAttn
from vitjax.models.byobnet_blocks import _BLOCKS, ResidualBlock, Stem, _Layers, create_stem
from vitjax.models.byobnet_config import (  # the configs, also importable from here
    BlockKwargs as BlockKwargs,
)
from vitjax.models.byobnet_config import (
    BottleneckAttnCfg as BottleneckAttnCfg,
)
from vitjax.models.byobnet_config import (
    ByoBlockCfg as ByoBlockCfg,
)
from vitjax.models.byobnet_config import (
    ByoModelCfg,
)
from vitjax.models.byobnet_config import (
    EcaCfg as EcaCfg,
)
from vitjax.models.byobnet_config import (
    HaloCfg as HaloCfg,
)
from vitjax.models.byobnet_config import (
    LambdaCfg as LambdaCfg,
)
from vitjax.models.byobnet_config import (
    SeCfg as SeCfg,
)
from vitjax.models.byobnet_config import (
    interleave_blocks as interleave_blocks,
)
from vitjax.models.common import ClassifierMixin, feature_take_indices, run_block

_FC_INIT = nnx.initializers.normal(0.01)  # the classifier's weights, as timm's byobnet initialises them


def _reduce(size: tuple[int, int] | None, stride: int) -> tuple[int, int] | None:
    return None if size is None else (size[0] // stride, size[1] // stride)


class ByobNet(ClassifierMixin, nnx.Module):
    default_out_indices = (0, 1, 2, 3, 4)  # timm's FeatureListNet default: stem tap, 3 stages, final features

    def __init__(self, cfg: ByoModelCfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        act = get_act(cfg.act_layer)
        bn = dict(eps=cfg.bn_eps, momentum=cfg.bn_momentum, data_axis=cfg.bn_data_axis)
        wf = cfg.width_factor
        stem_chs = (
            tuple(int(round(c * wf)) for c in cfg.stem_chs)
            if isinstance(cfg.stem_chs, tuple)
            else int(round((cfg.stem_chs or cfg.stages_expanded[0][0].c) * wf))
        )
        self.stem, stem_feat = create_stem(cfg, stem_chs, _Layers(act, None, None, bn), rngs)
        self.feature_info = list(stem_feat[:-1])
        geometry = list(self.stem.geometry) if isinstance(self.stem, Stem) else [("conv", 2, True)]
        feat_size = _reduce(to_2tuple(cfg.img_size) if cfg.img_size is not None else None, stem_feat[-1]["reduction"])

        stage_cfgs = cfg.stages_expanded
        depths = [len(s) for s in stage_cfgs]
        total = sum(depths)
        dpr = [cfg.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        dilation, net_stride = 1, stem_feat[-1]["reduction"]
        prev_chs, prev_feat = stem_feat[-1]["num_chs"], stem_feat[-1]
        stages, idx = [], 0
        for si, block_cfgs in enumerate(stage_cfgs):
            stride = block_cfgs[0].s
            if stride != 1 and prev_feat:
                self.feature_info.append(prev_feat)
            if net_stride >= cfg.output_stride and stride > 1:
                dilation *= stride
                stride = 1
            net_stride *= stride
            first_dilation = 1 if dilation in (1, 2) else 2
            blocks = []
            for bi, bc in enumerate(block_cfgs):
                out_chs = make_divisible(bc.c * wf)
                layers = _Layers(
                    act,
                    bc.attn_layer if bc.attn_layer is not None else cfg.attn_layer,
                    bc.self_attn_layer if bc.self_attn_layer is not None else cfg.self_attn_layer,
                    bn,
                )
                s = stride if bi == 0 else 1
                kw = dict(
                    stride=s,
                    dilation=(first_dilation, dilation),
                    gs=bc.gs,
                    br=bc.br,
                    downsample=cfg.downsample,
                    bk=bc.block_kwargs or cfg.block_kwargs,
                    drop_path=dpr[idx],
                    layers=layers,
                    zero_init=cfg.zero_init_last,
                    rngs=rngs,
                )
                if bc.type == "self_attn":
                    kw["feat_size"] = feat_size
                blk = _BLOCKS[bc.type](prev_chs, out_chs, **kw)
                blocks.append(blk)
                geometry.append(_block_geometry(blk, f"stages.{si}.{bi}", s))
                first_dilation, prev_chs, idx = dilation, out_chs, idx + 1
                if s > 1:
                    feat_size = _reduce(feat_size, s)
            stages.append(nnx.List(blocks))
            prev_feat = dict(num_chs=prev_chs, reduction=net_stride, module=f"stages.{si}")
        self.stages = nnx.List(stages)
        for f in self.feature_info:
            f.setdefault("stage", 0 if f["module"].startswith("stem") else int(f["module"].split(".")[1]) + 1)
        self.geometry = geometry

        if cfg.num_features:
            self.num_features = int(round(wf * cfg.num_features))
            self.final_conv = _Layers(act, None, None, bn).cna(prev_chs, self.num_features, 1, rngs=rngs)
        else:
            self.num_features, self.final_conv = prev_chs, None
        self.feature_info.append(
            dict(num_chs=self.num_features, reduction=net_stride, module="final_conv", stage=len(stages))
        )
        self.stage_ends = [f["stage"] for f in self.feature_info]
        self.head = ClassifierHead(
            self.num_features, cfg.num_classes, cfg.global_pool, cfg.drop_rate, kernel_init=_FC_INIT, rngs=rngs
        )
        self.head_hidden_size = self.head.num_features
        self.grad_checkpointing = False

    # -- input size ----------------------------------------------------------------------------------------------------
    def check_input_size(self, h: int, w: int) -> None:
        """Raise a ValueError naming the layer and the sizes that work when an ``h x w`` input does not fit
        the attention layers' geometry (the sizes timm rejects, where it fails in a reshape or an assert)."""
        size, red, mult, problem = (h, w), 1, 1, None
        for step in self.geometry:
            if step[0] in ("conv", "pool"):
                _, s, ceil = step
                size = tuple(-(-n // s) if ceil else n // s for n in size)
                red *= s
                continue
            _, path, conv_stride, kind, arg, stride, pooled, strided_residual = step
            size = tuple(-(-n // conv_stride) for n in size)
            red *= conv_stride
            why = None
            if kind == "halo":
                mult = math.lcm(mult, red * arg)
                if size[0] % arg or size[1] % arg:
                    why = f"halo attention needs both sides divisible by its block_size {arg}"
            elif kind == "fixed":
                mult = math.lcm(mult, red)
                if size != arg:
                    why = f"the layer was built for a {arg[0]}x{arg[1]} map (from img_size)"
            if pooled:
                mult = math.lcm(mult, red * 2)
                if why is None and strided_residual and (size[0] % 2 or size[1] % 2):
                    why = "its 2x2 average pool cannot match the strided shortcut on an odd-sized map"
            if why and problem is None:
                problem = f"a {h}x{w} input gives a {size[0]}x{size[1]} map at {path}.self_attn, but {why}"
            size = tuple((n // 2 if pooled else -(-n // stride)) for n in size)
            red *= stride
        if problem:
            name = getattr(self, "model_name", "ByobNet")
            if any(st[0] == "block" and st[3] == "fixed" for st in self.geometry):
                img = to_2tuple(self.cfg.img_size)
                hint = (
                    f"this model was built for {img[0]}x{img[1]} inputs; build it with img_size=(H, W) for another "
                    f"size (sizes that work include multiples of {mult})"
                )
            else:
                hint = f"input sizes that work include multiples of {mult}"
            raise ValueError(f"{name}: {problem}; {hint}")

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward_features(self, x: jax.Array) -> jax.Array:
        """NHWC images -> the final NHWC feature map (after ``final_conv`` when the model has one)."""
        self.check_input_size(*x.shape[1:3])
        x = self.stem(x)
        for stage in self.stages:
            for blk in stage:
                x = run_block(blk, x, remat=self.grad_checkpointing)
        return maybe(self.final_conv, x)

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(
        self, x: jax.Array, indices: int | tuple[int, ...] | None = None, exclude_final_conv: bool = False
    ) -> list[jax.Array]:
        """NHWC maps at the chosen ``feature_info`` indices (timm's ``forward_intermediates(...,
        intermediates_only=True)``): the stem tap, stage outputs, the final features."""
        self.check_input_size(*x.shape[1:3])
        take, _ = feature_take_indices(len(self.stage_ends), indices)
        take = [self.stage_ends[i] for i in take]
        out = []
        if isinstance(self.stem, Stem):
            x, tap = self.stem.forward_intermediates(x)
        else:
            x, tap = self.stem(x), None
        if 0 in take:
            out.append(x if tap is None else tap)
        last = self.stage_ends[-1]
        for i, stage in enumerate(self.stages, start=1):
            for blk in stage:
                x = run_block(blk, x, remat=self.grad_checkpointing)
            if not exclude_final_conv and i == last:
                x = maybe(self.final_conv, x)
            if i in take:
                out.append(x)
        return out

    def prune_intermediate_layers(self, indices: int | tuple[int, ...] | None = 1) -> list[int]:
        """Keep only what feeds the chosen features; the head goes (timm ``prune_intermediate_layers``)."""
        take, max_index = feature_take_indices(len(self.stage_ends), indices)
        num_chs = self.feature_info[max_index]["num_chs"]
        end = self.stage_ends[max_index]
        self.stages = nnx.List(list(self.stages)[:end])
        self.geometry = [g for g in self.geometry if g[0] != "block" or int(g[1].split(".")[1]) < end]
        if end < self.stage_ends[-1]:
            self.final_conv = None
            self.num_features = num_chs
        if end == 0 and isinstance(self.stem, Stem):
            self.stem.prune_to_tap()
        self.head = ClassifierHead(self.num_features, 0, "", 0.0, kernel_init=_FC_INIT, rngs=nnx.Rngs(0))
        self.head_hidden_size = self.num_features
        return take


def _block_geometry(blk: ResidualBlock, path: str, stride: int) -> tuple:
    """How a block changes the map size and what its attention needs, for :meth:`ByobNet.check_input_size`:
    ``("block", path, conv_stride, kind, arg, attn_stride, pooled, strided_residual)``."""
    attn = getattr(blk, "self_attn", None)
    if attn is None:
        return ("conv", stride, True)
    conv_stride = stride if blk.conv2_kxk is not None else 1  # with extra_conv the conv strides
    attn_stride = stride // conv_stride
    if isinstance(attn, HaloAttn):
        kind, arg, pooled = "halo", attn.block_size, attn.avg_pool
    elif isinstance(attn, BottleneckAttn):
        kind, arg, pooled = "fixed", (attn.pos_embed.height, attn.pos_embed.width), attn.stride == 2
    elif attn.feat_size is not None:
        kind, arg, pooled = "fixed", attn.feat_size, attn.stride == 2
    else:
        kind, arg, pooled = "any", None, attn.stride == 2
    return ("block", path, conv_stride, kind, arg, attn_stride, pooled, blk.has_residual and attn_stride > 1)
