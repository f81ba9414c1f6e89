"""Learning-rate schedules as timm's ``train.py`` runs them (``timm.scheduler.create_scheduler_v2``).

The schedule is a function of the optimizer update count ``u`` (0-based: the lr the ``u``-th update uses).
timm counts its schedule in ``t`` units: epochs by default (the lr changes at epoch boundaries,
``t = u // updates_per_epoch``), or updates with ``--sched-on-updates`` (``t = u``). In ``t``:

* warmup: ``warmup_lr + t * (lr - warmup_lr) / warmup_t`` for ``t < warmup_t``;
* after it (``t`` less ``warmup_t`` when ``warmup_prefix``): ``cosine`` ``min_lr + (lr - min_lr)(1 + cos(pi t /
  t_initial)) / 2``, ``poly`` ``min_lr + (lr - min_lr)(1 - t / t_initial) ** decay_rate``, both ``min_lr`` from
  ``t_initial`` on (the cooldown); ``step`` ``lr * decay_rate ** (t // decay_t)``; ``multistep`` ``lr *
  decay_rate ** #{milestones m: m <= t + 1}`` (timm's convention); ``constant`` ``lr``.

As in timm, the run lasts ``epochs`` (+ ``warmup_epochs`` with the prefix; + ``cooldown_epochs`` for cosine and
poly) epochs of ``len(train) // batch_size`` updates; with ``--aug-repeats``, an epoch is what timm's
``RepeatAugSampler`` selects (``num_selected`` per process, about ``len(train) // 256 * 256`` over all), in whole
per-process batches, as the length of timm's drop-last loader over that sampler (with ``--grad-accum-steps``, timm
also counts a last partial accumulation; here an update is always ``batch_size`` examples). ``--warmup-steps N`` (a
warmup in updates, as a prefix, with the schedule per update) keeps the meaning it had before the epoch flags
existed.

``plateau`` (timm's ``PlateauLRScheduler``) is not a function of the update: :class:`Plateau` steps it on the
host after each epoch's evaluation, and the run keeps its state in ``TrainState.sched`` (so checkpoints hold it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import optax
from jax import numpy as jnp

from train.checkpoint import metric_mode
from train.config import TrainConfig
from train.sampler import batches_per_epoch


@dataclass(frozen=True)
class Plan:
    """A schedule in timm's ``t`` units, and how updates map onto them."""

    sched: str
    lr: float
    t_initial: float
    updates_per_t: int = 1  # 1: on updates; updates_per_epoch: on epochs
    warmup_t: float = 0.0
    warmup_lr: float = 0.0
    warmup_prefix: bool = False
    min_lr: float = 0.0
    decay_t: float = 90.0
    milestones: tuple[float, ...] = ()
    decay_rate: float = 0.1

    def __call__(self, update):
        """The lr of update ``update`` (0-based), traceable."""
        t = (jnp.asarray(update, jnp.int32) // self.updates_per_t).astype(jnp.float32)
        warm = self.warmup_lr + t * ((self.lr - self.warmup_lr) / max(self.warmup_t, 1e-12))
        s = t - self.warmup_t if self.warmup_prefix else t
        if self.sched == "cosine":
            frac = s / self.t_initial
            after = self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + jnp.cos(math.pi * frac))
            after = jnp.where(s < self.t_initial, after, self.min_lr)
        elif self.sched == "poly":
            frac = jnp.clip(s / self.t_initial, 0.0, 1.0)
            after = self.min_lr + (self.lr - self.min_lr) * (1.0 - frac) ** self.decay_rate
            after = jnp.where(s < self.t_initial, after, self.min_lr)
        elif self.sched == "step":
            after = self.lr * self.decay_rate ** jnp.floor(s / self.decay_t)
        elif self.sched == "multistep":
            n = sum(((s + 1.0) >= m).astype(jnp.float32) for m in self.milestones) if self.milestones else 0.0
            after = self.lr * self.decay_rate**n
        elif self.sched == "constant":
            after = jnp.full_like(t, self.lr)
        else:
            raise ValueError(f"unknown schedule {self.sched!r}")
        return jnp.where(t < self.warmup_t, warm, after) if self.warmup_t else after


class PlateauState(NamedTuple):
    """What timm's plateau scheduler remembers between epochs (torch ``ReduceLROnPlateau``'s fields)."""

    lr: float  # the lr of the coming epoch
    best: float
    num_bad_epochs: int
    cooldown_counter: int


@dataclass(frozen=True)
class Plateau:
    """timm's ``PlateauLRScheduler`` as ``create_scheduler_v2`` builds it: ``warmup_lr + e (lr - warmup_lr) /
    warmup_t`` after epoch ``e <= warmup_t``; after that torch's ``ReduceLROnPlateau`` on the epoch's eval metric
    (``mode`` 'max' or 'min', relative ``threshold`` 1e-4, no cooldown, as timm passes ``cooldown_t=0``): after more
    than ``patience`` epochs without improvement the lr becomes ``max(lr * decay_rate, min_lr)`` (kept when that
    changes it by 1e-8 or less). As in timm the lr after a fractional warmup stays the last warmup value.
    Arithmetic in Python floats (float64), as timm's."""

    lr: float
    decay_rate: float
    patience: int
    mode: str
    warmup_t: float = 0.0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    threshold: float = 1e-4
    cooldown: int = 0
    eps: float = 1e-8

    def init(self) -> PlateauState:
        lr = self.warmup_lr if self.warmup_t else self.lr
        return PlateauState(lr, math.inf if self.mode == "min" else -math.inf, 0, 0)

    def _better(self, a: float, best: float) -> bool:
        return a < best * (1.0 - self.threshold) if self.mode == "min" else a > best * (self.threshold + 1.0)

    def step(self, state: PlateauState, epoch: int, metric: float) -> PlateauState:
        """The state after epoch ``epoch`` (1-based: the epochs done) ended with ``metric``."""
        if epoch <= self.warmup_t:
            return state._replace(lr=self.warmup_lr + epoch * ((self.lr - self.warmup_lr) / self.warmup_t))
        lr, best, bad, cool = state
        if self._better(float(metric), best):
            best, bad = float(metric), 0
        else:
            bad += 1
        if cool > 0:
            cool, bad = cool - 1, 0
        if bad > self.patience:
            new = max(lr * self.decay_rate, self.min_lr)
            lr = new if lr - new > self.eps else lr
            cool, bad = self.cooldown, 0
        return PlateauState(lr, best, bad, cool)

    @staticmethod
    def encode(state: PlateauState) -> dict[str, np.ndarray]:
        """``TrainState.sched``: the lr the step uses (float32), and the state as float64 bits (uint32 pairs:
        exact across a checkpoint without 64-bit JAX)."""
        bits = np.asarray([float(v) for v in state], np.float64).view(np.uint32)
        return {"lr": np.float32(state.lr), "plateau": bits}

    @staticmethod
    def decode(sched: dict) -> PlateauState:
        lr, best, bad, cool = np.asarray(sched["plateau"], np.uint32).view(np.float64).tolist()
        return PlateauState(lr, best, int(bad), int(cool))


def plateau(cfg: TrainConfig) -> Plateau:
    """The plateau schedule of ``cfg`` (``--sched plateau``), metric direction from ``--eval-metric``."""
    return Plateau(
        lr=cfg.lr,
        decay_rate=cfg.decay_rate,
        patience=cfg.patience_epochs,
        mode=metric_mode(cfg.eval_metric),
        warmup_t=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
    )


def warmup_prefix(cfg: TrainConfig) -> bool:
    return cfg.warmup_prefix if cfg.warmup_prefix is not None else cfg.warmup_steps > 0


def on_updates(cfg: TrainConfig) -> bool:
    if cfg.sched == "plateau":
        return False
    if cfg.sched_on_updates is not None:
        return cfg.sched_on_updates
    return cfg.steps is not None or cfg.warmup_steps > 0


def updates_per_epoch(cfg: TrainConfig, num_train: int, num_replicas: int = 1) -> int:
    """Updates in one epoch (timm: the batches of its drop-last loader). Without ``--aug-repeats`` a pass over
    the training set; with it, the batches of ``batch_size / num_replicas`` in a rank's share of what the
    repeated-augmentation sampler selects (``num_replicas``: the ranks, one per process here)."""
    if cfg.aug_repeats:
        if cfg.batch_size % num_replicas:
            raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by {num_replicas} processes")
        b = cfg.batch_size // num_replicas
        return max(batches_per_epoch(num_train, cfg.aug_repeats, num_replicas, b), 1)
    return max(num_train // cfg.batch_size, 1)


def total_steps(cfg: TrainConfig, num_train: int, num_replicas: int = 1) -> int:
    """``--steps``, else timm's number of epochs (with the warmup prefix and the cooldown) in updates."""
    if cfg.steps is not None:
        return cfg.steps
    # timm adds the cooldown to the run only for the schedules with cycles (cosine, poly); step, multistep and
    # constant runs last --epochs (create_scheduler_v2's num_epochs)
    cooldown = cfg.cooldown_epochs if cfg.sched in ("cosine", "poly") else 0.0
    epochs = cfg.epochs + (cfg.warmup_epochs if warmup_prefix(cfg) else 0.0) + cooldown
    return math.ceil(epochs * updates_per_epoch(cfg, num_train, num_replicas))


def plan(cfg: TrainConfig, total: int, upe: int) -> Plan:
    """The schedule of ``cfg`` for a run of ``total`` updates, ``upe`` updates per epoch."""
    if cfg.warmup_steps and cfg.warmup_epochs:
        raise ValueError("give --warmup-steps or --warmup-epochs, not both")
    prefix, per_update = warmup_prefix(cfg), on_updates(cfg)
    if cfg.warmup_steps and not per_update:
        raise ValueError("--warmup-steps counts updates: it needs the schedule on updates (--sched-on-updates)")
    unit = 1 if per_update else upe  # updates per t
    warm = cfg.warmup_steps if cfg.warmup_steps else cfg.warmup_epochs * (upe if per_update else 1)
    cooldown = cfg.cooldown_epochs * (upe if per_update else 1)
    if cfg.steps is None:
        t_initial = cfg.epochs * (upe if per_update else 1)
    else:  # the schedule ends where the run does (less the cooldown)
        t_initial = total / unit - (warm if prefix else 0.0) - cooldown
    scale = upe if per_update else 1
    return Plan(
        sched=cfg.sched,
        lr=cfg.lr,
        t_initial=max(t_initial, 1e-12),
        updates_per_t=unit,
        warmup_t=warm,
        warmup_lr=cfg.warmup_lr,
        warmup_prefix=prefix,
        min_lr=cfg.min_lr,
        decay_t=cfg.decay_epochs * scale,
        milestones=tuple(m * scale for m in cfg.decay_milestones),
        decay_rate=cfg.decay_rate,
    )


def lr_schedule(cfg: TrainConfig, total: int, upe: int) -> optax.Schedule | None:
    """The lr as a function of the update; None for ``plateau``, whose lr is in the train state."""
    if cfg.sched == "plateau":
        return None
    return plan(cfg, total, upe)
