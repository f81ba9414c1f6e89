"""Shared helpers for parity tests against the real reference libraries (timm, transformers).

They import torch/timm/transformers unconditionally: a missing reference library fails the test run, it
never skips it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import timm  # noqa: F401  (a missing reference library must fail, not skip)
import torch
import transformers  # noqa: F401
from flax import nnx

import converters
from converters.verify import randomize  # noqa: F401  (re-exported for the parity tests)

# Error = max|jax - torch| / max(1, max|torch|), as the project defines it.
# float64 on both sides (torch .double(), jax under enable_x64 with float64 variables): rounding is ~1e-16 per
# operation, the worst error measured is below 1e-13, so a wrong eps, activation form, layout or pooling mode
# (1e-7 and up) cannot hide under the bound.
TOL_F64 = 1e-9
# float32: a few times the worst error the default suite measured per family (a bound near fp32's noise, so
# that it still catches errors the size of a wrong LayerNorm eps on the larger nets).
FP32_TOL = {
    "vision_transformer": 1e-5,  # worst 1.4e-6
    "vision_transformer_relpos": 1e-5,  # worst 1.2e-6
    "hf_vit": 1.5e-5,  # worst 2.5e-6 (3.1e-6 for vit-large in the demo)
    "byoanet": 1.5e-5,  # worst 3.2e-6
    "maxxvit": 1e-5,  # worst 1.7e-6
    "resample": 1.5e-5,  # worst 2.6e-6
    "npz": 5e-6,  # worst 7.1e-7
}
TOL = max(FP32_TOL.values())  # for checks that belong to no one family (CLI round trips)


def rel_err(jax_out, torch_out: torch.Tensor) -> float:
    """max|jax - torch| / max(1, max|torch|), computed in float64; a non-finite result fails."""
    ref = torch_out.detach().numpy() if isinstance(torch_out, torch.Tensor) else np.asarray(torch_out)
    got = np.asarray(jax_out)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    assert np.isfinite(got).all(), "the result is not finite"
    return float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))


def rel_err64(jax_out, torch_out: torch.Tensor) -> float:
    """:func:`rel_err` of a float64 comparison: both sides must be float64 (a float32 cast on the way would
    otherwise show up only as an error of ~1e-7)."""
    assert torch_out.dtype == torch.float64, torch_out.dtype
    assert np.asarray(jax_out).dtype == np.float64, f"the result is {np.asarray(jax_out).dtype}"
    return rel_err(jax_out, torch_out)


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def nhwc(t: torch.Tensor) -> torch.Tensor:
    """A reference NCHW feature map in NHWC, for comparison."""
    return t.permute(0, 2, 3, 1)


def on_meta(build, *args, **kw) -> torch.nn.Module:
    """``build(*args, **kw)`` on torch's meta device: a strict load checks keys and shapes without allocating
    or initialising the weights."""
    with torch.device("meta"):
        return build(*args, **kw)


def assert_round_trip(model, sd: dict, target: str, fresh: torch.nn.Module) -> None:
    """to_torch(from_torch(sd)) == sd bit for bit, and the reference loads it with strict=True."""
    out = converters.to_torch(model, target=target)
    assert set(out) == set(sd), f"keys differ: {sorted(set(out) ^ set(sd))[:10]}"
    for k, v in sd.items():
        ref = v.numpy()
        assert out[k].dtype == ref.dtype and out[k].shape == ref.shape, k
        assert np.array_equal(out[k], ref), f"{k} is not bit-exact after the round trip"
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in out.items()}, strict=True)


def record(results: dict, family: str, name: str, errs: dict[str, float]) -> None:
    """Keep the worst error per family (printed at the end of the session by conftest)."""
    worst = max(errs.values())
    fam = results.setdefault(family, {"worst": 0.0, "model": None, "n": 0})
    fam["n"] += 1
    if worst >= fam["worst"]:
        fam.update(worst=worst, model=name)


def float64(model: nnx.Module) -> nnx.Module:
    """Make every floating-point variable of a vitjax model (parameters, BatchNorm statistics, buffers;
    abstract or not) float64, in place, so that a converter fills it in float64 and the forward runs in float64.
    Call it inside ``jax.enable_x64(True)`` (without x64 jnp.float64 means float32)."""
    assert jax.config.jax_enable_x64, "float64 needs jax.enable_x64(True)"
    for _, var in nnx.iter_graph(model):
        if not isinstance(var, nnx.Variable):
            continue
        v = var.get_value()
        if not hasattr(v, "dtype") or not jnp.issubdtype(v.dtype, jnp.floating):
            continue
        if isinstance(v, jax.ShapeDtypeStruct):
            var.set_value(jax.ShapeDtypeStruct(v.shape, jnp.float64))
        else:
            var.set_value(jnp.asarray(v, jnp.float64))
    return model


# transformers' ViTConfig of the google/vit-*-in21k repos, as their config.json on the hub publishes it, written
# out here so that the HF reference never comes from vitjax's own table (a wrong field there must fail a test).
HF_PUBLISHED_COMMON = dict(
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    image_size=224,
    num_channels=3,
    qkv_bias=True,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.02,
)
HF_PUBLISHED = {
    "google/vit-base-patch16-224-in21k": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16
    ),
    "google/vit-base-patch32-224-in21k": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=32
    ),
    "google/vit-large-patch16-224-in21k": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=16
    ),
    "google/vit-large-patch32-224-in21k": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=32
    ),
    "google/vit-huge-patch14-224-in21k": dict(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120, patch_size=14
    ),
}


def hf_published_config(name: str, *, depth: int | None = None, img_size=None):
    """transformers' ``ViTConfig`` of an HF id from the published values; ``depth`` / ``img_size`` as vitjax's
    overrides of the same name (``num_hidden_layers`` / ``image_size``)."""
    from transformers import ViTConfig

    kw = HF_PUBLISHED_COMMON | HF_PUBLISHED[name]
    if depth is not None:
        kw["num_hidden_layers"] = depth
    if img_size is not None:
        kw["image_size"] = img_size
    return ViTConfig(**kw)
