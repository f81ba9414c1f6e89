"""Original checkpoint formats (OpenAI CLIP, open_clip, Meta DINOv2, AIMv2): a file in the original layout is
written here from a randomised timm model, its keys respelled by hand (the inverse of timm's filter, written
out), then loaded into timm through timm's own ``checkpoint_filter_fn`` and into vitjax through
``create_model(name, pretrained=FILE)``; the outputs must agree at fp32 tolerance. Reduced depth and width."""

from __future__ import annotations

import re

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

import converters
import vitjax
from tests.converters.helpers import fwd, image, nchw_to_nhwc, randomize, rel_err
from tests.parity.reference import FP32_TOL, record

TOL = FP32_TOL["vision_transformer"]
SMALL = dict(embed_dim=64, depth=2, num_heads=4)

# (timm name, vitjax name, vitjax-only arguments): vitjax's own row of the timm name where it has one; otherwise a
# classic row with the switches the timm name sets spelled out, so that a wrong switch fails the parity check
CLIP = ("vit_base_patch16_clip_224", "vit_base_patch16_clip_224", {})
CLIP_QUICKGELU = (
    "vit_base_patch16_clip_quickgelu_224",
    "vit_base_patch16_224",
    dict(pre_norm=True, norm_eps=1e-5, act="quick_gelu"),
)
CLIP_ARGS = dict(SMALL, patch_size=8, img_size=32, num_classes=32)
DINOV2 = ("vit_small_patch14_dinov2", "vit_small_patch14_dinov2", {})
DINOV2_REG = ("vit_small_patch14_reg4_dinov2", "vit_small_patch14_reg4_dinov2", {})
DINOV2_GIANT = (  # Meta's packed SwiGLU (mlp.w12, mlp.w3); width 48 so that the packed hidden width is even
    "vit_giant_patch14_dinov2",
    "vit_base_patch16_224",
    dict(patch_size=14, init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed", act="silu", embed_dim=48),
)
TIPSV2 = ("vit_base_patch14_reg1_tipsv2", "vit_base_patch14_reg1_tipsv2", {})
DINOV2_ARGS = dict(SMALL, img_size=56, num_classes=0)
AIMV2 = ("aimv2_large_patch14_224", "aimv2_large_patch14_224", {})
SIGLIP_GAP = ("vit_base_patch16_siglip_gap_224", "vit_base_patch16_siglip_gap_224", {})

# The original names, spelled by hand from the published layouts (OpenAI's CLIP VisionTransformer, Meta's
# dinov2 hub models): timm name pattern -> original name.
OPENAI_CLIP_NAMES = [
    (r"patch_embed\.proj\.", "conv1."),
    (r"cls_token$", "class_embedding"),
    (r"pos_embed$", "positional_embedding"),
    (r"norm_pre\.", "ln_pre."),
    (r"norm\.", "ln_post."),
    (r"blocks\.(\d+)\.norm(\d)\.", r"transformer.resblocks.\1.ln_\2."),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"transformer.resblocks.\1.attn.in_proj_\2"),
    (r"blocks\.(\d+)\.attn\.proj\.", r"transformer.resblocks.\1.attn.out_proj."),
    (r"blocks\.(\d+)\.mlp\.fc1\.", r"transformer.resblocks.\1.mlp.c_fc."),
    (r"blocks\.(\d+)\.mlp\.fc2\.", r"transformer.resblocks.\1.mlp.c_proj."),
    (r"head\.weight$", "proj"),
]
# Apple's AIMv2 names (the ml-aim release: preprocessor + trunk)
AIMV2_NAMES = [
    (r"patch_embed\.", "preprocessor.patchifier."),
    (r"pos_embed$", "preprocessor.pos_embed"),
    (r"blocks\.(\d+)\.norm(\d)\.", r"trunk.blocks.\1.norm_\2."),
    (r"blocks\.(\d+)\.mlp\.fc1_g\.", r"trunk.blocks.\1.mlp.fc1."),
    (r"blocks\.(\d+)\.mlp\.fc1_x\.", r"trunk.blocks.\1.mlp.fc3."),
    (r"blocks\.", "trunk.blocks."),
    (r"norm\.", "trunk.post_trunk_norm."),
]
# a few tensors of the text tower and the contrastive head: outside `visual.`, left out by timm and by vitjax
TEXT_TOWER = {
    "token_embedding.weight": (100, 16),
    "positional_embedding": (7, 16),
    "transformer.resblocks.0.attn.in_proj_weight": (48, 16),
    "transformer.resblocks.0.ln_1.weight": (16,),
    "ln_final.weight": (16,),
    "text_projection": (16, 32),
    "logit_scale": (),
}


def _respell(name: str, table) -> str:
    for pattern, repl in table:
        new, n = re.subn("^" + pattern, repl, name)
        if n:
            return new
    raise AssertionError(f"no original name for {name}")


def randomized_timm(name: str, **kw) -> torch.nn.Module:
    return randomize(timm.create_model(name, **kw).eval())


def openai_clip_file(ref: torch.nn.Module, prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """The OpenAI CLIP state_dict of ``ref``'s image tower, with a text tower beside it."""
    gen = torch.Generator().manual_seed(5)
    out = {}
    for k, v in ref.state_dict().items():
        if k == "head.bias":  # CLIP's projection has none (timm's filter gives the head a zero bias)
            continue
        if k == "cls_token":  # 1, 1, D -> D
            v = v.reshape(-1)
        elif k == "pos_embed":  # 1, N, D -> N, D
            v = v[0]
        elif k == "head.weight":  # E, D -> D, E
            v = v.T
        out[prefix + _respell(k, OPENAI_CLIP_NAMES)] = v.contiguous()
    out.update({k: torch.randn(s, generator=gen) for k, s in TEXT_TOWER.items()})
    return out


def dinov2_file(ref: torch.nn.Module, packed_mlp: bool = False) -> dict[str, torch.Tensor]:
    """Meta's DINOv2 state_dict of ``ref``: timm's names, plus ``mask_token``; with registers, Meta's
    ``register_tokens`` and a position table whose first row is the class token's."""
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    gen = torch.Generator().manual_seed(6)
    d = sd["cls_token"].shape[-1]
    if packed_mlp:  # the giant's SwiGLU: Meta's w12 (gate and value in one) and w3
        sd = {re.sub(r"\.mlp\.fc1\.", ".mlp.w12.", re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", k)): v for k, v in sd.items()}
    if "reg_token" in sd:
        cls_pos = 0.2 * torch.randn(1, 1, d, generator=gen)
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
        sd["cls_token"] = sd["cls_token"] - cls_pos
    sd["mask_token"] = torch.randn(1, d, generator=gen)
    return sd


def timm_through_filter(name: str, original: dict, **kw) -> torch.nn.Module:
    """A fresh timm model filled from ``original`` by timm's own checkpoint_filter_fn, strictly."""
    ref = timm.create_model(name, **kw).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(original), ref), strict=True)
    return ref


def assert_parity(model, ref, x: torch.Tensor, parity_results, case: str) -> None:
    with torch.no_grad():
        feats = ref.forward_features(x)
        logits = ref.forward_head(feats)
    xj = nchw_to_nhwc(x)
    feats_j = fwd(model, xj, "forward_features")
    errs = {"features": rel_err(feats_j, feats), "logits": rel_err(model.forward_head(feats_j), logits)}
    record(parity_results, "originals vision_transformer", case, errs)
    assert max(errs.values()) <= TOL, errs


def _save(sd: dict, path, wrap: str | None = None) -> str:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({wrap: sd} if wrap else sd, path)
    return str(path)


@pytest.mark.parametrize("layout", ["openai", "open_clip_ddp_quickgelu"])
def test_openai_clip_matches_timm(tmp_path, parity_results, layout):
    """OpenAI's layout (also open_clip's own ViT in open_clip_pytorch_model.bin); ``open_clip_ddp_quickgelu``:
    an open_clip training checkpoint (``module.visual.*`` inside ``{"state_dict": ...}``) of a QuickGELU
    tower, as OpenAI's own were trained."""
    ddp = layout.startswith("open_clip_ddp")
    timm_name, name, switches = CLIP_QUICKGELU if layout.endswith("quickgelu") else CLIP
    src = randomized_timm(timm_name, **CLIP_ARGS)
    prefix, wrap = ("module.visual.", "state_dict") if ddp else ("visual.", None)
    original = openai_clip_file(src, prefix)
    if ddp:
        original = {("module." + k if not k.startswith("module.") else k): v for k, v in original.items()}
    path = _save(original, tmp_path / "clip.bin", wrap)
    ref = timm_through_filter(timm_name, original, **CLIP_ARGS)
    model = vitjax.create_model(name, pretrained=path, **switches, **CLIP_ARGS)
    assert_parity(model, ref, image(32, 32), parity_results, f"OpenAI CLIP ({layout})")
    assert not np.asarray(model.head.bias[...]).any()  # the projection, as a classifier without bias


def test_open_clip_timm_trunk_matches_timm(tmp_path, parity_results):
    """open_clip's timm-trunk towers (SigLIP): ``visual.trunk.*`` with the projection in ``visual.head.proj``."""
    timm_name, name, switches = SIGLIP_GAP
    args = dict(SMALL, patch_size=8, img_size=32)
    trunk = randomized_timm(timm_name, num_classes=0, **args)
    gen = torch.Generator().manual_seed(7)
    original = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    original["visual.head.proj.weight"] = torch.randn(24, 64, generator=gen) / 8
    original.update({k: torch.randn(s, generator=gen) for k, s in TEXT_TOWER.items()})
    path = _save(original, tmp_path / "open_clip_pytorch_model.bin")
    ref = timm_through_filter(timm_name, original, num_classes=24, **args)
    model = vitjax.create_model(name, pretrained=path, num_classes=24, **switches, **args)
    assert_parity(model, ref, image(32, 32), parity_results, "open_clip timm trunk")

    # a projection with a bias (open_clip's proj_bias=True): vitjax keeps it (timm's filter sets zeros instead)
    original["visual.head.proj.bias"] = torch.randn(24, generator=gen)
    path = _save(original, tmp_path / "with_bias.bin")
    model = vitjax.create_model(name, pretrained=path, num_classes=24, **switches, **args)
    assert np.array_equal(np.asarray(model.head.bias[...]), original["visual.head.proj.bias"].numpy())


@pytest.mark.parametrize("case", ["plain", "registers_at_84px", "giant_packed_swiglu", "tipsv2"])
def test_dinov2_pth_matches_timm(tmp_path, parity_results, case):
    """Meta's DINOv2 ``.pth`` (layer scale, ``mask_token`` left out); with registers the class token's
    position moves into the token; at 84 px the file's 4x4 position grid is resampled as timm does; the
    giant's MLP is a packed SwiGLU named ``w12`` / ``w3``; TIPSv2 keeps a DINOv2 under ``vision_encoder.``
    beside its text encoder."""
    cases = {"plain": DINOV2, "giant_packed_swiglu": DINOV2_GIANT, "tipsv2": TIPSV2}
    timm_name, name, switches = cases.get(case, DINOV2_REG)
    made = {**DINOV2_ARGS, "embed_dim": switches.get("embed_dim", DINOV2_ARGS["embed_dim"])}  # the file's model
    args = {**made, "img_size": 84} if case.endswith("84px") else made
    original = dinov2_file(randomized_timm(timm_name, **made), packed_mlp=case.startswith("giant"))
    if case == "tipsv2":
        original = {"vision_encoder." + k: v for k, v in original.items()}
        original["text_encoder.token_embedding.weight"] = torch.randn(100, 16)
    path = _save(original, tmp_path / "dinov2_vits14_pretrain.pth")
    ref = timm_through_filter(timm_name, original, **args)
    model = vitjax.create_model(name, pretrained=path, **{**switches, **args})
    assert_parity(model, ref, image(args["img_size"], args["img_size"]), parity_results, f"Meta DINOv2 ({case})")


def aimv2_file(ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {_respell(k, AIMV2_NAMES): v for k, v in ref.state_dict().items()}


def test_aimv2_matches_timm(tmp_path, parity_results):
    """Apple's AIMv2 layout: RmsNorm everywhere (one on the patch embedding), SwiGLU (fc1 gate, fc3 value)."""
    timm_name, name, switches = AIMV2
    original = aimv2_file(randomized_timm(timm_name, **DINOV2_ARGS))
    path = _save(original, tmp_path / "aimv2.safetensors")
    ref = timm_through_filter(timm_name, original, **DINOV2_ARGS)
    model = vitjax.create_model(name, pretrained=path, **switches, **DINOV2_ARGS)
    assert_parity(model, ref, image(56, 56), parity_results, "AIMv2")


def test_bad_original_files_name_the_key_and_the_file(tmp_path, monkeypatch):
    """A missing, an extra and a mis-shaped key of an OpenAI CLIP file are named as the file spells them."""
    # the "looks like <model>" guess builds full-size candidates (seconds); it has its own tests
    monkeypatch.setattr(converters, "guess_model", lambda *a, **k: None)
    timm_name, name, switches = CLIP
    original = openai_clip_file(randomized_timm(timm_name, **CLIP_ARGS))
    del original["visual.transformer.resblocks.1.ln_2.bias"]
    original["visual.transformer.resblocks.1.attn.bias_k"] = torch.zeros(64)
    original["visual.ln_post.weight"] = torch.ones(65)
    path = _save(original, tmp_path / "bad_clip.bin")
    with pytest.raises(converters.ConversionError) as e:
        vitjax.create_model(name, pretrained=path, **switches, **CLIP_ARGS)
    msg = str(e.value)
    assert str(path) in msg and "OpenAI CLIP" in msg
    assert "missing    visual.transformer.resblocks.1.ln_2.bias" in msg
    assert "unexpected visual.transformer.resblocks.1.attn.bias_k" in msg
    assert "shape      visual.ln_post.weight: checkpoint (65)" in msg

    timm_name, name, switches = DINOV2_REG
    original = dinov2_file(randomized_timm(timm_name, **DINOV2_ARGS))
    original["cls_token"] = original["cls_token"][..., :32]
    path = _save(original, tmp_path / "bad_dinov2.pth")
    with pytest.raises(converters.ConversionError, match=r"bad_dinov2\.pth.*cls_token"):
        vitjax.create_model(name, pretrained=path, **switches, **DINOV2_ARGS)

    # registers in the file, none in the model: its position table (class row folded out) fits no grid
    original = dinov2_file(randomized_timm(timm_name, **DINOV2_ARGS))
    path = _save(original, tmp_path / "reg4.pth")
    with pytest.raises(converters.ConversionError) as e:
        vitjax.create_model(DINOV2[1], pretrained=path, **DINOV2_ARGS)
    assert "reg4.pth does not fit vit_small_patch14_dinov2" in str(e.value)
    assert "shape      pos_embed: checkpoint (1, 16, 64), model needs (1, 17, 64)" in str(e.value)


@pytest.mark.slow  # a full-size ViT-Ti through the CLI (~20 s): create_model's path is the default suite's
def test_to_jax_reads_an_original_file(tmp_path):
    """``python -m converters to-jax`` takes the same path: a DINOv2-layout file (timm's names plus Meta's
    ``mask_token``) into a vitjax checkpoint directory that loads into a model equal to timm's."""
    from converters.__main__ import EXIT_OK, main

    name = "vit_tiny_patch16_224"
    src = randomized_timm(name, num_classes=10)
    original = {**src.state_dict(), "mask_token": torch.randn(1, 192)}
    path = _save(original, tmp_path / "dinov2_layout.pth")
    out = tmp_path / "ckpt"
    assert main(["to-jax", "--model", name, "--src", path, "--out", str(out), "--num-classes", "10"]) == EXIT_OK
    model = vitjax.create_model(name, pretrained=out, num_classes=10)
    ref = timm_through_filter(name, original, num_classes=10)
    x = image(224, 224, batch=1)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL
