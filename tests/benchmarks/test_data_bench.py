"""The input-pipeline benchmark (``python -m benchmarks.data``) runs end to end on 40 small JPEGs: the data maker
writes an ImageFolder, both sides are timed from it (vitjax also from its ArrayRecord packing) with 0 and 1
workers, and the JSON holds positive rates. Bad flags are argparse errors. Timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import data as bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_data") / "jpegs"
    assert bench.main(["make", "--out", str(out), "--images", "40", "--classes", "4"]) == 0
    return out


def test_make_writes_imagenet_sized_jpegs(jpegs):
    train = sorted((jpegs / "train").glob("*/*.jpg"))
    assert len(train) == 40 and len(list((jpegs / "val").glob("*/*.jpg"))) == 4
    assert sorted(p.name for p in (jpegs / "train").iterdir()) == [f"class_{c:03d}" for c in range(4)]
    for path in train[:8]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size in bench.SIZES
    assert not jpegs.with_name("jpegs.partial").exists()


def _check(res: dict, stdout: str, workers: int, formats=("imagefolder", "arrayrecord")) -> None:
    assert res["settings"]["workers"] == workers
    assert res["vitjax_images_per_sec"] > 0 and res["timm_images_per_sec"] > 0
    assert res["ratio"] == pytest.approx(res["vitjax_images_per_sec"] / res["timm_images_per_sec"])
    assert set(res["formats"]) == set(formats)
    for fmt in formats:
        assert res[f"vitjax_{fmt}_images_per_sec"] > 0
        assert res["formats"][fmt]["vitjax_first_batch_s"] > 0
    assert res["timm_first_batch_s"] > 0
    for side in res["sides"].values():
        assert len(side["runs"]) == 1 and side["per_core_images_per_sec"] == side["images_per_sec"] / max(workers, 1)
        (run,) = side["runs"]
        assert 0 <= run["main_process_cpu_s"] <= run["cpu_s"]  # the benchmark process's part of the CPU time
    assert "| timm DataLoader, imagefolder |" in stdout
    assert all(f"| vitjax, {fmt} |" in stdout for fmt in formats)


def _args(jpegs: Path, workers: int, fmt: str = "both") -> list[str]:
    args = ["--data", str(jpegs), "--workers", str(workers), "--batch-size", "8", "--img-size", "32"]
    args += ["--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--batches", "2", "--repeats", "1"]
    return args + ["--format", fmt, "--shards", "2", "--json", "res.json"]  # a relative path, from cwd


def test_benchmark_runs_end_to_end(jpegs, tmp_path):
    """The command as a user runs it, with one worker process a side (the ImageFolder only: each run starts
    its workers, and a grain worker process imports jax)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.data", *_args(jpegs, 1, "imagefolder")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _check(json.loads((tmp_path / "res.json").read_text()), proc.stdout, 1, ("imagefolder",))


def test_benchmark_in_process_without_workers(jpegs, tmp_path, monkeypatch, capsys):
    """``--workers 0`` through ``main`` in this process (no worker is forked from it), which keeps its torch
    thread count and timm's op table (its 0-bit posterize patch lasts only while timm builds its transform)."""
    import torch
    from timm.data import auto_augment

    monkeypatch.chdir(tmp_path)
    threads, ops = torch.get_num_threads(), dict(auto_augment.NAME_TO_OP)
    assert bench.main([*_args(jpegs, 0), "--profile"]) == 0
    assert torch.get_num_threads() == threads
    assert auto_augment.NAME_TO_OP == ops
    res = json.loads((tmp_path / "res.json").read_text())
    _check(res, capsys.readouterr().out, 0)
    # --profile: each side's time split into parts that add up to the time measured, reading and decoding
    # (the largest part on both sides at any size) and the transform's resize among them
    assert set(res["profile"]) == {"vitjax/imagefolder", "vitjax/arrayrecord", "timm/imagefolder"}
    for prof in res["profile"].values():
        assert prof["images"] == 16
        assert sum(prof["seconds"].values()) == pytest.approx(prof["total_s"])
        assert sum(prof["cpu_ms_per_image"].values()) == pytest.approx(1e3 * prof["cpu_s"] / 16)
        assert prof["seconds"]["read + decode"] > 0 and prof["seconds"]["crop, resize, flip"] > 0
        assert all(v > -1e-3 for v in prof["shares"].values())


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--workers", "-1"),
        ("--batch-size", "0"),
        ("--format", "lmdb"),
        ("--aa", "rand-bogus"),
        ("--reprob", "1.5"),
        ("--remode", "zeros"),
        ("--train-interpolation", "cubic"),
    ],
)
def test_bad_flag_is_an_argparse_error(jpegs, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        bench.main(["--data", str(jpegs), flag, value])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_bad_data_and_existing_out_are_named(jpegs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--data", str(tmp_path / "missing")])
    assert e.value.code == 2 and "--data" in capsys.readouterr().err
    before = sorted(p.name for p in (jpegs / "train" / "class_000").iterdir())
    with pytest.raises(SystemExit) as e:
        bench.main(["make", "--out", str(jpegs), "--images", "4", "--classes", "2"])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    assert sorted(p.name for p in (jpegs / "train" / "class_000").iterdir()) == before  # nothing overwritten
