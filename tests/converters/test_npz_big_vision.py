"""big_vision SigLIP image towers (.npz) both ways: files written here from the documented big_vision names (a
two-tower checkpoint: the image tower under ``params/img/``, its MAP head ``MAPHead_0`` or average pooling, a text
tower beside it), read by timm's own ``_load_weights`` and by vitjax, compared; vitjax's
``save_npz(..., layout="big_vision")`` read back by timm, and the round trip of a file bit-exact. Reduced size."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import _load_weights

import converters
import vitjax
from converters.npz import save_npz
from tests.converters.helpers import fwd, image, nchw_to_nhwc, rel_err
from tests.parity.reference import FP32_TOL, record

TOL = FP32_TOL["npz"]
D, H, M, P, DEPTH, IMG = 64, 4, 256, 8, 2, 32
ARCH = dict(embed_dim=D, depth=DEPTH, num_heads=H, patch_size=P, img_size=IMG)
# pooling -> (timm name, vitjax name, vitjax-only arguments): vitjax's row of the timm name where it has one,
# else a classic row with the timm name's switches spelled out
TOWERS = {
    "map": ("vit_base_patch16_siglip_224", "vit_base_patch16_224", dict(class_token=False, global_pool="map")),
    "gap": ("vit_base_patch16_siglip_gap_224", "vit_base_patch16_siglip_gap_224", {}),
}


def siglip_npz(pool: str, *, prefix="params/img/", classes=0, scanned=False, text=True, grid=4, seed=0) -> dict:
    """Random weights of a SigLIP image tower under big_vision's names; Flax layouts: Dense [in, out], Conv
    [kh, kw, in, out], attention q/k/v [D, heads, head_dim], out [heads, head_dim, D]."""
    g = np.random.default_rng(seed)

    def r(*shape, scale=None):
        scale = scale if scale is not None else (shape[0] ** -0.5 if len(shape) > 1 else 0.2)
        return (g.standard_normal(shape) * scale).astype(np.float32)

    def mha(p: str, w: dict) -> None:
        for n in ("query", "key", "value"):
            w[f"{p}{n}/kernel"], w[f"{p}{n}/bias"] = r(D, H, D // H, scale=D**-0.5), r(H, D // H)
        w[f"{p}out/kernel"], w[f"{p}out/bias"] = r(H, D // H, D, scale=D**-0.5), r(D)

    def mlp(p: str, w: dict) -> None:
        w[f"{p}Dense_0/kernel"], w[f"{p}Dense_0/bias"] = r(D, M), r(M)
        w[f"{p}Dense_1/kernel"], w[f"{p}Dense_1/bias"] = r(M, D), r(D)

    w = {
        "embedding/kernel": r(P, P, 3, D, scale=(P * P * 3) ** -0.5),
        "embedding/bias": r(D),
        "pos_embedding": r(1, grid * grid, D),
        "Transformer/encoder_norm/scale": 1 + r(D),
        "Transformer/encoder_norm/bias": r(D),
    }
    if classes:
        w["head/kernel"], w["head/bias"] = r(D, classes), r(classes)
    if pool == "map":
        w["MAPHead_0/probe"] = r(1, 1, D)
        mha("MAPHead_0/MultiHeadDotProductAttention_0/", w)
        w["MAPHead_0/LayerNorm_0/scale"], w["MAPHead_0/LayerNorm_0/bias"] = 1 + r(D), r(D)
        mlp("MAPHead_0/MlpBlock_0/", w)
    blocks = []
    for _ in range(DEPTH):
        b = {"LayerNorm_0/scale": 1 + r(D), "LayerNorm_0/bias": r(D), "LayerNorm_1/scale": 1 + r(D)}
        b["LayerNorm_1/bias"] = r(D)
        mha("MultiHeadDotProductAttention_0/", b)
        mlp("MlpBlock_0/", b)
        blocks.append(b)
    if scanned:
        w.update({f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]})
    else:
        w.update({f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()})
    w = {prefix + k: v for k, v in w.items()}
    if text:  # the text tower and the sigmoid loss's temperature / bias: not the image tower's
        w.update({"params/txt/Embed_0/embedding": r(50, D), "params/txt/head/kernel": r(D, D)})
        w.update({"params/t": r(1), "params/b": r(1)})
    return w


def _save(w: dict, path) -> str:
    np.savez(path, **w)
    return str(path)


def _timm(pool: str, path: str, **kw) -> torch.nn.Module:
    ref = timm.create_model(TOWERS[pool][0], **{**ARCH, "num_classes": 0, **kw}).eval()
    _load_weights(ref, path)
    return ref


def _vitjax(pool: str, path: str, **kw):
    _, name, switches = TOWERS[pool]
    return vitjax.create_model(name, pretrained=path, **switches, **{**ARCH, "num_classes": 0, **kw})


def _errors(model, ref, size: int = IMG) -> dict[str, float]:
    x = image(size, size)
    with torch.no_grad():
        feats = ref.forward_features(x)
        out = ref.forward_head(feats)
    feats_j = fwd(model, nchw_to_nhwc(x), "forward_features")
    return {"features": rel_err(feats_j, feats), "pooled / logits": rel_err(model.forward_head(feats_j), out)}


CASES = {
    "map": dict(pool="map"),
    "map_scanned_48px": dict(pool="map", scanned=True),
    "gap+head": dict(pool="gap", classes=10),
}


@pytest.mark.parametrize("case", list(CASES))
def test_siglip_npz_matches_timm(tmp_path, parity_results, case):
    """At 48 px the file's 4x4 position grid is resampled bilinearly without antialias, as timm does for .npz;
    a scanned file stacks the blocks on a leading axis."""
    spec = CASES[case]
    path = _save(siglip_npz(**spec), tmp_path / "siglip.npz")
    kw = dict(num_classes=spec.get("classes", 0), img_size=48 if case.endswith("48px") else IMG)
    errs = _errors(_vitjax(spec["pool"], path, **kw), _timm(spec["pool"], path, **kw), size=kw["img_size"])
    record(parity_results, "npz big_vision SigLIP", case, errs)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parametrize("pool", ["map", "gap"])
def test_big_vision_export_is_read_by_timm(tmp_path, pool):
    """save_npz(layout="big_vision") gives back the file it was read from, bit for bit, and timm's _load_weights
    reads it into a model with the same outputs."""
    original = siglip_npz(pool, prefix="params/", classes=10, text=False, seed=3)
    src = _save(original, tmp_path / "src.npz")
    model = _vitjax(pool, src, num_classes=10)
    out = save_npz(model, tmp_path / "out.npz", layout="big_vision")
    back = np.load(out)
    assert set(back.files) == set(original)
    for k, v in original.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), f"{k} is not bit-exact after the round trip"
    errs = _errors(model, _timm(pool, str(out), num_classes=10))
    assert max(errs.values()) <= TOL, errs


def test_mismatched_towers_are_reported(tmp_path):
    """A MAP file without its probe, and a MAP file read into a GAP tower: every offender named, with the file."""
    w = siglip_npz("map")
    del w["params/img/MAPHead_0/probe"]
    path = _save(w, tmp_path / "no_probe.npz")
    with pytest.raises(converters.ConversionError, match=r"no_probe\.npz[\s\S]*missing    params/img/MAPHead_0/probe"):
        _vitjax("map", path)
    path = _save(siglip_npz("map"), tmp_path / "map.npz")
    with pytest.raises(converters.ConversionError) as e:
        _vitjax("gap", path)
    assert "map.npz" in str(e.value)
    assert "unexpected params/img/MAPHead_0/probe (1, 1, 64)" in str(e.value)
    assert "unexpected params/img/MAPHead_0/MlpBlock_0/Dense_1/bias (64,)" in str(e.value)
