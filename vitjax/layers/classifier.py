"""Classifier heads (timm ``layers/classifier.py``): global pool -> dropout -> fc (:class:`ClassifierHead`), the
tanh representation layer (:class:`PreLogits`) and pool -> norm -> pre-logits -> dropout -> fc
(:class:`NormMlpClassifierHead`). ``fc`` is None when ``num_classes=0``."""

from __future__ import annotations

import jax
from flax import nnx
from jax import numpy as jnp

from vitjax.layers.drop import Dropout, maybe
from vitjax.layers.linear import Dense, Linear
from vitjax.layers.spatial_pool import global_pool, global_pool_mult
from vitjax.sharding import CLASSES, EMBED, Axes, with_axes


def _fc(dim: int, num_classes: int, axes: Axes, kernel_init, rngs: nnx.Rngs) -> nnx.Linear | None:
    """The classifier Linear: truncated-normal(0.02) weights unless ``kernel_init`` is given, zero bias."""
    if num_classes <= 0:
        return None
    if kernel_init is None:
        return Linear(dim, num_classes, axes=axes, rngs=rngs)
    return Dense(
        dim,
        num_classes,
        kernel_init=with_axes(kernel_init, axes),
        bias_init=with_axes(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


class ClassifierHead(nnx.Module):
    """Global pool -> dropout -> fc (timm ``ClassifierHead``); ``kernel_init`` overrides the fc's initialiser."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        pool_type: str,
        drop_rate: float,
        *,
        kernel_init: nnx.Initializer | None = None,
        rngs: nnx.Rngs,
    ):
        self.global_pool = pool_type
        self.num_features = dim * global_pool_mult(pool_type)
        self.drop = Dropout(drop_rate, rngs=rngs)
        self.fc = _fc(self.num_features, num_classes, (EMBED, CLASSES), kernel_init, rngs)

    def __call__(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        x = maybe(self.drop, global_pool(x, self.global_pool))
        return x if pre_logits else maybe(self.fc, x)


class PreLogits(nnx.Module):
    """``tanh(fc(x))``: the original ViT's representation layer, HF ViT's pooler, timm's NormMlp pre-logits."""

    def __init__(self, dim: int, out: int, *, axes: Axes = (EMBED, EMBED), rngs: nnx.Rngs):
        self.fc = Linear(dim, out, axes=axes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.fc(x))


class NormMlpClassifierHead(nnx.Module):
    """Global pool -> norm -> tanh pre-logits -> dropout -> fc (timm ``NormMlpClassifierHead``); without pooling
    it runs per position (timm's 1x1-conv form)."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        hidden: int,
        pool_type: str,
        drop_rate: float,
        norm: nnx.Module,
        *,
        rngs: nnx.Rngs,
    ):
        self.pool_type = pool_type
        self.norm = norm
        self.pre_logits = PreLogits(dim, hidden, axes=(EMBED, None), rngs=rngs)
        self.num_features = hidden
        self.drop = Dropout(drop_rate, rngs=rngs)
        self.fc = _fc(hidden, num_classes, (None, CLASSES), None, rngs)

    def __call__(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        x = self.pre_logits(self.norm(global_pool(x, self.pool_type)))
        x = maybe(self.drop, x)
        return x if pre_logits else maybe(self.fc, x)
