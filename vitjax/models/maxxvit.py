"""MaxViT, MaxxViT(-V2) and CoAtNet in one configurable network, as timm builds them.

Papers: MaxViT (arXiv:2204.01697), CoAtNet (arXiv:2106.04803). Mirrors timm ``models/maxxvit.py``: one
``MaxxVit`` class, three config dataclasses with timm's names (``MaxxVitCfg`` is :class:`MaxxVitConfig` here, and
also carries the constructor arguments ``img_size``, ``num_classes``, ...), and the 58 registered variants as rows.
The configs live in :mod:`vitjax.models.maxxvit_config`, the blocks in :mod:`vitjax.models.maxxvit_blocks`; this
module holds the network and its variant table.

The network: a stem (two 3x3 convs, the first stride 2) and four stages, each halving the resolution in its
first block. A stage is a sequence of blocks:

* ``C``: a conv block, :class:`MbConvBlock` (BatchNorm, depthwise 3x3, SE) or :class:`ConvNeXtBlock`
  (depthwise 7x7, LayerNorm, MLP, LayerScale), per ``conv_cfg.block_type``;
* ``T``: :class:`TransformerBlock2d`, attention over the whole map with a relative-position bias sized for it;
* ``M``: :class:`MaxxVitBlock`, a conv block then window ("block") attention and grid attention, each with its
  own MLP (MaxxViT-V2, ``no_block_attn``, keeps the grid attention only);
* ``PM``: :class:`ParallelMaxxVitBlock`, two conv blocks then window and grid attention side by side (each
  projecting to C/2, concatenated) and one MLP.

Relative positions: ``rel_pos_type`` 'bias' (table), 'mlp' (log-coordinate MLP, timm's 'cr' mode) or 'bias_tf'
(the TF MaxViT table). Window and grid sizes are ``img_size // partition_ratio`` unless set, fixed at
construction (the T blocks' bias is sized for their stage's feature map); an input is accepted when timm would
accept it (every partition divides the maps, strided blocks agree on sizes), else a ValueError says why.

Everything is NHWC. timm's 1x1 convolutions (MBConv / ConvNeXt MLPs, ``Attention2d``'s qkv/proj, SE, the
shortcut expansion; the attention blocks and a pool-less head when timm lays those out as convs) are Linear
layers here; the converter table (``converters/tables/maxxvit.py``) maps them with ``CONV1X1_AS_LINEAR``. qkv
kernels keep timm's layout, ``head_first`` (per head ``[q|k|v]``) or not (``[q; k; v]``), and are split here.

timm's ``transformer_*`` / ``conv_*`` keyword overlays are nested here:
``create_model(name, transformer_cfg=dataclasses.replace(get_spec(name).config().transformer_cfg, ...))``.
"""

from __future__ import annotations

import jax
from flax import nnx

from vitjax.layers import (
    drop_path_rates,
    maybe,
    to_2tuple,
)
from vitjax.layers.classifier import ClassifierHead, NormMlpClassifierHead
from vitjax.layers.conv import conv_out_size
from vitjax.models.common import ClassifierMixin, feature_take_indices
from vitjax.models.maxxvit_blocks import MaxxVitStage, Stem, _norm, _pool_out
from vitjax.models.maxxvit_config import MaxxVitConfig, MaxxVitConvCfg, MaxxVitTransformerCfg
from vitjax.registry import variants


class MaxxVit(ClassifierMixin, nnx.Module):
    default_out_indices = (0, 1, 2, 3, 4)  # timm features_only: stem and every stage

    def __init__(self, cfg: MaxxVitConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        tc = cfg.transformer_cfg
        img = to_2tuple(cfg.img_size)
        self.window_size, self.grid_size = tc.partition_sizes(img)
        self.stem = Stem(cfg, rngs=rngs)
        self.feature_info = [dict(num_chs=self.stem.out_chs, reduction=2, module="stem")]
        feat = (img[0] // 2, img[1] // 2)
        rates = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        in_chs, stages = self.stem.out_chs, []
        for i, dim in enumerate(cfg.embed_dim):
            feat = ((feat[0] - 1) // 2 + 1, (feat[1] - 1) // 2 + 1)
            dpr = rates[sum(cfg.depths[:i]) : sum(cfg.depths[: i + 1])]
            stages.append(MaxxVitStage(in_chs, dim, i, cfg, feat, self.window_size, self.grid_size, dpr, rngs=rngs))
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f"stages.{i}"))
            in_chs = dim
        self.stages = nnx.List(stages)
        self.num_features = cfg.embed_dim[-1]
        final_norm = _norm(tc.norm_layer, self.num_features, tc.norm_eps, rngs)
        if cfg.head_hidden_size:
            self.norm = None
            self.head = NormMlpClassifierHead(
                self.num_features, cfg.num_classes, cfg.head_hidden_size, cfg.global_pool, cfg.drop_rate, final_norm,
                rngs=rngs,
            )  # fmt: skip
        else:
            self.norm = final_norm
            self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.global_pool, cfg.drop_rate, rngs=rngs)
        self.head_hidden_size = self.head.num_features

    # -- input sizes ------------------------------------------------------------------------------------------
    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The (H, W) of the stem and every stage output for an input of this size; a ValueError when timm's
        network could not run it (a strided block whose paths disagree on odd sizes, a partition that does not
        divide a map, a T block whose relative-position bias is sized for another map)."""
        cc, tc = self.cfg.conv_cfg, self.cfg.transformer_cfg
        size = tuple(conv_out_size(s, 3, 2, cc.padding) for s in (height, width))
        out = [size]
        for i, stage in enumerate(self.stages):
            types = self.cfg.stage_block_types(i)
            if types[0] == "T":
                short = main = tuple(_pool_out(s, tc.pool_type, "") for s in size)
            elif cc.block_type == "convnext":
                short = tuple(_pool_out(s, "avg2", "") for s in size)
                pool = cc.stride_mode == "pool"
                main = tuple(
                    _pool_out(s, cc.downsample_pool_type, "") if pool else conv_out_size(s, 7, 2) for s in size
                )
            else:
                short = tuple(_pool_out(s, cc.pool_type, cc.padding) for s in size)
                if cc.stride_mode == "pool":
                    main = tuple(_pool_out(s, cc.downsample_pool_type, cc.padding) for s in size)
                elif cc.stride_mode == "1x1":
                    main = tuple(conv_out_size(s, 1, 2) for s in size)
                else:
                    main = tuple(conv_out_size(s, cc.kernel_size, 2, cc.padding) for s in size)
            if any(a != b and 1 not in (a, b) for a, b in zip(short, main, strict=True)):
                raise ValueError(
                    f"input {height}x{width}: stage {i} reduces a {size[0]}x{size[1]} map to {main} in the block "
                    f"and to {short} in its shortcut (timm fails too); use sides that stay even through the net"
                )
            size = tuple(max(a, b) for a, b in zip(short, main, strict=True))  # a 1-sized side broadcasts, as in torch
            if "T" in types and tc.rel_pos_type != "none" and size != stage.feat_size:
                raise ValueError(
                    f"input {height}x{width}: stage {i} attends over a {size[0]}x{size[1]} map but its relative "
                    f"position bias is built for {stage.feat_size} (create the model with img_size="
                    f"({height}, {width}))"
                )
            if any(t in ("M", "PM") for t in types):
                parts = [self.grid_size] + ([] if tc.no_block_attn and "PM" not in types else [self.window_size])
                for p in parts:
                    if size[0] % p[0] or size[1] % p[1]:
                        raise ValueError(
                            f"input {height}x{width}: stage {i}'s {size[0]}x{size[1]} map is not divisible by the "
                            f"{p[0]}x{p[1]} attention partition (img_size {to_2tuple(self.cfg.img_size)} with "
                            f"partition_ratio {tc.partition_ratio}); create the model with a matching img_size"
                        )
            out.append(size)
        return out

    # -- forward ----------------------------------------------------------------------------------------------
    def forward_features(self, x: jax.Array) -> jax.Array:
        """NHWC images -> the last stage's map ``(B, H/32, W/32, C)``, after the final norm where there is one."""
        self.feature_sizes(x.shape[1], x.shape[2])
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return maybe(self.norm, x)

    def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(
        self, x: jax.Array, indices: int | tuple[int, ...] | None = None, norm: bool = False
    ) -> list[jax.Array]:
        """NHWC maps of the stem (index 0) and the chosen stages (1..4), before the final norm unless ``norm``
        (then applied to the last stage only), as timm's ``forward_intermediates(intermediates_only=True)``."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        self.feature_sizes(x.shape[1], x.shape[2])
        x = self.stem(x)
        out = [x] if 0 in take else []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in take:
                out.append(maybe(self.norm, x) if norm and i == len(self.feature_info) - 1 else x)
        return out

    def prune_intermediate_layers(
        self, indices: int | tuple[int, ...] | None = None, prune_norm: bool = True
    ) -> list[int]:
        """Keep the layers up to the deepest index; drop the head (and the final norm, unless ``prune_norm=False``
        and the last stage is kept)."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = nnx.List(list(self.stages)[:max_index])
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = None
        self.head = None
        return take

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable


# -- registered variants of timm's maxxvit.py ----------------------------------------------------------------------
def _rw_coat(*, stride_mode="pool", pool_type="avg2", conv_output_bias=False, conv_attn_early=False,
             conv_attn_act_layer="relu", conv_norm_layer="", transformer_shortcut_bias=True,
             transformer_norm_layer="layernorm2d", init_values=None, rel_pos_type="bias", rel_pos_dim=512):  # fmt: skip
    """timm ``_rw_coat_cfg``: the first timm CoAtNets (SiLU MBConv with pre-norm act, SE between conv2 and norm2
    where ``conv_attn_early``, widening in the attention output projection)."""
    return dict(
        conv_cfg=MaxxVitConvCfg(
            stride_mode=stride_mode, pool_type=pool_type, pre_norm_act=True, expand_output=False,
            output_bias=conv_output_bias, attn_early=conv_attn_early, attn_act_layer=conv_attn_act_layer,
            act_layer="silu", norm_layer=conv_norm_layer,
        ),
        transformer_cfg=MaxxVitTransformerCfg(
            expand_first=False, shortcut_bias=transformer_shortcut_bias, pool_type=pool_type, init_values=init_values,
            norm_layer=transformer_norm_layer, rel_pos_type=rel_pos_type, rel_pos_dim=rel_pos_dim,
        ),
    )  # fmt: skip


def _rw_max(*, stride_mode="dw", conv_output_bias=False, conv_attn_ratio=1 / 16, init_values=None,
            rel_pos_type="bias", rel_pos_dim=512):  # fmt: skip
    """timm ``_rw_max_cfg``: timm's own MaxViTs (SiLU MBConv, SE 1/16 of the input-based width)."""
    return dict(
        conv_cfg=MaxxVitConvCfg(
            stride_mode=stride_mode, expand_output=False, output_bias=conv_output_bias, attn_ratio=conv_attn_ratio,
            act_layer="silu",
        ),
        transformer_cfg=MaxxVitTransformerCfg(
            expand_first=False, init_values=init_values, rel_pos_type=rel_pos_type, rel_pos_dim=rel_pos_dim
        ),
    )  # fmt: skip


def _next(*, no_block_attn=False, init_values=(1e-6, 1e-6), rel_pos_type="mlp"):
    """timm ``_next_cfg``: ConvNeXt conv blocks (MaxxViT, MaxxViT-V2 with ``no_block_attn``, CoAtNeXt)."""
    return dict(
        conv_cfg=MaxxVitConvCfg(
            block_type="convnext", expand_output=False, init_values=init_values[0], norm_layer="layernorm2d",
            norm_layer_cl="layernorm",
        ),
        transformer_cfg=MaxxVitTransformerCfg(
            expand_first=False, no_block_attn=no_block_attn, init_values=init_values[1], rel_pos_type=rel_pos_type
        ),
    )  # fmt: skip


# timm ``_tf_cfg``: Google's MaxViT: GELU-tanh, BN eps 1e-3, TF 'SAME' padding, LN eps 1e-5, [q; k; v] qkv
_TF = dict(
    conv_cfg=MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same"),
    transformer_cfg=MaxxVitTransformerCfg(
        norm_eps=1e-5, act_layer="gelu_tanh", head_first=False, rel_pos_type="bias_tf"
    ),
    stem_bias=True,
)
_M4 = ("M",) * 4
_S = {  # width / depth presets
    "pico": dict(embed_dim=(64, 128, 256, 512), depths=(2, 3, 5, 2), stem_width=(32, 64)),
    "nano": dict(embed_dim=(64, 128, 256, 512), depths=(3, 4, 6, 3), stem_width=(32, 64)),
    "0": dict(embed_dim=(96, 192, 384, 768), depths=(2, 3, 7, 2), stem_width=(32, 64)),
    "1": dict(embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=(32, 64)),
    "2": dict(embed_dim=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=(64, 128)),
    "3": dict(embed_dim=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=(96, 192)),
    "mpico": dict(embed_dim=(32, 64, 128, 256), depths=(2, 2, 5, 2), stem_width=(24, 32), block_type=_M4),
    "mnano": dict(embed_dim=(64, 128, 256, 512), depths=(1, 2, 3, 1), stem_width=(32, 64), block_type=_M4),
    "mtiny": dict(embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=(32, 64), block_type=_M4),
    "msmall": dict(embed_dim=(96, 192, 384, 768), depths=(2, 2, 5, 2), stem_width=(32, 64), block_type=_M4),
}
_CFGS = {  # timm ``model_cfgs``
    "coatnet_pico_rw": dict(_S["pico"], **_rw_max(conv_output_bias=True, conv_attn_ratio=0.25)),
    "coatnet_nano_rw": dict(_S["nano"], **_rw_max(stride_mode="pool", conv_output_bias=True, conv_attn_ratio=0.25)),
    "coatnet_0_rw": dict(_S["0"], **_rw_coat(conv_attn_early=True, transformer_shortcut_bias=False)),
    "coatnet_1_rw": dict(_S["1"], **_rw_coat(stride_mode="dw", conv_attn_early=True, transformer_shortcut_bias=False)),
    "coatnet_2_rw": dict(_S["2"], **_rw_coat(stride_mode="dw", conv_attn_act_layer="silu")),
    "coatnet_3_rw": dict(_S["3"], **_rw_coat(stride_mode="dw", conv_attn_act_layer="silu", init_values=1e-6)),
    "coatnet_bn_0_rw": dict(
        _S["0"],
        **_rw_coat(
            stride_mode="dw",
            conv_attn_early=True,
            transformer_shortcut_bias=False,
            transformer_norm_layer="batchnorm2d",
        ),
    ),  # fmt: skip
    "coatnet_rmlp_nano_rw": dict(
        _S["nano"], **_rw_max(conv_output_bias=True, conv_attn_ratio=0.25, rel_pos_type="mlp", rel_pos_dim=384)
    ),
    "coatnet_rmlp_0_rw": dict(_S["0"], **_rw_coat(stride_mode="dw", rel_pos_type="mlp")),
    "coatnet_rmlp_1_rw": dict(
        _S["1"],
        **_rw_coat(
            pool_type="max",
            conv_attn_early=True,
            transformer_shortcut_bias=False,
            rel_pos_type="mlp",
            rel_pos_dim=384,
        ),
    ),  # fmt: skip
    "coatnet_rmlp_1_rw2": dict(_S["1"], **_rw_coat(stride_mode="dw", rel_pos_type="mlp")),
    "coatnet_rmlp_2_rw": dict(
        _S["2"], **_rw_coat(stride_mode="dw", conv_attn_act_layer="silu", init_values=1e-6, rel_pos_type="mlp")
    ),
    "coatnet_rmlp_3_rw": dict(
        _S["3"], **_rw_coat(stride_mode="dw", conv_attn_act_layer="silu", init_values=1e-6, rel_pos_type="mlp")
    ),
    "coatnet_nano_cc": dict(_S["nano"], block_type=("C", "C", ("C", "T"), ("C", "T")), **_rw_coat()),
    "coatnext_nano_rw": dict(_S["nano"], **_next(rel_pos_type="bias", init_values=(1e-5, None))),
    "coatnet_0": dict(embed_dim=(96, 192, 384, 768), depths=(2, 3, 5, 2), stem_width=64, head_hidden_size=768),
    "coatnet_1": dict(embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=64, head_hidden_size=768),
    "coatnet_2": dict(embed_dim=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=128, head_hidden_size=1024),
    "coatnet_3": dict(embed_dim=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=192, head_hidden_size=1536),
    "coatnet_4": dict(embed_dim=(192, 384, 768, 1536), depths=(2, 12, 28, 2), stem_width=192, head_hidden_size=1536),
    "coatnet_5": dict(embed_dim=(256, 512, 1280, 2048), depths=(2, 12, 28, 2), stem_width=192, head_hidden_size=2048),
    "maxvit_pico_rw": dict(_S["mpico"], **_rw_max()),
    "maxvit_nano_rw": dict(_S["mnano"], **_rw_max()),
    "maxvit_tiny_rw": dict(_S["mtiny"], **_rw_max()),
    "maxvit_tiny_pm": dict(_S["mtiny"], block_type=("PM",) * 4, **_rw_max()),
    "maxvit_rmlp_pico_rw": dict(_S["mpico"], **_rw_max(rel_pos_type="mlp")),
    "maxvit_rmlp_nano_rw": dict(_S["mnano"], **_rw_max(rel_pos_type="mlp")),
    "maxvit_rmlp_tiny_rw": dict(_S["mtiny"], **_rw_max(rel_pos_type="mlp")),
    "maxvit_rmlp_small_rw": dict(_S["msmall"], **_rw_max(rel_pos_type="mlp", init_values=1e-6)),
    "maxvit_rmlp_base_rw": dict(
        _S["msmall"], depths=(2, 6, 14, 2), head_hidden_size=768, **_rw_max(rel_pos_type="mlp")
    ),
    "maxxvit_rmlp_nano_rw": dict(_S["mnano"], **_next()),
    "maxxvit_rmlp_tiny_rw": dict(_S["mtiny"], **_next()),
    "maxxvit_rmlp_small_rw": dict(_S["msmall"], stem_width=(48, 96), **_next()),
    "maxxvitv2_nano_rw": dict(
        _S["mnano"],
        embed_dim=(96, 192, 384, 768),
        stem_width=(48, 96),
        **_next(no_block_attn=True, rel_pos_type="bias"),
    ),
    "maxxvitv2_rmlp_base_rw": dict(
        embed_dim=(128, 256, 512, 1024),
        depths=(2, 6, 12, 2),
        block_type=_M4,
        stem_width=(64, 128),
        **_next(no_block_attn=True),
    ),  # fmt: skip
    "maxxvitv2_rmlp_large_rw": dict(
        embed_dim=(160, 320, 640, 1280),
        depths=(2, 6, 16, 2),
        block_type=_M4,
        stem_width=(80, 160),
        head_hidden_size=1280,
        **_next(no_block_attn=True),
    ),  # fmt: skip
    "maxvit_tiny_tf": dict(_S["mtiny"], stem_width=64, head_hidden_size=512, **_TF),
    "maxvit_small_tf": dict(_S["msmall"], stem_width=64, head_hidden_size=768, **_TF),
    "maxvit_base_tf": dict(_S["msmall"], depths=(2, 6, 14, 2), stem_width=64, head_hidden_size=768, **_TF),
    "maxvit_large_tf": dict(_S["2"], block_type=_M4, stem_width=128, head_hidden_size=1024, **_TF),
    "maxvit_xlarge_tf": dict(_S["3"], block_type=_M4, stem_width=192, head_hidden_size=1536, **_TF),
    "test_maxvit": dict(
        embed_dim=(32, 64, 96, 128), depths=(1, 1, 1, 1), block_type=_M4, stem_width=(16, 32), **_rw_max()
    ),
    "test_coatnet": dict(
        embed_dim=(32, 64, 96, 128),
        depths=(1, 1, 2, 1),
        stem_width=(16, 32),
        **_rw_max(stride_mode="pool", conv_output_bias=True, conv_attn_ratio=0.25),
    ),  # fmt: skip
}
# timm's registered names: config, input size (timm's default pretrained cfg fixes it) and, where the default
# weights are not ImageNet-1k, their class count
_NAMES = {
    **{f"{c}_224": (c, 224) for c in _CFGS if c.startswith("coat") and c != "coatnet_3_rw"},
    "coatnet_3_rw_224": ("coatnet_3_rw", 224, 11821),
    "coatnet_rmlp_2_rw_384": ("coatnet_rmlp_2_rw", 384),
    "maxvit_pico_rw_256": ("maxvit_pico_rw", 256),
    "maxvit_nano_rw_256": ("maxvit_nano_rw", 256),
    "maxvit_tiny_rw_224": ("maxvit_tiny_rw", 224),
    "maxvit_tiny_rw_256": ("maxvit_tiny_rw", 256),
    "maxvit_tiny_pm_256": ("maxvit_tiny_pm", 256),
    "maxvit_rmlp_pico_rw_256": ("maxvit_rmlp_pico_rw", 256),
    "maxvit_rmlp_nano_rw_256": ("maxvit_rmlp_nano_rw", 256),
    "maxvit_rmlp_tiny_rw_256": ("maxvit_rmlp_tiny_rw", 256),
    "maxvit_rmlp_small_rw_224": ("maxvit_rmlp_small_rw", 224),
    "maxvit_rmlp_small_rw_256": ("maxvit_rmlp_small_rw", 256),
    "maxvit_rmlp_base_rw_224": ("maxvit_rmlp_base_rw", 224),
    "maxvit_rmlp_base_rw_384": ("maxvit_rmlp_base_rw", 384),
    **{f"maxxvit_rmlp_{s}_rw_256": (f"maxxvit_rmlp_{s}_rw", 256) for s in ("nano", "tiny", "small")},
    "maxxvitv2_nano_rw_256": ("maxxvitv2_nano_rw", 256),
    "maxxvitv2_rmlp_base_rw_224": ("maxxvitv2_rmlp_base_rw", 224),
    "maxxvitv2_rmlp_base_rw_384": ("maxxvitv2_rmlp_base_rw", 384),
    "maxxvitv2_rmlp_large_rw_224": ("maxxvitv2_rmlp_large_rw", 224),
    **{
        f"maxvit_{s}_tf_{r}": (f"maxvit_{s}_tf", r, 21843 if (s, r) == ("xlarge", 224) else 1000)
        for s in ("tiny", "small", "base", "large", "xlarge")
        for r in (224, 384, 512)
    },
    "test_maxvit": ("test_maxvit", 160),
    "test_coatnet": ("test_coatnet", 160),
}
_TABLE = {
    name: dict(_CFGS[row[0]], img_size=row[1], num_classes=row[2] if len(row) > 2 else 1000)
    for name, row in sorted(_NAMES.items())
}

MODELS = variants("maxxvit", MaxxVitConfig, MaxxVit, _TABLE)
