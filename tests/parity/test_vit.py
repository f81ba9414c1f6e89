"""Parity of every registered ViT and relative-position ViT against timm itself.

For each name: timm's model with every float tensor randomised -> converters.from_torch -> compare
forward_features, logits and pre-logits at batch 2; bit-exact round trip that timm loads with strict=True;
then timm's features_only model at a non-default, non-square img_size against ours.
"""

from __future__ import annotations

import pytest
import timm
import torch

import converters
import vitjax
import vitjax.layers
from tests.parity.reference import TOL, assert_round_trip, nchw_to_nhwc, nhwc, randomize, record, rel_err

FAMILIES = ("vision_transformer", "vision_transformer_relpos")
NAMES = [n for fam in FAMILIES for n in vitjax.list_models(family=fam)]


def is_slow(name: str) -> bool:
    img = vitjax.get_spec(name).config().img_size
    return "large" in name or "huge" in name or "so150m" in name or img >= 384


def params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if is_slow(n) else n for n in names]


def test_registry_covers_timm():
    """list_models lists exactly the names the foundation issue asks for, all of which timm has."""
    import fnmatch
    import re

    relpos = set(timm.list_models(module="vision_transformer_relpos")) if hasattr(timm, "list_models") else set()
    assert set(vitjax.list_models(family="vision_transformer_relpos")) == relpos
    vt = timm.list_models(module="vision_transformer")
    want = {n for n in vt if fnmatch.fnmatch(n, "*_reg*_gap*")}
    want |= {n for n in vt if re.fullmatch(r"vit_(tiny|small|base|large)_patch(16|32)_(224|384)", n)}
    assert set(vitjax.list_models(family="vision_transformer")) == want


@pytest.mark.parametrize("name", params(NAMES))
def test_parity(name, parity_results):
    torch.manual_seed(0)
    ref = randomize(timm.create_model(name).eval())
    sd = ref.state_dict()
    model = vitjax.create_model(name, abstract=True)
    converters.from_torch(model, sd, source="timm")

    h, w = ref.patch_embed.img_size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        feats = ref.forward_features(x)
        logits = ref.forward_head(feats)
        pre = ref.forward_head(feats, pre_logits=True)
    xj = nchw_to_nhwc(x)
    feats_j = model.forward_features(xj)
    errs = {
        "features": rel_err(feats_j, feats),
        "logits": rel_err(model(xj), logits),
        "pre_logits": rel_err(model.forward_head(feats_j, pre_logits=True), pre),
    }
    record(parity_results, vitjax.get_spec(name).family, name, errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, sd, "timm", timm.create_model(name))


def other_size(name: str) -> tuple[int, int]:
    cfg = vitjax.get_spec(name).config()
    h, w = vitjax.layers.to_2tuple(cfg.img_size)
    return (h - 2 * cfg.patch_size, w - cfg.patch_size)


@pytest.mark.parametrize("name", params(NAMES))
def test_other_size_and_features(name, parity_results):
    """At a non-square img_size other than the default: features, logits, pre-logits, and the features_only
    model (default out_indices) loaded from the same full checkpoint against timm's forward_intermediates."""
    size = other_size(name)
    torch.manual_seed(1)
    ref = randomize(timm.create_model(name, img_size=size).eval(), seed=1)
    sd = ref.state_dict()
    model = vitjax.create_model(name, img_size=size, abstract=True)
    converters.from_torch(model, sd, source="timm")
    feats_model = vitjax.create_model(name, img_size=size, features_only=True, abstract=True)
    converters.from_torch(feats_model, sd, source="timm")
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = ref.forward_features(x)
        want = {
            "features": feats,
            "logits": ref.forward_head(feats),
            "pre_logits": ref.forward_head(feats, pre_logits=True),
        }
        maps = ref.forward_intermediates(x, indices=3, intermediates_only=True)
    xj = nchw_to_nhwc(x)
    fj = model.forward_features(xj)
    got = {"features": fj, "logits": model.forward_head(fj), "pre_logits": model.forward_head(fj, pre_logits=True)}
    errs = {k: rel_err(got[k], want[k]) for k in want}
    got_maps = feats_model(xj)
    assert len(got_maps) == len(maps) == 3
    errs |= {f"map{i}": rel_err(g, nhwc(r)) for i, (g, r) in enumerate(zip(got_maps, maps, strict=True))}
    record(parity_results, vitjax.get_spec(name).family, f"{name} @ {size}", errs)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parametrize(
    "name", ["vit_relpos_small_patch16_224", "vit_wee_patch16_reg1_gap_256", "vit_relpos_medium_patch16_cls_224"]
)
def test_timm_features_only_model(name, parity_results):
    """timm's own features_only wrapper (FeatureGetterNet: pruned, `model.`-prefixed keys) converts to ours."""
    torch.manual_seed(2)
    ref = randomize(timm.create_model(name, features_only=True, out_indices=(0, -2)).eval(), seed=2)
    model = vitjax.create_model(name, features_only=True, out_indices=(0, -2), abstract=True)
    converters.from_torch(model, ref.state_dict(), source="timm")
    assert model.channels() == ref.feature_info.channels()
    assert model.reduction() == ref.feature_info.reduction()
    h, w = vitjax.layers.to_2tuple(vitjax.get_spec(name).config().img_size)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        want = ref(x)
    got = model(nchw_to_nhwc(x))
    errs = {f"feature{i}": rel_err(g, nhwc(r)) for i, (g, r) in enumerate(zip(got, want, strict=True))}
    record(parity_results, vitjax.get_spec(name).family, f"{name} timm features_only", errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, ref.state_dict(), "timm", timm.create_model(name, features_only=True, out_indices=(0, -2)))
