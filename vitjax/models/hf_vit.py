"""Hugging Face ``transformers`` ``ViTModel`` (the ``google/vit-*-in21k`` checkpoints) as rows of the ViT config.

HF's ViT is the classic layout (class token, position embedding over class + patches, pre-norm blocks, final
LayerNorm) with LayerNorm eps 1e-12 and a pooler ``tanh(dense(last_hidden_state[:, 0]))``, which is the
original in21k ViT's representation layer: here ``pre_logits``. So ``forward_features(x)`` equals
``last_hidden_state``, and ``model(x)`` (``num_classes=0``, the default for these ids) equals ``pooler_output``;
with ``num_classes > 0`` a linear head is added after the pooler.
"""

from __future__ import annotations

from vitjax.models.vit import VisionTransformer, ViTConfig
from vitjax.registry import variants

_HF = dict(norm_eps=1e-12, class_token=True, global_pool="token", num_classes=0, img_size=224)
_TABLE = {
    "google/vit-base-patch16-224-in21k": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "google/vit-base-patch32-224-in21k": dict(patch_size=32, embed_dim=768, depth=12, num_heads=12),
    "google/vit-large-patch16-224-in21k": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "google/vit-large-patch32-224-in21k": dict(patch_size=32, embed_dim=1024, depth=24, num_heads=16),
    "google/vit-huge-patch14-224-in21k": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}
_FOLLOW = object()


def hf_vit_config(*, representation_size: int | None | object = _FOLLOW, **fields) -> ViTConfig:
    """A ViT config for the HF ids: the pooler (``representation_size``) is as wide as the hidden size unless its
    width is given, as transformers' ``pooler_output_size`` follows ``hidden_size``; ``None`` means no pooler."""
    if representation_size is _FOLLOW:
        representation_size = fields["embed_dim"]
    return ViTConfig(representation_size=representation_size, **fields)


MODELS = variants("hf_vit", hf_vit_config, VisionTransformer, _TABLE, **_HF)
