"""The zoo rows against timm at reduced size: one row of each kind the seed rows do not have, and zoo tags loaded
from a hub cache the test writes.

Each kind runs at depth 2 and width 64 with every float tensor of timm's model randomised: fp32 features,
logits and pre-logits within the family's bound, and a bit-exact round trip that timm loads with strict=True.
(The full-size rows: tests/parity/test_vit.py, slow; their names and shapes: tests/models/test_zoo.py.)
"""

from __future__ import annotations

import pytest
import timm
import torch

import converters
import vitjax
from tests.converters.helpers import save_sd, write_hub_file
from tests.converters.test_hub import offline_hub  # noqa: F401  (fixture)
from tests.parity.reference import (
    FP32_TOL,
    assert_round_trip,
    nchw_to_nhwc,
    on_meta,
    randomize,
    record,
    rel_err,
)
from vitjax.data import resolve_model_data_config

# the round trips load into reference models on the meta device: strict about keys and shapes, no copies
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

TOL = FP32_TOL["vision_transformer"]
SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=10)

# name -> what the row brings that no seed row has (img_size: a small input, 4 x 3 patches unless noted)
KINDS = {
    "vit_base_patch16_clip_224": "CLIP tower: norm before the blocks, LayerNorm eps 1e-5, patch conv without bias",
    "vit_base_patch32_siglip_gap_256": "SigLIP GAP tower: no class token, final norm then average, GELU-tanh",
    "vit_small_patch14_reg4_dinov2": "DINOv2: layer scale, 4 registers outside the position table, patch 14",
    "vit_base_patch16_radio_v3": "RADIO: 7 registers, no final norm, class-token pooling",
    "vit_base_patch16_rpn_224": "res-post blocks (norm on the branch output) without a relative-position bias",
    "eva_large_patch14_196": "class token kept, average pooling with fc_norm",
    "vit_so400m_patch14_siglip_gap_384": "img_size not a patch multiple (the conv drops the rest), mlp_ratio 3.7362",
}
SIZES = {"vit_so400m_patch14_siglip_gap_384": (4 * 14 + 5, 3 * 14 + 9)}


def small_size(name: str) -> tuple[int, int]:
    p = vitjax.get_spec(name).config().patch_size
    return SIZES.get(name, (4 * p, 3 * p))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kind_at_reduced_size(name, parity_results):
    size = small_size(name)
    torch.manual_seed(0)
    ref = randomize(timm.create_model(name, img_size=size, **SMALL).eval())
    sd = ref.state_dict()
    model = vitjax.create_model(name, img_size=size, abstract=True, **SMALL)
    converters.from_torch(model, sd, source="timm")
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = ref.forward_features(x)
        want = {"features": feats, "logits": ref.forward_head(feats), "pre_logits": ref.forward_head(feats, True)}
    xj = nchw_to_nhwc(x)
    fj = model.forward_features(xj)
    got = {"features": fj, "logits": model(xj), "pre_logits": model.forward_head(fj, pre_logits=True)}
    errs = {k: rel_err(got[k], want[k]) for k in want}
    record(parity_results, "vision_transformer (zoo kinds, reduced)", name, errs)
    assert max(errs.values()) <= TOL, errs
    assert_round_trip(model, sd, "timm", on_meta(timm.create_model, name, img_size=size, **SMALL))


# name.tag (None: the default tag) -> loaded from the hub cache at reduced width and depth, full img_size
TAGS = [
    ("vit_small_patch14_reg4_dinov2", None),
    ("vit_base_patch16_siglip_gap_224", "v2_webli"),
    ("vit_base_patch16_clip_224", "openai"),
    ("deit3_small_patch16_224", "fb_in22k_ft_in1k"),
]
NARROW = dict(depth=1, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("name,tag", TAGS)
def test_zoo_tag_from_the_hub_cache(offline_hub, name, tag):  # noqa: F811
    """``create_model("name.tag", pretrained=True)`` reads timm's hub repo of that tag (from the cache), brings
    the tag's classifier size and eval preprocessing (SigLIP's 0.5 mean/std, CLIP's OpenAI numbers), and
    equals timm's model with the same weights."""
    full = f"{name}.{tag}" if tag else name
    torch.manual_seed(4)
    ref = randomize(timm.create_model(full, **NARROW).eval(), seed=4)
    theirs = ref.pretrained_cfg
    assert theirs["hf_hub_id"] and not theirs.get("hf_hub_filename"), theirs  # timm's own layout in its repo
    write_hub_file(offline_hub, theirs["hf_hub_id"], "model.safetensors", lambda p: save_sd(ref.state_dict(), p))
    model = vitjax.create_model(full, pretrained=True, **NARROW)
    assert model.pretrained_cfg["tag"] == theirs["tag"]
    assert model.pretrained_cfg["source"] == f"hub {theirs['hf_hub_id']}/model.safetensors"
    assert model.cfg.num_classes == theirs["num_classes"]
    ours = resolve_model_data_config(model)
    want = timm.data.resolve_model_data_config(ref)
    assert {k: ours[k] for k in want} == want
    size = theirs["input_size"][1:]
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = ref(x)
    assert rel_err(model(nchw_to_nhwc(x)), out) <= TOL
