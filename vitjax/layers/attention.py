"""Multi-head self-attention with timm's fused ``qkv`` layout, computed heads-first.

timm's ``qkv`` Linear maps C -> 3C and its output is read as ``(3, heads, head_dim)``: rows of the torch
weight are ``[q; k; v]``, each head-major. We keep that one kernel (so checkpoints map 1:1), project with it as
one plain matmul and transpose its output to heads-first ``(B, heads, N, head_dim)``, which XLA:CPU runs far
faster than ``(B, N, heads, head_dim)`` batched matmuls. Projecting straight into the heads-first layout with one
einsum made XLA:CPU transpose the layer-normed tokens and the kernel instead, which was slower.

On NVIDIA GPUs, :func:`attend` runs cuDNN's flash attention through ``jax.nn.dot_product_attention`` where it
applies (its memory does not grow with the N x N weights). ``VITJAX_FUSED_ATTENTION`` (read once, at import:
``auto``, the default; ``1``, ``jax.nn.dot_product_attention`` on every platform but the CPU; ``0``, the plain
form everywhere) or :func:`set_fused_attention` choose.
"""

from __future__ import annotations

import math
import os

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.drop import Dropout, maybe
from vitjax.layers.linear import Linear, normal_param
from vitjax.layers.norm import LayerNorm, NormFactory, RmsNorm
from vitjax.sharding import EMBED, QKV
from vitjax.xla_cpu import softmax_parts

_MODES = {"auto": None, "1": True, "0": False}


def _fused_from_environment() -> bool | None:
    value = os.environ.get("VITJAX_FUSED_ATTENTION", "auto")
    if value not in _MODES:
        raise ValueError(
            f"VITJAX_FUSED_ATTENTION={value!r}: expected auto (the default: cuDNN on NVIDIA GPUs), "
            "1 (jax.nn.dot_product_attention on every platform but the CPU) or 0 (the plain form everywhere)"
        )
    return _MODES[value]


_fused = _fused_from_environment()


def use_fused_attention() -> bool | None:
    """The attention setting (``VITJAX_FUSED_ATTENTION``, :func:`set_fused_attention`): None (auto), True or
    False."""
    return _fused


def set_fused_attention(enable: bool | None = None) -> None:
    """Which attention :func:`attend` compiles off the CPU: None (auto, the default) cuDNN's flash attention on
    NVIDIA GPUs where it applies and the plain form elsewhere; True ``jax.nn.dot_product_attention`` on every
    platform but the CPU (XLA's form on a TPU); False the plain form everywhere. A change clears JAX's caches, as
    :func:`vitjax.set_cpu_kernels` does: a jitted function keeps the form it was traced with."""
    global _fused
    if enable is not None:
        enable = bool(enable)
    if enable is not _fused:
        _fused = enable
        jax.clear_caches()


def attend_plain(
    q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, bias: jax.Array | None = None, dropout=None
) -> jax.Array:
    """softmax(q k^T * scale + bias) v as two einsums and a softmax; on the CPU the softmax's division comes after
    the PV product (:func:`vitjax.xla_cpu.softmax_parts`)."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k)  # B, H, Nq, Nk
    if bias is not None:
        logits = logits + bias
    weights, total = softmax_parts(logits)  # softmax and ones; on the CPU exp(l - max) and its sum
    weights = maybe(dropout, weights)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v) / total  # B, H, Nq, D


def attend_fused(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    bias: jax.Array | None = None,
    cudnn: bool = False,
    fallback=None,
) -> jax.Array:
    """The same attention by ``jax.nn.dot_product_attention``: with ``cudnn``, cuDNN's flash attention where it
    takes the dtype and shapes (bf16 / fp16, head dim a multiple of 8; it raises otherwise, and on a machine
    without cuDNN), else, or when cuDNN refuses and no ``fallback(q, k, v, bias)`` is given, XLA's form (logits
    and softmax in float32 at least)."""
    t = (0, 2, 1, 3)
    qt, kt, vt = q.transpose(t), k.transpose(t), v.transpose(t)  # each B, N, H, D
    if cudnn:
        b = None if bias is None else bias.astype(q.dtype)
        try:
            out = jax.nn.dot_product_attention(qt, kt, vt, bias=b, scale=scale, implementation="cudnn")
            return out.transpose(t)  # B, H, Nq, D
        except (NotImplementedError, ValueError, RuntimeError):
            if fallback is not None:
                return fallback(q, k, v, bias)
    out = jax.nn.dot_product_attention(qt, kt, vt, bias=bias, scale=scale, implementation="xla")  # B, Nq, H, D
    return out.transpose(t)  # B, H, Nq, D


def _dropout_on(dropout: nnx.Dropout | None) -> bool:
    return dropout is not None and dropout.rate > 0 and not dropout.deterministic


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    bias: jax.Array | None = None,
    dropout: nnx.Dropout | None = None,
) -> jax.Array:
    """softmax(q k^T * scale + bias) v on heads-first tensors ``(B, H, N, D)``.

    Compiled for the CPU: :func:`attend_plain`, always. On NVIDIA GPUs (unless :func:`set_fused_attention` is
    False, or attention dropout is active, which the fused forms lack): cuDNN's flash attention where it takes the
    dtype and shapes, else the plain form (XLA's form with True). On other platforms (TPU): the plain form, or
    with True XLA's ``jax.nn.dot_product_attention``, which keeps float32 logits and took more memory than the
    plain form for DINOv2-L on v5e (``train/AOT.md``). The choice is a ``lax.platform_dependent``, so a program
    compiled ahead of time for a TPU from a CPU host gets the TPU's form.
    """
    if _fused is False or _dropout_on(dropout):
        return attend_plain(q, k, v, scale=scale, bias=bias, dropout=dropout)

    def plain(q, k, v, bias):
        return attend_plain(q, k, v, scale=scale, bias=bias)

    def xla(q, k, v, bias):
        return attend_fused(q, k, v, scale=scale, bias=bias)

    def cudnn(q, k, v, bias):
        return attend_fused(q, k, v, scale=scale, bias=bias, cudnn=True, fallback=None if _fused else plain)

    return jax.lax.platform_dependent(q, k, v, bias, cpu=plain, cuda=cudnn, default=xla if _fused else plain)


def split_qkv(
    qkv: nnx.Linear, x: jax.Array, num_heads: int, *, head_first: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Project tokens ``(B, N, C)`` with a fused qkv Linear into heads-first q, k, v ``(B, H, N, D)``.

    The projection's features are ``[q; k; v]``, each head-major (timm's ``Attention``), or with ``head_first``
    ``[q_h | k_h | v_h]`` per head (timm's MaxxViT ``head_first`` attention)."""
    b, n, _ = x.shape
    out = qkv(x)  # B, N, 3 * H * D
    d = out.shape[-1] // (3 * num_heads)
    if head_first:
        out = out.reshape(b, n, num_heads, 3, d).transpose(3, 0, 2, 1, 4)  # 3, B, H, N, D
    else:
        out = out.reshape(b, n, 3, num_heads, d).transpose(2, 0, 3, 1, 4)  # 3, B, H, N, D
    return out[0], out[1], out[2]


def merge_heads(x: jax.Array) -> jax.Array:
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)  # B, N, H*D


class Attention(nnx.Module):
    """timm ``Attention`` (and ``RelPosAttention`` when called with a bias)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        scale_norm: bool = False,
        norm_eps: float = 1e-6,
        norm: NormFactory | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rngs: nnx.Rngs,
    ):
        """``norm`` builds the q/k norms (per head) and the ``scale_norm`` (BEiT3: on the merged heads before
        ``proj``); without it they are LayerNorms of eps ``norm_eps``."""
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        norm = norm or (lambda d, axis_name=None: LayerNorm(d, eps=norm_eps, axis_name=axis_name, rngs=rngs))
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias, axes=(EMBED, QKV), rngs=rngs)
        self.q_norm = norm(self.head_dim, axis_name=None) if qk_norm else None
        self.k_norm = norm(self.head_dim, axis_name=None) if qk_norm else None
        self.attn_drop = Dropout(attn_drop, rngs=rngs)
        self.norm = norm(dim, axis_name=QKV) if scale_norm else None
        self.proj = Linear(dim, dim, bias=proj_bias, axes=(QKV, EMBED), rngs=rngs)
        self.proj_drop = Dropout(proj_drop, rngs=rngs)

    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        q, k, v = split_qkv(self.qkv, x, self.num_heads)  # each B, H, N, D
        q, k = maybe(self.q_norm, q), maybe(self.k_norm, k)
        out = attend(q, k, v, scale=self.scale, bias=bias, dropout=self.attn_drop)
        return maybe(self.proj_drop, self.proj(maybe(self.norm, merge_heads(out))))


class DiffAttention(nnx.Module):
    """Differential attention (timm ``DiffAttention``, arXiv:2410.05258).

    ``softmax(q1 k1^T) - lambda * softmax(q2 k2^T)`` with twice the heads at half the head width for q/k;
    ``lambda = exp(sum(lq1 * lk1)) - exp(sum(lq2 * lk2)) + lambda_init(depth)``; the output is RmsNorm'ed
    (eps 1e-5) per head and scaled by ``1 - lambda_init``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        depth: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.head_dim = dim // num_heads // 2
        self.lambda_init = diff_lambda_init(depth)
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias, axes=(EMBED, QKV), rngs=rngs)
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, normal_param(rngs, (self.head_dim,), (None,), std=0.1))
        self.sub_norm = RmsNorm(2 * self.head_dim, eps=1e-5)
        self.attn_drop = Dropout(attn_drop, rngs=rngs)
        self.proj = Linear(dim, dim, bias=proj_bias, axes=(QKV, EMBED), rngs=rngs)
        self.proj_drop = Dropout(proj_drop, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)  # each B, N, C
        return maybe(self.proj_drop, self.proj(diff_mix(self, q, k, v)))


def diff_lambda_init(depth: int) -> float:
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


def diff_mix(owner: nnx.Module, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The differential-attention core on token-major q, k, v ``(B, N, C)``; returns ``(B, N, C)``.

    ``owner`` holds the parameters: ``num_heads``, ``head_dim`` (half a head), ``lambda_{q,k}{1,2}``,
    ``lambda_init``, ``sub_norm`` and ``attn_drop`` (``DiffAttention`` or a differential parallel block).
    """
    b, n, _ = q.shape
    h, d = owner.num_heads, owner.head_dim
    q = q.reshape(b, n, h, 2, d).transpose(3, 0, 2, 1, 4)  # 2, B, H, N, D
    k = k.reshape(b, n, h, 2, d).transpose(3, 0, 2, 1, 4)  # 2, B, H, N, D
    v = v.reshape(b, n, h, 2 * d).transpose(0, 2, 1, 3)  # B, H, N, 2D
    l1 = jnp.exp(jnp.sum(owner.lambda_q1[...] * owner.lambda_k1[...]))
    l2 = jnp.exp(jnp.sum(owner.lambda_q2[...] * owner.lambda_k2[...]))
    lam = l1 - l2 + owner.lambda_init
    a1 = attend(q[0], k[0], v, scale=d**-0.5, dropout=owner.attn_drop)  # B, H, N, 2D
    a2 = attend(q[1], k[1], v, scale=d**-0.5, dropout=owner.attn_drop)  # B, H, N, 2D
    out = owner.sub_norm(a1 - lam * a2) * (1 - owner.lambda_init)
    return merge_heads(out)  # B, N, C
