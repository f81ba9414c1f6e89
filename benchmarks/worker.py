"""Jobs that need a process of their own, so that peak resident memory is theirs alone.

    python -m benchmarks.worker '<json job>'   ->  prints one line ``RESULT <json>``

Jobs: ``memory`` (one side, one task: build the model, compile, run two steps), ``write_checkpoint`` (a timm /
transformers model's random state_dict to ``.safetensors``), ``convert`` (that file into an abstract vitjax model
with ``converters.from_torch``). A torch job never imports jax, and a jax job never imports torch.
"""

from __future__ import annotations

import json
import os
import resource
import sys
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


def memory(job: dict) -> dict:
    case, task, batch = job["case"], job["task"], job["batch"]
    if job["side"] == "jax":
        from benchmarks import jax_side as side

        base = rss_bytes()
        model = side.build(case)
        if task == "infer":
            step = side.infer_step(model, case, batch)
        else:
            step = side.train_step(model, case, batch, copy=False)
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

    case = job["case"]
    base = rss_bytes()
    t0 = time.perf_counter()
    model = vitjax.create_model(case["name"], abstract=True, **case["overrides"])
    converters.from_torch(model, job["path"], source=job["source"])
    jax.block_until_ready(nnx.state(model, nnx.Param))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss": peak_rss_bytes(), "rss_before": base, "rss_after": rss_bytes()}


JOBS = {"memory": memory, "write_checkpoint": write_checkpoint, "convert": convert}


def main() -> None:
    job = json.loads(sys.argv[1])
    out = JOBS[job["job"]](job)
    print(RESULT + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
