"""``dynamic_img_size`` / ``dynamic_img_pad`` against timm's ViT built with the same switches.

One model of each prefix layout (class token; class token without position rows; class token and registers with
position rows; registers only without position rows), built for 32 px at patch 8 (a 4 x 4 grid) and called at
sizes it was not built for: a smaller grid in one axis and a larger one in the other (the antialiased resize
shrinks and grows), a larger square grid, and odd sizes padded up to a patch multiple. Every float tensor of
timm's model is randomised; features, logits, pre-logits and the intermediate maps are compared in float32
against timm unchanged, and in float64 with timm's position resize run in float64 (timm casts the table to
float32 before ``F.interpolate``, which a float64 comparison would see as ~1e-7).
"""

from __future__ import annotations

import jax
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import vision_transformer as tv

import converters
import vitjax
from tests.parity.reference import (
    FP32_TOL,
    TOL_F64,
    float64,
    nchw_to_nhwc,
    nhwc,
    randomize,
    record,
    rel_err,
    rel_err64,
)

TOL = FP32_TOL["vision_transformer"]
SMALL = dict(embed_dim=48, num_heads=3, depth=2, img_size=32, patch_size=8)
# (id, registered name, overrides) for each prefix-token layout
LAYOUTS = [
    ("cls", "vit_tiny_patch16_224", {}),
    ("cls_no_embed_class", "vit_tiny_patch16_224", dict(no_embed_class=True)),
    ("cls_reg2", "vit_tiny_patch16_224", dict(reg_tokens=2)),
    ("reg1_gap_no_embed_class", "vit_wee_patch16_reg1_gap_256", dict(mlp_ratio=2.0)),
]
# input sizes (H, W) for a model built at 32 x 32, patch 8
SIZES = [(24, 48), (64, 64)]
PADDED = [(29, 37), (17, 50)]


def _models(name: str, overrides: dict, **switches):
    kw = {**SMALL, **overrides, **switches}
    ref = randomize(timm.create_model(name, **kw).eval(), seed=3)
    model = vitjax.create_model(name, abstract=True, **kw)
    converters.from_torch(model, ref.state_dict(), source="timm")
    return ref, model


def _outputs_timm(ref, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        feats = ref.forward_features(x)
        maps = ref.forward_intermediates(x, indices=2, intermediates_only=True)
        out = {"features": feats, "logits": ref.forward_head(feats), "pre_logits": ref.forward_head(feats, True)}
    return out | {f"map{i}": nhwc(m) for i, m in enumerate(maps)}


def _outputs_ours(model, x) -> dict:
    feats = model.forward_features(x)
    out = {"features": feats, "logits": model.forward_head(feats), "pre_logits": model.forward_head(feats, True)}
    return out | {f"map{i}": m for i, m in enumerate(model.forward_intermediates(x, indices=2))}


@pytest.mark.parametrize(("layout", "name", "overrides"), LAYOUTS, ids=[lay[0] for lay in LAYOUTS])
def test_dynamic_img_size_matches_timm(layout, name, overrides, parity_results):
    ref, model = _models(name, overrides, dynamic_img_size=True)
    for size in SIZES:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        want, got = _outputs_timm(ref, x), _outputs_ours(model, nchw_to_nhwc(x))
        errs = {k: rel_err(got[k], want[k]) for k in want}
        record(parity_results, "vision_transformer", f"{name} dynamic {layout} @ {size}", errs)
        assert max(errs.values()) <= TOL, (size, errs)


@pytest.mark.parametrize(("layout", "name", "overrides"), LAYOUTS[::3], ids=[lay[0] for lay in LAYOUTS[::3]])
def test_dynamic_img_pad_matches_timm(layout, name, overrides, parity_results):
    """Sizes that are not patch multiples, padded (bottom, right) to the next one; the grid is rounded up."""
    ref, model = _models(name, overrides, dynamic_img_size=True, dynamic_img_pad=True)
    for size in PADDED:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[1]))
        want, got = _outputs_timm(ref, x), _outputs_ours(model, nchw_to_nhwc(x))
        errs = {k: rel_err(got[k], want[k]) for k in want}
        record(parity_results, "vision_transformer", f"{name} dynamic pad {layout} @ {size}", errs)
        assert got["map0"].shape[1:3] == (-(-size[0] // 8), -(-size[1] // 8))
        assert max(errs.values()) <= TOL, (size, errs)


def _resample_in_own_dtype(posemb, new_size, old_size, num_prefix_tokens=1, **_):
    """timm's ``resample_abs_pos_embed`` (bicubic, antialias, prefix rows kept) without its float32 cast."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    grid = grid.reshape(1, *old_size, -1).permute(0, 3, 1, 2)  # 1, C, H, W
    grid = F.interpolate(grid, size=list(new_size), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, posemb.shape[-1])], dim=1)


@pytest.mark.parametrize(("layout", "name", "overrides"), LAYOUTS, ids=[lay[0] for lay in LAYOUTS])
def test_dynamic_img_size_float64(layout, name, overrides, monkeypatch):
    monkeypatch.setattr(tv, "resample_abs_pos_embed", _resample_in_own_dtype)
    kw = {**SMALL, **overrides, "dynamic_img_size": True, "dynamic_img_pad": True}
    ref = randomize(timm.create_model(name, **kw).eval(), seed=4).double()
    with jax.enable_x64(True):
        model = float64(vitjax.create_model(name, abstract=True, **kw))
        converters.from_torch(model, ref.state_dict(), source="timm")
        for size in [*SIZES, PADDED[0]]:
            x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(size[1]))
            want, got = _outputs_timm(ref, x), _outputs_ours(model, nchw_to_nhwc(x))
            errs = {k: rel_err64(got[k], want[k]) for k in want}
            assert max(errs.values()) <= TOL_F64, (size, errs)


def test_fixed_size_models_still_check_the_input():
    model = vitjax.create_model("vit_tiny_patch16_224", **SMALL)
    with pytest.raises(ValueError, match=r"does not match the model's img_size \(32, 32\)"):
        model(torch.zeros(1, 40, 32, 3).numpy())
    dyn = vitjax.create_model("vit_tiny_patch16_224", **SMALL, dynamic_img_size=True)
    with pytest.raises(ValueError, match=r"\(30, 32\) is not divisible .*dynamic_img_pad=True"):
        dyn(torch.zeros(1, 30, 32, 3).numpy())
    with pytest.raises(ValueError, match="dynamic_img_size is not supported with a relative-position bias"):
        vitjax.create_model("vit_relpos_small_patch16_224", depth=1, dynamic_img_size=True)
