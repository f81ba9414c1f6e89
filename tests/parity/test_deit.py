"""DeiT and DeiT III (timm ``deit.py``, family ``deit``) against timm, every float tensor of timm's model randomised.

Default suite: each kind at depth 2, width 64, a small non-square input; slow: every name at full size. Both
compare fp32 features, logits and pre-logits and check a bit-exact round trip that timm loads with strict=True.
"""

from __future__ import annotations

import pytest
import timm
import torch

import converters
import vitjax
from tests.parity.reference import (
    FP32_TOL,
    assert_round_trip,
    nchw_to_nhwc,
    on_meta,
    randomize,
    record,
    rel_err,
)

# the round trips load into reference models on the meta device: strict about keys and shapes, no copies
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

TOL = FP32_TOL["vision_transformer"]  # the same model as the ViT family
SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=10, img_size=(64, 48))
KINDS = {
    "deit_tiny_patch16_224": "class token, position table over class + patches",
    "deit3_small_patch16_224": "layer scale 1e-6, class token outside the position table",
}
NAMES = vitjax.list_models(family="deit")


def parity(name: str, seed: int = 0, **kw) -> tuple[dict[str, float], torch.nn.Module, dict, object]:
    torch.manual_seed(seed)
    ref = randomize(timm.create_model(name, **kw).eval(), seed)
    sd = ref.state_dict()
    model = vitjax.create_model(name, abstract=True, **kw)
    converters.from_torch(model, sd, source="timm")
    h, w = ref.patch_embed.img_size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        feats = ref.forward_features(x)
        want = {"features": feats, "logits": ref.forward_head(feats), "pre_logits": ref.forward_head(feats, True)}
    xj = nchw_to_nhwc(x)
    fj = model.forward_features(xj)
    got = {"features": fj, "logits": model(xj), "pre_logits": model.forward_head(fj, pre_logits=True)}
    return {k: rel_err(got[k], want[k]) for k in want}, ref, sd, model


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kind_at_reduced_size(name, parity_results):
    errs, _, sd, model = parity(name, **SMALL)
    record(parity_results, "deit (reduced)", name, errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, sd, "timm", on_meta(timm.create_model, name, **SMALL))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_parity_full_size(name, parity_results):
    errs, _, sd, model = parity(name)
    record(parity_results, "deit", name, errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, sd, "timm", on_meta(timm.create_model, name))
