"""The rest of timm ``models/vision_transformer.py`` (CLIP, SigLIP, DINOv2, TIPSv2, RADIO, EVA, FlexiViT, ...) as
rows of the ViT config; vit.py holds the seed rows (classic sizes, register / GAP family) and the model.

Each row is the ``model_args`` of timm's entrypoint together with what timm's builder adds from the name's
default pretrained tag (``img_size`` and ``num_classes``: a CLIP tower's default tag brings its projection
width, a SigLIP or DINOv2 tower none). Defaults are timm ``VisionTransformer``'s, so a row names only what its
entrypoint changes. ``tests/models/test_zoo.py`` checks every row against the arguments timm's entrypoint
actually passes.
"""

from __future__ import annotations

from typing import Any

from vitjax.models.vit import VisionTransformer, ViTConfig
from vitjax.registry import variants

# widths: embed_dim, depth, num_heads (and mlp_ratio where it is not 4)
_W: dict[str, dict[str, Any]] = {
    "xsmall": dict(embed_dim=256, depth=10, num_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "medium": dict(embed_dim=512, depth=12, num_heads=8),
    "betwixt": dict(embed_dim=640, depth=12, num_heads=10),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "plus": dict(embed_dim=896, depth=12, num_heads=14),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
    "so400m": dict(embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
    "giantopt": dict(embed_dim=1536, depth=40, num_heads=16),
    "gigantic": dict(embed_dim=1664, depth=48, num_heads=16, mlp_ratio=64 / 13),
}


def _row(width: str, patch: int, img: int, **kw: Any) -> dict[str, Any]:
    return dict(_W[width], patch_size=patch, img_size=img, **kw)


_CLIP = dict(pre_norm=True, norm_eps=1e-5)  # OpenAI CLIP / OpenCLIP image towers: LN before the blocks, eps 1e-5
_GAP = dict(class_token=False, global_pool="avg", fc_norm=False)  # average of the patch tokens, final norm first
_SIGLIP_GAP = dict(_GAP, num_classes=0)  # the SigLIP / PaliGemma towers without the MAP head
_DINOV2 = dict(init_values=1e-5, num_classes=0)
_TIPS = dict(init_values=1.0, reg_tokens=1, no_embed_class=True, num_classes=0)
_RADIO = dict(no_embed_class=True, final_norm=False, num_classes=0)
_TANH = dict(act="gelu_tanh")

_TABLE: dict[str, dict[str, Any]] = {
    # classic sizes
    "vit_small_patch8_224": _row("small", 8, 224, num_classes=0),
    "vit_base_patch8_224": _row("base", 8, 224),
    "vit_large_patch14_224": _row("large", 14, 224),
    "vit_huge_patch14_224": _row("huge", 14, 224, num_classes=0),
    "vit_giant_patch14_224": _row("giant", 14, 224),
    "vit_gigantic_patch14_224": _row("gigantic", 14, 224),
    "vit_base_patch16_224_miil": _row("base", 16, 224, qkv_bias=False, num_classes=11221),
    "vit_small_patch16_36x1_224": _row("small", 16, 224, depth=36, init_values=1e-5),
    "vit_base_patch16_plus_240": _row("plus", 16, 240, init_values=1e-5),
    "vit_base_patch32_plus_256": _row("plus", 32, 256, init_values=1e-5),
    "vit_base_patch16_rpn_224": _row(
        "base", 16, 224, qkv_bias=False, init_values=1e-5, class_token=False, block="res_post", global_pool="avg"
    ),
    # InternViT-300M: built to run at any input size (position table resampled per call)
    "vit_intern300m_patch14_448": _row(
        "large", 14, 448, init_values=0.1, final_norm=False, dynamic_img_size=True, num_classes=0
    ),
    "eva_large_patch14_196": _row("large", 14, 196, global_pool="avg"),
    "eva_large_patch14_336": _row("large", 14, 336, global_pool="avg"),
    "flexivit_small": _row("small", 16, 240, no_embed_class=True),
    "flexivit_base": _row("base", 16, 240, no_embed_class=True),
    "flexivit_large": _row("large", 16, 240, no_embed_class=True),
    # global average pooling without a class token
    "vit_medium_patch16_gap_240": _row("medium", 16, 240, **_GAP, qkv_bias=False, init_values=1e-6, num_classes=11821),
    "vit_medium_patch16_gap_256": _row("medium", 16, 256, **_GAP, qkv_bias=False, init_values=1e-6),
    "vit_medium_patch16_gap_384": _row("medium", 16, 384, **_GAP, qkv_bias=False, init_values=1e-6),
    "vit_betwixt_patch16_gap_256": _row("betwixt", 16, 256, **_GAP, qkv_bias=False, init_values=1e-6),
    "vit_base_patch16_gap_224": _row("base", 16, 224, **_GAP, num_heads=16),
    "vit_huge_patch14_gap_224": _row("huge", 14, 224, **_GAP, num_classes=0),
    "vit_huge_patch16_gap_448": _row("huge", 16, 448, **_GAP, num_classes=0),
    "vit_giant_patch16_gap_224": _row("giant", 16, 224, **_GAP, num_classes=0),
    # CLIP / OpenCLIP / MetaCLIP / DFN image towers (GELU)
    "vit_xsmall_patch16_clip_224": _row("xsmall", 16, 224, **_CLIP, num_classes=512),
    "vit_medium_patch32_clip_224": _row("medium", 32, 224, **_CLIP, num_classes=512),
    "vit_medium_patch16_clip_224": _row("medium", 16, 224, **_CLIP, num_classes=512),
    "vit_betwixt_patch32_clip_224": _row("betwixt", 32, 224, **_CLIP, num_classes=512),
    "vit_base_patch32_clip_224": _row("base", 32, 224, **_CLIP),
    "vit_base_patch32_clip_256": _row("base", 32, 256, **_CLIP, num_classes=512),
    "vit_base_patch32_clip_384": _row("base", 32, 384, **_CLIP),
    "vit_base_patch32_clip_448": _row("base", 32, 448, **_CLIP),
    "vit_base_patch16_clip_224": _row("base", 16, 224, **_CLIP),
    "vit_base_patch16_clip_384": _row("base", 16, 384, **_CLIP),
    "vit_base_patch16_plus_clip_240": _row("plus", 16, 240, **_CLIP, num_classes=640),
    "vit_large_patch14_clip_224": _row("large", 14, 224, **_CLIP),
    "vit_large_patch14_clip_336": _row("large", 14, 336, **_CLIP),
    "vit_huge_patch14_clip_224": _row("huge", 14, 224, **_CLIP),
    "vit_huge_patch14_clip_336": _row("huge", 14, 336, **_CLIP),
    "vit_huge_patch14_clip_378": _row("huge", 14, 378, **_CLIP, num_classes=1024),
    "vit_giant_patch14_clip_224": _row("giant", 14, 224, **_CLIP, num_classes=1024),
    "vit_gigantic_patch14_clip_224": _row("gigantic", 14, 224, **_CLIP, num_classes=1280),
    "vit_gigantic_patch14_clip_378": _row("gigantic", 14, 378, **_CLIP, num_classes=1280),
    # SigLIP / SigLIP2 / PaliGemma towers without the MAP head
    "vit_base_patch32_siglip_gap_256": _row("base", 32, 256, **_SIGLIP_GAP, **_TANH),
    "vit_base_patch16_siglip_gap_224": _row("base", 16, 224, **_SIGLIP_GAP),
    "vit_base_patch16_siglip_gap_256": _row("base", 16, 256, **_SIGLIP_GAP),
    "vit_base_patch16_siglip_gap_384": _row("base", 16, 384, **_SIGLIP_GAP),
    "vit_base_patch16_siglip_gap_512": _row("base", 16, 512, **_SIGLIP_GAP),
    "vit_large_patch16_siglip_gap_256": _row("large", 16, 256, **_SIGLIP_GAP),
    "vit_large_patch16_siglip_gap_384": _row("large", 16, 384, **_SIGLIP_GAP),
    "vit_large_patch16_siglip_gap_512": _row("large", 16, 512, **_SIGLIP_GAP, **_TANH),
    "vit_so400m_patch14_siglip_gap_224": _row("so400m", 14, 224, **_SIGLIP_GAP),
    "vit_so400m_patch14_siglip_gap_378": _row("so400m", 14, 378, **_SIGLIP_GAP),
    "vit_so400m_patch14_siglip_gap_384": _row("so400m", 14, 384, **_SIGLIP_GAP),
    "vit_so400m_patch14_siglip_gap_448": _row("so400m", 14, 448, **_SIGLIP_GAP),
    "vit_so400m_patch14_siglip_gap_896": _row("so400m", 14, 896, **_SIGLIP_GAP),
    "vit_so400m_patch16_siglip_gap_256": _row("so400m", 16, 256, **_SIGLIP_GAP, **_TANH),
    "vit_so400m_patch16_siglip_gap_384": _row("so400m", 16, 384, **_SIGLIP_GAP, **_TANH),
    "vit_so400m_patch16_siglip_gap_512": _row("so400m", 16, 512, **_SIGLIP_GAP, **_TANH),
    "vit_giantopt_patch16_siglip_gap_256": _row("giantopt", 16, 256, **_SIGLIP_GAP, **_TANH),
    "vit_giantopt_patch16_siglip_gap_384": _row("giantopt", 16, 384, **_SIGLIP_GAP, **_TANH),
    # DINOv2 (layer scale, 518 px), with 4 registers
    "vit_small_patch14_dinov2": _row("small", 14, 518, **_DINOV2),
    "vit_base_patch14_dinov2": _row("base", 14, 518, **_DINOV2),
    "vit_large_patch14_dinov2": _row("large", 14, 518, **_DINOV2),
    "vit_small_patch14_reg4_dinov2": _row("small", 14, 518, **_DINOV2, reg_tokens=4, no_embed_class=True),
    "vit_base_patch14_reg4_dinov2": _row("base", 14, 518, **_DINOV2, reg_tokens=4, no_embed_class=True),
    "vit_large_patch14_reg4_dinov2": _row("large", 14, 518, **_DINOV2, reg_tokens=4, no_embed_class=True),
    # TIPSv2 (one register, layer scale initialised at 1)
    "vit_base_patch14_reg1_tipsv2": _row("base", 14, 448, **_TIPS),
    "vit_large_patch14_reg1_tipsv2": _row("large", 14, 448, **_TIPS),
    "vit_so400m_patch14_reg1_tipsv2": _row("so400m", 14, 448, **_TIPS, mlp_ratio=4304 / 1152),
    # C-RADIO v3 / v4 (registers, no final norm; timm resamples their position embedding bilinearly)
    "vit_base_patch16_radio_v3": _row("base", 16, 512, **_RADIO, init_values=1e-5, reg_tokens=7),
    "vit_large_patch16_radio_v3": _row("large", 16, 512, **_RADIO, init_values=1e-5, reg_tokens=7),
    "vit_huge_patch16_radio_v3": _row("huge", 16, 512, **_RADIO, reg_tokens=7),
    "vit_giant_patch16_radio_v3": _row("giantopt", 16, 512, **_RADIO, num_heads=24, reg_tokens=7),
    "vit_so400m_patch16_radio_v4": _row("so400m", 16, 512, **_RADIO, mlp_ratio=4304 / 1152, reg_tokens=9),
    "vit_huge_patch16_radio_v4": _row("huge", 16, 512, **_RADIO, reg_tokens=9),
}

MODELS = variants("vision_transformer", ViTConfig, VisionTransformer, _TABLE)
