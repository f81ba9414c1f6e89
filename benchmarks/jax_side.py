"""The vitjax side: the model is split once with ``nnx.split``; a pure function merges it inside ``jax.jit``.

Each builder compiles ahead of time (``lower`` + ``compile``, timed) and returns a :class:`Step` whose call runs
the compiled executable once and waits for its result. Imports neither torch nor timm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax import numpy as jnp

import vitjax

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


@dataclass
class Step:
    call: Callable[[], Any]  # one step, blocking until its outputs are ready
    compile_s: float  # lower + compile
    flops: float  # per call, as XLA counts them in the compiled executable (see _aot)
    flops_hlo: float  # the same, counted on the HLO before optimisation (a cross-check)


def counted_flops(stage: jax.stages.Compiled | jax.stages.Lowered) -> float:
    cost = stage.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def cast_floats(tree: Any, dtype) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def images(batch: int, hw: tuple[int, int], chans: int, dtype, seed: int = 0) -> jax.Array:
    x = np.random.default_rng(seed).standard_normal((batch, *hw, chans), dtype=np.float32)  # B, H, W, C
    return jnp.asarray(x, dtype)


def _aot(
    fn: Callable, *args, donate: tuple[int, ...] = (), options: dict | None = None
) -> tuple[jax.stages.Compiled, float, float, float]:
    """(compiled, seconds to lower and compile, FLOPs counted in the compiled executable and in the HLO before
    optimisation). On an accelerator the compiled count leaves out library calls (cuBLAS / cuDNN), so both
    counts come from the same program lowered for the CPU (the FLOPs do not depend on where it runs)."""
    t0 = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
    compiled = lowered.compile(compiler_options=options or None)
    seconds = time.perf_counter() - t0
    if jax.default_backend() == "cpu":
        return compiled, seconds, counted_flops(compiled), counted_flops(lowered)
    flops = cpu_flops(fn, *args)
    return compiled, seconds, flops, flops


def cpu_flops(fn: Callable, *args) -> float:
    """FLOPs of ``fn`` lowered for the CPU from the shapes of ``args`` (nothing is compiled or run)."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), args)
    return counted_flops(jax.jit(fn).lower(*shapes))


def build(case: dict) -> nnx.Module:
    return vitjax.create_model(case["name"], **case["overrides"])


def infer_step(model: nnx.Module, case: dict, batch: int, dtype: str = "fp32", options: dict | None = None) -> Step:
    """Forward pass of an eval-mode model (weights and inputs in ``dtype``); ``options``: XLA compiler options."""
    graphdef, state = nnx.split(model)
    state = cast_floats(state, DTYPES[dtype])
    x = images(batch, case["hw"], case["in_chans"], DTYPES[dtype])

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    compiled, seconds, flops, hlo = _aot(forward, state, x, options=options)
    return Step(lambda: compiled(state, x).block_until_ready(), seconds, flops, hlo)


def train_step(
    model: nnx.Module,
    case: dict,
    batch: int,
    dtype: str = "fp32",
    lr: float = 1e-4,
    copy: bool = True,
    options: dict | None = None,
) -> Step:
    """One training step: forward, softmax cross-entropy, backward, ``clip_by_global_norm(1)``, AdamW.

    fp32 master weights; with ``dtype="bf16"`` they are cast inside the loss (mixed precision). The weights,
    optimizer state and other state (BatchNorm statistics) are donated and threaded from call to call. The
    model's own weights are copied first unless ``copy=False`` (donation deletes them). Models without a classifier
    (``num_classes=0``) are trained on their pooled features as logits, as the torch side is.
    """
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if copy:
        params, rest = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, rest)
    compute = DTYPES[dtype]
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.05))
    opt_state = tx.init(params)
    x = images(batch, case["hw"], case["in_chans"], compute)
    out_dim = jax.eval_shape(lambda p, r, x: nnx.merge(graphdef, p, r)(x), params, rest, x).shape[-1]
    y = jnp.asarray(np.arange(batch) % out_dim, jnp.int32)

    def step(params, opt_state, rest, x, y):
        model = nnx.merge(graphdef, params, rest)

        def loss_fn(model):
            if compute == jnp.float32:
                m = model
            else:  # a bf16 copy of the weights for the forward; its state changes go back to the model
                g, p, r = nnx.split(model, nnx.Param, ...)
                m = nnx.merge(g, cast_floats(p, compute), r)
            logits = m(x).astype(jnp.float32)  # B, classes
            if m is not model:
                nnx.update(model, nnx.state(m, nnx.Not(nnx.Param)))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        # nnx's grad, not jax's: the forward mutates state (dropout RNG counters, BatchNorm statistics)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        new_rest = jax.tree.map(lambda new, old: new.astype(old.dtype), new_rest, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_rest, loss

    compiled, seconds, flops, hlo = _aot(step, params, opt_state, rest, x, y, donate=(0, 1, 2), options=options)
    carry = [params, opt_state, rest]

    def call():
        *carry[:], loss = compiled(*carry, x, y)
        return loss.block_until_ready()

    return Step(call, seconds, flops, hlo)


def matmul_gflops(n: int, dtype: str, min_time: float, options: dict | None = None) -> float:
    """Sustained GFLOP/s of an n x n x n matmul under ``jax.jit``."""
    a = images(1, (n, n), 1, DTYPES[dtype])[0, :, :, 0]  # n, n
    b = images(1, (n, n), 1, DTYPES[dtype], seed=1)[0, :, :, 0]  # n, n
    mm = jax.jit(lambda a, b: a @ b).lower(a, b).compile(compiler_options=options or None)  # n, n
    mm(a, b).block_until_ready()
    count, t0 = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - t0 < min_time:
        mm(a, b).block_until_ready()
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9
