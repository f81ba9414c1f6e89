"""Ahead-of-time compilation of the train step for TPU topologies (libtpu's compiler, no TPU needed).

A 2-block ViT-Tiny at 64 px is compiled for ``v5e:2x2`` and ``v4:2x2x1`` under the data-parallel, FSDP and
tensor-parallel presets; the reports are checked for fit, FLOPs, collectives and host traffic. The command is also
run on a 2-host topology (``v5e:2x4``)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from jax import numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from train import aot, aot_hlo, aot_report, aot_search
from train.config import parse_args

TINY = ["--model", "vit_tiny_patch16_224", "--depth", "2", "--img-size", "64", "--precision", "bf16"]
PRESETS = {  # name -> (topology, flags)
    "dp": ("v5e:2x2", ["--mesh", "data=4", "--sharding", "dp"]),
    "fsdp": ("v5e:2x2", ["--mesh", "fsdp=4", "--sharding", "fsdp"]),
    "tp": ("v4:2x2x1", ["--mesh", "data=1,tensor=4", "--sharding", "tp", "--remat"]),
}


@pytest.fixture(scope="module")
def topos() -> dict[str, aot.Topology]:
    return {name: aot.topology(name) for name in ("v5e:2x2", "v4:2x2x1")}


@pytest.fixture(scope="module")
def reports(topos) -> dict[str, aot_report.Report]:
    out = {}
    for preset, (topo, flags) in PRESETS.items():
        cfg = parse_args([*TINY, *flags, "--batch-size", "16", "--steps", "100"])
        out[preset] = aot.compile_report(cfg, topos[topo], total_steps=100)
    return out


def test_topologies():
    v5e = aot.topology("v5e:2x2")
    assert (len(v5e.devices), v5e.hosts, v5e.devices_per_chip) == (4, 1, 1)
    assert v5e.chip.hbm == 16 * aot_report.GiB and v5e.chip.bf16_flops == 197e12
    v4 = aot.topology("v4:2x2x4")  # v4-32: 16 chips, one (megacore) device each, 4 hosts
    assert (len(v4.devices), v4.hosts, v4.devices_per_chip) == (16, 4, 1)
    multi = aot.topology("v5e:4x8")
    assert (len(multi.devices), multi.hosts) == (32, 8)
    with pytest.raises(ValueError, match="unknown TPU generation"):
        aot.topology("v9x:2x2")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_train_step_compiles(reports, preset):
    r = reports[preset]
    assert r.fits and r.total_bytes < r.hbm_bytes and r.headroom_bytes > 0
    assert r.flops_per_device > 0 and r.step_time_s > 0 and 0 < r.mfu_bound <= 1
    assert r.host_transfers == [], r.host_transfers
    assert r.alias_bytes > 0  # the donated state is updated in place
    c = r.collectives
    if preset == "dp":  # replicated weights: gradients are all-reduced, nothing is gathered
        assert c["all-reduce"]["count"] > 0 and c["all-gather"]["count"] == 0
    elif preset == "fsdp":  # weights gathered for use, gradients reduce-scattered to their shards
        assert c["all-gather"]["count"] > 0 and c["reduce-scatter"]["count"] > 0
    else:
        assert r.mesh == {"data": 1, "fsdp": 1, "tensor": 4}
        assert c["all-reduce"]["count"] > 0


def test_fsdp_splits_parameter_memory(reports):
    dp, fsdp = reports["dp"], reports["fsdp"]
    ratio = dp.argument_bytes / fsdp.argument_bytes
    assert 3.0 < ratio <= 4.05, ratio  # 4 shards; a few small leaves (biases of odd sizes, step, key) stay whole
    assert dp.flops_per_step == pytest.approx(fsdp.flops_per_step, rel=0.1)


def test_report_text(reports):
    text = aot_report.format_report(reports["fsdp"])
    for word in ("FITS", "all-gather", "reduce-scatter", "MFU bound", "per process 16"):
        assert word in text


def test_host_transfer_detector(topos):
    """The check would see a callback: a debug print inside a TPU program becomes host send/recv."""
    mesh = Mesh(np.asarray(topos["v5e:2x2"].devices), ("d",))
    sh = NamedSharding(mesh, P("d"))

    def f(x):
        jax.debug.print("{}", x.sum())
        return x * 2

    hlo = jax.jit(f, in_shardings=sh).lower(jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=sh)).compile()
    assert aot_hlo.host_transfers(hlo.as_text())


def test_collective_parser():
    hlo = "\n".join(
        [
            "%all-reduce-scatter.1 (input: bf16[16,768]) -> bf16[4,768] {",
            "  %all-reduce.3 = bf16[16,768]{1,0} all-reduce(%input), replica_groups={{0,1,2,3}}",
            "}",
            "ENTRY %main (p: f32[8]) -> f32[32] {",
            "  %all-gather-start = (f32[8]{0}, f32[32]{0}) all-gather-start(%p), dimensions={0}",
            "  %all-reduce.1 = f32[32]{0} all-reduce(%x), to_apply=%add",
            "  %a2a = (f32[2,4]{1,0}, f32[2,4]{1,0}) all-to-all(%y, %z), dimensions={0}",
            "  %cp = (bf16[64,128]{1,0}, bf16[64,128]{1,0}, u32[], u32[]) collective-permute-start(%w), "
            "source_target_pairs={{0,1},{1,2},{2,3},{3,0}}",
            "}",
        ]
    )
    c = aot_hlo.collectives(hlo)
    assert c["reduce-scatter"] == {"count": 1, "bytes": 4 * 768 * 2}
    assert c["all-gather"] == {"count": 1, "bytes": 32 * 4}
    assert c["all-reduce"] == {"count": 1, "bytes": 32 * 4}
    assert c["all-to-all"] == {"count": 1, "bytes": 2 * 2 * 4 * 4}
    assert c["collective-permute"] == {"count": 1, "bytes": 64 * 128 * 2}  # the result, not the u32 flags


def test_too_big_does_not_fit(capsys):
    """Two 8192-wide blocks (1.6 B parameters, 16 bytes each with AdamW) replicated on a 16 GiB v5e chip."""
    argv = [*TINY, "--embed-dim", "8192", "--num-heads", "64", "--mesh", "data=4", "--sharding", "dp"]
    code = aot.main([*argv, "--batch-size", "4", "--topology", "v5e:2x2"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "DOES NOT FIT" in out


def test_find_batch_search(topos, monkeypatch):
    """The search follows the memory line, with the compile replaced by a memory rule: it finds the same batch as
    trying every multiple of data x fsdp, in a few compiles, also when memory is not affine in the batch."""
    tried = []

    def rule(memory, hbm):
        def fake(cfg, topo, **kw):
            tried.append(cfg.batch_size)
            need = memory(cfg.batch_size)
            return SimpleNamespace(fits=need <= hbm, total_bytes=need, hbm_bytes=hbm, batch=cfg.batch_size)

        return fake

    def search(memory, hbm, start=8, **kw):
        tried.clear()
        monkeypatch.setattr(aot, "compile_report", rule(memory, hbm))
        cfg = parse_args([*TINY, "--mesh", "data=4", "--batch-size", str(start), "--steps", "1"])
        best, report = aot.find_batch(cfg, topos["v5e:2x2"], log=lambda s: None, **kw)
        brute = max((b for b in range(4, kw.get("limit", 1 << 16) + 1, 4) if memory(b) <= hbm), default=0)
        return best, report, brute

    seen = []
    best, report, brute = search(lambda b: b, 44, progress=lambda b, r: seen.append((b, r.batch, len(r.search))))
    assert best == brute == 44 and report.batch == 44 and len(tried) <= 4  # proportional
    # after every compile, the best so far with the search up to then (a search cut short keeps its result)
    assert [n for _, _, n in seen] == list(range(1, len(tried) + 1)) and seen[-1] == (44, 44, len(tried))
    assert all(b == batch and b <= 44 for b, batch, _ in seen if b)
    best, report, brute = search(lambda b: 1000 + 3 * b, 4000, start=64)  # a fixed part: the line finds it
    assert best == brute == 1000 and report.batch == 1000 and len(tried) <= 5
    best, _, brute = search(lambda b: 1000 + 3 * b, 4000, start=4096)  # from above
    assert best == brute == 1000 and len(tried) <= 5
    stairs = lambda b: 512 * (1 + b // 100) + b * b // 50  # noqa: E731  not affine: steps and a curve
    best, _, brute = search(stairs, 20000, start=16)
    assert best == brute and len(tried) <= 10
    # as the TPU compiler does: near-affine with a few percent of scatter from its scheduling choices, monotonic
    # only on average (a batch that fits can be above one that does not); the search returns a batch that fits
    # with the next multiple of the granularity not fitting
    noisy = lambda b: 1000 + 10 * b + (b * 7919 % 13) * 40  # noqa: E731
    best, report, _ = search(noisy, 16000, start=256)
    assert noisy(best) <= 16000 < noisy(best + 4) and len(tried) <= 10
    best, _, brute = search(lambda b: b, 1 << 30, limit=256)  # everything fits: stops at the limit
    assert best == brute == 256
    best, _, brute = search(lambda b: 1000 + b, 4000, granularity=64)  # a coarser bracket
    assert brute - 64 < best <= brute == 3000
    monkeypatch.setattr(
        aot, "compile_report", lambda cfg, topo, **kw: SimpleNamespace(fits=False, total_bytes=1, hbm_bytes=0)
    )
    cfg = parse_args([*TINY, "--mesh", "data=4", "--batch-size", "8", "--steps", "1"])
    assert aot.find_batch(cfg, topos["v5e:2x2"], log=lambda s: None)[0] == 0


def test_program_flops_count_remat(topos):
    """The MFU bound divides by the program's FLOPs (global, before optimisation), which include remat's
    recomputation: about 3 forward passes without remat, up to 4 with. (The TPU executable's own count is per device
    and counts loop bodies once.)"""
    cfg = parse_args([*TINY, "--mesh", "fsdp=4", "--batch-size", "8", "--steps", "1"])
    built = aot.build(cfg, topos["v5e:2x2"], total_steps=1)
    fwd = aot.forward_flops(built, 8)
    plain = aot.program_flops(built)
    remat = aot.program_flops(aot.build(dataclasses.replace(cfg, remat=True), topos["v5e:2x2"], total_steps=1))
    assert 2.8 < plain / fwd < 3.4, plain / fwd
    assert 1.1 * plain < remat < 4.4 * fwd, (plain / fwd, remat / fwd)  # blocks recomputed (not embed and head)


def test_activations_stay_split_over_the_batch(topos, monkeypatch):
    """With 4 heads on a 4-way fsdp axis, the partitioner left to itself moves activations between batch and
    head splits with all-to-alls and gathers the whole batch for weight gradients (ViT-L on v5e-8 fitted 19
    images per chip that way, 249 with the constraint); ``train.mesh.activation_constraint`` prevents it."""
    flags = [*TINY, "--num-heads", "4", "--embed-dim", "256", "--mesh", "fsdp=4", "--remat"]
    cfg = parse_args([*flags, "--batch-size", "16", "--steps", "100"])
    constrained = aot.compile_report(cfg, topos["v5e:2x2"], total_steps=100)
    monkeypatch.setattr(aot.mesh_lib, "activation_constraint", lambda mesh: None)
    free = aot.compile_report(cfg, topos["v5e:2x2"], total_steps=100)
    assert free.collectives["all-to-all"]["count"] > 5
    assert constrained.collectives["all-to-all"]["count"] <= 1
    assert constrained.program_flops_per_step == pytest.approx(free.program_flops_per_step)


def test_depthwise_conv_stays_a_convolution_on_tpu(topos):
    """``vitjax.xla_cpu.conv_general_dilated`` rewrites depthwise convolutions for the CPU only: compiled for a
    TPU, forward and both gradients are convolutions (the CPU form has none)."""
    from vitjax.xla_cpu import conv_general_dilated

    mesh = Mesh(np.asarray(topos["v5e:2x2"].devices), ("d",))
    sh = NamedSharding(mesh, P("d"))
    rep = NamedSharding(mesh, P())

    def loss(x, w):
        y = conv_general_dilated(
            x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=8
        )
        return jnp.sum(y.astype(jnp.float32) ** 2)

    x = jax.ShapeDtypeStruct((8, 16, 16, 8), jnp.bfloat16, sharding=sh)
    w = jax.ShapeDtypeStruct((7, 7, 1, 16), jnp.bfloat16, sharding=rep)
    hlo = jax.jit(jax.grad(loss, (0, 1)), in_shardings=(sh, rep)).lower(x, w).compile().as_text()
    assert hlo.count(" convolution(") >= 3, hlo


def test_find_batch_resumes_a_search_cut_short(topos, monkeypatch, tmp_path):
    """A search stopped after two compiles and resumed from the report it left (what --json holds) ends where the
    whole search ends, without compiling again what it had; a report made with other settings is refused."""
    cfg = parse_args([*TINY, "--mesh", "data=4", "--batch-size", "64", "--steps", "1"])
    topo = topos["v5e:2x2"]
    required = [
        f.name for f in dataclasses.fields(aot_report.Report) if f.default is f.default_factory is dataclasses.MISSING
    ]
    base = {name: 0 for name in required}
    base.update(model=cfg.model, topology=topo.name, mesh={"data": 4, "fsdp": 1, "tensor": 1})
    base.update(sharding=cfg.sharding, precision=cfg.precision, remat=cfg.remat, hbm_bytes=4000)
    tried = []

    def fake(c, topo, **kw):
        tried.append(c.batch_size)
        need = 1000 + 3 * c.batch_size
        return aot_report.Report(**{**base, "global_batch": c.batch_size, "total_bytes": need, "fits": need <= 4000})

    monkeypatch.setattr(aot, "compile_report", fake)
    full, _ = aot.find_batch(cfg, topo, log=lambda s: None)
    whole, saved = list(tried), []

    class Stop(Exception):
        pass

    def progress(_, r):
        saved.append(dataclasses.replace(r, search_done=False))
        if len(saved) == 2:
            raise Stop

    tried.clear()
    with pytest.raises(Stop):
        aot.find_batch(cfg, topo, log=lambda s: None, progress=progress)
    cut = saved[-1]
    assert cut.fits and [b for b, _, _ in cut.search] == whole[:2] == tried
    tried.clear()
    best, report = aot.find_batch(cfg, topo, log=lambda s: None, resume=cut)
    assert best == full == 1000 and report.global_batch == 1000
    assert not set(tried) & set(whole[:2]) and 2 + len(tried) <= len(whole) + 1
    assert [b for b, _, _ in report.search] == whole[:2] + tried
    # the command: the report file of the cut search is continued and ends complete
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(dataclasses.asdict(cut)))
    args = [*TINY, "--mesh", "data=4", "--batch-size", "64", "--steps", "1", "--topology", topo.name]
    tried.clear()
    assert aot.main([*args, "--find-batch", "--json", str(path), "--resume"]) == 0
    final = json.loads(path.read_text())
    assert final["search_done"] and final["global_batch"] == 1000 and len(final["search"]) == len(report.search)
    path.write_text(json.dumps({**final, "search_done": False}))  # stopped after its last compile, bracket closed
    tried.clear()
    assert aot.main([*args, "--find-batch", "--json", str(path), "--resume"]) == 0
    assert not tried and json.loads(path.read_text()) == final  # nothing compiled; now marked complete
    assert aot.main([*args, "--find-batch", "--json", str(path), "--resume"]) == 0  # complete: reported again
    assert not tried and json.loads(path.read_text()) == final
    with pytest.raises(SystemExit):  # even a complete search is not reported for other settings
        aot.main([*args, "--precision", "fp32", "--find-batch", "--json", str(path), "--resume"])
    assert not tried and json.loads(path.read_text()) == final
    with pytest.raises(aot_search.ResumeError, match="precision 'bf16' \\(now 'fp32'\\)"):
        aot.find_batch(dataclasses.replace(cfg, precision="fp32"), topo, log=lambda s: None, resume=cut)
    with pytest.raises(aot_search.ResumeError, match="not of a batch that fits"):
        aot.find_batch(cfg, topo, log=lambda s: None, resume=dataclasses.replace(cut, fits=False))


def test_table_rows_name_the_fsdp_size_threshold():
    row = dict(
        model="m",
        topology="v5e:2x4",
        devices=8,
        chip="TPU v5e",
        hosts=2,
        mesh={"data": 1, "fsdp": 8, "tensor": 1},
        global_batch=64,
        per_device_batch=8,
        total_bytes=2**30,
        hbm_bytes=16 * 2**30,
        program_flops_per_step=1e12,
        step_time_s=0.01,
        mfu_bound=0.75,
        search=[[64, 2**30, True], [128, 2**35, False]],
    )
    plain = aot_report.table([row]).splitlines()[-1]
    assert "| fsdp=8 | 64 (8) | 128 |" in plain
    assert "| fsdp=8 (params >= 4096) |" in aot_report.table([{**row, "fsdp_min_size": 4096}]).splitlines()[-1]
    assert "| 64 (8, search unfinished) | 128 |" in aot_report.table([{**row, "search_done": False}]).splitlines()[-1]


def test_import_leaves_the_environment_alone():
    """Importing ``train.aot`` sets no environment variable (beyond jax's own); its command keeps jax's backend on
    the CPU (with libtpu installed jax would otherwise look for a TPU); making a topology leaves no TPU variable."""
    cell = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "aot_cells").glob("*.json"))[0]
    probe = f"""
import json, os
import jax  # with libtpu installed, jax sets TPU_LIBRARY_PATH and TPU_SKIP_MDS_QUERY itself
before = dict(os.environ)
from train import aot
assert dict(os.environ) == before, sorted(set(os.environ) ^ set(before))
assert aot.main(["--table", {str(cell)!r}]) == 0
aot.topology("v5e:2x2")
print(json.dumps([jax.config.jax_platforms, sorted(set(os.environ) ^ set(before))]))
"""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and not k.startswith(("TPU_", "ALLOW_MULTIPLE"))}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(aot.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == ["cpu", []]


def test_multi_host_topology_compiles(tmp_path, capsys):
    """``python -m train.aot`` on a 2-host topology (v5e:2x4, 8 chips over 2 hosts; every row of the README's TPU
    table is multi-host): the step compiles over both hosts' devices, and the report gives 2 hosts and each
    process's share of the global batch."""
    topo = aot.topology("v5e:2x4")
    assert topo.hosts == 2 and {d.process_index for d in topo.devices} == {0, 1}
    path = tmp_path / "v5e-2x4.json"
    argv = [*TINY, "--mesh", "fsdp=8", "--sharding", "fsdp", "--batch-size", "32", "--steps", "100"]
    assert aot.main([*argv, "--topology", "v5e:2x4", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    r = json.loads(path.read_text())
    assert (r["hosts"], r["devices"], r["global_batch"], r["per_process_batch"]) == (2, 8, 32, 16)
    assert r["per_device_batch"] == 4 and r["fits"] and r["collectives"]["all-gather"]["count"] > 0
    assert "v5e:2x4 (8 x TPU v5e device(s), 2 host(s))" in out
    assert "global 32, per process 16 (x2 hosts), per data-parallel device 4" in out


def test_attention_switch(reports, topos):
    """``--attention fused`` compiles XLA's ``jax.nn.dot_product_attention`` (vitjax.set_fused_attention(True));
    the default on a TPU is the plain form. Both do the same maths; the report and the table say which."""
    from vitjax.layers.attention import set_fused_attention

    plain = reports["fsdp"]
    assert plain.attention == "plain"
    set_fused_attention(True)
    try:
        cfg = parse_args([*TINY, *PRESETS["fsdp"][1], "--batch-size", "16", "--steps", "100"])
        fused = aot.compile_report(cfg, topos["v5e:2x2"], total_steps=100)
    finally:
        set_fused_attention(None)
    assert fused.attention == "fused" and fused.fits
    assert plain.program_flops_per_step == pytest.approx(fused.program_flops_per_step, rel=0.02)
    rows = aot_report.table([dataclasses.asdict(r) for r in (plain, fused)]).splitlines()[2:]
    assert "vit_tiny_patch16_224 (plain attention) |" in rows[0] and "(fused attention) |" in rows[1]
    old = {k: v for k, v in dataclasses.asdict(plain).items() if k != "attention"}  # a report from before the switch
    assert aot_report.table([old]).splitlines()[2].startswith("| vit_tiny_patch16_224 | ")
    with pytest.raises(SystemExit):
        aot.main(["--topology", "v5e:2x2", "--attention", "flash", *TINY])
