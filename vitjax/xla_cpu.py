"""Keeping XLA:CPU's backward pass linear in depth.

XLA:CPU fuses cheap elementwise producers into every consumer, duplicating them. In the backward pass of a
residual network the cotangent of the residual stream is a chain of elementwise adds (each block's norm and
residual contributions) that every block's weight-gradient dot reads; XLA:CPU fuses the whole chain so far into
each of those reads, so block ``i`` recomputes the contributions of every block after it and the backward pass
costs O(depth^2) elementwise work. Measured on vit_medium_patch16_reg4_gap_256 (12 blocks, batch 8, one core):
the gradient took 13.4 s against timm's 6.1 s, 7 s of it in ever larger fusions.

:func:`grad_boundary` is the identity whose tangent (and so cotangent) passes through
``lax.optimization_barrier`` when compiled for the CPU; ``models.common.run_block`` puts it on every block's
input, so the residual cotangent is materialised once per block. XLA:CPU drops optimization barriers before
fusion unless the ``cse_barrier_expander`` pass is disabled: :data:`CPU_COMPILER_OPTIONS` (for ``jax.jit(...,
compiler_options=...)`` or ``.compile(compiler_options=...)``) does that, and :func:`compiler_options` returns
them for the CPU and nothing for other backends. With both, that gradient takes 7.2 s; without the options the
boundary costs nothing and changes nothing. On TPU and GPU the boundary is the identity (their fusion passes
do not duplicate this way).
"""

from __future__ import annotations

import jax

# XLA's name for the pass that removes optimization barriers (OptimizationBarrierExpander).
CPU_COMPILER_OPTIONS: dict[str, str] = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
    """Compiler options for ``jax.jit`` on ``platform`` (default: JAX's default backend): ours on the CPU."""
    return dict(CPU_COMPILER_OPTIONS) if (platform or jax.default_backend()) == "cpu" else None


def _cpu_barrier(t: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(t, cpu=jax.lax.optimization_barrier, default=lambda t: t)


@jax.custom_jvp
def grad_boundary(x: jax.Array) -> jax.Array:
    """The identity; its tangent, and by transposition its cotangent, is materialised on the CPU."""
    return x


@grad_boundary.defjvp
def _grad_boundary_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return x, _cpu_barrier(t)
