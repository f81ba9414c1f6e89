"""``vitjax.xla_cpu``: the CPU backward-pass boundary is an exact identity for every kind of differentiation and
keeps the compiled backward pass of a ViT linear in depth; depthwise convolutions computed by shifted slices on
the CPU equal XLA's convolutions, values and gradients; the barriers that keep a depthwise convolution and an
average pool out of their consumers' YNNPACK fusions are in the compiled programs."""

from __future__ import annotations

import itertools
import math
import re

import jax
import numpy as np
import pytest
from flax import nnx
from jax import numpy as jnp

import vitjax
from vitjax.layers.linear import Dense
from vitjax.layers.spatial_pool import avg_pool2d
from vitjax.xla_cpu import (
    CPU_COMPILER_OPTIONS,
    compiler_options,
    conv_general_dilated,
    grad_boundary,
    materialise,
    max_pool,
)


def _f(x):
    return jnp.sum(jnp.sin(grad_boundary(x * 2.0)) ** 2)


def _g(x):
    return jnp.sum(jnp.sin(x * 2.0) ** 2)


def test_identity_under_every_transform():
    x = jnp.linspace(-1.0, 1.0, 5)
    np.testing.assert_array_equal(grad_boundary(x), x)
    np.testing.assert_array_equal(jax.grad(_f)(x), jax.grad(_g)(x))
    np.testing.assert_array_equal(jax.jvp(_f, (x,), (x,))[1], jax.jvp(_g, (x,), (x,))[1])
    np.testing.assert_array_equal(jax.hessian(_f)(x), jax.hessian(_g)(x))
    opts = compiler_options("cpu")
    np.testing.assert_array_equal(jax.jit(jax.grad(_f), compiler_options=opts)(x), jax.grad(_g)(x))


def _h(x):
    return jnp.sum(jnp.sin(materialise(x * 2.0)) ** 2)


def test_materialise_is_the_identity_under_every_transform():
    x = jnp.linspace(-1.0, 1.0, 5)
    np.testing.assert_array_equal(materialise(x), x)
    np.testing.assert_array_equal(jax.grad(_h)(x), jax.grad(_g)(x))
    np.testing.assert_array_equal(jax.jvp(_h, (x,), (x,))[1], jax.jvp(_g, (x,), (x,))[1])
    opts = compiler_options("cpu")
    np.testing.assert_array_equal(jax.jit(jax.hessian(_h), compiler_options=opts)(x), jax.hessian(_g)(x))


def test_options_per_platform():
    assert compiler_options("cpu") == CPU_COMPILER_OPTIONS
    assert compiler_options("tpu") is None and compiler_options("gpu") is None
    lowered = jax.jit(jax.grad(_f)).lower(jnp.ones(3)).as_text()
    assert "optimization_barrier" in lowered  # the cotangent's barrier, on the CPU lowering


def _fused_instructions(depth: int, opts: dict | None) -> int:
    m = vitjax.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=5
    )
    m.train()
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    x = jnp.zeros((2, 32, 32, 3))

    def loss(p):
        return nnx.merge(graphdef, p, rest)(x).sum()

    hlo = jax.jit(jax.grad(loss), compiler_options=opts).lower(params).compile().as_text()
    blocks = re.split(r"\n(?=%fused_computation)", hlo)
    return sum(len(b.splitlines()) for b in blocks if b.startswith("%fused_computation"))


def test_backward_linear_in_depth():
    """XLA:CPU duplicates the residual cotangent's chain of adds into every block's gradient fusions (quadratic in
    depth); with the boundary and the options the fused code grows linearly. Measured: 15k -> 30k instructions
    from 12 to 24 blocks with the options, 46k -> 149k without; the test compares 6 and 12 blocks."""
    opts = compiler_options("cpu")
    with_opts = _fused_instructions(6, opts), _fused_instructions(12, opts)
    without = _fused_instructions(6, None), _fused_instructions(12, None)
    assert with_opts[1] / with_opts[0] < 2.25, with_opts
    assert without[1] / without[0] > 2.5, without  # the pathology is still there without them


NHWC = ("NHWC", "HWIO", "NHWC")
CONVS = [  # H, kernel, stride, padding, groups, in, out, dilation
    (14, 3, 2, "SAME", 8, 8, 16, 1),  # channel multiplier 2 (MaxxViT-V2's stage-start ConvNeXt conv)
    (15, 7, 2, ((3, 3), (3, 3)), 8, 8, 24, 1),
    (16, 7, 1, "SAME", 8, 8, 8, 1),
    (13, 3, 2, "VALID", 8, 8, 8, 1),
    (17, 5, 2, ((2, 1), (1, 2)), 8, 8, 8, 2),  # dilated, uneven explicit padding
    (17, 5, 1, ((3, 1), (0, 2)), 8, 8, 8, 2),  # stride 1 (input gradient by the flipped kernel), dilated, uneven
    (9, 3, 1, "SAME", 8, 8, 16, 1),  # stride 1 with a channel multiplier
    (9, 3, 1, "SAME", 4, 8, 16, 1),  # two inputs per group: not depthwise, XLA's own convolution
    (9, 1, 1, "SAME", 1, 8, 16, 1),  # pointwise: a matmul of the 2-D view
    (10, 1, 1, ((0, 0), (0, 0)), 1, 16, 8, 1),
    (9, 1, 2, "VALID", 1, 8, 16, 1),  # strided 1x1: XLA's own convolution
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "-".join(map(str, c[:2] + c[4:])))
def test_cpu_convolutions_equal_xla(case):
    size, k, stride, pad, groups, cin, cout, dil = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin // groups, cout)), jnp.float32)
    kw = dict(dimension_numbers=NHWC, feature_group_count=groups, rhs_dilation=(dil, dil))

    def loss(fn):
        return lambda x, w: jnp.sum(fn(x, w, (stride, stride), pad, **kw) ** 2)

    ref = jax.lax.conv_general_dilated(x, w, (stride, stride), pad, **kw)
    out = conv_general_dilated(x, w, (stride, stride), pad, **kw)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(
        jax.grad(loss(conv_general_dilated), (0, 1))(x, w),
        jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    half = conv_general_dilated(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (stride, stride), pad, **kw)
    assert half.dtype == jnp.bfloat16


def test_cpu_gradient_of_a_depthwise_conv_has_no_grouped_convolution():
    """On the CPU the depthwise path (the slow one in XLA:CPU) is gone from forward and backward; a convolution
    with several inputs per group is left to XLA."""
    x, w = jnp.ones((2, 16, 16, 8)), jnp.ones((7, 7, 1, 16))

    def hlo(w):
        groups = x.shape[-1] // w.shape[2]

        def loss(x, w):
            return jnp.sum(
                conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC, feature_group_count=groups)
            )

        return jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()

    assert " convolution(" not in hlo(w)
    assert "feature_group_count=4" in hlo(jnp.ones((3, 3, 2, 16)))


def test_depthwise_output_is_not_fused_into_a_reduction():
    """A depthwise convolution followed by a reduction (a LayerNorm's mean) compiles on the CPU to a loop over the
    taps, not to one YNNPACK reduction that takes each tap's slice as a materialised input (k x k copies). XLA
    fuses so only from some size on: this one did (a fusion of 33 inputs) without the barrier. Compiled, not
    run."""
    x, w = jnp.ones((2, 56, 56, 128)), jnp.ones((7, 7, 1, 128))

    def f(x, w):
        y = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=128)
        mean = jnp.mean(y, axis=-1, keepdims=True)
        return jnp.mean((y - mean) ** 2, axis=-1)

    hlo = jax.jit(f).lower(x, w).compile(compiler_options=compiler_options("cpu")).as_text()
    operands = [call.count("%") for call in re.findall(r"= \S+ fusion\((.*?)\), kind=", hlo)]
    assert operands and max(operands) < 10, operands  # 33 without the barrier


def test_pooled_shortcut_is_not_fused_with_the_matmuls():
    """An average pool feeding a matmul that is added to an MLP's output (MaxxViT's downsampling shortcut) compiles
    on the CPU to separate matmuls: without the pool's barrier XLA:CPU made one YNNPACK fusion of the pool and all
    three matmuls, which ran at about half their speed."""
    x, y = jnp.ones((2, 14, 14, 64)), jnp.ones((2, 7, 7, 128))
    w1, w2, ws = jnp.ones((128, 512)), jnp.ones((512, 128)), jnp.ones((64, 128))

    def f(x, y, w1, w2, ws):
        return avg_pool2d(x, 2, 2) @ ws + jax.nn.gelu(y @ w1, approximate=False) @ w2

    hlo = jax.jit(f).lower(x, y, w1, w2, ws).compile(compiler_options=compiler_options("cpu")).as_text()
    computations = re.split(r"\n(?=%)", hlo)
    assert not [c for c in computations if " dot(" in c and "reduce-window(" in c]
    assert sum(" dot(" in c for c in computations) == 3


def _transposed_copies(loss, activations: list[tuple[int, ...]], *args) -> list[tuple[int, ...]]:
    """The arrays that the compiled gradient of ``loss`` writes with the axes of one of ``activations`` (an
    input or output of the layer) permuted, or those of its 2-D view ``(positions, features)`` swapped."""
    hlo = jax.jit(jax.grad(loss, tuple(range(len(args))))).lower(*args).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    written = [
        tuple(map(int, d.split(","))) for d in re.findall(r"= f32\[([\d,]+)\]\S* (?:fusion|copy|transpose)\(", entry)
    ]
    moved = set()
    for shape in activations:
        moved |= {p for p in itertools.permutations(shape) if p != shape}
        moved.add((shape[-1], math.prod(shape[:-1])))
    return [w for w in written if w in moved]


def test_weight_gradients_contract_in_place():
    """The gradient of a 1x1 convolution and of a Linear on tokens contracts batch and space (tokens) in place:
    XLA:CPU writes no transposed copy of the input or of the output gradient, and runs no convolution. Through
    XLA's own convolution, and nnx's own Linear, it does (if an XLA upgrade stops doing so, the workarounds in
    ``conv_general_dilated`` and ``Dense`` can go)."""
    x, w = jnp.ones((4, 16, 16, 32)), jnp.ones((1, 1, 32, 48))
    maps = [(4, 16, 16, 32), (4, 16, 16, 48)]

    def conv_loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, (1, 1), "SAME", dimension_numbers=NHWC)))

    hlo = jax.jit(jax.grad(conv_loss(conv_general_dilated), (0, 1))).lower(x, w).compile().as_text()
    assert " convolution(" not in hlo
    assert _transposed_copies(conv_loss(conv_general_dilated), maps, x, w) == []
    assert _transposed_copies(conv_loss(jax.lax.conv_general_dilated), maps, x, w) != []

    tokens = jnp.ones((4, 50, 32))
    for cls, copies in ((Dense, False), (nnx.Linear, True)):
        layer = cls(32, 48, rngs=nnx.Rngs(0))
        graph, state = nnx.split(layer)

        def lin_loss(state, t, graph=graph):
            return jnp.sum(jnp.sin(nnx.merge(graph, state)(t)))

        np.testing.assert_allclose(layer(tokens), nnx.Linear.__call__(layer, tokens), rtol=1e-6)
        assert bool(_transposed_copies(lin_loss, [(4, 50, 32), (4, 50, 48)], state, tokens)) is copies, cls


def _dot_operands(fn, *args, platform: str) -> list[str]:
    """The operand and result types of every dot in ``fn`` lowered (not compiled) for ``platform``."""
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    return re.findall(r"stablehlo\.(?:dot_general|convolution).*: (\(.*)", text)


def test_two_d_views_are_for_the_cpu_only():
    """Elsewhere the Linear keeps its N-D dot and the 1x1 convolution stays a convolution: on a TPU, merging batch
    and tokens changes the tiled layout (vit_medium's training step on v5e took 8.1 GiB of temporaries, not 5.4)."""
    layer = Dense(32, 48, rngs=nnx.Rngs(0))
    tokens, x, w = jnp.ones((4, 50, 32)), jnp.ones((4, 16, 16, 32)), jnp.ones((1, 1, 32, 48))

    def conv(x, w):
        return conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)

    assert _dot_operands(layer, tokens, platform="cpu") == [
        "(tensor<200x32xf32>, tensor<32x48xf32>) -> tensor<200x48xf32>"
    ]
    for platform in ("tpu", "cuda"):
        assert _dot_operands(layer, tokens, platform=platform) == [
            "(tensor<4x50x32xf32>, tensor<32x48xf32>) -> tensor<4x50x48xf32>"
        ]
        assert _dot_operands(conv, x, w, platform=platform) == [
            "(tensor<4x16x16x32xf32>, tensor<1x1x32x48xf32>) -> tensor<4x16x16x48xf32>"
        ]


def _ynn_convolutions(opts: dict | None) -> int:
    """Convolutions that XLA:CPU compiled into a YNNPACK fusion, for a 3x3 convolution and a ReLU."""
    x, w = jnp.ones((8, 28, 28, 64)), jnp.ones((3, 3, 64, 64))  # big enough for YNNPACK to take it

    def f(x, w):
        return jax.nn.relu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC))

    hlo = jax.jit(f).lower(x, w).compile(compiler_options=opts).as_text()
    blocks = re.split(r"\n(?=%)", hlo)
    fused = set(re.findall(r"ynn_fusion[.\d]* = .*calls=%([\w.\-]+)", hlo))
    return sum(" convolution(" in b for b in blocks if b.split(" ", 1)[0].lstrip("%") in fused)


def test_options_keep_convolutions_out_of_ynnpack():
    """With XLA's defaults the convolution is a YNNPACK fusion; with the options it is not (an XLA upgrade that
    renames the option or its values fails here, not silently)."""
    assert _ynn_convolutions(None) == 1
    assert _ynn_convolutions(compiler_options("cpu")) == 0


POOLS = [  # H, W, kernel, stride, pads
    (16, 16, 3, 2, ((1, 1), (1, 1))),  # halonet50ts's stem pool
    (15, 13, 3, 2, ((1, 2), (1, 1))),  # odd sizes, uneven padding (torch's ceil_mode pads)
    (12, 12, 2, 2, ((0, 0), (0, 0))),
    (11, 11, 3, 1, ((0, 0), (1, 0))),  # overlapping windows
]


@pytest.mark.parametrize("h,w,k,s,pads", POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_equals_reduce_window(h, w, k, s, pads, ties):
    """Values equal XLA's reduce_window exactly and the gradient its select-and-scatter gradient, also when a
    window holds its maximum more than once (the first in row-major order takes the gradient)."""
    x = jax.random.normal(jax.random.key(0), (2, h, w, 3))
    if ties:
        x = jnp.round(x)  # few distinct values: most windows tie
    cot = jax.random.normal(jax.random.key(1), max_pool(x, (k, k), (s, s), pads).shape)

    def ref(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), ((0, 0), *pads, (0, 0)))

    ours, vjp = jax.vjp(lambda x: max_pool(x, (k, k), (s, s), pads), x)
    theirs, ref_vjp = jax.vjp(ref, x)
    np.testing.assert_array_equal(ours, theirs)
    # an input in overlapping windows sums its cotangents in another order: float32 rounding, while a gradient
    # sent to the wrong tie would be off by a whole cotangent
    np.testing.assert_allclose(vjp(cot)[0], ref_vjp(cot)[0], rtol=1e-6, atol=1e-6)


_FAULTS_PER_CALL = """
import os, resource, sys
from vitjax.xla_cpu import keep_freed_memory
keep_freed_memory()
import jax, jax.numpy as jnp
a = jnp.ones((4096, 256))
# each call holds a 64 MiB temporary (a @ a.T): 16384 pages of 4 KiB, 32 huge pages, above glibc's mmap threshold
f = jax.jit(lambda a: jnp.sum((a @ a.T) @ a[:, :8]))
f(a).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(a).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
print("RESULT", repr(os.environ.get("GLIBC_TUNABLES", "")), faults)
"""


def _faults_per_call(**env_extra) -> tuple[str, float]:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VITJAX_HEAP", "XLA_FLAGS")}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_CALL],
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    _, tunables, faults = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")).split()
    return tunables.strip("'"), float(faults)


def test_keep_freed_memory_reexecutes_without_page_faults_per_call():
    from vitjax.xla_cpu import HEAP_TUNABLES

    tunables, kept = _faults_per_call()
    assert tunables.split(":") == list(HEAP_TUNABLES)
    default_tunables, default = _faults_per_call(VITJAX_HEAP="default")
    assert default_tunables == ""
    # glibc unmaps the temporary (16384 pages) after each call and the next call faults it in again; with the
    # tunables the re-executed process reuses it (measured: 0.25 against 16,400 faults a call)
    assert default > 16384
    assert kept < default / 100


def _transparent_huge_pages() -> str:
    """The kernel's THP mode (always, madvise or never); never where the kernel has no THP."""
    from pathlib import Path

    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0]


def test_huge_page_mode_replaces_the_kept_heap_and_faults_huge_pages():
    from vitjax.xla_cpu import HUGE_PAGE_TUNABLES

    # another program's tunable stays; the kept mode's are replaced
    other, kept_key = "glibc.malloc.tcache_count=9", "glibc.malloc.mmap_max=0"
    tunables, huge = _faults_per_call(VITJAX_HEAP="hugepages", GLIBC_TUNABLES=f"{other}:{kept_key}")
    assert tunables.split(":") == [other, *HUGE_PAGE_TUNABLES]
    _, default = _faults_per_call(VITJAX_HEAP="default")
    if _transparent_huge_pages() == "never":
        # glibc's madvise has no effect: the temporary is mapped and faulted in 4 KiB pages on every call
        assert huge > default / 2
    else:
        # the 64 MiB temporary is mapped anew on every call, in 32 huge pages (measured: 66 against 16,400)
        assert huge < default / 20


def test_unknown_heap_mode_is_an_error(monkeypatch):
    from vitjax.xla_cpu import heap_mode, keep_freed_memory

    monkeypatch.setenv("VITJAX_HEAP", "huge")
    with pytest.raises(ValueError, match="VITJAX_HEAP='huge': expected one of kept, hugepages, default"):
        keep_freed_memory()
    monkeypatch.setenv("VITJAX_HEAP", "hugepages")
    assert heap_mode() == "hugepages"


@pytest.mark.parametrize(
    "platforms, nodes, reexecutes",
    [("cpu", ["/dev/accel0"], True), ("tpu", [], False), ("cuda,cpu", [], False), (None, [], True)]
    + [(None, ["/dev/accel0"], False), (None, ["/dev/nvidia0"], False), (None, ["/dev/vfio/0"], False)],
)
def test_keep_freed_memory_acts_only_where_jax_runs_on_the_cpu(monkeypatch, platforms, nodes, reexecutes):
    import fnmatch
    import os

    from vitjax import xla_cpu

    if platforms is None:
        monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    else:
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.delenv("VITJAX_HEAP", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    monkeypatch.setattr(xla_cpu.glob, "glob", lambda pattern: fnmatch.filter(nodes, pattern))
    calls = []
    monkeypatch.setattr(xla_cpu.os, "execv", lambda *args: calls.append(args))
    xla_cpu.keep_freed_memory()
    assert bool(calls) == reexecutes
    assert (os.environ["GLIBC_TUNABLES"] == ":".join(xla_cpu.HEAP_TUNABLES)) == reexecutes
