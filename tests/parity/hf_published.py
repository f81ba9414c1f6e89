"""transformers' configs of the DINOv2 / CLIP / SigLIP image towers as their hub repos' config.json publish them
(the vision part), written out here so that the parity references never come from vitjax's own tables: a
wrong field in ``vitjax.models.hf_towers`` must fail a test.

:func:`published_model` builds the reference with transformers itself, with vitjax's override names mapped
to transformers' fields (``embed_dim`` -> ``hidden_size``, ``depth`` -> ``num_hidden_layers`` ...).
"""

from __future__ import annotations

from typing import Any

_DINOV2 = dict(
    model_type="dinov2",
    image_size=518,
    patch_size=14,
    mlp_ratio=4,
    hidden_act="gelu",
    layer_norm_eps=1e-6,
    layerscale_value=1.0,
    qkv_bias=True,
    num_channels=3,
    use_swiglu_ffn=False,
)
_DINOV2_SIZES = {
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "giant": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
}
_CLIP = dict(model_type="clip", hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)
_CLIP_B = dict(_CLIP, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
_CLIP_L = dict(_CLIP, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
_SIGLIP = dict(model_type="siglip", hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3)
_SIGLIP_B = dict(_SIGLIP, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
_SIGLIP_L = dict(_SIGLIP, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
_SIGLIP_SO = dict(_SIGLIP, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
_SIGLIP_G = dict(_SIGLIP, hidden_size=1536, intermediate_size=6144, num_hidden_layers=40, num_attention_heads=16)

PUBLISHED: dict[str, dict[str, Any]] = {
    **{f"facebook/dinov2-{s}": _DINOV2 | v for s, v in _DINOV2_SIZES.items()},
    **{
        f"facebook/dinov2-with-registers-{s}": _DINOV2
        | v
        | dict(model_type="dinov2_with_registers")
        | dict(num_register_tokens=4)
        for s, v in _DINOV2_SIZES.items()
    },
    "openai/clip-vit-base-patch32": _CLIP_B | dict(patch_size=32, image_size=224),
    "openai/clip-vit-base-patch16": _CLIP_B | dict(patch_size=16, image_size=224),
    "openai/clip-vit-large-patch14": _CLIP_L | dict(patch_size=14, image_size=224),
    "openai/clip-vit-large-patch14-336": _CLIP_L | dict(patch_size=14, image_size=336),
    "google/siglip-base-patch16-224": _SIGLIP_B | dict(patch_size=16, image_size=224),
    "google/siglip-base-patch16-256": _SIGLIP_B | dict(patch_size=16, image_size=256),
    "google/siglip-base-patch16-384": _SIGLIP_B | dict(patch_size=16, image_size=384),
    "google/siglip-base-patch16-512": _SIGLIP_B | dict(patch_size=16, image_size=512),
    "google/siglip-base-patch16-256-multilingual": _SIGLIP_B | dict(patch_size=16, image_size=256),
    "google/siglip-large-patch16-256": _SIGLIP_L | dict(patch_size=16, image_size=256),
    "google/siglip-large-patch16-384": _SIGLIP_L | dict(patch_size=16, image_size=384),
    "google/siglip-so400m-patch14-224": _SIGLIP_SO | dict(patch_size=14, image_size=224),
    "google/siglip-so400m-patch14-384": _SIGLIP_SO | dict(patch_size=14, image_size=384),
    "google/siglip-so400m-patch16-256-i18n": _SIGLIP_SO | dict(patch_size=16, image_size=256),
    "google/siglip2-base-patch16-224": _SIGLIP_B | dict(patch_size=16, image_size=224),
    "google/siglip2-base-patch16-256": _SIGLIP_B | dict(patch_size=16, image_size=256),
    "google/siglip2-base-patch16-384": _SIGLIP_B | dict(patch_size=16, image_size=384),
    "google/siglip2-base-patch16-512": _SIGLIP_B | dict(patch_size=16, image_size=512),
    "google/siglip2-base-patch32-256": _SIGLIP_B | dict(patch_size=32, image_size=256),
    "google/siglip2-large-patch16-256": _SIGLIP_L | dict(patch_size=16, image_size=256),
    "google/siglip2-large-patch16-384": _SIGLIP_L | dict(patch_size=16, image_size=384),
    "google/siglip2-large-patch16-512": _SIGLIP_L | dict(patch_size=16, image_size=512),
    "google/siglip2-so400m-patch14-224": _SIGLIP_SO | dict(patch_size=14, image_size=224),
    "google/siglip2-so400m-patch14-384": _SIGLIP_SO | dict(patch_size=14, image_size=384),
    "google/siglip2-so400m-patch16-256": _SIGLIP_SO | dict(patch_size=16, image_size=256),
    "google/siglip2-so400m-patch16-384": _SIGLIP_SO | dict(patch_size=16, image_size=384),
    "google/siglip2-so400m-patch16-512": _SIGLIP_SO | dict(patch_size=16, image_size=512),
    "google/siglip2-giant-opt-patch16-256": _SIGLIP_G | dict(patch_size=16, image_size=256),
    "google/siglip2-giant-opt-patch16-384": _SIGLIP_G | dict(patch_size=16, image_size=384),
}

# vitjax override name -> transformers config field (mlp_ratio is DINOv2's own field; the others have
# intermediate_size, set from it)
_FIELDS = dict(embed_dim="hidden_size", depth="num_hidden_layers", num_heads="num_attention_heads")
_FIELDS |= dict(img_size="image_size", patch_size="patch_size")


def published_config(name: str, **overrides: Any):
    """transformers' vision config of ``name``, with vitjax-named overrides applied."""
    import transformers

    kw = dict(PUBLISHED[name])
    model_type = kw.pop("model_type")
    for ours, theirs in _FIELDS.items():
        if ours in overrides:
            kw[theirs] = overrides.pop(ours)
    mlp_ratio = overrides.pop("mlp_ratio", None)
    if overrides:
        raise TypeError(f"no transformers field for {sorted(overrides)}")
    if model_type.startswith("dinov2"):
        kw["mlp_ratio"] = kw["mlp_ratio"] if mlp_ratio is None else mlp_ratio
    elif mlp_ratio is not None or kw["hidden_size"] != PUBLISHED[name]["hidden_size"]:
        # the published ratio kept for another width, as vitjax's mlp_ratio does
        pub = PUBLISHED[name]
        ratio = pub["intermediate_size"] / pub["hidden_size"] if mlp_ratio is None else mlp_ratio
        kw["intermediate_size"] = int(kw["hidden_size"] * ratio)
    cls = {
        "dinov2": transformers.Dinov2Config,
        "dinov2_with_registers": transformers.Dinov2WithRegistersConfig,
        "clip": transformers.CLIPVisionConfig,
        "siglip": transformers.SiglipVisionConfig,
    }[model_type]
    return cls(**kw)


def published_model(name: str, **overrides: Any):
    """The transformers model of ``name`` (``Dinov2Model``, ``CLIPVisionModel``, ...) from the published config."""
    import transformers

    cfg = published_config(name, **overrides)
    cls = {
        "dinov2": transformers.Dinov2Model,
        "dinov2_with_registers": transformers.Dinov2WithRegistersModel,
        "clip_vision_model": transformers.CLIPVisionModel,
        "siglip_vision_model": transformers.SiglipVisionModel,
    }[cfg.model_type]
    return cls(cfg)
