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
TOL = 1e-4


def rel_err(jax_out, torch_out: torch.Tensor) -> float:
    ref = torch_out.detach().float().numpy()
    got = np.asarray(jax_out, dtype=np.float32)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    return float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def nhwc(t: torch.Tensor) -> torch.Tensor:
    """A reference NCHW feature map in NHWC, for comparison."""
    return t.permute(0, 2, 3, 1)


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
