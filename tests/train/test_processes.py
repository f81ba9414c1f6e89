"""The loop as a program: exact resume after SIGKILL, a clean checkpoint-and-exit on SIGTERM, and 2 processes x
4 devices (jax.distributed over gloo on 127.0.0.1) giving the losses and the final evaluation of 1 process x 8
devices."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.common import TINY_FLAGS, losses, tiny_config
from train.loop import run

ROOT = Path(__file__).resolve().parents[2]


def _cmd(workdir, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "train", "--model", "vit_tiny_patch16_224", "--img-size", "32", *TINY_FLAGS,
        "--data", "digits", "--workdir", str(workdir), "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "2",
        "--log-every", "1", "--eval-batch-size", "120", "--no-progress", "--fast-compile", *extra,
    ]  # fmt: skip


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture
def spawn():
    """``subprocess.Popen`` whose processes are killed when the test ends, passed, failed or timed out (a
    ``--steps 100000`` run must not outlive a failed assertion)."""
    procs: list[subprocess.Popen] = []

    def start(*args, **kw) -> subprocess.Popen:
        procs.append(subprocess.Popen(*args, **kw))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=60)


def _wait_for_step(workdir: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> int:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (rc {proc.returncode}): {proc.stderr.read()[-3000:]}")
        got = losses(workdir) if (workdir / "metrics.jsonl").exists() else {}
        if got and max(got) >= step:
            return max(got)
        time.sleep(0.05)
    raise AssertionError(f"no step {step} after {timeout} s")


def test_sigkill_then_restart_reproduces_losses_bitwise(tmp_path, spawn):
    steps = ["--steps", "200", "--ckpt-every", "25"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(ref_dir, *steps), env=_env(2), check=True, capture_output=True, timeout=600)
    proc = spawn(_cmd(run_dir, *steps), env=_env(2), stderr=subprocess.PIPE, text=True)
    reached = _wait_for_step(run_dir, proc, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert reached < 200, "the run finished before it could be killed"
    done = subprocess.run(_cmd(run_dir, *steps), env=_env(2), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step" in done.stderr
    ref, got = losses(ref_dir), losses(run_dir)
    assert sorted(got) == list(range(1, 201))
    assert got == ref  # bit-identical, interruption and all


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, spawn):
    proc = spawn(_cmd(tmp_path, "--steps", "100000"), env=_env(1), stderr=subprocess.PIPE, text=True)
    _wait_for_step(tmp_path, proc, 20)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    last = max(losses(tmp_path))
    assert f"checkpoint saved at step {last}" in err
    assert (tmp_path / "ckpt" / str(last)).is_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path, spawn):
    addr = f"127.0.0.1:{_free_port()}"
    wd = tmp_path / "multi"
    procs = [
        spawn(
            _cmd(wd, "--steps", "6", "--coordinator-address", addr, "--num-processes", "2", "--process-id", str(i)),
            env=_env(4),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    assert "8 devices / 2 processes" in errs[0]
    ref_dir = tmp_path / "single"
    single = run(tiny_config(ref_dir, steps=6, eval_batch_size=120, mesh={"data": 8}))
    ref, got = losses(ref_dir), losses(wd)
    assert sorted(got) == list(range(1, 7))
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-5), s
    print("\n2 processes vs 1: worst loss rel err", max(abs(got[s] - ref[s]) / ref[s] for s in ref))
    # the final evaluation: each process reads its share of the eval set (the last batch padded), the sums are
    # global; the accuracies count the same images, the loss agrees to float32 reduction order
    final = _final_eval(wd)
    assert set(final) == set(single.final_eval) == {"top1", "top5", "eval_loss"}
    assert final["top1"] == pytest.approx(single.final_eval["top1"], abs=1e-9)
    assert final["top5"] == pytest.approx(single.final_eval["top5"], abs=1e-9)
    assert final["eval_loss"] == pytest.approx(single.final_eval["eval_loss"], rel=1e-5)
    assert "[eval] final: top1" in errs[0]


def _final_eval(workdir: Path) -> dict[str, float]:
    """The last ``eval`` record of a run's metrics.jsonl, without its kind and step."""
    evals = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert evals, "no eval record"
    return {k: v for k, v in evals[-1].items() if k not in ("kind", "step")}


def test_non_finite_exit_code_and_skip_policy(tmp_path):
    """``python -m train`` exits 3 naming the step when the loss turns non-finite (``--nan-policy stop``, the
    default); with ``--nan-policy skip`` it reports each skipped update and finishes with exit code 0."""
    blow_up = ["--steps", "6", "--lr", "1e30", "--warmup-steps", "0", "--log-every", "3", "--eval-batch-size", "120"]
    r = subprocess.run(_cmd(tmp_path / "stop", *blow_up), env=_env(1), capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "[train] stopped: non-finite loss or gradient at step" in r.stderr
    r = subprocess.run(
        _cmd(tmp_path / "skip", *blow_up, "--nan-policy", "skip"),
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "non-finite loss/gradient, update skipped" in r.stderr
