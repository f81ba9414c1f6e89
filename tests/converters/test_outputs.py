"""Writes that fail or are cut short: a file size limit (a full disk, as far as the writer can tell), a directory
that cannot be written to, and SIGKILL at each rename of an export (to-torch, save_safetensors, save_npz) or a
conversion (to-jax). Whatever happens, the earlier file or checkpoint stays intact and readable, nothing
half-written is left under the final name, and a failure names the path.

Each case runs in a child process (a size limit or a kill must not touch the test process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import vitjax
from converters import orbax_io
from converters.io import save_safetensors
from converters.npz import save_npz

NAME = "test_vit_relpos"  # timm's tiny test model: 850k weights, a 3.4 MB export
SMALL = "vit_tiny_patch16_224", dict(depth=1, img_size=32, patch_size=8)  # for the library writers

PRELUDE = """
import os, resource, signal, sys
mode, arg = sys.argv[1], int(sys.argv[2])
if mode == "fsize":  # writes beyond `arg` bytes fail with EFBIG (Python ignores SIGXFSZ)
    resource.setrlimit(resource.RLIMIT_FSIZE, (arg, arg))
elif mode == "kill":  # SIGKILL at the arg-th rename: the file or directory is complete but not yet in place
    real, calls = os.replace, [0]

    def replace(a, b):
        calls[0] += 1
        if calls[0] == arg:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(a, b)

    os.replace = replace
"""


def _child(tmp_path: Path, mode: str, arg: int, body: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.getcwd()}
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, mode, str(arg)], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def _leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}."))


def _ckpt(tmp_path: Path, seed: int) -> Path:
    model = vitjax.create_model(NAME, seed=seed)
    return orbax_io.save(model, tmp_path / f"ckpt{seed}")


@pytest.fixture
def old_ckpt(tmp_path):
    """A vitjax checkpoint (seed 0) at ckpt0 and another (seed 1) at ckpt1."""
    return _ckpt(tmp_path, 0), _ckpt(tmp_path, 1)


def _weights(ckpt: Path) -> dict[str, np.ndarray]:
    model = vitjax.create_model(NAME, pretrained=ckpt)
    return {k: np.asarray(v.get_value()) for k, v in vitjax_weights(model).items()}


def vitjax_weights(model):
    from converters.engine import weights

    return weights(model)


@pytest.mark.parametrize("mode,arg", [("fsize", 50_000), ("kill", 1)])
def test_to_torch_keeps_the_earlier_file(tmp_path, old_ckpt, mode, arg):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"earlier")
    r = _child(
        tmp_path,
        mode,
        arg,
        "from converters.__main__ import main\nsys.exit(main(['to-torch', '--src', 'ckpt0', '--out', 'w.safetensors']))",  # noqa: E501
    )
    if mode == "fsize":
        assert r.returncode == 3, r.stderr[-2000:]
        assert "error: w.safetensors: could not be written" in r.stderr and "File too large" in r.stderr
    else:
        assert r.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"earlier"
    if mode == "fsize":
        assert _leftovers(tmp_path, out.name) == []


@pytest.mark.parametrize("writer", ["save_safetensors", "save_npz"])
@pytest.mark.parametrize("mode,arg", [("fsize", 50_000), ("kill", 1)])
def test_library_writers_keep_the_earlier_file(tmp_path, writer, mode, arg):
    out = tmp_path / ("w.safetensors" if writer == "save_safetensors" else "w.npz")
    out.write_bytes(b"earlier")
    body = f"""
    import numpy as np
    import vitjax
    from converters import to_torch
    from converters.io import save_safetensors
    from converters.npz import save_npz
    model = vitjax.create_model("{SMALL[0]}", **{SMALL[1]})
    try:
        if "{writer}" == "save_safetensors":
            save_safetensors(to_torch(model), "{out.name}")
        else:
            save_npz(model, "{out.name}")
    except OSError as e:
        print(f"OSError {{e}}", file=sys.stderr)
        sys.exit(7)
    """
    r = _child(tmp_path, mode, arg, body)
    if mode == "fsize":
        assert r.returncode == 7, r.stderr[-2000:]
        assert r.stderr.startswith("OSError") and out.name in r.stderr and "File too large" in r.stderr
        assert _leftovers(tmp_path, out.name) == []
    else:
        assert r.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"earlier"
    # and the writers do work (so the cases above failed for the reason given)
    model = vitjax.create_model(SMALL[0], **SMALL[1])
    if writer == "save_safetensors":
        from converters import to_torch

        save_safetensors(to_torch(model), out)
        assert set(load_file(str(out))) == set(to_torch(model))
    else:
        save_npz(model, out)
        assert "head/kernel" in np.load(out).files


@pytest.mark.parametrize("mode,arg", [("fsize", 50_000), ("kill", 1), ("kill", 2)])
def test_to_jax_keeps_the_earlier_checkpoint(tmp_path, old_ckpt, mode, arg):
    """to-jax over an existing checkpoint directory: whatever stops it, ckpt1 is then either the earlier
    checkpoint or the new one, complete (here they differ: seeds 1 and 0)."""
    earlier, new = _weights(old_ckpt[1]), _weights(old_ckpt[0])
    cmd = ["to-jax", "--model", NAME, "--src", "ckpt0", "--out", "ckpt1"]
    body = f"from converters.__main__ import main\nsys.exit(main({cmd!r}))"
    r = _child(tmp_path, mode, arg, body)
    assert r.returncode != 0 or mode == "kill", r.stderr[-2000:]
    got = _weights(old_ckpt[1])
    same_as = [name for name, w in (("earlier", earlier), ("new", new)) if all(np.array_equal(got[k], w[k]) for k in w)]
    assert same_as, "ckpt1 is neither the earlier nor the new checkpoint"
    if mode == "fsize":
        assert r.returncode == 3 and "error: ckpt1: could not be written" in r.stderr, r.stderr[-2000:]
        assert same_as == ["earlier"] and _leftovers(tmp_path, "ckpt1") == []


def test_unwritable_destination_is_named(tmp_path, old_ckpt, monkeypatch, capsys):
    """A destination whose directory cannot be made (its parent is a file; a read-only directory cannot be shown
    when the tests run as root): exit 3 naming it, nothing written."""
    from converters.__main__ import EXIT_CHECKPOINT, main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["to-torch", "--src", "ckpt0", "--out", "afile/w.safetensors"]) == EXIT_CHECKPOINT
    assert "error: afile/w.safetensors: could not be written" in capsys.readouterr().err
    assert main(["to-jax", "--model", NAME, "--src", "ckpt0", "--out", "afile/ckpt"]) == EXIT_CHECKPOINT
    assert "error: afile/ckpt: could not be written" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"
