"""The train state and its sharded construction.

The model is split once into a static part (two ``GraphDef``s: train mode and eval mode; the RNG streams,
re-seeded at every step) and arrays kept as pure dicts: ``params`` (fp32 master weights), ``batch_stats``
(BatchNorm running statistics, empty for models without), the optimizer state, the EMA, the run's key and the
state of a schedule that is not a function of the step (``sched``: ``--sched plateau``'s, else empty).
The state is built straight into its shardings by a jitted initialiser with explicit ``out_shardings``, from
abstract shapes: no parameter is ever whole on one device unless its sharding says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flax
import jax
import optax
from flax import nnx
from jax import numpy as jnp
from jax.sharding import Mesh

import vitjax
from train import mesh as mesh_lib
from vitjax.layers.norm import BatchNorm

# The initialiser runs once: XLA's backend optimisations cost it seconds of compile time (on CPU) for nothing.
RUN_ONCE = {"xla_backend_optimization_level": 0}


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 (): optimizer updates done
    params: dict
    batch_stats: dict
    opt_state: Any
    ema: dict  # {"params": ..., "batch_stats": ...}, or {} without EMA
    key: jax.Array  # uint32 (2,): raw data of the run's base PRNG key
    sched: dict = flax.struct.field(default_factory=dict)  # train.schedule.Plateau.encode's, or {}


@dataclass
class ModelParts:
    """What stays fixed during training: graph definitions, RNG streams, abstract shapes and shardings."""

    model: nnx.Module  # abstract, eval mode (for converters and export)
    train_def: nnx.GraphDef
    eval_def: nnx.GraphDef
    rest: dict  # pure dict of the RNG streams (re-seeded every step) and any other non-parameter state
    params: nnx.State  # abstract, with logical-axes metadata
    batch_stats: nnx.State


def build_parts(
    name: str, overrides: Mapping[str, Any], *, seed: int = 0, remat: bool = False, bn_groups: int = 1
) -> ModelParts:
    """``bn_groups``: the statistic groups of every BatchNorm in train mode (``BatchNorm.stat_groups``)."""
    model = vitjax.create_model(name, seed=seed, abstract=True, **overrides)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, BatchNorm):
            m.stat_groups = bn_groups
    if remat:
        found = False
        for _, m in nnx.iter_modules(model):
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = found = True
        if not found:
            raise ValueError(f"{name} has no grad_checkpointing switch; --remat is not supported for it")
    model.train()
    train_def, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    model.eval()
    eval_def = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
    return ModelParts(model, train_def, eval_def, nnx.to_pure_dict(rest), params, stats)


def param_count(parts: ModelParts) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.to_pure_dict(parts.params)))


def shardings(
    parts: ModelParts,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    preset: str,
    ema: bool,
    fsdp_min_size: int = 0,
    sched: Mapping[str, Any] | None = None,
) -> TrainState:
    """The NamedSharding of every leaf of the train state (``train.mesh.spec_for`` for the parameters and the
    optimizer's per-parameter state; ``sched``, the schedule's initial state, replicated)."""
    rep = mesh_lib.replicated(mesh)
    p_sh = mesh_lib.variable_shardings(parts.params, mesh, preset, fsdp_min_size)
    s_sh = mesh_lib.variable_shardings(parts.batch_stats, mesh, preset, fsdp_min_size)
    opt_abs = jax.eval_shape(tx.init, nnx.to_pure_dict(parts.params))
    o_sh = optax.tree_map_params(tx, lambda _, s: s, opt_abs, p_sh, transform_non_params=lambda _: rep)
    return TrainState(
        step=rep,
        params=p_sh,
        batch_stats=s_sh,
        opt_state=o_sh,
        ema={"params": p_sh, "batch_stats": s_sh} if ema else {},
        key=rep,
        sched={k: rep for k in sched or {}},
    )


def abstract_state(
    parts: ModelParts, tx: optax.GradientTransformation, sh: TrainState, sched: Mapping[str, Any] | None = None
) -> TrainState:
    """Shapes, dtypes and shardings of the state, as ``jax.ShapeDtypeStruct`` (a restore target)."""
    shapes = jax.eval_shape(
        lambda p, s: _assemble(p, s, tx, 0, bool(sh.ema), sched),
        nnx.to_pure_dict(parts.params),
        nnx.to_pure_dict(parts.batch_stats),
    )
    return jax.tree.map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d), shapes, sh)


def _assemble(params: dict, stats: dict, tx, seed, ema: bool, sched: Mapping[str, Any] | None = None) -> TrainState:
    copy = lambda t: jax.tree.map(jnp.copy, t)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        ema={"params": copy(params), "batch_stats": copy(stats)} if ema else {},
        key=jax.random.key_data(jax.random.key(seed)),
        sched={k: jnp.asarray(v) for k, v in (sched or {}).items()},
    )


def init_state(
    name: str,
    overrides: Mapping[str, Any],
    tx: optax.GradientTransformation,
    sh: TrainState,
    *,
    seed: int,
    weights: tuple[dict, dict] | None = None,
    sched: Mapping[str, Any] | None = None,
) -> TrainState:
    """A fresh state placed by ``sh``: random weights (vitjax's init with ``seed``), or ``weights``
    (``(params, batch_stats)`` pure dicts, e.g. converted from timm), built inside one jitted function;
    ``sched``: the schedule's initial state (host arrays)."""
    ema = bool(sh.ema)
    if weights is None:

        def init() -> TrainState:
            model = vitjax.create_model(name, seed=seed, **overrides)
            params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
            stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
            return _assemble(params, stats, tx, seed, ema, sched)

        return jax.jit(init, out_shardings=sh, compiler_options=RUN_ONCE)()
    init_from: Callable = lambda p, s: _assemble(p, s, tx, seed, ema, sched)
    return jax.jit(init_from, in_shardings=(sh.params, sh.batch_stats), out_shardings=sh, compiler_options=RUN_ONCE)(
        *weights
    )


def model_from(parts: ModelParts, params: dict, batch_stats: dict, *, train: bool = False) -> nnx.Module:
    """A concrete model (eval mode unless ``train``) from state arrays."""
    return nnx.merge(parts.train_def if train else parts.eval_def, params, batch_stats, parts.rest)
