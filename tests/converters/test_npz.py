"""Original Google ViT checkpoints (.npz): written here from the documented key names (google-research/
vision_transformer and big_vision layouts), loaded by timm's ``_load_weights`` and by vitjax, compared; and
vitjax's export read back by timm."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import _load_weights

import converters
import vitjax
from converters.npz import save_npz, to_npz
from tests.converters.helpers import fwd, image, nchw_to_nhwc, rel_err
from tests.parity.reference import FP32_TOL, record

TOL = FP32_TOL["npz"]

NAME = "vit_tiny_patch16_224"  # D 192, 3 heads, MLP 768
D, H, M, P, DEPTH = 192, 3, 768, 16, 2


def original_npz(layout: str, *, classes=1000, pre_logits=False, scanned=False, grid=14, seed=0) -> dict:
    """Random weights under the documented names; Flax layouts: Dense [in, out], Conv [kh, kw, in, out],
    attention q/k/v [D, heads, head_dim], out [heads, head_dim, D]."""
    g = np.random.default_rng(seed)

    def r(*shape, scale=None):
        scale = scale if scale is not None else (shape[0] ** -0.5 if len(shape) > 1 else 0.2)
        return (g.standard_normal(shape) * scale).astype(np.float32)

    bv = layout == "big_vision"
    mha, ln2, mlp = (
        ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
        if bv
        else (
            "MultiHeadDotProductAttention_1",
            "LayerNorm_2",
            "MlpBlock_3",
        )
    )
    w = {
        "embedding/kernel": r(P, P, 3, D, scale=(P * P * 3) ** -0.5),
        "embedding/bias": r(D),
        "cls": r(1, 1, D),
        ("pos_embedding" if bv else "Transformer/posembed_input/pos_embedding"): r(1, grid * grid + 1, D),
        "Transformer/encoder_norm/scale": 1 + r(D),
        "Transformer/encoder_norm/bias": r(D),
    }
    if classes:
        w["head/kernel"], w["head/bias"] = r(D, classes), r(classes)
    if pre_logits:
        w["pre_logits/kernel"], w["pre_logits/bias"] = r(D, D), r(D)
    blocks = []
    for _ in range(DEPTH):
        b = {"LayerNorm_0/scale": 1 + r(D), "LayerNorm_0/bias": r(D), f"{ln2}/scale": 1 + r(D), f"{ln2}/bias": r(D)}
        for n in ("query", "key", "value"):
            b[f"{mha}/{n}/kernel"], b[f"{mha}/{n}/bias"] = r(D, H, D // H, scale=D**-0.5), r(H, D // H)
        b[f"{mha}/out/kernel"], b[f"{mha}/out/bias"] = r(H, D // H, D, scale=D**-0.5), r(D)
        b[f"{mlp}/Dense_0/kernel"], b[f"{mlp}/Dense_0/bias"] = r(D, M), r(M)
        b[f"{mlp}/Dense_1/kernel"], b[f"{mlp}/Dense_1/bias"] = r(M, D), r(D)
        blocks.append(b)
    if scanned:
        w.update({f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]})
    else:
        w.update({f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()})
    return {("params/" if bv else "") + k: v for k, v in w.items()}


def _save(w: dict, path) -> str:
    np.savez(path, **w)
    return str(path)


def _timm_from_npz(path: str, **kw):
    ref = timm.create_model(NAME, depth=DEPTH, **kw).eval()
    _load_weights(ref, path)
    return ref


CASES = {
    "vit": dict(layout="vit"),
    "vit+pre_logits+in21k_head": dict(layout="vit", classes=21843, pre_logits=True),
    "big_vision": dict(layout="big_vision"),
    "big_vision_scanned": dict(layout="big_vision", scanned=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_load_matches_timm(tmp_path, parity_results, case):
    path = _save(original_npz(**CASES[case]), tmp_path / "w.npz")
    ref = _timm_from_npz(path)
    model = vitjax.create_model(NAME, pretrained=path, depth=DEPTH)
    x = image(224, 224)
    fresh_head = CASES[case].get("classes") == 21843  # another size: left at its initialisation, as in timm
    with torch.no_grad():
        feats = ref.forward_features(x)
        out = ref.forward_head(feats, pre_logits=fresh_head)
    xj = nchw_to_nhwc(x)
    feats_j = fwd(model, xj, "forward_features")
    errs = {
        "features": rel_err(feats_j, feats),
        "logits" if not fresh_head else "pre_logits": rel_err(model.forward_head(feats_j, pre_logits=fresh_head), out),
    }
    record(parity_results, "npz vision_transformer", case, errs)
    assert max(errs.values()) <= TOL, errs
    assert model.head.kernel.shape == (D, 1000)


@pytest.mark.parametrize("other", [{"img_size": 288}, {"img_size": 192, "patch_size": 8}])
def test_load_at_another_size_matches_timm(tmp_path, parity_results, other):
    """timm resamples .npz weights bilinearly without antialias; so does vitjax for .npz files."""
    path = _save(original_npz("vit"), tmp_path / "w.npz")
    ref = _timm_from_npz(path, **other)
    model = vitjax.create_model(NAME, pretrained=path, depth=DEPTH, **other)
    h, w = ref.patch_embed.img_size
    x = image(h, w)
    with torch.no_grad():
        want = ref(x)
    err = rel_err(fwd(model, nchw_to_nhwc(x)), want)
    record(parity_results, "npz vision_transformer", f"resampled {other}", {"logits": err})
    assert err <= TOL


def test_in21k_npz_fills_the_hf_pooler(tmp_path):
    """The HF in21k ids keep the representation layer: pre_logits/* becomes the pooler,
    pooled = tanh(pre_logits(post-norm class token))."""
    w = original_npz("vit", classes=0, pre_logits=True, grid=7)
    w["embedding/kernel"] = w["embedding/kernel"].repeat(2, 0).repeat(2, 1) / 4  # 32 px patches for B/32's grid
    path = _save(w, tmp_path / "in21k.npz")
    name = "google/vit-base-patch32-224-in21k"
    small = {"embed_dim": D, "num_heads": H, "mlp_ratio": M / D, "representation_size": D}  # B/32 made tiny
    model = vitjax.create_model(name, pretrained=path, depth=DEPTH, **small)
    ref = timm.create_model("vit_tiny_patch16_224", depth=DEPTH, patch_size=32, num_classes=0).eval()
    _load_weights(ref, path)
    x = image(224, 224)
    with torch.no_grad():
        cls = ref.forward_head(ref.forward_features(x), pre_logits=True).numpy()
    pooled = np.tanh(cls @ w["pre_logits/kernel"] + w["pre_logits/bias"])
    assert rel_err(fwd(model, nchw_to_nhwc(x)), torch.from_numpy(pooled)) <= TOL


@pytest.mark.parametrize("layout", ["vit", "big_vision"])
def test_export_is_read_by_timm(tmp_path, layout):
    src = _save(original_npz("vit", seed=1), tmp_path / "src.npz")
    model = vitjax.create_model(NAME, pretrained=src, depth=DEPTH)
    out = save_npz(model, tmp_path / "out.npz", layout=layout)
    assert set(np.load(out).files) == set(original_npz(layout))  # exactly the documented names
    ref = _timm_from_npz(str(out))
    x = image(224, 224)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(fwd(model, nchw_to_nhwc(x)), want) <= TOL
    if layout == "vit":  # bit-exact round trip of the original file
        orig, back = np.load(src), np.load(out)
        assert all(np.array_equal(orig[k], back[k]) for k in orig.files)


def test_mismatches_are_reported(tmp_path):
    w = original_npz("vit")
    del w["Transformer/encoderblock_1/LayerNorm_0/bias"]
    w["Transformer/encoderblock_7/LayerNorm_0/bias"] = np.zeros(D, np.float32)
    path = _save(w, tmp_path / "bad.npz")
    with pytest.raises(converters.ConversionError) as e:
        vitjax.create_model(NAME, pretrained=path, depth=DEPTH)
    assert "missing    Transformer/encoderblock_1/LayerNorm_0/bias" in str(e.value)
    assert "unexpected Transformer/encoderblock_7/LayerNorm_0/bias" in str(e.value)
    with pytest.raises(converters.ConversionError, match="original ViT layout"):
        to_npz(vitjax.create_model("vit_wee_patch16_reg1_gap_256", abstract=True, depth=1))
