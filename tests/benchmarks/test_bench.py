"""The benchmark script runs end to end on a tiny model (one block, 32 px, one round): every table cell it
reports is filled. Timings are not asserted."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

from train.heap import HEAP_TUNABLES

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--models", "vit_tiny_patch16_224", "--override", "depth=1", "--override", "img_size=32"]


def test_benchmark_runs_end_to_end(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = [*TINY, "--rounds", "1", "--min-time", "0", "--peak-n", "64", "--batch", "2", "--train-batch", "2"]
    args += ["--convert-models", "vit_tiny_patch16_224", "--json", str(out), "--markdown", str(md)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not the test suite's 8 fake devices
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())

    assert res["peak"]["peak_gflops"] > 0
    # both sides ran in the re-executed process, with glibc's heap kept between calls (train.heap)
    assert set(HEAP_TUNABLES) <= set(res["env"]["glibc_tunables"].split(":"))
    (model,) = res["models"]
    assert model["errors"] == {}
    # the model was timed in a worker process of its own, which kept the heap tunables
    assert model["process"]["pid"] != res["env"]["pid"]
    assert set(HEAP_TUNABLES) <= set(model["process"]["glibc_tunables"].split(":"))
    assert set(model["tasks"]) == {"infer1", "infer", "train"}
    for task, t in model["tasks"].items():
        assert set(t["images_per_s"]) == {"vitjax", "torch"}, task
        assert all(v > 0 and math.isfinite(v) for v in t["images_per_s"].values()), task
        assert t["flops_per_call"] > 0 and t["compile_s"]["vitjax"] > 0, task
    assert model["tasks"]["infer1"]["batch"] == 1 and model["tasks"]["train"]["batch"] == 2
    # train FLOPs (forward + backward + optimizer) exceed twice the forward's at the same batch
    assert model["tasks"]["train"]["flops_per_call"] > 2 * model["tasks"]["infer"]["flops_per_call"]
    for key in ("vitjax infer", "torch infer", "vitjax train", "torch train"):
        mem = model["memory"][key]
        assert mem["peak_rss"] >= mem["rss_after_imports"] > 0, key
    runs = res["convert"]["vit_tiny_patch16_224"]
    assert set(runs) == {"mmap", "pread"}
    for conv in runs.values():
        assert conv["checkpoint_bytes"] > 0 and conv["seconds"] > 0 and conv["peak_rss"] >= conv["rss_before"]

    text = md.read_text()
    assert "| vit_tiny_patch16_224 | train | 2 |" in text and "vitjax/torch" in text


def test_worker_failure_names_the_job_and_the_cause():
    code = "from benchmarks.run import run_worker; run_worker({'job': 'no_such_job'}, timeout=120)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert re.search(r"RuntimeError: worker no_such_job failed \(exit 1\):[\s\S]*KeyError: 'no_such_job'", proc.stderr)
