"""Jobs that need a process of their own, so that peak resident memory is theirs alone.

    python -m benchmarks.worker '<json job>'   ->  prints one line ``RESULT <json>``

Jobs: ``memory`` (one side, one task: build the model, compile, run two steps), ``write_checkpoint`` (a timm /
transformers model's random state_dict to ``.safetensors``), ``convert`` (that file into an abstract vitjax model
with ``converters.from_torch``), ``time`` (one model's speed, both sides alternating). A torch memory job never
imports jax, and a jax one never imports torch.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

RESULT = "RESULT "


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))


def rss_bytes() -> int:
    """Current resident set size."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image: ``ru_maxrss``, except that ru_maxrss survives ``execve``
    and so starts at the parent's size at fork time (a benchmark parent holding big models would mask the
    child); the kernel's high-water mark ``VmHWM`` restarts with the new image."""
    return min(_status_kib("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Sampler(threading.Thread):
    """Peaks of resident memory split by kind, sampled every ``interval`` seconds: ``anon`` (the process's own
    allocations) and ``file`` (pages of memory-mapped files, which the kernel can drop and reread)."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, {"anon": 0, "file": 0, "total": 0}, threading.Event()

    def sample(self) -> None:
        anon, file = _status_kib("RssAnon") * 1024, _status_kib("RssFile") * 1024
        for k, v in (("anon", anon), ("file", file), ("total", anon + file)):
            self.peak[k] = max(self.peak[k], v)

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._done.set()
        self.join()
        self.sample()
        return self.peak


def memory(job: dict) -> dict:
    case, task, batch = job["case"], job["task"], job["batch"]
    if job["side"] == "jax":
        from benchmarks import jax_side as side

        base = rss_bytes()
        model = side.build(case)
        options = job.get("xla_options")
        if task == "infer":
            step = side.infer_step(model, case, batch, options=options)
        else:
            step = side.train_step(model, case, batch, copy=False, options=options)
    else:
        import torch

        from benchmarks import torch_side as side

        base = rss_bytes()
        model = side.build(case["torch"])
        device = torch.device("cpu")
        make = side.infer_step if task == "infer" else side.train_step
        step = make(model, case, batch, device)
    for _ in range(2):
        step.call()
    return {"peak_rss": peak_rss_bytes(), "rss_after_imports": base}


def write_checkpoint(job: dict) -> dict:
    from safetensors.torch import save_file

    from benchmarks import torch_side

    model = torch_side.build(job["case"]["torch"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, job["path"])
    return {"bytes": os.path.getsize(job["path"])}


def convert(job: dict) -> dict:
    import jax
    from flax import nnx

    import converters
    import vitjax
    from converters.io import SafetensorsFile

    case = job["case"]
    jax.numpy.zeros(()).block_until_ready()  # start the backend before the baseline
    base, anon_base = rss_bytes(), _status_kib("RssAnon") * 1024
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    model = vitjax.create_model(case["name"], abstract=True, **case["overrides"])
    reader = SafetensorsFile(job["path"], read=job.get("reader", "mmap"))  # the converters' own reader
    converters.from_torch(model, reader, source=job["source"])
    jax.block_until_ready(nnx.state(model, nnx.Param))
    seconds = time.perf_counter() - t0
    peaks = sampler.stop()
    return {
        "seconds": seconds,
        "peak_rss": peak_rss_bytes(),
        "rss_before": base,
        "anon_before": anon_base,
        "rss_after": rss_bytes(),
        "peak_anon": peaks["anon"],
        "peak_file": peaks["file"],
    }


def time_model(job: dict) -> dict:
    """``benchmarks.run.bench_model``: both sides' speed, alternating, in this process."""
    import argparse

    from benchmarks import run

    return run.bench_model(job["case"], argparse.Namespace(**job["args"]))


JOBS = {"memory": memory, "write_checkpoint": write_checkpoint, "convert": convert, "time": time_model}


def main() -> None:
    job = json.loads(sys.argv[1])
    out = JOBS[job["job"]](job)
    print(RESULT + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
