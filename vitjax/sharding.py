"""Logical axis names carried by every parameter.

Models never name mesh axes. Each parameter gets a tuple of *logical* names (one per array axis, ``None``
for an axis that is never sharded); the training code maps them onto mesh axes with a small rules table.
The names live in the Variable metadata under our own key, read and written here only: Flax's own key was
renamed during 0.12.x (``sharding`` -> ``out_sharding``), and Flax shards a Variable carrying ``out_sharding``
eagerly at creation, which needs a mesh; vitjax builds models without one and places them afterwards.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from flax import nnx

# The logical axes used across vitjax.
EMBED = "embed"  # the residual-stream width of a transformer, the channels of a conv net
MLP = "mlp"  # hidden width of an MLP
QKV = "qkv"  # fused query/key/value output features (heads x head_dim x 3)
HEADS = "heads"  # attention heads (per-head tensors such as relative-position tables)
CLASSES = "classes"  # classifier outputs
CONV_IN = "conv_in"  # input channels of a conv kernel
CONV_OUT = "conv_out"  # output channels of a conv kernel

Axes = tuple[str | None, ...]
_KEY = "logical_axes"


def with_axes(init: Callable[..., Any], axes: Axes) -> Callable[..., Any]:
    """Wrap an initializer so that the Variable it makes carries logical axis names."""
    return nnx.with_metadata(init, **{_KEY: axes})


def param(value: Any, axes: Axes) -> nnx.Param:
    """A parameter built from a value (tokens, gammas, tables) carrying logical axes."""
    return nnx.Param(value, **{_KEY: axes})


def axes_of(variable: nnx.Variable) -> Axes | None:
    """The logical axis names of a Variable, or None if it has none."""
    return variable.get_metadata().get(_KEY)


def set_axes(variable: nnx.Variable, axes: Axes) -> None:
    """Attach logical axis names to a Variable built without an initializer (tokens, tables)."""
    variable.set_metadata(**{_KEY: axes})


def logical_axes(model: nnx.Module) -> dict[str, Axes | None]:
    """Map every parameter path ('blocks.0.attn.qkv.kernel') to its logical axes."""
    out = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            out[".".join(str(p) for p in path)] = axes_of(var)
    return out


# Activations. A model marks the tensors that cross its block boundaries with :func:`constrain_batch`; outside
# :func:`activation_sharding` that is the identity. The training code installs a function that pins the batch
# axis to the data-parallel mesh axes, so the SPMD partitioner keeps activations split over the batch rather
# than gathering the batch to split something else (heads, features), which costs memory per device.
_ACTIVATION: contextvars.ContextVar[Callable[[Any], Any] | None] = contextvars.ContextVar(
    "vitjax_activation_sharding", default=None
)


@contextlib.contextmanager
def activation_sharding(constrain: Callable[[Any], Any] | None) -> Iterator[None]:
    """While tracing a model inside this context, every :func:`constrain_batch` point calls ``constrain(x)``
    (typically a ``jax.lax.with_sharding_constraint``). ``None`` leaves activations unconstrained."""
    token = _ACTIVATION.set(constrain)
    try:
        yield
    finally:
        _ACTIVATION.reset(token)


def constrain_batch(x: Any) -> Any:
    """An activation whose leading axis is the batch: constrained by the active :func:`activation_sharding`."""
    constrain = _ACTIVATION.get()
    return x if constrain is None else constrain(x)
