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
    vitjax.set_cpu_kernels(False)
    try:
        assert compiler_options("cpu") is None
        assert "optimization_barrier" not in jax.jit(jax.grad(_f)).lower(jnp.ones(3)).as_text()
    finally:
        vitjax.set_cpu_kernels(True)


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
    assert with_opts[1] / with_opts[0] < 2.25, with_opts


@pytest.mark.canary
def test_canary_backward_quadratic_in_depth_without_the_boundary():
    """XLA:CPU still duplicates the residual cotangent's adds without the boundary's options (when this fails after
    an upgrade, :func:`vitjax.xla_cpu.grad_boundary` may have become unnecessary)."""
    without = _fused_instructions(6, None), _fused_instructions(12, None)
    assert without[1] / without[0] > 2.5, without


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


TOKENS = jnp.ones((4, 50, 32))


def test_weight_gradients_contract_in_place():
    """The gradient of a 1x1 convolution and of a Linear on tokens contracts batch and space (tokens) in place:
    XLA:CPU writes no transposed copy of the input or of the output gradient, and runs no convolution."""
    x, w = jnp.ones((4, 16, 16, 32)), jnp.ones((1, 1, 32, 48))
    maps = [(4, 16, 16, 32), (4, 16, 16, 48)]

    def conv_loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, (1, 1), "SAME", dimension_numbers=NHWC)))

    hlo = jax.jit(jax.grad(conv_loss(conv_general_dilated), (0, 1))).lower(x, w).compile().as_text()
    assert " convolution(" not in hlo
    assert _transposed_copies(conv_loss(conv_general_dilated), maps, x, w) == []
    layer = Dense(32, 48, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(layer(TOKENS), nnx.Linear.__call__(layer, TOKENS), rtol=1e-6)
    loss, state = _linear_loss(Dense)
    assert _transposed_copies(loss, [(4, 50, 32), (4, 50, 48)], state, TOKENS) == []


def _linear_loss(cls):
    graph, state = nnx.split(cls(32, 48, rngs=nnx.Rngs(0)))

    def lin_loss(state, t):
        return jnp.sum(jnp.sin(nnx.merge(graph, state)(t)))

    return lin_loss, state


@pytest.mark.canary
def test_canary_weight_gradients_transpose_without_the_two_d_view():
    """Through XLA's own convolution and nnx's own Linear, XLA:CPU still writes transposed copies (when this fails
    after an upgrade, the 2-D views of ``conv_general_dilated`` and ``Dense`` may have become unnecessary)."""
    x, w = jnp.ones((4, 16, 16, 32)), jnp.ones((1, 1, 32, 48))
    maps = [(4, 16, 16, 32), (4, 16, 16, 48)]

    def conv_loss(x, w):
        return jnp.sum(jnp.sin(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)))

    assert _transposed_copies(conv_loss, maps, x, w) != []
    loss, state = _linear_loss(nnx.Linear)
    assert _transposed_copies(loss, [(4, 50, 32), (4, 50, 48)], state, TOKENS) != []


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
    """With the options the convolution is no YNNPACK fusion."""
    assert _ynn_convolutions(compiler_options("cpu")) == 0


@pytest.mark.canary
def test_canary_ynnpack_takes_convolutions_by_default():
    """With XLA's defaults the convolution is a YNNPACK fusion (an XLA upgrade that renames the fusion types or
    changes the default fails here)."""
    assert _ynn_convolutions(None) == 1


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


def test_switch_reads_the_environment(monkeypatch):
    from vitjax import xla_cpu

    for value, on in (("0", False), ("1", True)):
        monkeypatch.setenv("VITJAX_CPU_KERNELS", value)
        assert xla_cpu._from_environment() is on
    monkeypatch.delenv("VITJAX_CPU_KERNELS")
    assert xla_cpu._from_environment() is True
    monkeypatch.setenv("VITJAX_CPU_KERNELS", "off")
    with pytest.raises(ValueError, match="VITJAX_CPU_KERNELS='off': expected 0"):
        xla_cpu._from_environment()


def _our_custom_calls(jaxpr) -> list[str]:
    """The custom-derivative calls in ``jaxpr`` (nested ones included) whose function is defined in vitjax."""
    root = vitjax.__file__.rsplit("/", 1)[0] + "/"
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name.startswith("custom_"):
            source = eqn.params["call_jaxpr"].jaxpr.debug_info.func_src_info
            if root in source:
                found.append(source.split(" at ")[0])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += _our_custom_calls(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += _our_custom_calls(sub)
    return found


SWITCH_MODELS = [  # one per family, each with CPU kernels of its own
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)),
    ("test_maxvit", dict(img_size=(64, 96))),  # depthwise convolutions, average pools, BatchNorm
    pytest.param("lambda_resnet26t", dict(img_size=64), marks=pytest.mark.slow),  # BatchNorm, max pooling
]


@pytest.mark.parametrize("name,kw", SWITCH_MODELS, ids=["vit", "maxvit", "lambda_resnet"])
def test_switch_off_compiles_the_reference_program(name, kw):
    """With the CPU kernels off, a model's training step (train mode, logits and gradients) compiles for the CPU
    with no optimization barrier and traces none of our custom derivatives; its outputs are those with the
    kernels on within 1e-5."""
    model = vitjax.create_model(name, num_classes=5, **kw)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    size = kw["img_size"] if isinstance(kw["img_size"], tuple) else (kw["img_size"],) * 2
    x = jax.random.normal(jax.random.key(0), (2, *size, 3))
    cot = jax.random.normal(jax.random.key(1), (2, 5))

    def logits(model):
        out = model(x)
        return jnp.sum(out * cot), out

    def loss(params, rest):  # rest (BatchNorm's statistics) traced too: the model updates them
        return logits(nnx.merge(graphdef, params, rest))

    def step(params, rest):
        return nnx.value_and_grad(logits, has_aux=True)(nnx.merge(graphdef, params, rest))

    results = {}
    for on in (True, False):
        vitjax.set_cpu_kernels(on)
        try:
            assert vitjax.use_cpu_kernels() is on
            custom = _our_custom_calls(jax.make_jaxpr(loss)(params, rest).jaxpr)
            compiled = jax.jit(step, compiler_options=compiler_options()).lower(params, rest).compile()
            results[on] = compiled(params, rest)
        finally:
            vitjax.set_cpu_kernels(True)
        assert bool(custom) is on, custom
        assert ("opt-barrier" in compiled.as_text()) is on
    for got, want in zip(jax.tree.leaves(results[False]), jax.tree.leaves(results[True]), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(jnp.abs(want).max())))
