"""Relative-position ViTs: timm ``models/vision_transformer_relpos.py`` as rows of the ViT config.

These differ from the classic ViT in data only: no absolute position embedding (``pos_embed='none'``), a
relative-position bias per attention layer (``rel_pos='mlp'``, Swin-V2-style log-coordinate MLP; or one shared
module, ``shared_rel_pos``), LayerScale 1e-6, average pooling, and ``ResPost`` blocks for the ``rpn`` models.
Every default of timm's ``VisionTransformerRelPos`` is written out in ``_RELPOS`` because it differs from
``VisionTransformer``'s.
"""

from __future__ import annotations

from vitjax.models.vit import VisionTransformer, ViTConfig
from vitjax.registry import variants

_RELPOS = dict(
    pos_embed="none",
    rel_pos="mlp",
    class_token=False,
    global_pool="avg",
    fc_norm=False,
    init_values=1e-6,
    qkv_bias=True,
    img_size=224,
)
_S = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
_M = dict(patch_size=16, embed_dim=512, depth=12, num_heads=8)
_B = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_PLUS = dict(patch_size=16, embed_dim=896, depth=12, num_heads=14)

_TABLE = {
    "vit_relpos_base_patch32_plus_rpn_256": dict(_PLUS, patch_size=32, block="res_post", img_size=256),
    "vit_relpos_base_patch16_plus_240": dict(_PLUS, img_size=240),
    "vit_relpos_small_patch16_224": dict(_S, qkv_bias=False, fc_norm=True),
    "vit_relpos_medium_patch16_224": dict(_M, qkv_bias=False, fc_norm=True),
    "vit_relpos_base_patch16_224": dict(_B, qkv_bias=False, fc_norm=True),
    "vit_srelpos_small_patch16_224": dict(_S, qkv_bias=False, fc_norm=False, rel_pos_dim=384, shared_rel_pos=True),
    "vit_srelpos_medium_patch16_224": dict(_M, qkv_bias=False, fc_norm=False, rel_pos_dim=512, shared_rel_pos=True),
    "vit_relpos_medium_patch16_cls_224": dict(
        _M, qkv_bias=False, fc_norm=False, rel_pos_dim=256, class_token=True, global_pool="token"
    ),
    "vit_relpos_base_patch16_cls_224": dict(_B, qkv_bias=False, class_token=True, global_pool="token"),
    "vit_relpos_base_patch16_clsgap_224": dict(_B, qkv_bias=False, fc_norm=True, class_token=True),
    "vit_relpos_small_patch16_rpn_224": dict(_S, qkv_bias=False, block="res_post"),
    "vit_relpos_medium_patch16_rpn_224": dict(_M, qkv_bias=False, block="res_post"),
    "vit_relpos_base_patch16_rpn_224": dict(_B, qkv_bias=False, block="res_post"),
    "test_vit_relpos": dict(
        patch_size=16, embed_dim=96, depth=9, num_heads=3, mlp_ratio=2, fc_norm=True, qkv_bias=False, img_size=160
    ),
}

MODELS = variants("vision_transformer_relpos", ViTConfig, VisionTransformer, _TABLE, **_RELPOS)
