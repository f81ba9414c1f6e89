"""Ahead-of-time compilation of the training step for a TPU topology, on a machine without a TPU.

``python -m train.aot --model NAME --topology v5e:2x4 --mesh data=..,fsdp=..,tensor=.. --batch-size N
[--precision bf16] [--remat] [--sharding ...] [--find-batch]`` takes every flag of ``python -m train`` (the
same :class:`train.config.TrainConfig`), builds the same train step with the same builders (``train.state``,
``train.mesh``, ``train.optim``, ``train.steps``) from abstract parameters, optimizer state and batch that are
never materialised, places them by the same sharding rules on the devices of the TPU topology
(``jax.experimental.topologies.get_topology_desc``), and runs the real TPU compiler (libtpu, the ``tpu`` extra).

The report gives, per device: argument / output / temporary / code bytes against the chip's HBM (the step's
state is donated, so its output aliases its input), whether it fits and the headroom; the compiled FLOPs of one
step, the step time they take at the chip's bf16 peak and the MFU bound (model FLOPs, i.e. 3x the forward pass,
over compiled FLOPs, which include recomputation under remat); the count and volume of each collective in the
optimised HLO; host callbacks or host transfers inside the step (there should be none); and, for multi-host
topologies, the number of hosts and the batch each process feeds. Exit status 1 when it does not fit.

``--find-batch`` reports the largest global batch that fits, searching from ``--batch-size`` along the (nearly
affine) memory-versus-batch line of the compiles so far; each try is one TPU compile (see :func:`find_batch`).

Chip data (:data:`CHIPS`) are Google's published per-chip figures: bf16 dense peak and HBM capacity.
"""

from __future__ import annotations

import os

# the default backend stays the CPU (the TPU library is only used for its compiler), and libtpu's
# single-process lock does not apply: compile-only topologies do not touch any device.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
from flax import nnx  # noqa: E402
from jax import numpy as jnp  # noqa: E402

from converters.io import atomic_write  # noqa: E402
from train import mesh as mesh_lib  # noqa: E402
from train import state as state_lib  # noqa: E402
from train.config import TrainConfig, parse_args  # noqa: E402
from train.plan import StepPlan, make_plan, resolve_img_size  # noqa: E402

GiB = 1024**3


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
# --find-batch aims its guesses a little under the HBM: the compiler's memory is not exactly affine in the batch
# (its scheduling and fusion change with the shapes), and v5e refuses programs above 15.75 of 16 GiB.
AIM = 0.97

_MEGACORE = ("v4", "v5p")

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4}
_DTYPE_BYTES |= {"f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 1, "u4": 1}
_OP = re.compile(
    r"=\s*(?P<type>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(",
)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) \(.*\) -> (?P<result>.*) \{$")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
# anything that would move data between the device and the host inside the step
_HOST = re.compile(
    r"\b(send|recv|send-done|recv-done|infeed|outfeed)\(|custom_call_target=\"[^\"]*(callback|host)[^\"]*\"",
    re.IGNORECASE,
)


@dataclass
class Topology:
    name: str
    chip: Chip
    devices: list
    hosts: int
    devices_per_chip: int


# libtpu looks for a TPU VM's environment when it loads and warns at length without it; these quiet it. They
# are set only while the topology is made (TPU_WORKER_HOSTNAMES would make train.loop think it is on a cluster).
_QUIET = {"TPU_ACCELERATOR_TYPE": "v5litepod-4", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_SKIP_MDS_QUERY": "1"}


def topology(name: str) -> Topology:
    """The compile-only devices of a TPU topology such as ``v5e:2x4`` or ``v4:2x2x4``."""
    from jax.experimental import topologies

    kind = name.split(":")[0]
    if kind not in CHIPS:
        raise ValueError(f"unknown TPU generation {kind!r} in {name!r}; known: {sorted(CHIPS)}")
    kwargs = {"chip_config_name": "megacore"} if kind in _MEGACORE else {}
    added = {k: v for k, v in _QUIET.items() if k not in os.environ}
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


def _type_bytes(text: str, arrays_only: bool = False) -> list[int]:
    """Bytes of each array in an HLO type (a tuple gives several); ``arrays_only`` leaves out scalars."""
    out = []
    for dtype, dims in _ARRAY.findall(text):
        if arrays_only and not dims:
            continue
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        out.append(n * _DTYPE_BYTES.get(dtype, 4))
    return out


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """``{op: {"count": n, "bytes": result bytes per device}}`` for each collective of the optimised HLO text.

    Async ``*-start`` ops count once (their result tuple holds the operands, then the results, then scalar
    context such as a collective-permute's u32 sync flags, which is left out). The TPU compiler
    writes a reduce-scatter as an all-reduce fused with a dynamic slice, in a computation named
    ``all-reduce-scatter*``: that counts as one reduce-scatter with the computation's (sliced) result. Ops inside
    a loop body (gradient accumulation) are counted once."""
    out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    in_rs = False
    for line in hlo.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            in_rs = head["name"].startswith("all-reduce-scatter")
            if in_rs:
                out["reduce-scatter"]["count"] += 1
                out["reduce-scatter"]["bytes"] += sum(_type_bytes(head["result"]))
            continue
        m = _OP.search(line)
        if not m or (in_rs and m["op"] == "all-reduce"):
            continue
        sizes = _type_bytes(m["type"], arrays_only=bool(m["start"]))
        if m["start"] and m["op"] in ("all-gather", "collective-permute", "all-to-all") and len(sizes) > 1:
            sizes = sizes[len(sizes) // 2 :]
        out[m["op"]]["count"] += 1
        out[m["op"]]["bytes"] += sum(sizes)
    return out


def host_transfers(hlo: str) -> list[str]:
    """The HLO lines that would call back to or transfer with the host."""
    return [line.strip()[:160] for line in hlo.splitlines() if _HOST.search(line)]


@dataclass
class Report:
    model: str
    topology: str
    chip: str
    devices: int
    hosts: int
    mesh: dict
    sharding: str
    precision: str
    remat: bool
    global_batch: int
    per_process_batch: int
    per_device_batch: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    total_bytes: int
    hbm_bytes: int
    fits: bool
    headroom_bytes: int
    flops_per_device: float
    flops_per_step: float
    model_flops_per_step: float
    step_time_s: float
    mfu_bound: float
    images_per_s_bound: float
    collectives: dict = field(default_factory=dict)
    host_transfers: list = field(default_factory=list)
    compile_s: float = 0.0
    compiler_error: str = ""  # the TPU compiler's out-of-memory message, when it refused the program
    program_flops_per_step: float = float("nan")  # the unoptimised step's FLOPs (global; remat included)
    loops: int = 0  # while loops in the optimised HLO (their bodies count once in the compiled FLOPs)
    search: list = field(default_factory=list)  # --find-batch: [global batch, bytes per device, fits] per compile
    fsdp_min_size: int = 0  # parameters with fewer elements were not split over fsdp
    search_done: bool = True  # False in the --json file that --find-batch rewrites after each compile


def _settings(cfg: TrainConfig, topo: Topology, mesh: jax.sharding.Mesh) -> dict:
    """The fields of a report that say what was compiled (the batch aside): a search continues only under them."""
    return dict(
        model=cfg.model,
        topology=topo.name,
        mesh=dict(mesh.shape),
        sharding=cfg.sharding,
        precision=cfg.precision,
        remat=cfg.remat,
        fsdp_min_size=cfg.fsdp_min_size,
    )


def _oom_bytes(message: str) -> int:
    """The memory the TPU compiler said it needed, from its out-of-memory error (-1 when not stated)."""
    m = re.search(r"required for [^(]*\((?P<n>[\d.]+)(?P<u>[KMGT])\)", message)
    if not m:
        return -1
    return int(float(m["n"]) * 1024 ** "KMGT".index(m["u"]) * 1024)


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
        **_settings(cfg, topo, mesh),
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
        need = _oom_bytes(str(e))
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
        loops=len(re.findall(r"\bwhile\(", hlo)),
        mfu_bound=min(1.0, mflops / program) if program and mflops else float("nan"),
        images_per_s_bound=cfg.batch_size / step_time if step_time else float("nan"),
        collectives=collectives(hlo),
        host_transfers=host_transfers(hlo),
        compile_s=compile_s,
    )


def _gib(b: float) -> str:
    return f"{b / GiB:.2f} GiB"


def _min_size(r: Report) -> str:
    return f" (fsdp splits parameters of >= {r.fsdp_min_size} elements)" if r.fsdp_min_size else ""


def format_report(r: Report) -> str:
    if r.compiler_error:
        return "\n".join(
            [
                f"{r.model} on {r.topology} ({r.devices} x {r.chip} device(s), {r.hosts} host(s)); mesh {r.mesh}, "
                f"sharding {r.sharding}{_min_size(r)}, {r.precision}{', remat' if r.remat else ''}, "
                f"global batch {r.global_batch}",
                f"  DOES NOT FIT: the TPU compiler needs {_gib(r.total_bytes)} per device for temporaries alone, "
                f"the chip has {_gib(r.hbm_bytes)}",
                f"  compiler: {r.compiler_error}",
            ]
        )
    lines = [
        f"{r.model} on {r.topology} ({r.devices} x {r.chip} device(s), {r.hosts} host(s)); mesh {r.mesh}, "
        f"sharding {r.sharding}{_min_size(r)}, {r.precision}{', remat' if r.remat else ''}",
        f"  batch: global {r.global_batch}, per process {r.per_process_batch} (x{r.hosts} hosts), "
        f"per data-parallel device {r.per_device_batch}",
        "  memory per device: "
        f"arguments {_gib(r.argument_bytes)}, outputs {_gib(r.output_bytes)} (aliased {_gib(r.alias_bytes)}), "
        f"temporaries {_gib(r.temp_bytes)}, code {_gib(r.code_bytes)}",
        f"  total {_gib(r.total_bytes)} of {_gib(r.hbm_bytes)} HBM: "
        + (
            f"FITS, headroom {_gib(r.headroom_bytes)}"
            if r.fits
            else f"DOES NOT FIT, short by {_gib(-r.headroom_bytes)}"
        ),
        f"  compute: program {r.program_flops_per_step / 1e12:.3f} TFLOP per step (remat included), "
        f"model {r.model_flops_per_step / 1e12:.2f} TFLOP (3x forward); compiled "
        f"{r.flops_per_device / 1e12:.4f} TFLOP per device ({r.loops} loops, their bodies counted once)",
        f"  at bf16 peak: step >= {r.step_time_s * 1e3:.1f} ms, <= {r.images_per_s_bound:.0f} img/s, "
        f"MFU bound {r.mfu_bound:.1%}",
        "  collectives per step (per device): "
        + ", ".join(f"{k} {v['count']} x / {v['bytes'] / 2**20:.1f} MiB" for k, v in r.collectives.items()),
        f"  host callbacks / transfers in the step: {len(r.host_transfers)}",
        f"  compile time {r.compile_s:.1f} s",
    ]
    lines += [f"    {h}" for h in r.host_transfers[:5]]
    return "\n".join(lines)


def find_batch(
    cfg: TrainConfig,
    topo: Topology,
    *,
    limit: int = 1 << 16,
    granularity: int = 0,
    log=print,
    progress: Callable[[int, Report], None] | None = None,
    resume: Report | None = None,
) -> tuple[int, Report]:
    """The largest global batch that fits, a multiple of data x fsdp x grad-accum (the unit), searched with few
    compiles (each takes minutes for a real model). Per-device memory is roughly affine in the batch (parameter
    and optimizer shards plus activations per example), so the next batch tried is where the line through the two
    latest compiles that fit meets ``AIM`` of the HBM (the first guess scales ``--batch-size`` by HBM / memory). A
    guess inside a bracket keeps a quarter of it on each side; a guess at or below the largest that fits aims at
    the full HBM, else tries the next batch. The TPU compiler's memory scatters by a few percent around the line
    (its scheduling changes with the shapes), so after four guesses the search gallops up from the largest batch
    that fits (when no batch has failed yet) and bisects, which ends whatever the memory does. It stops when the
    bracket between the largest batch that fits and the smallest that does not is no wider than ``granularity``
    examples (default: one unit), or at ``limit``. Returns the batch (0 when not even one unit fits) and the
    report of the largest batch that fits (else the smallest tried); ``progress`` gets the same pair after every
    compile, so that a search cut short still leaves its best result. ``resume`` (such a report of a batch that
    fits, for the same model, topology, mesh and options) continues that search from its compiles, or returns it
    when that search was complete."""
    probe = topology_mesh(cfg, topo)
    unit = probe.shape["data"] * probe.shape["fsdp"] * cfg.grad_accum_steps
    step = max(1, -(-granularity // unit)) if granularity else 1
    top = max(1, limit // unit)  # the largest multiple of the unit allowed
    tried: dict[int, Report] = {}

    def compile_at(k: int) -> Report:
        r = compile_report(dataclasses.replace(cfg, batch_size=k * unit), topo)
        tried[k] = r
        need = _gib(r.total_bytes) if r.total_bytes >= 0 else "refused by the compiler (no size stated)"
        log(f"  batch {k * unit}: {need} of {_gib(r.hbm_bytes)} -> {'fits' if r.fits else 'no'}")
        return r

    def guess(lo: int, hi: int, aim: float) -> int:
        """Where memory reaches ``aim`` of the HBM on the line through the two latest compiles that fit (else the
        two latest that state their memory; an out-of-memory refusal states only what the compiler wanted)."""
        known = [(k, r.total_bytes, r.hbm_bytes * aim) for k, r in tried.items() if r.total_bytes > 0]
        fitting = [p for p in known if tried[p[0]].fits]
        known = fitting if len(fitting) >= 2 else known
        if not known:
            return 2 * lo if lo else hi // 2
        if len(known) == 1:
            k, total, target = known[0]
            return int(k * target / total)
        (k0, t0, target), (k1, t1, _) = known[-2:]
        slope = (t1 - t0) / (k1 - k0)
        if slope <= 0:
            return 2 * lo if lo else hi // 2
        return int(k1 + (target - t1) / slope)

    def result() -> tuple[int, Report]:
        best = tried[lo] if lo else tried[min(tried)]
        best.search = [[k * unit, r.total_bytes, r.fits] for k, r in tried.items()]
        return lo * unit, best

    def next_k() -> int:
        nonlocal secant, gallop
        if secant > 0:
            secant -= 1
            k = guess(lo, hi, AIM)
            if k <= lo:  # aiming at the full HBM, else the next batch, to close the bracket
                k = max(guess(lo, hi, 1.0), lo + step)
            elif hi <= top and lo:  # inside a bracket: keep a quarter of it on each side, so it shrinks anyway
                margin = max(1, (hi - lo) // 4)
                k = min(max(k, lo + margin), hi - margin)
            return max(lo + 1, min(k, hi - 1))
        if hi <= top:
            return (lo + hi) // 2
        gallop += 1  # no upper bound yet: gallop up from the largest that fits
        return min(top, lo + step * 2 ** (gallop - 1))

    def done() -> bool:
        return hi - lo <= (step if lo else 1)

    lo, hi = 0, top + 1  # largest k known to fit, smallest known not to (top + 1: beyond the limit)
    secant, gallop = 4, 0
    if resume is None:
        k = min(top, max(1, cfg.batch_size // unit))
    else:
        _check_resumable(resume, cfg, topo, probe)
        for batch, total, fits in resume.search:
            tried[batch // unit] = (
                resume
                if batch == resume.global_batch
                else dataclasses.replace(resume, global_batch=batch, total_bytes=total, fits=fits)
            )  # a stand-in that carries only what the search reads: memory and fit
        lo = resume.global_batch // unit
        hi = min((k for k, r in tried.items() if not r.fits and k > lo), default=top + 1)
        secant = max(0, secant + 1 - len(tried))  # the first compile was not a guess
        log(f"  resuming from {len(tried)} compiles: {lo * unit} fits, {hi * unit if hi <= top else '-'} does not")
        if done() or resume.search_done:  # a complete search is only reported again
            return result()
        k = next_k()
    while True:
        if compile_at(k).fits:
            lo = k
        else:
            hi = k
        if progress:
            progress(*result())
        if done():
            break
        k = next_k()
    return result()


class ResumeError(ValueError):
    """A --find-batch report that cannot be continued with these settings."""


def _check_resumable(r: Report, cfg: TrainConfig, topo: Topology, mesh: jax.sharding.Mesh) -> None:
    """A search is resumed only from a batch that fits, compiled for the same model, topology, mesh and options."""
    want = _settings(cfg, topo, mesh)
    have = {key: getattr(r, key) for key in want}
    if have != want:
        diff = ", ".join(f"{key} {have[key]!r} (now {want[key]!r})" for key in want if have[key] != want[key])
        raise ResumeError(f"cannot resume a search made with other settings: {diff}")
    if not r.fits or not r.search:
        raise ResumeError("cannot resume: the report is not of a batch that fits, with its search")


def table(reports: list[dict]) -> str:
    """A markdown table of ``--find-batch`` reports (their ``--json`` files), one row each."""
    lines = [
        "| model | topology | hosts | mesh | global batch that fits (per chip) | smallest that does not | memory/chip "
        "| FLOPs/step (remat incl.) | step at bf16 peak | MFU bound |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        fails = sorted(b for b, _, fits in r.get("search", []) if not fits and b > r["global_batch"])
        mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items() if v > 1)
        if r.get("fsdp_min_size"):  # --fsdp-min-size: smaller parameters are whole on every device
            mesh += f" (params >= {r['fsdp_min_size']})"
        unfinished = "" if r.get("search_done", True) else ", search unfinished"
        lines.append(
            f"| {r['model']} | {r['topology']} ({r['devices']} x {r['chip']}) | {r['hosts']} | {mesh} "
            f"| {r['global_batch']} ({r['per_device_batch']}{unfinished}) | {fails[0] if fails else '-'} "
            f"| {r['total_bytes'] / GiB:.2f} of {r['hbm_bytes'] / GiB:.0f} GiB "
            f"| {r.get('program_flops_per_step', math.nan) / 1e12:.1f} TFLOP | {r['step_time_s'] * 1e3:.0f} ms "
            f"| {r['mfu_bound']:.1%} |"
        )
    return "\n".join(lines)


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
    ours, rest = p.parse_known_args(argv)
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
