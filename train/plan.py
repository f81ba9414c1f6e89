"""What a run's train step is made of, before any array exists: ``python -m train`` and ``train.aot`` both build
their step from one :class:`StepPlan`, so the step compiled for a TPU topology is the one the loop runs.

A plan fixes the model parts (``train.state``), the optimizer and its schedule (``train.optim``), the
``NamedSharding`` of every leaf of the train state over the mesh, the compute dtype and the model's
normalisation; :meth:`StepPlan.jit_train_step` wraps the step (:meth:`StepPlan.step`) in ``jax.jit``
with the batch split over the data axes, the state donated and the metrics replicated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import optax
from flax import nnx
from jax import numpy as jnp

import vitjax
import vitjax.data
from train import mesh as mesh_lib
from train import optim, schedule
from train import state as state_lib
from train.config import TrainConfig
from train.steps import make_train_step
from vitjax.layers.norm import BatchNorm


def resolve_img_size(cfg: TrainConfig) -> int:
    """``--img-size``, else the model's default input size."""
    if cfg.img_size is not None:
        return cfg.img_size
    size = vitjax.get_spec(cfg.model).config(**cfg.model_overrides()).img_size
    return size if isinstance(size, int) else int(size[0])


@dataclass
class StepPlan:
    cfg: TrainConfig
    parts: state_lib.ModelParts
    mesh: jax.sharding.Mesh
    tx: optax.GradientTransformation
    lr_fn: optax.Schedule
    shardings: state_lib.TrainState  # the NamedSharding of every leaf of the state
    img_size: int
    num_classes: int
    compute_dtype: Any
    data_cfg: dict  # the model's eval preprocessing (mean, std, crop_pct, interpolation), as timm's
    plateau: schedule.Plateau | None = None  # --sched plateau: the lr is in the state, stepped by the loop

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.data_cfg["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.data_cfg["std"])

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        return mesh_lib.batch_sharding(self.mesh)

    def constraint(self) -> Callable[[jax.Array], jax.Array] | None:
        """The activation constraint of this mesh (activations split over the batch axes)."""
        return mesh_lib.activation_constraint(self.mesh)

    def step(self, constrain: Callable[[jax.Array], jax.Array] | None) -> Callable:
        """``step(state, batch) -> (state, metrics)`` (not jitted): :func:`train.steps.make_train_step` with the
        run's regularisation, accumulation and EMA settings, ``constrain`` on block boundaries, and as RNG the
        run's key folded with the step number."""
        cfg = self.cfg
        step_fn = make_train_step(
            self.parts.train_def,
            self.parts.rest,
            self.tx,
            self.lr_fn,
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            compute_dtype=self.compute_dtype,
            label_smoothing=cfg.label_smoothing,
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            mix_prob=cfg.mixup_prob,
            mix_switch_prob=cfg.mixup_switch_prob,
            accum_steps=cfg.grad_accum_steps,
            ema_decay_rate=cfg.model_ema_decay,
            ema_warmup=cfg.model_ema_warmup,
            constrain=constrain,
            bce=cfg.bce_loss,
            bce_target_thresh=cfg.bce_target_thresh,
        )

        def keyed_step(state: state_lib.TrainState, batch: dict) -> tuple[state_lib.TrainState, dict]:
            return step_fn(state, batch, jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step))

        return keyed_step

    def jit_train_step(self, step: Callable, compiler_options: Mapping[str, Any] | None = None) -> Callable:
        """``step`` jitted with the state's shardings in and out (donated), the batch split over the data axes
        and the metrics replicated."""
        bsh = self.batch_sharding
        return jax.jit(
            step,
            in_shardings=(self.shardings, {"image": bsh, "label": bsh}),
            out_shardings=(self.shardings, mesh_lib.replicated(self.mesh)),
            donate_argnums=0,
            compiler_options=dict(compiler_options) if compiler_options else None,
        )

    @property
    def sched_init(self) -> dict:
        """The initial ``TrainState.sched`` (host arrays; empty unless ``--sched plateau``)."""
        return schedule.Plateau.encode(self.plateau.init()) if self.plateau else {}

    def abstract_state(self) -> state_lib.TrainState:
        return state_lib.abstract_state(self.parts, self.tx, self.shardings, self.sched_init)


def bn_groups(cfg: TrainConfig, mesh: jax.sharding.Mesh) -> int:
    """BatchNorm's statistic groups: one per data-parallel device (each device's slice of the batch, as timm's
    DDP replicas), or one for the whole batch with ``--sync-bn``."""
    return 1 if cfg.sync_bn else mesh.shape["data"] * mesh.shape["fsdp"]


def make_plan(
    cfg: TrainConfig,
    overrides: Mapping[str, Any],
    mesh: jax.sharding.Mesh,
    *,
    img_size: int,
    total_steps: int,
    updates_per_epoch: int | None = None,
) -> StepPlan:
    """The plan of ``cfg`` on ``mesh``: the model built abstractly with ``overrides`` (``create_model`` keyword
    arguments) at ``img_size``, a schedule of ``total_steps`` updates (``train.schedule``; epochs of
    ``updates_per_epoch`` updates, default: the whole run is one epoch)."""
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.batch_size % dp:
        raise ValueError(f"global batch {cfg.batch_size} is not divisible by data x fsdp = {dp} devices")
    groups = bn_groups(cfg, mesh)
    parts = state_lib.build_parts(
        cfg.model, {**overrides, "img_size": img_size}, seed=cfg.seed, remat=cfg.remat, bn_groups=groups
    )
    has_bn = any(isinstance(m, BatchNorm) for _, m in nnx.iter_modules(parts.model))
    micro = cfg.batch_size // cfg.grad_accum_steps
    if has_bn and groups > 1 and (cfg.batch_size % cfg.grad_accum_steps or micro % groups):
        raise ValueError(
            f"BatchNorm statistics per device: --batch-size {cfg.batch_size} / --grad-accum-steps "
            f"{cfg.grad_accum_steps} does not give every one of the {groups} data-parallel devices a whole, equal "
            "share; change them, or use --sync-bn"
        )
    lr_fn = schedule.lr_schedule(cfg, total_steps, updates_per_epoch or max(total_steps, 1))
    tx = optim.make_optimizer(
        nnx.to_pure_dict(parts.params),
        opt=cfg.opt,
        lr_schedule=lr_fn,
        weight_decay=cfg.weight_decay,
        betas=cfg.opt_betas,
        eps=cfg.opt_eps,
        momentum=cfg.momentum,
        clip_grad=cfg.clip_grad,
        layer_decay=cfg.layer_decay,
    )
    plateau = schedule.plateau(cfg) if lr_fn is None else None
    sched = schedule.Plateau.encode(plateau.init()) if plateau else {}
    sh = state_lib.shardings(parts, tx, mesh, cfg.sharding, cfg.model_ema_decay > 0, cfg.fsdp_min_size, sched)
    return StepPlan(
        cfg=cfg,
        parts=parts,
        mesh=mesh,
        tx=tx,
        lr_fn=lr_fn,
        shardings=sh,
        img_size=img_size,
        num_classes=parts.model.cfg.num_classes,
        compute_dtype=jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32,
        data_cfg=vitjax.data.resolve_model_data_config(parts.model),
        plateau=plateau,
    )
