"""Every checkpoint and config reader fed truncated, garbled and hostile files (issue 21's reader sweep).

Each reader must either read the file or refuse it with its one error type, naming the file: converters'
:class:`CheckpointError` (or :class:`ConversionError` for a readable checkpoint that does not fit the model)
and train's :class:`ConfigError`. No other exception, no code run from the file, no hang (every example has a
deadline) and no memory blow-up: the crafted bombs run in a subprocess whose address space is capped
(``RLIMIT_AS``) a little above what it holds after its imports.

The fuzzing is hypothesis's, derandomized (the same examples on every run) and bounded per test: mutations
(truncate, flip, overwrite, insert, delete) of a valid file of each format, plus generated safetensors headers.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vitjax
from converters import orbax_io
from converters.engine import ConversionError
from converters.hf_flax import load_msgpack
from converters.io import CheckpointError, SafetensorsFile, load_state_dict, save_safetensors
from converters.npz import load_npz, to_npz
from train.config import ConfigError, load_file

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SMALL = dict(embed_dim=16, num_heads=2, depth=1, img_size=32, patch_size=16, num_classes=4)
NPZ_MODEL = "vit_tiny_patch16_224"


# -- helpers ------------------------------------------------------------------------------------------------------
@st.composite
def mutated(draw, original: bytes) -> bytes:
    """A valid file damaged by one to four edits."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
        if op == "truncate":
            del data[i:]
        elif op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[i : i + len(chunk)] = chunk
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[i : i + draw(st.integers(1, 64))]
    return bytes(data)


_SERIAL = itertools.count()


def fresh(tmp_path: Path, name: str) -> Path:
    """A new file name per example: a tensor memory-mapped from an earlier example's file stays valid."""
    return tmp_path / f"{next(_SERIAL)}-{name}"


def refused_clearly(read, path: Path, errors=(CheckpointError, ConversionError)) -> bool:
    """Run ``read(path)``; True if it refused with one of ``errors`` naming the file, False if it read it.
    Any other exception propagates (and fails the test)."""
    try:
        read(path)
    except errors as e:
        assert str(path) in str(e) or path.name in str(e), f"the error does not name the file: {e}"
        return True
    return False


def read_all(path: Path) -> None:
    sd = load_state_dict(path)
    for k in sd:
        np.asarray(sd[k])


def state_dict() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "blocks.0.attn.qkv.weight": rng.standard_normal((6, 4)).astype(np.float32),
        "blocks.0.attn.qkv.bias": rng.standard_normal(6).astype(np.float16),
        "pos_embed": rng.standard_normal((1, 3, 4)).astype(np.float64),
        "num_batches_tracked": np.array(7, np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    """A valid small file of every format, as bytes."""
    d = tmp_path_factory.mktemp("valid")
    sd = state_dict()
    out = {"safetensors": save_safetensors(sd, d / "w.safetensors").read_bytes()}
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, d / "w.pth")
    out["pth"] = (d / "w.pth").read_bytes()
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, d / "legacy.pth", _use_new_zipfile_serialization=False)
    out["pth_legacy"] = (d / "legacy.pth").read_bytes()
    from flax import serialization

    tree = {"params": {"embeddings": {"cls_token": sd["pos_embed"][:, :1]}, "dense": {"kernel": sd["empty"].T}}}
    out["msgpack"] = serialization.msgpack_serialize(tree)
    model = vitjax.create_model(NPZ_MODEL, **SMALL)
    with open(d / "w.npz", "wb") as f:
        np.savez(f, **to_npz(model))
    out["npz"] = (d / "w.npz").read_bytes()
    out["json"] = json.dumps({"model": "vit_tiny_patch16_224", "steps": 10, "model_args": {"depth": 2}}).encode()
    out["yaml"] = b"model: vit_tiny_patch16_224\nsteps: 10\nlr: 1.0e-3\nmodel_args:\n  depth: 2\n"
    return out


@pytest.fixture(scope="module")
def npz_model():
    return vitjax.create_model(NPZ_MODEL, abstract=True, **SMALL)


# -- fuzzing: damaged valid files ---------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_damaged_safetensors(files, tmp_path, data):
    path = fresh(tmp_path, "w.safetensors")
    path.write_bytes(data.draw(mutated(files["safetensors"])))
    refused_clearly(read_all, path)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_damaged_pth(files, tmp_path, data):
    for kind in ("pth", "pth_legacy"):
        path = fresh(tmp_path, f"{kind}.pth")
        path.write_bytes(data.draw(mutated(files[kind])))
        refused_clearly(read_all, path)


@FUZZ
@given(data=st.data())
def test_damaged_npz(files, npz_model, tmp_path, data):
    path = fresh(tmp_path, "w.npz")
    path.write_bytes(data.draw(mutated(files["npz"])))
    refused_clearly(lambda p: load_npz(npz_model, p, init=lambda: vitjax.create_model(NPZ_MODEL, **SMALL)), path)


@FUZZ
@given(data=st.data())
def test_damaged_msgpack(files, tmp_path, data):
    path = fresh(tmp_path, "flax_model.msgpack")
    path.write_bytes(data.draw(mutated(files["msgpack"])))
    refused_clearly(load_msgpack, path)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["json", "yaml"]))
def test_damaged_config(files, tmp_path, data, kind):
    path = fresh(tmp_path, f"run.{kind}")
    path.write_bytes(data.draw(mutated(files[kind])))
    refused_clearly(lambda p: load_file(str(p)), path, errors=(ConfigError,))


# -- fuzzing: generated safetensors headers -----------------------------------------------------------------------
_DIM = st.one_of(st.integers(0, 4), st.integers(0, 2**64), st.just(-1), st.just(True), st.floats(), st.text(max_size=2))
_ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "f32", "", "OBJ"]),
        "shape": st.one_of(st.lists(_DIM, max_size=3), st.just(None), st.integers()),
        "data_offsets": st.one_of(st.lists(st.integers(-2, 2**40), min_size=0, max_size=3), st.lists(_DIM, max_size=2)),
    },
    optional={"extra": st.integers()},
)


@FUZZ
@given(
    header=st.dictionaries(st.text(max_size=8), st.one_of(_ENTRY, st.integers(), st.text(), st.none()), max_size=4),
    body=st.binary(max_size=96),
    claimed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_generated_safetensors_headers(tmp_path, header, body, claimed):
    """Headers that claim terabytes, offsets past the end or overlapping, odd dtypes and shapes: read exactly
    when consistent, refused otherwise."""
    raw = json.dumps(header).encode()
    path = fresh(tmp_path, "g.safetensors")
    path.write_bytes(int(len(raw) if claimed is None else claimed).to_bytes(8, "little") + raw + body)
    if not refused_clearly(read_all, path):  # accepted: every tensor must then be exactly its bytes
        sd = SafetensorsFile(path)
        assert sum(sd[k].nbytes // (2 if header[k]["dtype"] == "BF16" else 1) for k in sd) == len(body)


def test_safetensors_reads_alike_both_ways(tmp_path):
    """The one reader, memory-mapped or with pread: the same arrays, bit for bit (BF16 widened exactly)."""
    from safetensors.torch import save_file

    sd = state_dict()
    tensors = {k: torch.from_numpy(v) for k, v in sd.items()} | {"bf": torch.randn(3, 5).to(torch.bfloat16)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    a, b = SafetensorsFile(tmp_path / "w.safetensors", "pread"), SafetensorsFile(tmp_path / "w.safetensors", "mmap")
    for k, t in tensors.items():
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert a[k].dtype == b[k].dtype == want.dtype and np.array_equal(a[k], want) and np.array_equal(b[k], want)
        assert a[k].flags.writeable and b[k].flags.writeable


# -- hostile files --------------------------------------------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    payload = _RunsCode()
    payload.marker = marker
    for legacy in (False, True):
        path = tmp_path / f"evil{int(legacy)}.pth"
        torch.save({"w": torch.zeros(2), "x": payload}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match=rf"{path.name}: refused to load: it holds Python objects"):
            load_state_dict(path)
        assert not marker.exists()


def test_non_tensor_values_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2), "n": 3}, path)
    with pytest.raises(CheckpointError, match=r"w\.pth: does not hold a state_dict \('n' is a int\)"):
        load_state_dict(path)


def test_yaml_with_python_tags_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "run.yaml"
    path.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="run.yaml: not a readable config file"):
        load_file(str(path))
    assert not marker.exists()
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="run.yaml: a config file holds a mapping"):
        load_file(str(path))
    path.write_text("model: x\nsetps: 3\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown fields \['setps'\]"):
        load_file(str(path))


def test_vitjax_manifest_fields_are_checked(tmp_path):
    model = vitjax.create_model(NPZ_MODEL, **SMALL)
    good = orbax_io.save(model, tmp_path / "ckpt")
    meta = json.loads((good / "vitjax.json").read_text())
    cases = {
        "a list": [],
        "no weights": {**meta, "weights": {}},
        "a terabyte weight": {**meta, "weights": {**meta["weights"], "pos_embed": [[2**40], "float32"]}},
        "an odd dtype": {**meta, "weights": {**meta["weights"], "pos_embed": [[1, 5, 16], "V1000000"]}},
        "an unknown model": {**meta, "model": "no_such_model"},
        "bad overrides": {**meta, "overrides": {"depth": "three"}},
        "nested too deeply": None,  # the manifest is then 100,000 nested lists
    }
    target = vitjax.create_model(NPZ_MODEL, abstract=True, **{**SMALL, "num_classes": 5})  # (through torch naming)
    for what, manifest in cases.items():
        path = tmp_path / what.replace(" ", "_")
        shutil.copytree(good, path)
        text = "[" * 100_000 + "]" * 100_000 if manifest is None else json.dumps(manifest)
        (path / "vitjax.json").write_text(text)
        with pytest.raises(CheckpointError, match=str(path)):
            orbax_io.restore(target, path)


@settings(FUZZ, max_examples=12, deadline=timedelta(seconds=20))
@given(data=st.data())
def test_damaged_vitjax_checkpoint(tmp_path_factory, data):
    """A vitjax checkpoint directory with one of its files damaged (its manifest or an orbax file)."""
    base = tmp_path_factory.getbasetemp() / "vitjax_good"
    if not base.exists():
        orbax_io.save(vitjax.create_model(NPZ_MODEL, **SMALL), base)
    files_ = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())
    victim = data.draw(st.sampled_from(files_))
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    shutil.copytree(base, path)
    (path / victim).write_bytes(data.draw(mutated((base / victim).read_bytes())))
    target = vitjax.create_model(NPZ_MODEL, abstract=True, **SMALL)
    refused_clearly(lambda p: orbax_io.restore(target, p), path)


# -- bombs, under a capped address space ----------------------------------------------------------------------------
def _deflated_member(z: zipfile.ZipFile, name: str, head: bytes, size: int) -> None:
    """A member of ``size`` bytes (``head`` then zeros), deflated: a few hundred KiB for a GiB."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with z.open(info, "w", force_zip64=True) as f:
        f.write(head)
        chunk = bytes(2**24)
        for _ in range((size - len(head)) // len(chunk)):
            f.write(chunk)


def _bombs(d: Path, files: dict[str, bytes]) -> dict[str, tuple[str, Path]]:
    """name -> (reader, path) of each crafted file; :data:`_WHY` says why each must be refused."""
    gib = 2**30
    out = {}
    p = d / "header_claims_terabytes.safetensors"
    p.write_bytes((2**40).to_bytes(8, "little") + b'{"a":{}}')
    out[p.name] = ("state_dict", p)
    p = d / "tensor_claims_terabytes.safetensors"
    raw = json.dumps({"a": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}).encode()
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(64))
    out[p.name] = ("state_dict", p)
    p = d / "overlapping.safetensors"
    raw = json.dumps(
        {k: {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]} for k in ("a", "b")}
        | {"c": {"dtype": "F32", "shape": [0], "data_offsets": [16, 16]}}
    ).encode()
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(32))
    out[p.name] = ("state_dict", p)

    # a .pth whose pickle inflates to a GiB (torch inflates a compressed member whole)
    p = d / "zip_bomb.pth"
    src = zipfile.ZipFile(_write(d / "valid.pth", files["pth"]))
    with zipfile.ZipFile(p, "w") as z:
        for info in src.infolist():
            if info.filename.endswith("data.pkl"):
                _deflated_member(z, info.filename, src.read(info), gib)
            else:
                z.writestr(info, src.read(info))
    out[p.name] = ("state_dict", p)

    # an .npz with an extra (unexpected) array of a GiB of zeros, and one whose header lies about its size
    p = d / "zip_bomb.npz"
    shutil.copy(_write(d / "valid.npz", files["npz"]), p)
    head = np.lib.format
    with zipfile.ZipFile(p, "a") as z:
        hdr = _npy_header({"descr": "<f4", "fortran_order": False, "shape": (gib // 4,)}, head)
        _deflated_member(z, "bomb.npy", hdr, gib + len(hdr))
    out[p.name] = ("npz", p)
    p = d / "npz_header_lies.npz"
    shutil.copy(d / "valid.npz", p)
    with zipfile.ZipFile(p, "a") as z:
        z.writestr(
            "liar.npy", _npy_header({"descr": "<f4", "fortran_order": False, "shape": (2**40,)}, head) + bytes(64)
        )
    out[p.name] = ("npz", p)

    # msgpack: a map and a bin that claim 4 Gi entries / bytes, and a Flax array that claims a terabyte
    p = d / "absurd_lengths.msgpack"
    p.write_bytes(b"\xdf\xff\xff\xff\xff" + b"\xa1a" + b"\xc6\xff\xff\xff\xff" + bytes(16))
    out[p.name] = ("msgpack", p)
    import msgpack

    p = d / "absurd_array.msgpack"
    arr = msgpack.ExtType(1, msgpack.packb(((2**40,), "float32", bytes(16))))
    p.write_bytes(msgpack.packb({"params": {"w": arr}}))
    out[p.name] = ("msgpack", p)

    # YAML: a billion laughs (each level nine aliases of the one before)
    p = d / "billion_laughs.yaml"
    lines = ["model: x", 'l0: &l0 ["lol"]'] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    p.write_text("model_args:\n  " + "\n  ".join(lines[1:]) + "\nmodel: x\nsteps: 1\n")
    out[p.name] = ("config", p)
    return out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy_header(d: dict, fmt) -> bytes:
    import io

    buf = io.BytesIO()
    fmt.write_array_header_1_0(buf, d)  # magic string included
    return buf.getvalue()


_WHY = {  # what each refusal must say (not merely a failed allocation under the cap)
    "header_claims_terabytes.safetensors": "header claims 1099511627776 bytes",
    "tensor_claims_terabytes.safetensors": "its header needs 4398046511200",
    "overlapping.safetensors": "tensor 'b' overlaps 'a'",
    "zip_bomb.pth": "refused to load: member",
    "zip_bomb.npz": "bomb would inflate to",
    "npz_header_lies.npz": "liar claims (1099511627776,)",
    "absurd_lengths.msgpack": "not a Flax msgpack checkpoint",
    "absurd_array.msgpack": "not a Flax msgpack checkpoint",
    "billion_laughs.yaml": "aliases are not accepted",
}

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import torch  # (imported before the cap, as every reader's own imports)
    import vitjax
    from converters.engine import ConversionError
    from converters.hf_flax import load_msgpack
    from converters.io import CheckpointError, load_state_dict
    from converters.npz import load_npz
    from train.config import ConfigError, parse_args

    NAME, small = sys.argv[2], json.loads(sys.argv[3])
    model = vitjax.create_model(NAME, abstract=True, **small)
    readers = {
        "state_dict": lambda p: [load_state_dict(p)[k] for k in load_state_dict(p)],
        "npz": lambda p: load_npz(model, p, init=lambda: vitjax.create_model(NAME, **small)),
        "msgpack": load_msgpack,
        "config": lambda p: parse_args(["--config", str(p)]).to_json(),
    }
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 512 * 2**20, resource.RLIM_INFINITY))
    for name, (reader, path) in json.loads(sys.argv[1]).items():
        try:
            readers[reader](Path(path))
            out = {"result": "read"}
        except (CheckpointError, ConversionError, ConfigError) as e:
            out = {"result": "refused", "message": str(e), "names_file": path in str(e)}
        except SystemExit as e:
            out = {"result": "exit", "message": str(e), "names_file": path in str(e)}
        except BaseException as e:
            out = {"result": type(e).__name__, "message": str(e)[:300]}
        print("CASE", name, json.dumps(out), flush=True)
    """
)


def test_bombs_are_refused_within_a_capped_address_space(files, tmp_path):
    """Each crafted file is refused with the reader's error naming it, by a process allowed only 512 MiB of
    address space beyond its imports (a bomb read whole would need a GiB or, claimed, terabytes)."""
    cases = _bombs(tmp_path, files)
    assert max(p.stat().st_size for _, p in cases.values()) < 2**23  # small files, not the GiB they inflate to
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    jobs = {k: (r, str(p)) for k, (r, p) in cases.items()}
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(jobs), NPZ_MODEL, json.dumps(SMALL)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    got = {
        ln.split(" ", 2)[1]: json.loads(ln.split(" ", 2)[2]) for ln in r.stdout.splitlines() if ln.startswith("CASE ")
    }
    assert r.returncode == 0 and set(got) == set(cases), (r.returncode, r.stderr[-3000:], got)
    bad = {k: v for k, v in got.items() if v["result"] not in ("refused", "exit") or not v["names_file"]}
    bad |= {k: v for k, v in got.items() if _WHY[k] not in v.get("message", "")}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in bad.items())


def test_msgpack_leaves_must_be_arrays_of_numbers(tmp_path):
    from flax import serialization

    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(serialization.msgpack_serialize({"params": {"dense": {"kernel": "text"}}}))
    with pytest.raises(CheckpointError, match=r"flax_model\.msgpack: dense\.kernel is not an array of numbers"):
        load_msgpack(path)
    path.write_bytes(serialization.msgpack_serialize({"params": {"dense": {"kernel": [[1.0], [2.0, 3.0]]}}}))
    with pytest.raises(CheckpointError, match=r"flax_model\.msgpack: not a Flax msgpack checkpoint"):
        load_msgpack(path)
