"""Pieces every model family shares: the classifier call, feature-index selection, remat'd blocks."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from vitjax.sharding import constrain_batch
from vitjax.xla_cpu import grad_boundary


class ClassifierMixin:
    """``model(x) == model.forward_head(model.forward_features(x))``, as in timm."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward_head(self.forward_features(x))


def feature_take_indices(num: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's rule: an int n takes the last n of ``num`` layers; a sequence takes those (negatives from the end);
    None takes all. Returns the sorted indices and the largest one."""
    if indices is None:
        indices = num
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f"cannot take the last {indices} of {num} feature layers")
        take = list(range(num - indices, num))
    else:
        take = []
        for i in indices:
            j = num + i if i < 0 else i
            if not 0 <= j < num:
                raise ValueError(f"feature index {i} is out of range for {num} layers")
            take.append(j)
    return take, max(take)


def _call_block(block: nnx.Module, x: jax.Array, *args) -> jax.Array:
    return block(x, *args)


_remat_call = nnx.remat(_call_block)


def run_block(block: nnx.Module, x: jax.Array, *args, remat: bool = False) -> jax.Array:
    """Call a block, rematerialising its activations in the backward pass when ``remat`` (timm's
    gradient checkpointing). The input passes through :func:`vitjax.xla_cpu.grad_boundary`, which keeps the
    backward pass linear in depth on the CPU (a CPU kernel); input and output are batch-sharding points
    (:func:`vitjax.sharding.constrain_batch`)."""
    x = grad_boundary(constrain_batch(x))
    return constrain_batch(_remat_call(block, x, *args) if remat else block(x, *args))
