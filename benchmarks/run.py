"""``python -m benchmarks``: vitjax against timm / transformers, side by side, in one process.

Speed is measured with both sides in one process, a fresh one per model, the sides alternating round by round
(the order flipping each round) so that drift on a shared machine hits all of them alike; each side runs for at
least ``--min-time`` seconds a round and the median over rounds is kept. Peak memory and conversion run in fresh
subprocesses too (:mod:`benchmarks.worker`). Prints markdown tables and writes everything, per-round times
included, to JSON.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

CONVERT_MODELS = ("google/vit-large-patch16-224-in21k", "maxxvitv2_rmlp_base_rw_224")
# Dense bf16 tensor-core peak from the vendor's data sheet, for MFU (SXM parts).
GPU_SPEC_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
TASKS = ("infer1", "infer", "train")
MiB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="registered names (default: the registered seed models)")
    p.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="config override for both sides"
    )
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="default: fp32 on cpu, bf16 on gpu")
    p.add_argument("--batch", type=int, help="throughput batch (default: 8 on cpu, 256 on gpu)")
    p.add_argument("--train-batch", type=int, help="training batch (default: 8 on cpu, 32 on gpu)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--compile", action="store_true", help="also time torch.compile (inference with freezing)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds each side runs per round")
    p.add_argument("--peak-n", type=int, help="matmul size for the peak (default: 4096 cpu, 8192 gpu)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-convert", action="store_true", help="skip the conversion benchmark")
    p.add_argument("--convert-models", nargs="*", help=f"checkpoints to convert (default: {CONVERT_MODELS})")
    p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS, set before jax is imported")
    p.add_argument(
        "--xla-defaults",
        action="store_true",
        help="compile vitjax with XLA's default options only (otherwise it uses "
        "vitjax.xla_cpu.compiler_options(), as python -m train does)",
    )
    p.add_argument("--json", help="output file (default: benchmarks/results_<device>.json)")
    p.add_argument("--markdown", help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    gpu = args.device == "gpu"
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    args.batch = args.batch or (256 if gpu else 8)
    args.train_batch = args.train_batch or (32 if gpu else 8)
    args.peak_n = args.peak_n or (8192 if gpu else 4096)
    args.tasks = [t for t in args.tasks.split(",") if t]
    if unknown := set(args.tasks) - set(TASKS):
        p.error(f"unknown tasks {sorted(unknown)}")
    args.overrides = dict(_parse_override(o) for o in args.override)
    args.json = args.json or str(Path(__file__).parent / f"results_{args.device}.json")
    return args


def _parse_override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def set_environment(args: argparse.Namespace) -> None:
    """Environment for this process and its workers; must run before jax is imported."""
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    else:
        # torch shares the GPU: jax allocates as it goes, up to under half of the memory
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")


# -- the cases -------------------------------------------------------------------------------------------------
def make_case(name: str, overrides: dict) -> dict:
    """Everything both sides need to build a model, as plain data (workers get it as JSON)."""
    import vitjax
    from converters.verify import hf_config

    spec = vitjax.get_spec(name)
    cfg = spec.config(**overrides)
    size = getattr(cfg, "img_size", None)
    if size is None:  # a model that takes any size: timm's default input size
        import timm

        size = timm.models.get_pretrained_cfg(name).input_size[1:]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if spec.family == "hf_vit":
        torch_spec = {"lib": "hf", "config": hf_config(name, **overrides).to_dict()}
    else:
        torch_spec = {"lib": "timm", "name": name, "kwargs": overrides}
    source = "hf" if spec.family == "hf_vit" else "timm"
    return dict(
        name=name, overrides=overrides, hw=hw, in_chans=getattr(cfg, "in_chans", 3), torch=torch_spec, source=source
    )


def default_models() -> list[str]:
    import vitjax
    from converters.verify import SEED_MODELS

    registered = set(vitjax.list_models())
    return [m for m in SEED_MODELS if m in registered]


# -- timing ----------------------------------------------------------------------------------------------------
def alternate(calls: dict[str, Any], rounds: int, min_time: float) -> dict[str, list[float]]:
    """Seconds per call of each side, one entry per round. Each side is called once untimed first (which also
    sizes its block to ``min_time``); then the sides take turns, in reverse order every other round, each turn
    starting with one untimed call: the first call after the other side's turn runs slow, and a block of one
    call would time only that call (figures in docs/performance.md)."""
    iters = {}
    for name, call in calls.items():
        t0 = time.perf_counter()
        call()
        iters[name] = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            time.sleep(0.3)  # let the other side's spinning worker threads go idle
            calls[name]()
            t0 = time.perf_counter()
            for _ in range(iters[name]):
                calls[name]()
            times[name].append((time.perf_counter() - t0) / iters[name])
    return times


def measure_peak(args: argparse.Namespace) -> dict:
    """Sustained matmul GFLOP/s in torch and in XLA, alternating; the machine's peak is the larger."""
    import torch

    from benchmarks import jax_side, torch_side

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    n, dtype = args.peak_n, args.dtype
    options = xla_options(args)
    calls = {
        "torch": lambda: torch_side.matmul_gflops(n, dtype, device, args.min_time),
        "jax": lambda: jax_side.matmul_gflops(n, dtype, args.min_time, options),
    }
    rates: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(max(2, args.rounds)):
        for k in calls if r % 2 == 0 else list(calls)[::-1]:
            rates[k].append(calls[k]())
    best = {k: statistics.median(v) for k, v in rates.items()}
    return {"n": n, "dtype": dtype, "gflops": best, "rounds": rates, "peak_gflops": max(best.values())}


def bench_model(case: dict, args: argparse.Namespace) -> dict:
    import torch

    from benchmarks import jax_side, torch_side

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    options = xla_options(args)
    out: dict[str, Any] = {"name": case["name"], "hw": case["hw"], "tasks": {}, "errors": {}}
    out["process"] = {"pid": os.getpid(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    jmodel = jax_side.build(case)
    tmodel = torch_side.build(case["torch"])
    out["params"] = int(sum(p.numel() for p in tmodel.parameters()))
    for task in args.tasks:
        train = task == "train"
        batch = args.train_batch if train else 1 if task == "infer1" else args.batch
        steps, compile_s, flops = {}, {}, float("nan")
        try:
            if train:
                jstep = jax_side.train_step(jmodel, case, batch, args.dtype, options=options)
            else:
                jstep = jax_side.infer_step(jmodel, case, batch, args.dtype, options=options)
        except Exception:
            out["errors"][f"vitjax {task}"] = traceback.format_exc(limit=-3)
            print(f"!! vitjax {task} failed for {case['name']}:\n{out['errors'][f'vitjax {task}']}", flush=True)
            continue
        steps["vitjax"], compile_s["vitjax"], flops = jstep.call, jstep.compile_s, jstep.flops
        flops_hlo = jstep.flops_hlo
        make = torch_side.train_step if train else torch_side.infer_step
        for label, comp in (("torch", False), ("torch.compile", True)):
            if comp and not args.compile:
                continue
            try:
                tstep = make(tmodel, case, batch, device, args.dtype, compile=comp)
                steps[label], compile_s[label] = tstep.call, tstep.compile_s
            except Exception:
                out["errors"][f"{label} {task}"] = traceback.format_exc(limit=-3)
                print(f"!! {label} {task} failed for {case['name']}", flush=True)
        load_before = os.getloadavg()[0]
        try:
            times = alternate(steps, args.rounds, args.min_time)
        except Exception:
            out["errors"][f"timing {task}"] = traceback.format_exc(limit=-3)
            print(f"!! timing {task} failed for {case['name']}:\n{out['errors'][f'timing {task}']}", flush=True)
            continue
        finally:
            del steps, jstep
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        med = {k: statistics.median(v) for k, v in times.items()}
        out["tasks"][task] = {
            "batch": batch,
            "flops_per_call": flops,
            "flops_per_call_hlo": flops_hlo,
            "seconds_per_call": med,
            "rounds": times,
            "images_per_s": {k: batch / v for k, v in med.items()},
            "compile_s": compile_s,
            "load_avg_1min": [load_before, os.getloadavg()[0]],  # before / after: above the core count = contended
        }
        print(f"   {case['name']} {task} b{batch}: " + _fmt_rates(out["tasks"][task]), flush=True)
    return out


def _fmt_rates(t: dict) -> str:
    return ", ".join(f"{k} {v:.3g} img/s" for k, v in t["images_per_s"].items())


# -- subprocess jobs -------------------------------------------------------------------------------------------
def run_worker(job: dict, timeout: float = 3600, echo: bool = False) -> dict:
    """Run ``job`` in a fresh ``benchmarks.worker`` process (this one's environment) and return its result;
    with ``echo`` its other stdout lines are printed as they come."""
    from benchmarks.worker import RESULT

    cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(job)]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    result = None
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=root)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith(RESULT):
                    result = json.loads(line[len(RESULT) :])
                elif echo:
                    print(line, end="", flush=True)
            code = proc.wait()
        finally:
            timer.cancel()
        if result is not None and code == 0:
            return result
        err.seek(0)
        tail = err.read()[-3000:]
    how = f"killed by signal {-code}" if code < 0 else f"exit {code}"  # -9: the OOM killer, or the timeout
    raise RuntimeError(f"worker {job['job']} failed ({how}):\n{tail}")


def bench_model_in_worker(case: dict, args: argparse.Namespace) -> dict:
    """:func:`bench_model` in a process of its own: a model's heap (kept by ``keep_freed_memory``'s tunables,
    and not all returned by torch's and XLA's allocators anyway) goes with it, so the models timed later (and the
    memory workers) do not start on the heap of the earlier ones (figures in docs/performance.md)."""
    try:
        return run_worker(dict(job="time", case=case, args=vars(args)), timeout=4 * 3600, echo=True)
    except RuntimeError as e:
        print(f"!! timing worker failed for {case['name']}: {e}", flush=True)
        return {"name": case["name"], "hw": case["hw"], "tasks": {}, "errors": {"timing worker": str(e)}}


def xla_options(args: argparse.Namespace) -> dict | None:
    """The compiler options of the vitjax side: those ``python -m train`` uses on the device (vitjax.xla_cpu).
    XLA's default dot/conv path (YNNPACK, "ynn_fusion") is kept: turning it off
    (``xla_cpu_experimental_ynn_fusion_type=``) sped up a ViT's inference a little and slowed a conv net's
    training much more (figures in docs/performance.md)."""
    from vitjax.xla_cpu import compiler_options

    return None if args.xla_defaults else compiler_options("cpu" if args.device == "cpu" else "gpu")


def bench_memory(case: dict, args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {}
    for task in ("infer", "train"):
        batch = args.train_batch if task == "train" else args.batch
        for side in ("jax", "torch"):
            key = f"{'vitjax' if side == 'jax' else 'torch'} {task}"
            try:
                job = dict(job="memory", side=side, task=task, batch=batch, case=case, xla_options=xla_options(args))
                out[key] = run_worker(job)
            except Exception as e:
                out[key] = {"error": str(e)}
                print(f"!! memory {key} failed for {case['name']}: {e}", flush=True)
    return out


def bench_convert(case: dict) -> dict[str, dict]:
    """Convert a random checkpoint written to a temporary ``.safetensors`` file with converters' reader
    (``converters.io.SafetensorsFile``) in both of its modes: memory-mapped, and each tensor copied out with
    ``preadv`` (the default, ``converters.io.SAFETENSORS_READ``)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="vitjax-bench-") as tmp:
        path = str(Path(tmp) / "model.safetensors")
        size = run_worker(dict(job="write_checkpoint", case=case, path=path))["bytes"]
        for reader in ("mmap", "pread"):
            res = run_worker(dict(job="convert", case=case, path=path, source=case["source"], reader=reader))
            res["checkpoint_bytes"] = size
            res["peak_over_size"] = (res["peak_rss"] - res["rss_before"]) / size
            res["anon_over_size"] = (res["peak_anon"] - res["anon_before"]) / size
            out[reader] = res
    return out


# -- report ----------------------------------------------------------------------------------------------------
def environment(args: argparse.Namespace) -> dict:
    import importlib.metadata as md

    import jax
    import torch

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    env = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "torch", "timm", "transformers")},
        "torch_threads": torch.get_num_threads(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "pid": os.getpid(),
        "xla_compiler_options": xla_options(args),
        "load_avg_start": os.getloadavg(),
        "args": {k: v for k, v in vars(args).items()},
    }
    try:
        env["git"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        env["git"] = None
    if args.device == "gpu":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def tables(res: dict) -> str:
    peak = res["peak"]["peak_gflops"] * 1e9
    gpu = res["env"].get("gpu")
    spec = next((v for k, v in GPU_SPEC_TFLOPS.items() if gpu and k in gpu), None)
    sides = [
        s
        for s in ("torch", "torch.compile")
        if any(s in t["images_per_s"] for m in res["models"] for t in m["tasks"].values())
    ]
    lines = []
    pk = res["peak"]
    lines.append(
        f"Matmul peak ({pk['n']}^3, {pk['dtype']}): "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in pk["gflops"].items())
        + f" -> peak {pk['peak_gflops']:.1f} GFLOP/s"
        + (f"; data-sheet {gpu} bf16 dense {spec} TFLOP/s" if spec else "")
    )
    loads = [v for m in res["models"] for t in m["tasks"].values() for v in t.get("load_avg_1min", [])]
    if loads:
        lines.append(
            f"1-minute load average around the timed runs: {min(loads):.2f} to {max(loads):.2f} "
            f"({res['env']['cores']} cores; above that count the machine was shared)"
        )
    lines.append("")
    head = ["model", "task", "batch", "GFLOP/img", "vitjax img/s"]
    for s in sides:
        head += [f"{s} img/s", f"vitjax/{s}"]
    head += ["vitjax % peak"] + [f"{s} % peak" for s in sides]
    if spec:
        head += ["vitjax MFU"] + [f"{s} MFU" for s in sides]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in res["models"]:
        for task, t in m["tasks"].items():
            ips = t["images_per_s"]
            fpi = t["flops_per_call"] / t["batch"]
            row = [m["name"], task, str(t["batch"]), _num(fpi / 1e9), _num(ips.get("vitjax"))]
            for s in sides:
                r = ips.get("vitjax", math.nan) / ips[s] if s in ips else None
                row += [_num(ips.get(s)), _num(r, ".2f")]
            row += [_num(100 * fpi * ips[s] / peak, ".0f") if s in ips else "—" for s in ["vitjax", *sides]]
            if spec:
                row += [
                    _num(100 * fpi * ips[s] / (spec * 1e12), ".1f") if s in ips else "—" for s in ["vitjax", *sides]
                ]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    head = ["model", "params (M)"] + [f"vitjax compile {t} s" for t in TASKS]
    if "torch.compile" in sides:
        head += [f"torch.compile {t} s" for t in TASKS]
    mem = any(m.get("memory") for m in res["models"])
    if mem:
        head += ["peak RSS infer vitjax / torch (MiB)", "peak RSS train vitjax / torch (MiB)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in res["models"]:
        row = [m["name"], _num(m["params"] / 1e6, ".1f")]
        row += [_num(m["tasks"].get(t, {}).get("compile_s", {}).get("vitjax"), ".1f") for t in TASKS]
        if "torch.compile" in sides:
            row += [_num(m["tasks"].get(t, {}).get("compile_s", {}).get("torch.compile"), ".1f") for t in TASKS]
        if mem:
            mm = m.get("memory", {})
            for task in ("infer", "train"):
                vals = [mm.get(f"{s} {task}", {}).get("peak_rss") for s in ("vitjax", "torch")]
                row.append(" / ".join(_num(v / MiB if v else None, ".0f") for v in vals))
        lines.append("| " + " | ".join(row) + " |")
    if res.get("convert"):
        lines += [
            "",
            "| checkpoint | reader | size (MiB) | wall (s) | peak RSS (MiB) | RSS before (MiB) | "
            "(peak - before) / size | anonymous (peak - before) / size |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, runs in res["convert"].items():
            if "error" in runs:
                lines.append(f"| {name} | error: {runs['error'].splitlines()[0]} | | | | | | |")
                continue
            for reader, c in runs.items():
                lines.append(
                    f"| {name} | {reader} | {c['checkpoint_bytes'] / MiB:.0f} | {c['seconds']:.1f} | "
                    f"{c['peak_rss'] / MiB:.0f} | {c['rss_before'] / MiB:.0f} | {c['peak_over_size']:.2f} | "
                    f"{c['anon_over_size']:.2f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_environment(args)
    if args.device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    models = args.models or default_models()
    res: dict[str, Any] = {"env": environment(args), "models": [], "convert": {}}
    print(f"benchmarking {models} on {res['env']['cpu']} ({args.device}, {args.dtype})", flush=True)
    res["peak"] = measure_peak(args)
    print(f"matmul peak: {res['peak']['gflops']}", flush=True)
    failed = False
    for name in models:
        case = make_case(name, args.overrides)
        # memory first, then speed: one worker process at a time, each with the machine's memory to itself
        memory = bench_memory(case, args) if not args.no_memory and args.device == "cpu" else None
        m = bench_model_in_worker(case, args)
        failed |= any(k.startswith(("vitjax", "timing")) for k in m["errors"])
        if memory is not None:
            m["memory"] = memory
        res["models"].append(m)
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))  # so far, in case a later model fails
        gc.collect()
    if not args.no_convert and args.device == "cpu":
        for name in args.convert_models if args.convert_models is not None else default_convert():
            try:
                res["convert"][name] = bench_convert(make_case(name, args.overrides))
            except Exception as e:
                res["convert"][name] = {"error": str(e)}
                failed = True
    res["env"]["load_avg_end"] = os.getloadavg()
    text = tables(res)
    print("\n" + text, flush=True)
    Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(f"\nwrote {args.json}", flush=True)
    return 1 if failed else 0


def default_convert() -> list[str]:
    import vitjax

    registered = set(vitjax.list_models())
    return [m for m in CONVERT_MODELS if m in registered]
