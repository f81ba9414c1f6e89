"""Resolution transfer: weights made at one size loaded into a model built for another.

The resize kernels are checked against ``torch.nn.functional.interpolate`` and timm's resamplers; whole
models against timm's ``create_model(name, pretrained=<same file>, img_size=...)`` (its checkpoint filter
resamples) and, for the HF ids, transformers' ``interpolate_pos_encoding=True`` forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed as timm_pos
from timm.layers import resample_patch_embed as timm_patch
from transformers import ViTModel

import vitjax
from converters.resample import HF, TIMM, TIMM_NPZ, Resize, resample_abs_pos_embed, resample_patch_embed, resize_grid
from tests.converters.helpers import fwd, hf_vit_config, image, nchw_to_nhwc, rel_err, save_sd
from tests.parity.reference import FP32_TOL, randomize, record

TOL = FP32_TOL["resample"]


@pytest.mark.parametrize("resize", [TIMM, TIMM_NPZ, HF, Resize("bilinear", True)], ids=str)
@pytest.mark.parametrize("sizes", [(14, 24), (14, 7), (16, 18), (5, 3), (24, 37)])
def test_resize_matches_torch_interpolate(resize, sizes):
    n_in, n_out = sizes
    x = torch.randn(1, 4, n_in, n_in + 2, generator=torch.Generator().manual_seed(n_in))
    want = F.interpolate(
        x, size=(n_out, n_out + 1), mode=resize.method, antialias=resize.antialias, align_corners=False
    )
    got = resize_grid(x[0].permute(1, 2, 0).numpy(), (n_out, n_out + 1), resize)  # H, W, C
    assert np.abs(got.transpose(2, 0, 1)[None] - want.numpy()).max() < 2e-5


@pytest.mark.parametrize("new", [(24, 24), (12, 20), (7, 7)])
def test_pos_embed_matches_timm(new):
    pe = torch.randn(1, 1 + 196, 32, generator=torch.Generator().manual_seed(0))
    want = timm_pos(pe, list(new), num_prefix_tokens=1).numpy()
    assert np.abs(resample_abs_pos_embed(pe.numpy(), new, None, 1) - want).max() < 1e-5


@pytest.mark.parametrize("new", [(8, 8), (32, 32), (14, 14), (20, 12)])
@pytest.mark.parametrize("resize", [TIMM, TIMM_NPZ], ids=str)
def test_patch_embed_matches_timm(new, resize):
    w = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    want = timm_patch(w, list(new), interpolation=resize.method, antialias=resize.antialias).numpy()
    got = resample_patch_embed(w.numpy(), new, resize)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


# name, create kwargs shared by timm and vitjax (2 blocks keep it quick), the other size to load at
CASES = [
    ("vit_tiny_patch16_224", {"depth": 2}, {"img_size": 288}),
    ("vit_tiny_patch16_224", {"depth": 2}, {"img_size": (160, 256)}),  # non-square grid
    ("vit_tiny_patch16_224", {"depth": 2}, {"img_size": 192, "patch_size": 8}),  # patch kernel resampled too
    ("vit_wee_patch16_reg1_gap_256", {"depth": 2}, {"img_size": 192}),  # registers, no_embed_class
    ("test_vit_relpos", {"depth": 2}, {"img_size": 224}),  # relative-position MLP: nothing to resample
]


@pytest.mark.parametrize(("name", "common", "other"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_load_at_another_size_matches_timm(tmp_path, parity_results, name, common, other):
    ref = randomize(timm.create_model(name, **common).eval(), seed=2)
    path = save_sd(ref.state_dict(), tmp_path / "w.safetensors")
    timm_other = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **common, **other
    ).eval()
    model = vitjax.create_model(name, pretrained=path, **common, **other)
    h, w = timm_other.patch_embed.img_size if hasattr(timm_other, "patch_embed") else (other["img_size"],) * 2
    x = image(h, w)
    with torch.no_grad():
        feats = timm_other.forward_features(x)
        logits = timm_other.forward_head(feats)
    xj = nchw_to_nhwc(x)
    errs = {"features": rel_err(fwd(model, xj, "forward_features"), feats), "logits": rel_err(fwd(model, xj), logits)}
    record(parity_results, f"resampled {vitjax.get_spec(name).family}", f"{name}@{other}", errs)
    assert max(errs.values()) <= TOL, errs


def test_relpos_weights_do_not_depend_on_size():
    """Why relpos needs no filter: its state_dict has the same keys and shapes at every size."""
    a = timm.create_model("test_vit_relpos", img_size=160).state_dict()
    b = timm.create_model("test_vit_relpos", img_size=256).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_hf_at_another_size_matches_interpolate_pos_encoding(tmp_path, parity_results):
    """An HF checkpoint loaded at 288 px equals transformers running it at 288 px with
    ``interpolate_pos_encoding=True`` (bicubic without antialias, resampled once at load time here)."""
    name = "google/vit-base-patch32-224-in21k"
    ref = randomize(ViTModel(hf_vit_config(name, depth=2), add_pooling_layer=True).eval(), seed=7)
    path = save_sd(ref.state_dict(), tmp_path / "hf.safetensors")
    for size in [(288, 288), (224, 320)]:
        model = vitjax.create_model(name, pretrained=path, depth=2, img_size=size)
        x = image(*size)
        with torch.no_grad():
            out = ref(pixel_values=x, interpolate_pos_encoding=True)
        feats = fwd(model, nchw_to_nhwc(x), "forward_features")
        errs = {
            "features": rel_err(feats, out.last_hidden_state),
            "pooled": rel_err(model.forward_head(feats), out.pooler_output),
        }
        record(parity_results, "resampled hf_vit", f"{name}@{size}", errs)
        assert max(errs.values()) <= TOL, (size, errs)


@pytest.mark.parametrize(
    ("shape", "new"),
    [
        ((225, 3), (529, 3)),
        ((225, 3), (81, 3)),
        ((729, 8), (1521, 8)),
        ((2, 13, 13), (2, 23, 23)),
        ((2, 13, 13), (2, 7, 9)),
    ],
)
def test_rel_pos_bias_table_matches_timm(shape, new):
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table as timm_table

    from converters.resample import resize_rel_pos_bias_table

    t = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    side = int(new[0] ** 0.5)
    window = ((new[1] + 1) // 2, (new[2] + 1) // 2) if len(new) == 3 else ((side + 1) // 2,) * 2
    want = timm_table(t, window, new).numpy()
    assert np.abs(resize_rel_pos_bias_table(t.numpy(), new) - want).max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), [("maxvit_nano_rw_256", 320), ("coatnet_nano_cc_224", 288)])
def test_maxxvit_at_another_size_matches_timm(tmp_path, parity_results, name, size):
    """MaxViT / CoAtNet windows grow with the input: their bias tables are resized as timm's filter does."""
    ref = randomize(timm.create_model(name).eval(), seed=4)
    path = save_sd(ref.state_dict(), tmp_path / "w.safetensors")
    timm_other = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, img_size=size)
    model = vitjax.create_model(name, pretrained=path, img_size=size)
    x = image(size, size)
    with torch.no_grad():
        want = timm_other.eval()(x)
    err = rel_err(fwd(model, nchw_to_nhwc(x)), want)
    record(parity_results, "resampled maxxvit", f"{name}@{size}", {"logits": err})
    assert err <= TOL


@pytest.mark.parametrize("resize", [TIMM, TIMM_NPZ, HF, Resize("bilinear", True)], ids=str)
def test_resampling_float64(resize):
    """Grid and position-table resampling in float64 against torch's interpolate in float64, within 1e-9 of the
    largest value (a wrong kernel, antialias or alignment is 1e-3 and up; a float32 step 1e-7). timm's own
    resample_abs_pos_embed / resample_patch_embed cast to float32 inside, so the reference here is the
    interpolation they call, on the class-token-free grid."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 14, 16, generator=g, dtype=torch.float64)
    want = F.interpolate(x, size=(9, 23), mode=resize.method, antialias=resize.antialias, align_corners=False)
    got = resize_grid(x[0].permute(1, 2, 0).numpy(), (9, 23), resize).transpose(2, 0, 1)[None]
    assert got.dtype == np.float64
    assert np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max() <= 1e-9
    pe = torch.randn(1, 1 + 196, 8, generator=g, dtype=torch.float64)
    for new in ((24, 20), (7, 7)):
        grid = pe[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=new, mode=resize.method, antialias=resize.antialias, align_corners=False)
        want = torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, 8)], dim=1).numpy()
        got = resample_abs_pos_embed(pe.numpy(), new, None, 1, resize)
        assert got.dtype == np.float64
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-9
