"""The reference side: the timm / transformers model in torch, eager or under ``torch.compile``.

A model is described by a plain dict (``torch_spec`` in :mod:`benchmarks.run`) so that a subprocess can build
it without importing jax or vitjax. Inputs are NCHW, as torch models take them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Step:
    call: Callable[[], Any]  # one step, synchronised
    compile_s: float  # first call under torch.compile (0 in eager mode)


def build(spec: dict) -> torch.nn.Module:
    """``{"lib": "timm", "name", "kwargs"}`` or ``{"lib": "hf", "config": ViTConfig.to_dict()}``."""
    if spec["lib"] == "hf":
        from transformers import ViTConfig, ViTModel

        return ViTModel(ViTConfig.from_dict(spec["config"]), add_pooling_layer=True)
    import timm

    return timm.create_model(spec["name"], pretrained=False, **spec["kwargs"])


def logits_of(out: Any) -> torch.Tensor:
    """The classifier output, or the pooled features of a model without classifier (HF ViTModel's pooler)."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out.logits


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images(batch: int, case: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, case["in_chans"], *case["hw"], generator=gen)  # B, C, H, W
    return x.to(device=device, dtype=dtype)


def _compile(model: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(model, dynamic=False)


def infer_step(
    model: torch.nn.Module, case: dict, batch: int, device: torch.device, dtype: str = "fp32", compile: bool = False
) -> Step:
    """Forward pass of an eval-mode model in ``dtype`` (the model is converted in place). Under
    ``torch.compile`` the weights are frozen into the graph (inductor's ``freezing``), its fastest inference
    mode."""
    model.eval().to(device=device, dtype=DTYPES[dtype])
    x = images(batch, case, DTYPES[dtype], device)
    if not compile:

        def call():
            with torch.inference_mode():
                out = logits_of(model(x))
            _sync(device)
            return out

        return Step(call, 0.0)
    import torch._inductor.config as inductor_config

    compiled = _compile(model)

    def call():
        with torch.no_grad():
            out = logits_of(compiled(x))
        _sync(device)
        return out

    t0 = time.perf_counter()
    with inductor_config.patch(freezing=True):
        call()
    return Step(call, time.perf_counter() - t0)


def train_step(
    model: torch.nn.Module,
    case: dict,
    batch: int,
    device: torch.device,
    dtype: str = "fp32",
    compile: bool = False,
    lr: float = 1e-4,
) -> Step:
    """One training step: forward, cross-entropy, backward, ``clip_grad_norm_(1)``, AdamW (foreach; fused on
    CUDA). fp32 weights; ``dtype="bf16"`` runs forward and backward under autocast."""
    model.train().to(device=device, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, **({"fused": True} if cuda else {"foreach": True}))
    x = images(batch, case, torch.float32, device)
    fwd = _compile(model) if compile else model
    with torch.no_grad():
        out_dim = logits_of(model.eval()(x[:1])).shape[-1]
    model.train()
    y = (torch.arange(batch) % out_dim).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def call():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(logits_of(fwd(x)).float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _sync(device)
        return loss

    t0 = time.perf_counter()
    if compile:
        call()
    return Step(call, time.perf_counter() - t0 if compile else 0.0)


def matmul_gflops(n: int, dtype: str, device: torch.device, min_time: float) -> float:
    """Sustained GFLOP/s of an n x n x n matmul in torch."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=DTYPES[dtype])
    c = torch.empty_like(a)
    torch.mm(a, b, out=c)
    _sync(device)
    count, t0 = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - t0 < min_time:
        torch.mm(a, b, out=c)
        _sync(device)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9
