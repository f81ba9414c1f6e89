"""A workdir misused as a careless user would: reused for another model or mesh, a checkpoint of a newer format, a
damaged latest step, two runs at once. Each either resumes correctly or stops with an error naming the step or
the workdir, and leaves what was there untouched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from tests.train.common import TINY_FLAGS, tiny_config
from train.checkpoint import WorkdirError, _lock
from train.loop import run

ONE = jax.devices()[:1]


def _cfg(workdir, **kw):
    return tiny_config(workdir, **{"steps": 4, "ckpt_every": 2, "eval_batch_size": 120, **kw})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 4-step run on one device, checkpoints at steps 2 and 4."""
    wd = tmp_path_factory.mktemp("base")
    run(_cfg(wd), devices=ONE)
    return wd


def _copy(base: Path, tmp_path: Path) -> Path:
    wd = tmp_path / "run"
    shutil.copytree(base, wd)
    return wd


def _tree(wd: Path) -> dict[str, bytes]:
    return {str(p.relative_to(wd)): p.read_bytes() for p in sorted(wd.rglob("*")) if p.is_file() and p.name != "lock"}


def test_another_models_run_is_refused_untouched(base, tmp_path):
    wd = _copy(base, tmp_path)
    before = _tree(wd)
    cfg = _cfg(wd, model_args={**_cfg(wd).model_args, "embed_dim": 64})
    with pytest.raises(WorkdirError) as e:
        run(cfg, devices=ONE)
    msg = str(e.value)
    assert f"{wd / 'ckpt' / '4'} holds another model or training setup" in msg
    assert "per its config.json: vit_tiny_patch16_224" in msg and "'embed_dim': 32" in msg
    assert "checkpoint (32,), this run (64,)" in msg  # a norm's scale, say: the arrays that differ are named
    assert _tree(wd) == before  # nothing quarantined, config.json not overwritten
    run(_cfg(wd, steps=6), devices=ONE)  # the lock was released: the right flags resume the run
    assert sorted(int(p.name) for p in (wd / "ckpt").iterdir() if p.name.isdigit())[-1] == 6


def test_another_meshs_run_resumes(base, tmp_path):
    wd = _copy(base, tmp_path)
    result = run(_cfg(wd, steps=6, mesh={"data": 2, "fsdp": 2, "tensor": 2}))  # 8 devices, sharded
    assert result.steps_done == 6 and not (wd / "corrupt").exists()
    qkv = result.state.params["blocks"][0]["attn"]["qkv"]["kernel"]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_newer_format_is_refused_naming_the_step(base, tmp_path):
    wd = _copy(base, tmp_path)
    meta = wd / "ckpt" / "4" / "meta" / "metadata"
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "version": 99}))
    before = _tree(wd)
    with pytest.raises(WorkdirError, match=r"ckpt/4: written by a newer version .* version 99; this one reads"):
        run(_cfg(wd, steps=6), devices=ONE)
    assert _tree(wd) == before


def test_damaged_latest_record_falls_back_naming_the_step(base, tmp_path, capfd):
    wd = _copy(base, tmp_path)
    (wd / "ckpt" / "4" / "meta" / "metadata").write_bytes(b"\0garbage")
    result = run(_cfg(wd, steps=6), devices=ONE)
    err = capfd.readouterr().err
    assert f"step 4 in {wd / 'ckpt'} is unreadable" in err and "resumed from step 2" in err
    assert (wd / "corrupt" / "4").is_dir() and result.steps_done == 6


def test_second_run_on_a_workdir_is_refused(base, tmp_path):
    wd = _copy(base, tmp_path)
    held = _lock(wd / "lock")  # as a running `python -m train` holds it
    try:
        with pytest.raises(WorkdirError, match=f"{wd}: another run is using this workdir \\(pid {os.getpid()}"):
            run(_cfg(wd, steps=6), devices=ONE)
        env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # as a user's shell: no TPU noise either
        cmd = [sys.executable, "-m", "train", "--model", "vit_tiny_patch16_224", "--img-size", "32", *TINY_FLAGS]
        r = subprocess.run(
            [*cmd, "--data", "digits", "--workdir", str(wd), "--steps", "6"], env=env, capture_output=True, text=True
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert "[train] error:" in r.stderr and "another run is using this workdir" in r.stderr
        assert "Traceback" not in r.stderr
        assert not [n for n in ("libtpu", "TPU", "E0000") if n in r.stderr], r.stderr  # see tests/converters/test_edges
    finally:
        held.close()
    assert run(_cfg(wd, steps=6), devices=ONE).steps_done == 6  # free again once the first run ends
