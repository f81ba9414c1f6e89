"""DeiT (arXiv:2012.12877) and DeiT III (arXiv:2204.07118): timm ``models/deit.py`` as rows of the ViT config.

DeiT is the classic ViT trained data-efficiently; DeiT III adds layer scale and keeps the class token out of
the position embedding (``no_embed_class``). Rows carry timm's entrypoint arguments and the default tag's
``img_size``; family ``deit`` (its own pretrained configs and checkpoint filter in timm), same model and
converter table as ``vision_transformer``.
"""

from __future__ import annotations

from typing import Any

from vitjax.models.vit import VisionTransformer, ViTConfig
from vitjax.registry import variants

_W: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "medium": dict(embed_dim=512, depth=12, num_heads=8),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
_DEIT3 = dict(no_embed_class=True, init_values=1e-6)

_TABLE: dict[str, dict[str, Any]] = {
    "deit_tiny_patch16_224": dict(_W["tiny"], patch_size=16, img_size=224),
    "deit_small_patch16_224": dict(_W["small"], patch_size=16, img_size=224),
    "deit_base_patch16_224": dict(_W["base"], patch_size=16, img_size=224),
    "deit_base_patch16_384": dict(_W["base"], patch_size=16, img_size=384),
    "deit3_small_patch16_224": dict(_W["small"], **_DEIT3, patch_size=16, img_size=224),
    "deit3_small_patch16_384": dict(_W["small"], **_DEIT3, patch_size=16, img_size=384),
    "deit3_medium_patch16_224": dict(_W["medium"], **_DEIT3, patch_size=16, img_size=224),
    "deit3_base_patch16_224": dict(_W["base"], **_DEIT3, patch_size=16, img_size=224),
    "deit3_base_patch16_384": dict(_W["base"], **_DEIT3, patch_size=16, img_size=384),
    "deit3_large_patch16_224": dict(_W["large"], **_DEIT3, patch_size=16, img_size=224),
    "deit3_large_patch16_384": dict(_W["large"], **_DEIT3, patch_size=16, img_size=384),
    "deit3_huge_patch14_224": dict(_W["huge"], **_DEIT3, patch_size=14, img_size=224),
}

MODELS = variants("deit", ViTConfig, VisionTransformer, _TABLE)
