"""Working around six slow paths of XLA:CPU. All six fixes act on the CPU only. (A seventh lives with its layer:
BatchNorm's train-mode gradient, written by hand for the CPU in :class:`vitjax.layers.norm.BatchNorm`. An eighth
is :func:`materialise`, which keeps a value out of its consumers' fusions: average pooling uses it.)

**A backward pass quadratic in depth.**

XLA:CPU fuses cheap elementwise producers into every consumer, duplicating them. In the backward pass of a
residual network the cotangent of the residual stream is a chain of elementwise adds (each block's norm and
residual contributions) that every block's weight-gradient dot reads; XLA:CPU fuses the whole chain so far into
each of those reads, so block ``i`` recomputes the contributions of every block after it and the backward pass
costs O(depth^2) elementwise work. Measured on vit_medium_patch16_reg4_gap_256 (12 blocks, batch 8, one core):
the gradient took 13.4 s against timm's 6.1 s, 7 s of it in ever larger fusions.

:func:`grad_boundary` is the identity whose tangent (and so cotangent) passes through
``lax.optimization_barrier`` when compiled for the CPU; ``models.common.run_block`` puts it on every block's
input, so the residual cotangent is materialised once per block. XLA:CPU drops optimization barriers before
fusion unless the ``cse_barrier_expander`` pass is disabled: :data:`CPU_COMPILER_OPTIONS` (for ``jax.jit(...,
compiler_options=...)`` or ``.compile(compiler_options=...)``) does that, and :func:`compiler_options` returns
them for the CPU and nothing for other backends. With both, that gradient takes 7.2 s; without the options the
boundary costs nothing and changes nothing. On TPU and GPU the boundary is the identity (their fusion passes
do not duplicate this way).

**Depthwise convolutions.** XLA:CPU runs depthwise convolutions (one input channel per group) on slow generic
code: a 7x7 one over 8x56x56x128 takes 0.25 s forward (0.6 GFLOP/s) and 4.8 s with its gradients, and with a
channel multiplier (MaxxViT-V2's ConvNeXt blocks widen the channels in their depthwise conv at every stage start)
the weight gradient becomes a 3-D convolution with a dilated feature axis that took 80 s alone. On the CPU,
:func:`conv_general_dilated` writes a depthwise convolution as the sum of its k x k shifted slices times their
per-channel weights (input channels repeated first for a multiplier), which XLA fuses into one loop: 0.06 s
forward, 0.7 s with gradients, identical forward values. At stride 1 the input gradient is the same loop over
the gradient with the kernel flipped (this machine, 2026-12: 7x7 over 8x56x56x128, 5 ms forward, 69 ms with
gradients, 65 of them the weight gradient's k x k reductions). ``nnx.Conv`` takes it as its
``conv_general_dilated``. Its output passes an optimization barrier: followed by a LayerNorm, XLA:CPU otherwise fused
the tap sum into the norm's YNNPACK reduction from some size on (8x56x56x128, 8x28x28x256), which materialises each
tap's slice as an input of its own; maxxvitv2_rmlp_base_rw_224 at batch 8, alternating processes (2026-12-03):
inference 1.69 -> 1.48 s, a training step 7.61 -> 7.23 s.

**Weight gradients that contract several axes.** The weight gradient of a 1x1 convolution contracts batch,
height and width (that of a Linear on tokens, batch and tokens); XLA:CPU computes it by first writing the input
or the output gradient transposed (for halonet50ts, a BatchNorm backward's output, f32[256,32768] and the like:
1.4 s of a training step's thread time). On the 2-D view ``(N*H*W, C)`` the gradient contracts one axis in
place. :func:`conv_general_dilated` computes a 1x1 convolution (stride 1, no padding, one group) as that matmul
on the CPU: halonet50ts training at batch 8, 2.55 -> 2.26 s. ``vitjax.layers.linear.Dense`` does the same for
Linears, also on the CPU only (on a TPU the merged view costs a relayout and memory).

**YNNPACK convolutions.** By default XLA:CPU hands every convolution to YNNPACK (its fusion types are reduce,
individual dot and individual convolution). On this project's machine (2 cores) YNNPACK's convolutions are the
slower ones: a 3x3 over 8x56x56x64 runs at 99 GFLOP/s forward against 164 with XLA's Eigen convolution, a 1x1 at
67-79 against 155. :data:`CPU_COMPILER_OPTIONS` keeps YNNPACK for dots and reductions only. halonet50ts at batch
8, alternating processes: inference 0.77-0.89 s -> 0.65-0.67 s, a training step 4.1-4.2 s -> 3.4-3.8 s;
maxxvitv2_rmlp_base_rw_224 4.07 -> 3.71 s inference, 20.2 -> 19.3 s training; vit_medium_patch16_reg4_gap_256
1.75 -> 1.51 s and 5.04 -> 4.71 s (its patch embedding is a convolution).

**Max pooling's gradient.** XLA:CPU's select-and-scatter (the gradient of a max ``reduce_window``) is slow: 168 ms
for halonet50ts's 3x3 stride-2 stem pool over 8x128x128x64, whose forward takes 8 ms. :func:`max_pool` takes the
maximum of the window's shifted slices (4 ms) and its VJP sends each output's cotangent to the first input of its
window (row-major) that equals the maximum, as select-and-scatter does: 39 ms, the same gradient.

**Memory handed back to the kernel after every call.** XLA:CPU allocates a program's temporary buffer (2.3 GB
for a vit_medium_patch16_reg4_gap_256 training step at batch 8) with ``malloc`` on each call and frees it at the
end. glibc serves such a block with ``mmap`` and returns it with ``munmap`` (or trims it off the heap), so every
call faults each of its pages in again: 561,000 page faults per training step, 0.3 s of a 3.1 s step; 130,000
(0.15 s of 1.05 s) per batch-8 inference. glibc's tunables (``GLIBC_TUNABLES``, read once at process start)
can keep freed memory for reuse: :data:`HEAP_TUNABLES` serve large blocks from the heap, never trim it, and
keep one arena (XLA's worker threads would otherwise ``mmap`` large blocks from arenas of their own). Then no
page faults remain and the step takes 2.75 s, inference 0.90 s. :func:`keep_freed_memory` re-executes the
running program with them (``python -m train`` and ``python -m benchmarks`` call it first); the cost is that the
process keeps its peak memory until it exits, and that the one heap fragments, by chance: a large block that
finds no free hole of its size extends the heap. halonet50ts's training step at batch 8 peaked at 7.0 GiB in the
benchmark run of 2026-12-02 17:39 UTC and at 4.18-4.21 GiB in six fresh processes that evening (4.37-4.44 GiB in
two without the tunables); one maxxvitv2_rmlp_base_rw_224 process (batch 8, pinned to one core) held 8.2 GiB for
four training steps, then grew to 13.5 GiB at the fifth, which took 29 s instead of 12 while it faulted the new
memory in. torch's CPU allocator gains too (timm's vit_medium step 2.06 -> 1.94 s, inference 0.73 -> 0.63 s).

``VITJAX_HEAP`` picks the mode: ``kept`` (the default, above), ``hugepages`` or ``default`` (glibc's own).
:data:`HUGE_PAGE_TUNABLES` bound the memory instead: blocks of 32 MiB and more are mapped for each call and handed
back after it, in transparent huge pages (glibc's ``hugetlb=1`` asks for them; the kernel's THP mode must be
``madvise`` or ``always``), so a 2.3 GB temporary takes about 1,300 faults instead of 561,000; smaller blocks stay
on heaps that are never trimmed, and the arenas are glibc's usual ones. Measured on this project's machine
(2026-12-03, batch 8, steady steps, glibc's own / ``kept`` / ``hugepages``): vit_medium training 2.30 / 2.12 / 2.14
s and inference 0.76 / 0.64 / 0.64 s; maxxvitv2 training 8.2 / 7.27 / 6.5-6.6 s; halonet50ts training 2.11 / 1.83 s
/ every other step 1.73-1.78 s and the others 3.1-4.1 s. That alternation is not in the process's page faults (the
same 1,447 huge pages a step, no compaction stalls): this machine is a virtual machine whose balloon device reports
free memory to its host, so memory handed back to the kernel is likely discarded by the host and faulted in there
when it is next used. ``kept`` never hands it back. Its growth, measured: vit_medium's training process grew from
2.62 to 4.11 GiB (one more temporary) within its first 11 steps in 5 of 6 processes (two of the six also had
``hugetlb=1``), and the two followed for 30 steps grew no further. Its single arena has a cost: maxxvitv2's step
spends more time in glibc's ``malloc`` (5.2% of the process's samples against 1.2% with ``hugepages``, under
``perf``), and with ``hugepages`` plus one arena the step took 8.0 s. The malloc calls are many: about 415,000 in a
training step, 118,000 of them 112 KiB blocks from the two compute threads (``perf probe`` on ``malloc``). ``kept``
still needs its one arena: glibc maps a large block from another arena whatever ``mmap_max`` says. With three
arenas, maxxvitv2's step took 6.24 s with 112 faults (halonet50ts 1.74 s with 37,000-53,000), but which arena serves
the large blocks follows the order in which threads first allocate: with two arenas maxxvitv2 faulted its 1.4
million pages a step again, with eight halonet50ts and vit_medium did, so one arena stays.
"""

from __future__ import annotations

import functools
import glob
import os
import platform
import sys
from collections.abc import Sequence

import jax
from jax import numpy as jnp

CPU_COMPILER_OPTIONS: dict[str, str] = {
    # XLA's name for the pass that removes optimization barriers (OptimizationBarrierExpander)
    "xla_disable_hlo_passes": "cse_barrier_expander",
    # XLA's default YNNPACK fusion types less INDIVIDUAL_CONVOLUTION: convolutions go to Eigen
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    # XLA's own loops in 512-bit vectors where the CPU has them (AVX-512; elsewhere the widest it has): on an
    # AVX-512 machine, halonet50ts training at batch 8 2.16 -> 2.04 s, maxxvitv2 9.4 -> 9.2 s, ViTs unchanged
    "xla_cpu_prefer_vector_width": "512",
}


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
    """Compiler options for ``jax.jit`` on ``platform`` (default: JAX's default backend): ours on the CPU."""
    return dict(CPU_COMPILER_OPTIONS) if (platform or jax.default_backend()) == "cpu" else None


# a heap that is never trimmed (64 GiB): both modes keep what they do not map
_NEVER_TRIM = "glibc.malloc.trim_threshold=68719476736"
# glibc's tunables: large blocks from the heap (never mmap), a heap that is never trimmed, one arena
HEAP_TUNABLES = ("glibc.malloc.mmap_max=0", _NEVER_TRIM, "glibc.malloc.arena_max=1")
# the bounded alternative: blocks of 32 MiB and more (glibc's largest threshold) mmapped and handed back after every
# call, in transparent huge pages (2 MiB: 1/512 of the faults); smaller blocks from heaps that are never trimmed
HUGE_PAGE_TUNABLES = ("glibc.malloc.hugetlb=1", "glibc.malloc.mmap_threshold=33554432", _NEVER_TRIM)
HEAP_MODES: dict[str, tuple[str, ...]] = {"kept": HEAP_TUNABLES, "hugepages": HUGE_PAGE_TUNABLES, "default": ()}


def heap_mode() -> str:
    """``VITJAX_HEAP``: ``kept`` (unset: :data:`HEAP_TUNABLES`), ``hugepages`` (:data:`HUGE_PAGE_TUNABLES`) or
    ``default`` (glibc's own settings)."""
    mode = os.environ.get("VITJAX_HEAP", "kept")
    if mode not in HEAP_MODES:
        raise ValueError(f"VITJAX_HEAP={mode!r}: expected one of {', '.join(HEAP_MODES)}")
    return mode


# device nodes of accelerators JAX runs on: TPU (accel, or vfio on newer TPU VMs), NVIDIA GPU, AMD GPU
_ACCELERATOR_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def runs_on_cpu() -> bool:
    """Whether JAX's default backend will be the CPU, judged before any backend starts: the first platform in
    ``JAX_PLATFORMS`` where it is set, otherwise the absence of TPU and GPU device nodes (a GPU without JAX's CUDA
    plugin counts as an accelerator: the heap is then left as glibc has it)."""
    platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def keep_freed_memory() -> None:
    """Re-execute this Python program (its interpreter, options and arguments) with the tunables of
    :func:`heap_mode` added to ``GLIBC_TUNABLES`` (replacing any of the other mode's), so that XLA:CPU's per-call
    buffers are reused, or faulted in by huge pages, instead of faulted in anew page by page (module docstring).
    Call it first thing in a program's entry point: it does not return when it re-executes. Does nothing off
    Linux/glibc, when JAX will not run on the CPU (:func:`runs_on_cpu`: on a TPU or GPU host the host's heap is
    not XLA:CPU's to tune), when the tunables are already set (so also after the re-execution), or when
    ``VITJAX_HEAP=default``; raises ``ValueError`` for an unknown ``VITJAX_HEAP``."""
    wanted = HEAP_MODES[heap_mode()]
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or not wanted or not runs_on_cpu():
        return
    current = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t]
    if all(t in current for t in wanted):
        return
    ours = {t.split("=")[0] for mode in HEAP_MODES.values() for t in mode}
    tunables = [t for t in current if t.split("=")[0] not in ours] + list(wanted)
    os.environ["GLIBC_TUNABLES"] = ":".join(tunables)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _cpu_barrier(t: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(t, cpu=jax.lax.optimization_barrier, default=lambda t: t)


@jax.custom_jvp
def materialise(x: jax.Array) -> jax.Array:
    """The identity; on the CPU its value (not its tangent) passes an optimization barrier, so XLA computes it on
    its own instead of fusing it into its consumers (see :func:`vitjax.layers.spatial_pool.avg_pool2d`)."""
    return _cpu_barrier(x)


@materialise.defjvp
def _materialise_jvp(primals, tangents):
    return materialise(primals[0]), tangents[0]


@jax.custom_jvp
def grad_boundary(x: jax.Array) -> jax.Array:
    """The identity; its tangent, and by transposition its cotangent, is materialised on the CPU."""
    return x


@grad_boundary.defjvp
def _grad_boundary_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return x, _cpu_barrier(t)


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
        # flipped kernel: one fused loop like the forward's (8x56x56x128, 7x7: 28 -> 4 ms), not k x k placements
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
    the output: 4.4 GiB more for a maxxvitv2 training step), so a loop takes one tap at a time. Strided slices
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
    (see the module docstring). Same signature, same result."""

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
    if dn != _NHWC or any(d != 1 for d in lhs_dilation or ()):
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

        return jax.lax.platform_dependent(lhs, rhs, cpu=pointwise, default=conv)
    if feature_group_count == 1 or channels != feature_group_count:
        return conv(lhs, rhs)

    def shifted(lhs, rhs):
        if outputs != channels:  # a channel multiplier: output channel o reads input channel o // multiplier
            lhs = jnp.repeat(lhs, outputs // channels, axis=-1)
        acc = jnp.promote_types(jnp.result_type(lhs, rhs), jnp.float32)  # accumulate in at least float32
        return _depthwise_by_shifts(lhs.astype(acc), rhs.astype(acc), strides, pads, dilation).astype(out_dtype)

    return jax.lax.platform_dependent(lhs, rhs, cpu=shifted, default=conv)


def max_pool(x: jax.Array, kernel: tuple[int, int], strides: tuple[int, int], pads) -> jax.Array:
    """Max pooling of an NHWC map, padded with -inf by ``pads`` ((top, bottom), (left, right)): XLA's max
    ``reduce_window``; on the CPU the maximum of shifted slices, with the same values and gradient."""
    pads = tuple(tuple(p) for p in pads)

    def default(x):
        return jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
        )

    return jax.lax.platform_dependent(x, cpu=lambda x: _max_by_shifts(x, kernel, strides, pads), default=default)


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
