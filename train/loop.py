"""The training loop: the only impure module (devices, files, signals, clocks).

``run(cfg)`` builds the mesh, the sharded state (restored from the newest readable checkpoint when the workdir
has one), the jitted step with explicit shardings and the state donated, then steps, logs, evaluates and
checkpoints. The same code runs on one CPU, on fake CPU devices, on several processes and on a TPU pod.

Preemption: SIGTERM makes the loop save a checkpoint at the current step and return (``preempted=True``).
A run killed outright restarts from its newest checkpoint with the same command and reproduces, bit for bit
on CPU, the losses of an uninterrupted run: the data stream is a function of the step, the step's RNG is the
run's key folded with the step, and the state is restored exactly.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax import numpy as jnp

import vitjax
from converters.runs import write_model_file
from train import data as data_lib
from train import mesh as mesh_lib
from train import schedule as schedule_lib
from train import state as state_lib
from train.checkpoint import BestKeeper, Checkpointer
from train.config import TrainConfig
from train.metrics import MetricsWriter, Progress, plot_curves
from train.plan import make_plan, resolve_img_size
from train.steps import make_eval_step
from vitjax.xla_cpu import compiler_options

_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


class NonFiniteError(FloatingPointError):
    """The loss or the gradients became NaN/inf (the weights were not updated by that step)."""


@dataclass
class RunResult:
    state: state_lib.TrainState
    parts: state_lib.ModelParts
    mesh: jax.sharding.Mesh
    steps_done: int
    total_steps: int
    mean: tuple[float, ...] = ()  # the normalisation the model was trained with
    std: tuple[float, ...] = ()
    preempted: bool = False
    final_eval: dict[str, float] = field(default_factory=dict)
    skipped_steps: list[int] = field(default_factory=list)

    def model(self, ema: bool = False) -> nnx.Module:
        """The trained model (eval mode) with host copies of the weights (raw or EMA)."""
        src = self.state.ema if ema else {"params": self.state.params, "batch_stats": self.state.batch_stats}
        host = gather(src)
        return state_lib.model_from(self.parts, host["params"], host["batch_stats"])


def init_distributed(cfg: TrainConfig) -> None:
    """``jax.distributed.initialize`` from the flags, or its own auto-detection on a known cluster."""
    explicit = cfg.coordinator_address is not None or (cfg.num_processes or 1) > 1
    if not explicit and not any(os.environ.get(k) for k in _CLUSTER_ENV):
        return
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by CPU backends
    if explicit:
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    else:
        jax.distributed.initialize()


def gather(tree: Any) -> Any:
    """Host numpy copies of (possibly sharded, possibly multi-process) arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _scalar(x: jax.Array) -> float:
    return float(np.asarray(x.addressable_data(0)))


def load_pretrained(cfg: TrainConfig, overrides: dict, sh: state_lib.TrainState) -> tuple[tuple[dict, dict], Any]:
    """Weights from ``--pretrained`` (``create_model``'s loading path: any checkpoint it takes, or a run
    directory), adapted to this run's size and classes, placed into their shardings; and the load report."""
    from train.runs import load_weights

    model = vitjax.create_model(cfg.model, seed=cfg.seed, abstract=True, **overrides)
    spec = True if cfg.pretrained in ("True", "true") else cfg.pretrained
    report = load_weights(
        model,
        spec,
        ema=cfg.pretrained_ema,
        init=lambda: vitjax.create_model(cfg.model, seed=cfg.seed, **overrides),
    )
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    # host copies, so that every process places its own shards of the (replicated-on-host) weights
    host = jax.device_get((params, stats))
    return jax.device_put(host, (sh.params, sh.batch_stats)), report


def _overrides(cfg: TrainConfig, num_classes: int) -> dict:
    """``create_model`` overrides: the flags', the dataset's class count unless given."""
    out = cfg.model_overrides()
    out.setdefault("num_classes", num_classes)
    return out


class _Signals:
    """SIGTERM (and SIGINT) set a flag that the loop reads between steps."""

    def __init__(self):
        self.stop = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, _frame):
        self.stop = True

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def agreed(self) -> bool:
        """True on every process as soon as one process was signalled."""
        if jax.process_count() == 1:
            return self.stop
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([int(self.stop)], np.int32))
        return bool(np.asarray(flags).any())


def run(cfg: TrainConfig, *, devices: list | None = None) -> RunResult:
    init_distributed(cfg)
    pid, nproc = jax.process_index(), jax.process_count()
    main = pid == 0
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = (lambda text: print(text, file=sys.stderr, flush=True)) if main else (lambda text: None)

    img_size = resolve_img_size(cfg)
    data = data_lib.load_dataset(cfg.data, img_size)
    total = schedule_lib.total_steps(cfg, len(data.train), nproc)
    upe = schedule_lib.updates_per_epoch(cfg, len(data.train), nproc)
    overrides = _overrides(cfg, data.num_classes)
    overrides["img_size"] = img_size
    plan = make_plan(
        cfg,
        overrides,
        mesh_lib.make_mesh(cfg.mesh, devices),
        img_size=img_size,
        total_steps=total,
        updates_per_epoch=upe,
    )
    parts, mesh, tx, sh, num_classes = plan.parts, plan.mesh, plan.tx, plan.shardings, plan.num_classes
    use_ema = cfg.model_ema_decay > 0
    ckpt = Checkpointer(workdir / "ckpt", cfg.keep_ckpts, lock=main)
    try:
        if cfg.eval_metric.endswith("_ema") and not use_ema:
            raise ValueError(f"--eval-metric {cfg.eval_metric} needs EMA weights (--model-ema-decay)")
        best = BestKeeper(workdir / "best", cfg.keep_best, cfg.eval_metric) if cfg.keep_best else None
        restored = ckpt.restore_latest(plan.abstract_state())
    except BaseException:
        ckpt.close()
        raise
    if restored is not None:
        start, st, data_state = restored
        log(f"[train] resumed from step {start} ({ckpt.directory})")
    else:
        weights = None
        if cfg.pretrained:
            weights, report = load_pretrained(cfg, overrides, sh)
            for line in report.lines():
                log(f"[train] {line}")
        st = state_lib.init_state(cfg.model, overrides, tx, sh, seed=cfg.seed, weights=weights)
        start, data_state = 0, None
    if main:
        (workdir / "config.json").write_text(cfg.to_json())
        write_model_file(workdir, cfg.model, overrides)
        n_params = state_lib.param_count(parts)
        log(
            f"[train] {cfg.model}: {n_params / 1e6:.2f}M params, img {img_size}, {num_classes} classes; "
            f"mesh {dict(mesh.shape)} over {len(mesh.devices.flat)} devices / {nproc} processes; "
            f"{total} steps of {cfg.batch_size} ({cfg.precision}, {cfg.opt})"
        )

    bad_images = data_lib.BadImages() if cfg.skip_bad_images else None
    host_iter = iter(
        data_lib.train_batches(
            data,
            img_size=img_size,
            global_batch=cfg.batch_size,
            steps=total,
            seed=cfg.seed,
            augment=data_lib.train_augment(cfg, data, img_size, plan.mean, plan.std),
            aug_repeats=cfg.aug_repeats,
            process_index=pid,
            process_count=nproc,
            workers=cfg.workers,
            threads=cfg.data_workers,
            bad_images=bad_images,
        )
    )
    if data_state is not None:
        host_iter.set_state(data_state)
    bsh = plan.batch_sharding

    def to_device(local: dict, keys=("image", "label")) -> dict:
        return {k: jax.make_array_from_process_local_data(bsh, local[k]) for k in keys}

    train_iter = data_lib.DevicePrefetch(host_iter, to_device)  # batches copied to the devices ahead of the step

    mean, std = plan.mean, plan.std
    constrain = plan.constraint()  # activations split over the batch axes
    rep = mesh_lib.replicated(mesh)
    # on the CPU, the options that keep the backward pass linear in depth (vitjax.xla_cpu)
    xla = {
        **(compiler_options(mesh.devices.flat[0].platform) or {}),
        **(state_lib.RUN_ONCE if cfg.fast_compile else {}),
    }
    train_step = plan.jit_train_step(plan.step(constrain), xla)
    eval_fn = jax.jit(
        make_eval_step(
            parts.eval_def,
            parts.rest,
            mean=mean,
            std=std,
            compute_dtype=plan.compute_dtype,
            constrain=constrain,
        ),
        in_shardings=(sh.params, sh.batch_stats, {"image": bsh, "label": bsh, "valid": bsh}),
        out_shardings=rep,
        compiler_options=xla or None,
    )
    eval_data = data_lib.eval_batches(
        data,
        img_size=img_size,
        global_batch=cfg.eval_batch_size or cfg.batch_size,
        process_index=pid,
        process_count=nproc,
        crop_pct=cfg.crop_pct or plan.data_cfg["crop_pct"],
        interpolation=plan.data_cfg["interpolation"],
        bad_images=bad_images,
        workers=cfg.workers,
        threads=cfg.data_workers,
    )

    def evaluate(state) -> dict[str, float]:
        """Raw and EMA weights on each validation batch as it arrives: the images are decoded once."""
        sets = {"": (state.params, state.batch_stats)}
        if use_ema:
            sets["_ema"] = (state.ema["params"], state.ema["batch_stats"])
        sums = dict.fromkeys(sets)
        batches = data_lib.DevicePrefetch(iter(eval_data), lambda b: to_device(b, ("image", "label", "valid")))
        try:
            for b in batches:
                for suffix, (p, s) in sets.items():
                    r = eval_fn(p, s, b)
                    sums[suffix] = r if sums[suffix] is None else jax.tree.map(jnp.add, sums[suffix], r)
        finally:
            batches.close()
        out = {}
        for suffix, acc in sums.items():
            n = _scalar(acc["count"])
            out |= {
                f"top1{suffix}": 100.0 * _scalar(acc["top1"]) / n,
                f"top5{suffix}": 100.0 * _scalar(acc["top5"]) / n,
                f"eval_loss{suffix}": _scalar(acc["loss"]) / n,
            }
        return out

    writer = MetricsWriter(workdir, enabled=main, resume_step=start)
    progress = Progress(total, start, enabled=main and cfg.progress)
    signals = _Signals()
    result = RunResult(st, parts, mesh, start, total, mean=mean, std=std)
    pending: list[tuple[int, dict]] = []
    t_mark, n_mark = time.perf_counter(), start
    waited = 0.0  # seconds of the logging interval spent waiting for the next batch
    step = start
    try:
        while step < total:
            t_wait = time.perf_counter()
            batch = next(train_iter)
            waited += time.perf_counter() - t_wait
            st, metrics = train_step(st, batch)
            step += 1
            pending.append((step, metrics))
            last = step == total
            stop = False
            if step % cfg.log_every == 0 or last or (nproc == 1 and signals.stop):
                host = [(s, {k: _scalar(v) for k, v in m.items()}) for s, m in pending]
                pending.clear()
                now = time.perf_counter()
                ips = (step - n_mark) * cfg.batch_size / max(now - t_mark, 1e-9)
                data_wait = min(waited / max(now - t_mark, 1e-9), 1.0)
                t_mark, n_mark, waited = now, step, 0.0
                for s, m in host:
                    if not m["finite"]:
                        if cfg.nan_policy == "stop":
                            raise NonFiniteError(
                                f"non-finite loss or gradient at step {s} (loss={m['loss']}, "
                                f"grad_norm={m['grad_norm']}); the weights were not updated by it"
                            )
                        result.skipped_steps.append(s)
                        progress.write(f"[train] step {s}: non-finite loss/gradient, update skipped")
                s, m = host[-1]
                rec = {
                    "kind": "train",
                    "step": s,
                    "loss": m["loss"],
                    "lr": m["lr"],
                    "grad_norm": m["grad_norm"],
                    "images_per_sec": ips,
                    "data_wait": data_wait,  # the share of the interval spent waiting for input
                }
                writer.write(rec)
                progress.update(len(host), loss=f"{m['loss']:.4f}", img_s=f"{ips:.0f}", wait=f"{data_wait:.0%}")
                stop = signals.agreed()
            if cfg.eval_every and step % cfg.eval_every == 0 and not last:
                ev = evaluate(st)
                writer.write({"kind": "eval", "step": step, **ev})
                if best is not None:
                    best.save(step, st, ev)
                progress.write(f"[eval] step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in ev.items()))
            if stop:
                ckpt.save(step, st, train_iter.get_state(), force=True)
                ckpt.wait()
                log(f"[train] signal received: checkpoint saved at step {step}; exiting")
                result.preempted = True
                break
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 or last:
                ckpt.save(step, st, train_iter.get_state(), force=True)
        if not result.preempted:
            ev = evaluate(st)
            writer.write({"kind": "eval", "step": step, **ev})
            if best is not None:
                best.save(step, st, ev)
            result.final_eval = ev
            log("[eval] final: " + ", ".join(f"{k} {v:.2f}" for k, v in ev.items()))
    finally:
        train_iter.close()  # stops the data worker processes
        progress.close()
        ckpt.close()
        if best is not None:
            best.close()
        signals.restore()
        writer.close()
    if bad_images is not None and bad_images.count:
        which = f"{len(bad_images.errors)} unreadable images" if bad_images.errors else "unreadable images"
        log(f"[data] skipped {bad_images.count} reads of {which} (each named above, where it was first met)")
    if main and not result.preempted:
        plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
    result.state, result.steps_done = st, step
    return result
