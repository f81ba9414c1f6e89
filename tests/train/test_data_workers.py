"""Data worker processes (``--workers``): the batches equal the in-process ones, each process's workers read only
its share, the iterator state resumes across worker counts, unreadable images are counted from the workers, a
tiny run resumes bit for bit with ``--workers 2`` and logs ``data_wait``, and no worker process outlives its
iterator."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.train.common import TINY_FLAGS, assert_resumes_exactly
from train import data
from train.__main__ import main as train_main
from train.config import parse_args


def _folder(root: Path, n_train: int = 6, n_val: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in ("ant", "bee"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(40, 72, 2))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(root / split / c / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("workers") / "folder")


@dataclass(frozen=True)
class LoggedSplit(data.Split):
    """A split that appends the index of every image it reads to ``log`` (from whichever process reads it)."""

    log: str = ""

    def load(self, i: int, prepare=None) -> Image.Image:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {i}\n")
        return super().load(i, prepare)


def _no_children():
    assert multiprocessing.active_children() == []  # every worker process was stopped


def test_workers_read_their_share_give_the_same_batches_and_count_bad_images(tmp_path):
    """Process 1 of 2 with two workers: the batches, the images read (from the two worker processes, not this
    one), the unreadable-image count and the iterator state are those of the in-process pipeline."""
    root = _folder(tmp_path / "folder", n_train=6, n_val=3)
    bad_file = root / "train" / "bee" / "1.jpg"
    bad_file.write_bytes(bad_file.read_bytes()[:40])  # PIL cannot open it
    d = data.image_folder(root)
    kw = dict(img_size=32, global_batch=6, steps=4, seed=4, process_index=1, process_count=2)  # 2 epochs
    runs = {}
    for workers in (0, 2):
        log = tmp_path / f"reads{workers}.txt"
        logged = data.Dataset(**{**d.__dict__, "train": LoggedSplit(d.train.images, d.train.labels, log=str(log))})
        bad = data.BadImages()
        with iter(data.train_batches(logged, bad_images=bad, workers=workers, **kw)) as it:
            first = next(it)
            state = it.get_state()
            batches = [first, *it]
        reads = [line.split() for line in log.read_text().splitlines()]
        runs[workers] = batches, sorted(int(i) for _, i in reads), {pid for pid, _ in reads}, bad.count, state
        _no_children()
    (ref, ref_reads, _, ref_bad, _), (got, got_reads, pids, got_bad, state) = runs[0], runs[2]
    assert len(got) == 4 and all(set(b) == {"image", "label"} for b in got)
    for a, b in zip(ref, got, strict=True):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert got_reads == ref_reads and len(pids) == 2 and str(os.getpid()) not in pids
    assert got_bad == ref_bad > 0  # counted in the workers, added up here
    assert state == {"next_index": 1}  # the state is the batch index: it resumes under any worker count
    with iter(data.train_batches(d, bad_images=data.BadImages(), **kw)) as again:
        again.set_state(state)
        assert np.array_equal(next(again)["image"], got[1]["image"])
    ev0 = list(data.eval_batches(d, img_size=32, global_batch=4))
    ev1 = data.eval_batches(d, img_size=32, global_batch=4, workers=1)
    assert len(ev1) == len(ev0) == 2
    with iter(ev1) as it:
        b = next(it)  # and leave the rest: closing stops the worker mid-stream
    assert all(np.array_equal(ev0[0][k], b[k]) for k in ("image", "label", "valid"))
    _no_children()


def test_worker_flags_refuse_negative_counts(capsys):
    base = ["--model", "vit_tiny_patch16_224", "--steps", "1"]
    assert parse_args([*base, "--workers", "3", "--data-workers", "2"]).workers == 3
    for flag in ("--workers", "--data-workers"):
        with pytest.raises(SystemExit) as e:
            parse_args([*base, flag, "-1"])
        assert e.value.code == 2 and f"{flag}: must be >= 0" in capsys.readouterr().err


def test_tiny_run_with_workers_resumes_exactly_and_logs_data_wait(folder, tmp_path, capsys):
    flags = [
        "--model", "vit_tiny_patch16_224", *TINY_FLAGS, "--num-classes", "2", "--img-size", "32",
        "--data", str(folder), "--batch-size", "8", "--steps", "4", "--ckpt-every", "2", "--log-every", "1",
        "--no-progress", "--fast-compile", "--eval-batch-size", "8", "--workers", "2", "--model-ema-decay", "0.9",
    ]  # fmt: skip
    assert_resumes_exactly(train_main, flags, tmp_path, capsys)
    _no_children()
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    waits = [r["data_wait"] for r in recs if r["kind"] == "train"]
    assert len(waits) == 4 and all(0.0 <= w <= 1.0 for w in waits)
    final = [r for r in recs if r["kind"] == "eval"][-1]
    assert {"top1", "top1_ema"} <= set(final)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


def test_workers_ignore_group_signals_and_exit_with_their_process(tmp_path):
    """SIGTERM to a worker (as to a whole process group) is left to the training process; a SIGKILLed training
    process leaves no worker behind."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "feed.py"
    script.write_text(
        "import multiprocessing, time\n"
        "from train import data\n"
        "if __name__ == '__main__':\n"
        "    d = data.load_dataset('digits', 32)\n"
        "    it = iter(data.train_batches(d, img_size=32, global_batch=8, steps=500, seed=0, workers=1))\n"
        "    next(it)\n"
        "    print(*[p.pid for p in multiprocessing.active_children()], flush=True)\n"
        "    time.sleep(300)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=repo, env=env, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids and all(_alive(p) for p in pids)
        for p in pids:
            os.kill(p, signal.SIGTERM)
        time.sleep(1.0)
        assert all(_alive(p) for p in pids)  # ignored: the training process decides when its workers stop
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def test_eval_decodes_each_image_once_for_raw_and_ema(tmp_path, monkeypatch):
    import jax

    from tests.train.common import tiny_config
    from train.loop import run

    calls = []
    real = data.eval_image
    monkeypatch.setattr(data, "eval_image", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    cfg = tiny_config(tmp_path, steps=1, batch_size=8, eval_batch_size=120, model_ema_decay=0.9)
    result = run(cfg, devices=jax.devices()[:1])
    assert {"top1", "top1_ema"} <= set(result.final_eval)
    assert sorted(calls) == list(range(360))  # the 360 digits validation images, each once
