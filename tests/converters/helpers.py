"""Shared pieces of the converter tests: hub-cache layout, inputs, error measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import vitjax
from tests.parity.reference import TOL, nchw_to_nhwc, randomize, rel_err  # noqa: F401

REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_hub_file(cache: Path, repo_id: str, filename: str, write) -> Path:
    """Lay out ``repo_id/filename`` as the Hugging Face cache does (``models--org--name/snapshots/<rev>/...``
    with ``refs/main`` naming the revision); ``write(path)`` writes the file."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    write(snap / filename)
    return snap / filename


def hf_vit_config(name: str, **overrides):
    """transformers' config of an HF id from the published values (never from vitjax's table)."""
    from tests.parity.reference import hf_published_config

    return hf_published_config(name, **overrides)


def features_err(model, ref, x: torch.Tensor) -> float:
    """forward_features of a vitjax model vs a timm model on the same NCHW batch."""
    with torch.no_grad():
        want = ref.forward_features(x)
    return rel_err(model.forward_features(nchw_to_nhwc(x)), want)


def logits_err(model, ref, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = ref(x)
    return rel_err(model(nchw_to_nhwc(x)), want)


def image(h: int, w: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def tiny(name: str, **kw):
    """vitjax's abstract model (for quick config access)."""
    return vitjax.create_model(name, abstract=True, **kw)


def save_sd(sd: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def np_sd(sd: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in sd.items()}


def fwd(model, x, method: str = "__call__", **kw):
    """``getattr(model, method)(x)`` compiled whole (op-by-op eager dispatch is several times slower on CPU)."""
    from flax import nnx

    return nnx.jit(lambda m, v: getattr(m, method)(v, **kw))(model, x)
