"""Ahead-of-time compilation of the training step for a TPU topology, on a machine without a TPU.

``python -m train.aot --model NAME --topology v5e:2x4 --mesh data=..,fsdp=..,tensor=.. --batch-size N
[--precision bf16] [--remat] [--sharding ...] [--find-batch]`` takes every flag of ``python -m train`` (the
same :class:`train.config.TrainConfig`), builds the same train step with the same builders (``train.plan``:
``train.state``, ``train.mesh``, ``train.optim``, ``train.steps``) from abstract parameters, optimizer state and
batch that are never materialised, places them by the same sharding rules on the devices of the TPU topology
(``jax.experimental.topologies.get_topology_desc``), and runs the real TPU compiler (libtpu, the ``tpu`` extra).

The report (:class:`train.aot_report.Report`) gives, per device: argument / output / temporary / code bytes
against the chip's HBM (the step's state is donated, so its output aliases its input), whether it fits and the
headroom; the compiled FLOPs of one step, the step time they take at the chip's bf16 peak and the MFU bound (model
FLOPs, i.e. 3x the forward pass, over the program's FLOPs, which include recomputation under remat); the count and
volume of each collective in the optimised HLO and any host callbacks or transfers inside the step (read from its
text by :mod:`train.aot_hlo`; there should be none); and, for multi-host topologies, the number of hosts and the
batch each process feeds. Exit status 1 when it does not fit.

``--find-batch`` reports the largest global batch that fits, each try one TPU compile (:func:`find_batch`, the
search itself in :mod:`train.aot_search`); ``--table`` prints saved ``--json`` reports as a markdown table.
``--attention fused`` compiles XLA's ``jax.nn.dot_product_attention`` instead of the plain attention form,
vitjax's default on a TPU (the report and the table say which).

jax's default backend stays the CPU (the TPU library serves only its compiler; the host lowers the step to count
its FLOPs): :func:`main` sets ``jax_platforms`` to ``cpu`` unless ``JAX_PLATFORMS`` is set. A program that imports
this module should do the same before its first computation, or jax probes for a TPU.

Chip data (:data:`CHIPS`) are Google's published per-chip figures: bf16 dense peak and HBM capacity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
from flax import nnx
from jax import numpy as jnp

from converters.io import atomic_write
from train import mesh as mesh_lib
from train import state as state_lib
from train.aot_hlo import collectives, host_transfers, oom_bytes, while_loops
from train.aot_report import GiB, Report, format_report, table
from train.aot_search import ResumeError, search_batch
from train.config import TrainConfig, parse_args
from train.plan import StepPlan, make_plan, resolve_img_size
from vitjax.layers.attention import set_fused_attention, use_fused_attention


@dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops: float  # dense bf16 peak per chip, FLOP/s
    hbm: int  # bytes per chip


# topology prefix -> chip (published per-chip figures)
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB),
    "v6e": Chip("TPU v6e", 918e12, 32 * GiB),
}
# v4 and v5p chips have two TensorCores; run as one device per chip ("megacore"), as TPU VMs do by default.
_MEGACORE = ("v4", "v5p")


@dataclass
class Topology:
    name: str
    chip: Chip
    devices: list
    hosts: int
    devices_per_chip: int


# libtpu looks for a TPU VM's environment when it loads and warns at length without it; these quiet it, and its
# single-process lock does not apply: compile-only devices touch no TPU. They are set only while the topology is made
# (TPU_WORKER_HOSTNAMES would make train.loop think it is on a cluster).
_COMPILE_ONLY_ENV = {
    "TPU_ACCELERATOR_TYPE": "v5litepod-4",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_SKIP_MDS_QUERY": "1",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


def topology(name: str) -> Topology:
    """The compile-only devices of a TPU topology such as ``v5e:2x4`` or ``v4:2x2x4``."""
    from jax.experimental import topologies

    kind = name.split(":")[0]
    if kind not in CHIPS:
        raise ValueError(f"unknown TPU generation {kind!r} in {name!r}; known: {sorted(CHIPS)}")
    kwargs = {"chip_config_name": "megacore"} if kind in _MEGACORE else {}
    added = {k: v for k, v in _COMPILE_ONLY_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        devices = list(topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices)
    finally:
        for k in added:
            os.environ.pop(k, None)
    chips = math.prod(int(d) for d in name.split(":")[1].split("x"))
    return Topology(name, CHIPS[kind], devices, len({d.process_index for d in devices}), len(devices) // chips)


def topology_mesh(cfg: TrainConfig, topo: Topology) -> jax.sharding.Mesh:
    """The ``(data, fsdp, tensor)`` mesh of ``train.mesh.make_mesh`` over the topology's devices, in the order
    of ``mesh_utils.create_device_mesh`` (neighbouring chips on the inner axes)."""
    from jax.experimental import mesh_utils

    probe = mesh_lib.make_mesh(cfg.mesh, topo.devices)  # validates the shape, fills in 'data'
    dims = tuple(probe.shape[a] for a in mesh_lib.MESH_AXES)
    try:
        ordered = mesh_utils.create_device_mesh(dims, topo.devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        return probe
    return mesh_lib.make_mesh(cfg.mesh, list(ordered.flat))


@dataclass
class Built:
    """The jitted train step and its abstract, sharded arguments, exactly as ``train.loop.run`` builds them."""

    jitted: object
    args: tuple
    plan: StepPlan  # model parts, mesh, image size, compute dtype
    step: object  # the step function before jax.jit, without the mesh's activation constraints


def program_flops(built: Built) -> float:
    """FLOPs of one step as the program asks for them, globally and with remat's recomputation: XLA's cost
    analysis of the unoptimised, unpartitioned step lowered on the host. (The TPU executable's own count is per
    device and counts each loop body once, and the TPU compiler turns FSDP's gathered matmuls into loops of
    collective-permutes.)"""
    plain = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), built.args)
    cost = jax.jit(built.step).lower(*plain).cost_analysis()
    return float(cost.get("flops", 0.0)) if cost else 0.0


def build(cfg: TrainConfig, topo: Topology, *, total_steps: int) -> Built:
    """The train step of ``python -m train`` for ``cfg`` on ``topo``, with abstract inputs: the same
    :class:`train.plan.StepPlan` (model parts, optimizer, shardings, step, in/out shardings and donation); only
    the data source is left out (the class count is the model's, unless ``--num-classes`` is given)."""
    img_size = resolve_img_size(cfg)
    plan = make_plan(cfg, cfg.model_overrides(), topology_mesh(cfg, topo), img_size=img_size, total_steps=total_steps)
    # the step for the topology pins activations to its mesh; the host-side copy (program FLOPs) cannot
    jitted = plan.jit_train_step(plan.step(plan.constraint()), state_lib.RUN_ONCE if cfg.fast_compile else None)
    b, bsh = cfg.batch_size, plan.batch_sharding
    batch = {
        "image": jax.ShapeDtypeStruct((b, img_size, img_size, 3), jnp.uint8, sharding=bsh),
        "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=bsh),
    }
    return Built(jitted, (plan.abstract_state(), batch), plan, plan.step(None))


def forward_flops(built: Built, batch: int) -> float:
    """FLOPs of one forward pass of the global batch (XLA's cost analysis of the unoptimised HLO, on the host)."""
    parts, dtype = built.plan.parts, built.plan.compute_dtype
    params = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, dtype if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype),
        nnx.to_pure_dict(parts.params),
    )
    stats = nnx.to_pure_dict(parts.batch_stats)

    def fwd(p, s, x):
        return nnx.merge(parts.eval_def, p, s, parts.rest)(x)

    size = built.plan.img_size
    x = jax.ShapeDtypeStruct((batch, size, size, 3), dtype)
    cost = jax.jit(fwd).lower(params, stats, x).cost_analysis()
    return float(cost.get("flops", 0.0)) if cost else 0.0


def settings(cfg: TrainConfig, topo: Topology, mesh: jax.sharding.Mesh) -> dict:
    """The fields of a report that say what was compiled (the batch aside): a search continues only under them."""
    return dict(
        model=cfg.model,
        topology=topo.name,
        mesh=dict(mesh.shape),
        sharding=cfg.sharding,
        precision=cfg.precision,
        remat=cfg.remat,
        fsdp_min_size=cfg.fsdp_min_size,
        attention="fused" if use_fused_attention() else "plain",  # auto is the plain form on a TPU
    )


def compile_report(
    cfg: TrainConfig, topo: Topology, *, total_steps: int = 10000, model_flops: bool = True, hlo_out: str | None = None
) -> Report:
    """Compile the step of ``cfg`` for ``topo`` and report (and write the optimised HLO text to ``hlo_out``). A
    compile that the TPU compiler refuses for lack of HBM (``RESOURCE_EXHAUSTED``) gives a report with
    ``fits=False`` and the compiler's message."""
    built = build(cfg, topo, total_steps=total_steps)
    n = len(topo.devices)
    hbm = topo.chip.hbm // topo.devices_per_chip
    mesh = built.plan.mesh
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    common = dict(
        **settings(cfg, topo, mesh),
        chip=topo.chip.name,
        devices=n,
        hosts=topo.hosts,
        global_batch=cfg.batch_size,
        per_process_batch=cfg.batch_size // topo.hosts,
        per_device_batch=cfg.batch_size // dp,
        hbm_bytes=hbm,
    )
    t0 = time.perf_counter()
    try:
        compiled = built.jitted.lower(*built.args).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        need = oom_bytes(str(e))
        return Report(
            **common,
            argument_bytes=-1,
            output_bytes=-1,
            alias_bytes=-1,
            temp_bytes=need,
            code_bytes=-1,
            total_bytes=need,
            fits=False,
            headroom_bytes=hbm - need if need >= 0 else -1,
            flops_per_device=float("nan"),
            flops_per_step=float("nan"),
            model_flops_per_step=float("nan"),
            step_time_s=float("nan"),
            mfu_bound=float("nan"),
            images_per_s_bound=float("nan"),
            compile_s=time.perf_counter() - t0,
            compiler_error=str(e).splitlines()[0][:300],
        )
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    hlo = compiled.as_text()
    if hlo_out:
        with open(hlo_out, "w") as f:
            f.write(hlo)
    total = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.generated_code_size_in_bytes
    )
    flops_dev = float(cost.get("flops", 0.0))
    peak = topo.chip.bf16_flops / topo.devices_per_chip
    program = program_flops(built) if model_flops else 0.0
    step_time = max(flops_dev, program / n) / peak if peak else float("nan")
    mflops = 3.0 * forward_flops(built, cfg.batch_size) if model_flops else 0.0
    compiled_total = flops_dev * n
    return Report(
        **common,
        argument_bytes=mem.argument_size_in_bytes,
        output_bytes=mem.output_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes,
        code_bytes=mem.generated_code_size_in_bytes,
        total_bytes=total,
        fits=total <= hbm,
        headroom_bytes=hbm - total,
        flops_per_device=flops_dev,
        flops_per_step=compiled_total,
        model_flops_per_step=mflops,
        step_time_s=step_time,
        program_flops_per_step=program,
        loops=while_loops(hlo),
        mfu_bound=min(1.0, mflops / program) if program and mflops else float("nan"),
        images_per_s_bound=cfg.batch_size / step_time if step_time else float("nan"),
        collectives=collectives(hlo),
        host_transfers=host_transfers(hlo),
        compile_s=compile_s,
    )


def find_batch(cfg: TrainConfig, topo: Topology, **options) -> tuple[int, Report]:
    """The largest global batch of ``cfg`` whose step fits on ``topo``, each try one TPU compile: a multiple of
    data x fsdp x grad-accum of the topology's mesh. ``options`` are :func:`train.aot_search.search_batch`'s
    (``limit``, ``granularity``, ``log``, ``progress``, ``resume``); so are the return values."""
    mesh = topology_mesh(cfg, topo)
    unit = mesh.shape["data"] * mesh.shape["fsdp"] * cfg.grad_accum_steps
    return search_batch(
        cfg, lambda c: compile_report(c, topo), unit=unit, settings=settings(cfg, topo, mesh), **options
    )


def _host_backend_cpu() -> None:
    """Keep jax's own backend on the CPU unless ``JAX_PLATFORMS`` says otherwise: with libtpu installed, jax would
    otherwise look for a TPU at its first computation (the host lowers the step to count its FLOPs)."""
    if "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.aot",
        description="Compile the train step of `python -m train` for a TPU topology (no TPU needed) and report "
        "memory, FLOPs and collectives. Every flag of `python -m train` is accepted.",
    )
    p.add_argument("--topology", help="e.g. v5e:2x2, v5e:4x4, v4:2x2x4, v5p:2x2x1 (required unless --table)")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print a markdown table of --json reports and exit")
    p.add_argument("--find-batch", action="store_true", help="report the largest global batch that fits")
    p.add_argument("--max-batch", type=int, default=1 << 16, help="upper limit for --find-batch")
    p.add_argument(
        "--batch-granularity",
        type=int,
        default=0,
        help="--find-batch stops bisecting when the bracket is this narrow (default: data x fsdp x accum)",
    )
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument(
        "--resume",
        action="store_true",
        help="--find-batch: continue the unfinished search whose report is in --json (if that file exists)",
    )
    p.add_argument("--hlo", help="write the compiled (optimised) HLO text of the step to this file")
    p.add_argument(
        "--attention",
        choices=("fused", "plain"),
        default="plain",
        help="attention on the TPU: the plain einsum-softmax-einsum (vitjax's default there) or XLA's "
        "jax.nn.dot_product_attention (fused: vitjax.set_fused_attention(True))",
    )
    ours, rest = p.parse_known_args(argv)
    _host_backend_cpu()
    set_fused_attention(True if ours.attention == "fused" else None)
    if ours.table:
        reports = []
        for path in ours.table:
            with open(path) as f:
                reports.append(json.load(f))
        print(table(reports))
        return 0
    if not ours.topology:
        p.error("--topology is required")
    if not any(a in rest for a in ("--steps", "--epochs")):
        rest += ["--steps", "10000"]  # only the lr schedule depends on it
    cfg = parse_args(rest)
    topo = topology(ours.topology)

    def save(report: Report) -> None:
        if ours.json:
            text = json.dumps(asdict(report), indent=2)
            atomic_write(ours.json, lambda tmp: Path(tmp).write_text(text))

    def progress(_: int, report: Report) -> None:  # the best so far, kept should the search be cut short
        save(dataclasses.replace(report, search_done=False))

    resume = None
    if ours.resume:
        if not (ours.find_batch and ours.json):
            p.error("--resume needs --find-batch and --json")
        if os.path.exists(ours.json):
            with open(ours.json) as f:
                resume = Report(**json.load(f))
    if ours.find_batch:
        print(f"[aot] {cfg.model} on {topo.name}: searching the largest global batch", flush=True)
        try:
            best, report = find_batch(
                cfg,
                topo,
                limit=ours.max_batch,
                granularity=ours.batch_granularity,
                log=lambda s: print(s, flush=True),
                progress=progress,
                resume=resume,
            )
        except ResumeError as e:
            p.error(f"{ours.json}: {e}")
        report = dataclasses.replace(report, search_done=True)  # a resumed best is the report it was read from
        if not best:
            print(f"[aot] {cfg.model} does not fit on {topo.name} even at the smallest batch")
            print(format_report(report))
            return 1
        print(f"[aot] largest global batch that fits: {best}")
    else:
        report = compile_report(cfg, topo, hlo_out=ours.hlo)
    print(format_report(report))
    save(report)
    return 0 if report.fits else 1


if __name__ == "__main__":
    sys.exit(main())
