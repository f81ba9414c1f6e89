"""The report of ``python -m train.aot``: what one compile of the train step for a TPU topology found, as text for the
terminal and as rows of the markdown table that ``--table`` prints from saved ``--json`` reports.

A :class:`Report` is plain data (it is what ``--json`` writes and ``--resume`` reads back), so the batch search
(:mod:`train.aot_search`) and the renderers here need neither jax nor the compiler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GiB = 1024**3


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
    attention: str = "plain"  # 'fused' (jax.nn.dot_product_attention) or 'plain'; reports before the switch: plain


def gib(b: float) -> str:
    return f"{b / GiB:.2f} GiB"


def _min_size(r: Report) -> str:
    return f" (fsdp splits parameters of >= {r.fsdp_min_size} elements)" if r.fsdp_min_size else ""


def format_report(r: Report) -> str:
    """The report as the terminal shows it: memory against HBM, FLOPs and the bounds they set, collectives."""
    if r.compiler_error:
        return "\n".join(
            [
                f"{r.model} on {r.topology} ({r.devices} x {r.chip} device(s), {r.hosts} host(s)); mesh {r.mesh}, "
                f"sharding {r.sharding}{_min_size(r)}, {r.precision}{', remat' if r.remat else ''}, "
                f"global batch {r.global_batch}",
                f"  DOES NOT FIT: the TPU compiler needs {gib(r.total_bytes)} per device for temporaries alone, "
                f"the chip has {gib(r.hbm_bytes)}",
                f"  compiler: {r.compiler_error}",
            ]
        )
    lines = [
        f"{r.model} on {r.topology} ({r.devices} x {r.chip} device(s), {r.hosts} host(s)); mesh {r.mesh}, "
        f"sharding {r.sharding}{_min_size(r)}, {r.precision}{', remat' if r.remat else ''}",
        f"  batch: global {r.global_batch}, per process {r.per_process_batch} (x{r.hosts} hosts), "
        f"per data-parallel device {r.per_device_batch}",
        "  memory per device: "
        f"arguments {gib(r.argument_bytes)}, outputs {gib(r.output_bytes)} (aliased {gib(r.alias_bytes)}), "
        f"temporaries {gib(r.temp_bytes)}, code {gib(r.code_bytes)}",
        f"  total {gib(r.total_bytes)} of {gib(r.hbm_bytes)} HBM: "
        + (f"FITS, headroom {gib(r.headroom_bytes)}" if r.fits else f"DOES NOT FIT, short by {gib(-r.headroom_bytes)}"),
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
        # reports made before the attention switch have no such field (and plain attention): their rows are kept
        attention = f" ({r['attention']} attention)" if "attention" in r else ""
        lines.append(
            f"| {r['model']}{attention} | {r['topology']} ({r['devices']} x {r['chip']}) | {r['hosts']} | {mesh} "
            f"| {r['global_batch']} ({r['per_device_batch']}{unfinished}) | {fails[0] if fails else '-'} "
            f"| {r['total_bytes'] / GiB:.2f} of {r['hbm_bytes'] / GiB:.0f} GiB "
            f"| {r.get('program_flops_per_step', math.nan) / 1e12:.1f} TFLOP | {r['step_time_s'] * 1e3:.0f} ms "
            f"| {r['mfu_bound']:.1%} |"
        )
    return "\n".join(lines)
