"""The CPU kernels: where XLA:CPU compiles the reference maths slowly, the layers call these instead, through
:func:`dispatch`. Each is a ``lax.platform_dependent`` choice (the kernel on the CPU, the reference maths
elsewhere) with the same values; the layers read like the reference and name the kernel they use.

* :func:`dense`: a Linear on tokens ``(B, N, C)`` computed on the 2-D view ``(B*N, C)``. Its weight gradient
  then contracts one axis in place; on the N-D form XLA:CPU first writes the input or the output gradient
  transposed. Not on a TPU: there merging batch and tokens changes the tiled layout (a copy and more memory).
* :func:`conv_general_dilated` (``nnx.Conv``'s ``conv_general_dilated``): a 1x1 convolution (stride 1, no
  padding, one group) as that same matmul of the 2-D view, and a depthwise convolution as the sum of its
  k x k shifted slices times their per-channel weights, one fused loop where XLA:CPU runs slow generic code
  (worst for the weight gradient with a channel multiplier, MaxxViT-V2's stage-start ConvNeXt convolutions).
  The depthwise output passes an optimization barrier: followed by a LayerNorm, XLA:CPU otherwise fuses the tap
  sum into the norm's YNNPACK reduction, which materialises each tap's slice as an input of its own.
* :func:`max_pool`: the maximum of the window's shifted slices; its gradient sends each output's cotangent to
  the first input of its window (row-major) that equals the maximum, as XLA's select-and-scatter does, which
  is slow on the CPU.
* :func:`batch_norm_train`: BatchNorm's train-mode gradient by hand, two per-channel reductions (of the output
  gradient ``g`` and of ``g * xhat``) and one elementwise pass, where XLA:CPU ran about eight reductions over
  the activation.
* :func:`softmax_parts`: attention's softmax divided after the PV product, ``(exp(l - max) v) / sum(exp(l -
  max))``: one pass less over the ``N x N`` weights. Elsewhere the plain softmax, whose gradient keeps only the
  normalised weights (less memory on a TPU).
* :func:`grad_boundary` (on every block's input, ``models.common.run_block``): the identity whose cotangent is
  materialised. XLA:CPU fuses cheap elementwise producers into every consumer; in a residual network's backward
  pass that duplicates the chain of adds of the residual cotangent into every later block's weight-gradient
  fusions, and the backward pass becomes quadratic in depth.
* :func:`materialise`: the identity whose value (not its tangent) is computed on its own. Average pooling uses
  it: fed to a 1x1 convolution (MaxxViT's downsampling shortcut), XLA:CPU otherwise hands the pool and the
  matmuls it is added to to YNNPACK as one fusion, which runs at about half the speed of separate ones.

XLA:CPU drops optimization barriers before fusion unless its ``cse_barrier_expander`` pass is disabled:
:func:`compiler_options` returns :data:`CPU_COMPILER_OPTIONS` for ``jax.jit(..., compiler_options=...)``, which
also keep convolutions out of YNNPACK (XLA's Eigen convolutions are the faster ones on the CPUs measured).

**The switch.** ``VITJAX_CPU_KERNELS=0`` in the environment (read once, when vitjax is imported) or
:func:`set_cpu_kernels` ``(False)`` turns all of them off: the CPU then compiles the program other backends get
(no optimization barriers, none of these custom VJPs) and :func:`compiler_options` returns None, XLA's defaults.
The layers read it when they are traced; a change from Python clears JAX's caches, so every function is traced
anew with the new setting.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import jax
from jax import numpy as jnp
from jax.custom_derivatives import SymbolicZero

CPU_COMPILER_OPTIONS: dict[str, str] = {
    # XLA's name for the pass that removes optimization barriers (OptimizationBarrierExpander)
    "xla_disable_hlo_passes": "cse_barrier_expander",
    # XLA's default YNNPACK fusion types less INDIVIDUAL_CONVOLUTION: convolutions go to Eigen
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    # XLA's own loops in 512-bit vectors where the CPU has them (AVX-512; elsewhere the widest it has)
    "xla_cpu_prefer_vector_width": "512",
}


def _from_environment() -> bool:
    value = os.environ.get("VITJAX_CPU_KERNELS", "1")
    if value not in ("0", "1"):
        raise ValueError(f"VITJAX_CPU_KERNELS={value!r}: expected 0 (off) or 1 (on, the default)")
    return value == "1"


_enabled = _from_environment()


def use_cpu_kernels() -> bool:
    """Whether the CPU kernels are on (``VITJAX_CPU_KERNELS``, :func:`set_cpu_kernels`)."""
    return _enabled


def set_cpu_kernels(enable: bool = True) -> None:
    """Turn the CPU kernels on or off. A change clears JAX's caches (``jax.clear_caches``): ``jax.jit`` keeps a
    function's trace, which would otherwise keep the kernels it was traced with."""
    global _enabled
    if bool(enable) != _enabled:
        _enabled = bool(enable)
        jax.clear_caches()


def dispatch(cpu: Callable, default: Callable, *args):
    """``default(*args)``, or ``cpu(*args)`` where compiled for the CPU while the CPU kernels are on. Both must
    return the same shapes and dtypes."""
    if not _enabled:
        return default(*args)
    return jax.lax.platform_dependent(*args, cpu=cpu, default=default)


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
    """Compiler options for ``jax.jit`` on ``platform`` (default: JAX's default backend): ours on the CPU while
    the CPU kernels are on, else None."""
    if _enabled and (platform or jax.default_backend()) == "cpu":
        return dict(CPU_COMPILER_OPTIONS)
    return None


def _barrier(t: jax.Array) -> jax.Array:
    return dispatch(jax.lax.optimization_barrier, lambda t: t, t)


@jax.custom_jvp
def _materialise(x: jax.Array) -> jax.Array:
    return _barrier(x)


@_materialise.defjvp
def _materialise_jvp(primals, tangents):
    return _materialise(primals[0]), tangents[0]


def materialise(x: jax.Array) -> jax.Array:
    """The identity; on the CPU its value (not its tangent) passes an optimization barrier, so XLA computes it on
    its own instead of fusing it into its consumers."""
    return _materialise(x) if _enabled else x


@jax.custom_jvp
def _grad_boundary(x: jax.Array) -> jax.Array:
    return x


@_grad_boundary.defjvp
def _grad_boundary_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return x, _barrier(t)


def grad_boundary(x: jax.Array) -> jax.Array:
    """The identity; on the CPU its tangent, and by transposition its cotangent, is materialised."""
    return _grad_boundary(x) if _enabled else x


def dense(linear: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """``linear(x)`` for a Linear on ``x`` with leading axes; on the CPU computed on the 2-D view."""

    def flat(x):
        return linear(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)  # ..., out

    return dispatch(flat, linear, x)


def softmax_parts(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Attention weights and what to divide their product with the values by: the softmax and ones (XLA drops
    that division), or on the CPU ``exp(l - max)`` and its sum over keys (dropout, when on, then drops
    unnormalised weights, as it would the normalised ones)."""
    return dispatch(_unnormalised, _normalised, logits)


def _unnormalised(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    # the maximum only keeps exp in range: the result does not depend on it, so neither does its gradient
    weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))  # B, H, Nq, Nk
    return weights, jnp.sum(weights, axis=-1, keepdims=True)  # B, H, Nq, 1


def _normalised(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.nn.softmax(logits, axis=-1), jnp.ones((*logits.shape[:-1], 1), logits.dtype)


def batch_norm_train(reference: Callable, x: jax.Array, scale, bias, eps: float):
    """``reference(x, scale, bias) -> (y, mean, var)``, BatchNorm's train mode (statistics over every axis but the
    last, variance biased, ``y = (x - mean) * rsqrt(var + eps) * scale + bias``, no affine part where ``scale``
    is None); on the CPU with the gradient of :func:`_bn_bwd`. Same forward values."""
    return dispatch(functools.partial(_batch_norm_vjp, reference, eps=eps), reference, x, scale, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _batch_norm_cpu(reference, x, scale, bias, eps):
    return reference(x, scale, bias)


def _batch_norm_vjp(reference, x, scale, bias, *, eps):
    return _batch_norm_cpu(reference, x, scale, bias, eps)


def _channels(v: jax.Array, x: jax.Array) -> jax.Array:
    """A per-channel vector shaped to broadcast against ``x`` (channels last)."""
    return v.reshape((1,) * (x.ndim - 1) + (-1,))


def _bn_fwd(reference, x, scale, bias, eps):
    # with symbolic zeros, the primals come wrapped (CustomVJPPrimal); an absent affine part stays None
    x, scale, bias = (None if p is None else p.value for p in (x, scale, bias))
    y, mean, var = reference(x, scale, bias)
    # bias only for its dtype: its gradient is returned in it
    return (y, mean, var), (x, mean, jax.lax.rsqrt(var + eps), scale, bias)


def _bn_bwd(reference, eps, res, cts):
    """The gradient of batch norm in two reductions (of ``g`` and ``g * xhat``) and one elementwise pass, in
    float32 at least (as torch accumulates a bf16 BatchNorm's gradient), each result in its primal's dtype; a
    cotangent of the returned statistics (zero when they only update the running ones) adds its own terms."""
    x, mean, inv, scale, bias = res
    g, g_mean, g_var = cts
    f32 = jnp.promote_types(x.dtype, jnp.float32)
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    centred = x.astype(f32) - _channels(mean.astype(f32), x)
    inv = inv.astype(f32)
    if isinstance(g, SymbolicZero):
        dx, dscale, dbias = jnp.zeros(x.shape, f32), jnp.zeros(mean.shape, f32), jnp.zeros(mean.shape, f32)
    else:
        g = g.astype(f32)
        xhat = centred * _channels(inv, x)
        dbias = jnp.sum(g, axis=axes)
        dscale = jnp.sum(g * xhat, axis=axes)
        gain = inv if scale is None else inv * scale.astype(f32)
        dx = _channels(gain, x) * (g - _channels(dbias / n, x) - xhat * _channels(dscale / n, x))
    if not isinstance(g_mean, SymbolicZero):
        dx = dx + _channels(g_mean.astype(f32) / n, x)
    if not isinstance(g_var, SymbolicZero):
        dx = dx + centred * _channels(g_var.astype(f32) * (2.0 / n), x)
    if scale is None:
        return dx.astype(x.dtype), None, None
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_batch_norm_cpu.defvjp(_bn_fwd, _bn_bwd, symbolic_zeros=True)


_NHWC = jax.lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _taps(shape, kernel, strides, dilation):
    """For a padded input of ``shape`` (N, H, W, C): each tap's (i, j, strided row slice, strided column slice)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    ho = (shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (shape[2] - (kw - 1) * dw - 1) // sw + 1
    return [
        (i, j, slice(i * dh, i * dh + (ho - 1) * sh + 1, sh), slice(j * dw, j * dw + (wo - 1) * sw + 1, sw))
        for i in range(kh)
        for j in range(kw)
    ]


def _place(part, rows, cols, shape):
    """The transpose of taking the strided slice ``[:, rows, cols]`` of an array of ``shape``: ``part`` placed
    back at the slice's positions, zeros elsewhere."""
    zero = jnp.zeros((), part.dtype)
    config = [(0, 0, 0)]
    for sl, n, size in ((rows, part.shape[1], shape[1]), (cols, part.shape[2], shape[2])):
        config.append((sl.start, size - sl.start - (n - 1) * sl.step - 1, sl.step - 1))
    return jax.lax.pad(part, zero, (*config, (0, 0, 0)))


def _tap_sum(x, w, strides, pads, dilation):
    """The sum of ``x``'s shifted, strided slices (padded by ``pads``) times their per-channel weights."""
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    taps = _taps(xp.shape, w.shape[:2], strides, dilation)
    out = None
    for i, j, rows, cols in taps:
        tap = xp[:, rows, cols] * w[i : i + 1, j : j + 1]  # (1, 1, 1, C)
        out = tap if out is None else out + tap
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_by_shifts(x, w, strides, pads, dilation):
    """An NHWC / HWIO depthwise convolution (``w``: kh, kw, 1, C with ``C`` = channels of ``x``, both in the
    accumulation dtype) as a sum of shifted, strided slices times per-channel weights. Its VJP keeps only ``x``
    and ``w``: autodiff would keep every tap's slice, k x k copies of the output.

    The output passes a barrier: without it XLA:CPU fuses the tap sum into a following reduction (a LayerNorm's
    mean) and hands that to YNNPACK, which takes each tap's slice as a separate, materialised input (k x k copies
    of the output)."""
    return jax.lax.optimization_barrier(_tap_sum(x, w, strides, pads, dilation))


def _depthwise_fwd(x, w, strides, pads, dilation):
    return _depthwise_by_shifts(x, w, strides, pads, dilation), (x, w)


def _depthwise_bwd(strides, pads, dilation, res, g):
    x, w = res
    # the barrier keeps XLA from sharing the taps' slices with the forward pass, which would materialise them
    x = jax.lax.optimization_barrier(x)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    taps = _taps(xp.shape, w.shape[:2], strides, dilation)
    if strides == (1, 1):
        # the transpose of a stride-1 correlation is the correlation of the fully padded gradient with the
        # flipped kernel: one fused loop like the forward's, not k x k placements
        full = tuple(((k - 1) * d, (k - 1) * d) for k, d in zip(w.shape[:2], dilation, strict=True))
        dxp = _tap_sum(g, w[::-1, ::-1], strides, full, dilation)  # N, Hp, Wp, C
    else:
        dxp = None
        for i, j, rows, cols in taps:
            part = _place(g * w[i : i + 1, j : j + 1], rows, cols, xp.shape)  # the tap's slice, transposed
            dxp = part if dxp is None else dxp + part
    (top, _), (left, _) = pads
    return dxp[:, top : top + x.shape[1], left : left + x.shape[2]], _weight_grad(xp, g, taps).reshape(w.shape)


def _weight_grad(xp, g, taps):
    """``(k*k, C)``: each tap's slice of the padded input times ``g``, summed over batch and space. XLA:CPU's
    reductions need their input materialised, and unrolled it schedules every tap's slice at once (k*k copies of
    the output), so a loop takes one tap at a time. Strided slices
    become plain ones of the input's stride phases."""
    (sh, sw), (ho, wo) = (taps[0][2].step, taps[0][3].step), g.shape[1:3]
    hq, wq = -(-xp.shape[1] // sh), -(-xp.shape[2] // sw)
    xp = jnp.pad(xp, ((0, 0), (0, hq * sh - xp.shape[1]), (0, wq * sw - xp.shape[2]), (0, 0)))
    phases = xp.reshape(xp.shape[0], hq, sh, wq, sw, xp.shape[3]).transpose(2, 4, 0, 1, 3, 5)  # sh, sw, N, Hq, Wq, C
    index = jnp.asarray([(r.start % sh, c.start % sw, r.start // sh, c.start // sw) for _, _, r, c in taps])

    def one(_, idx):
        p, q, oh, ow = idx[0], idx[1], idx[2], idx[3]
        zero = jnp.zeros((), idx.dtype)
        tap = jax.lax.dynamic_slice(phases, (p, q, zero, oh, ow, zero), (1, 1, g.shape[0], ho, wo, g.shape[3]))
        return None, jnp.sum(tap[0, 0] * g, axis=(0, 1, 2))

    return jax.lax.scan(one, None, index)[1]


_depthwise_by_shifts.defvjp(_depthwise_fwd, _depthwise_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    **kwargs,
) -> jax.Array:
    """``lax.conv_general_dilated``; compiled for the CPU, a 2-D NHWC depthwise convolution runs as a sum of
    shifted slices and a 1x1 convolution (stride 1, no padding, one group) as a matmul of the map's 2-D view
    (see the module docstring). Same signature, same result; ``lax.conv_general_dilated`` itself while the CPU
    kernels are off."""

    def conv(lhs, rhs):
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **kwargs,
        )

    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    channels, outputs = lhs.shape[-1], rhs.shape[-1]
    if not _enabled or dn != _NHWC or any(d != 1 for d in lhs_dilation or ()):
        return conv(lhs, rhs)
    strides = tuple(window_strides)
    dilation = tuple(rhs_dilation or (1, 1))
    if isinstance(padding, str):
        window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation, strict=True)]
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
    pads = tuple(tuple(p) for p in padding)
    out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)

    if feature_group_count == 1 and rhs.shape[:2] == (1, 1) and strides == (1, 1) and pads == ((0, 0), (0, 0)):

        def pointwise(lhs, rhs):
            flat = lhs.reshape(-1, channels)  # N*H*W, C
            out = jnp.dot(flat, rhs.reshape(channels, outputs), precision=precision, preferred_element_type=out_dtype)
            return out.reshape(*lhs.shape[:3], outputs)  # N, H, W, O

        return dispatch(pointwise, conv, lhs, rhs)
    if feature_group_count == 1 or channels != feature_group_count:
        return conv(lhs, rhs)

    def shifted(lhs, rhs):
        if outputs != channels:  # a channel multiplier: output channel o reads input channel o // multiplier
            lhs = jnp.repeat(lhs, outputs // channels, axis=-1)
        acc = jnp.promote_types(jnp.result_type(lhs, rhs), jnp.float32)  # accumulate in at least float32
        return _depthwise_by_shifts(lhs.astype(acc), rhs.astype(acc), strides, pads, dilation).astype(out_dtype)

    return dispatch(shifted, conv, lhs, rhs)


def max_pool(x: jax.Array, kernel: tuple[int, int], strides: tuple[int, int], pads) -> jax.Array:
    """Max pooling of an NHWC map, padded with -inf by ``pads`` ((top, bottom), (left, right)): XLA's max
    ``reduce_window``; on the CPU the maximum of shifted slices, with the same values and gradient."""
    pads = tuple(tuple(p) for p in pads)

    def default(x):
        return jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
        )

    return dispatch(lambda x: _max_by_shifts(x, kernel, strides, pads), default, x)


def _pool_taps(x, kernel, strides, pads):
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return xp, _taps(xp.shape, kernel, strides, (1, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_by_shifts(x, kernel, strides, pads):
    xp, taps = _pool_taps(x, kernel, strides, pads)
    out = None
    for _, _, rows, cols in taps:
        out = xp[:, rows, cols] if out is None else jnp.maximum(out, xp[:, rows, cols])
    return out


def _max_fwd(x, kernel, strides, pads):
    out = _max_by_shifts(x, kernel, strides, pads)
    return out, (x, out)


def _max_bwd(kernel, strides, pads, res, g):
    x, out = res
    xp, taps = _pool_taps(x, kernel, strides, pads)
    taken = jnp.zeros(out.shape, bool)  # outputs whose maximum an earlier tap already took
    dxp = None
    for _, _, rows, cols in taps:
        hit = (xp[:, rows, cols] == out) & ~taken
        taken = taken | hit
        part = _place(jnp.where(hit, g, jnp.zeros((), g.dtype)), rows, cols, xp.shape)
        dxp = part if dxp is None else dxp + part
    (top, _), (left, _) = pads
    return (dxp[:, top : top + x.shape[1], left : left + x.shape[2]],)


_max_by_shifts.defvjp(_max_fwd, _max_bwd)
