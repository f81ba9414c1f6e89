"""Building blocks shared by the model families; nothing here imports ``vitjax.models``."""

from vitjax.layers.act import get_act
from vitjax.layers.attention import Attention, DiffAttention, attend
from vitjax.layers.attention_pool import AttentionPoolLatent, AttentionPoolPrr
from vitjax.layers.conv import create_conv2d, get_padding
from vitjax.layers.drop import Dropout, DropPath, drop_path_rates, maybe
from vitjax.layers.layer_scale import LayerScale, layer_scale
from vitjax.layers.linear import Linear
from vitjax.layers.mlp import GluMlp, Mlp, SwiGLU
from vitjax.layers.norm import NORM_KINDS, BatchNorm, LayerNorm, NormFactory, RmsNorm, norm_factory
from vitjax.layers.patch_embed import PatchEmbed, to_2tuple
from vitjax.layers.rel_pos import RelPosBias, RelPosMlp, relative_log_coords, relative_position_index

__all__ = [
    "NORM_KINDS",
    "Attention",
    "AttentionPoolLatent",
    "AttentionPoolPrr",
    "BatchNorm",
    "DiffAttention",
    "DropPath",
    "Dropout",
    "GluMlp",
    "LayerNorm",
    "LayerScale",
    "Linear",
    "Mlp",
    "NormFactory",
    "PatchEmbed",
    "RelPosBias",
    "RelPosMlp",
    "RmsNorm",
    "SwiGLU",
    "attend",
    "create_conv2d",
    "drop_path_rates",
    "get_act",
    "get_padding",
    "layer_scale",
    "maybe",
    "norm_factory",
    "relative_log_coords",
    "relative_position_index",
    "to_2tuple",
]
