"""The device mesh and the rules that place parameters on it.

The mesh has three axes: ``data`` (pure data parallelism: parameters replicated), ``fsdp`` (data parallel too,
but parameters and optimizer state are split along it, ZeRO-3 style) and ``tensor`` (Megatron-style splitting
of the wide matmuls). Batches are split over ``("data", "fsdp")``.

Models never name mesh axes: each parameter carries *logical* axes (``vitjax.sharding``), and :data:`RULES`
maps logical names to mesh axes. For one parameter, each array axis takes the mesh axis of its logical name
unless that mesh axis has size 1, is already used by an earlier axis of the same parameter, or does not divide
the dimension; then it stays replicated. A preset picks a subset of the rules. With ``fsdp_min_size``, a
parameter of fewer elements is not split over ``fsdp`` (as big_vision's and others' FSDP thresholds: gathering a
small weight costs a collective's latency and saves next to no memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vitjax import sharding as lax_names

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_FSDP = {lax_names.EMBED: "fsdp", lax_names.CONV_IN: "fsdp"}
_TP = {
    lax_names.MLP: "tensor",
    lax_names.QKV: "tensor",
    lax_names.HEADS: "tensor",
    lax_names.CLASSES: "tensor",
    lax_names.CONV_OUT: "tensor",
}
# logical axis -> mesh axis, by preset. 'auto' applies both; a mesh axis of size 1 makes its rules no-ops.
RULES: dict[str, dict[str, str]] = {"auto": {**_FSDP, **_TP}, "dp": {}, "fsdp": dict(_FSDP), "tp": dict(_TP)}


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices`` (all devices of all processes by default). Axes left out
    have size 1, except ``data``, which takes whatever devices remain."""
    devices = list(jax.devices() if devices is None else devices)
    shape = dict(shape or {})
    fixed = math.prod(shape.get(a, 1) for a in MESH_AXES if a != "data" or "data" in shape)
    if "data" not in shape:
        if len(devices) % fixed:
            raise ValueError(f"{len(devices)} devices cannot be split into fsdp x tensor = {fixed}")
        shape["data"] = len(devices) // fixed
    dims = tuple(shape.get(a, 1) for a in MESH_AXES)
    if math.prod(dims) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, dims, strict=True))} needs {math.prod(dims)} devices, there are {len(devices)}"
        )
    if devices == list(jax.devices()) and jax.process_count() > 1:
        auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)  # shardings follow the rules, not explicit types
        return jax.make_mesh(dims, MESH_AXES, axis_types=auto, devices=devices)  # topology-aware device order
    return Mesh(np.asarray(devices, dtype=object).reshape(dims), MESH_AXES)


def spec_for(
    axes: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    preset: str = "auto",
    fsdp_min_size: int = 0,
):
    """The PartitionSpec of one parameter with logical ``axes`` and ``shape`` (see the module docstring)."""
    rules = RULES[preset]
    if math.prod(shape) < fsdp_min_size:
        rules = {k: v for k, v in rules.items() if v != "fsdp"}
    if axes is None:
        return PartitionSpec()
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {tuple(shape)}")
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape, strict=True):
        mesh_axis = rules.get(name) if name is not None else None
        size = mesh.shape[mesh_axis] if mesh_axis else 1
        if mesh_axis is None or size == 1 or mesh_axis in used or dim % size:
            out.append(None)
        else:
            used.add(mesh_axis)
            out.append(mesh_axis)
    return PartitionSpec(*out)


def variable_shardings(state: nnx.State, mesh: Mesh, preset: str = "auto", fsdp_min_size: int = 0) -> dict:
    """A pure dict (same structure as ``nnx.to_pure_dict(state)``) of NamedShardings for the Variables of
    ``state``, from their logical axes (``vitjax.sharding.axes_of``); Variables without axes are replicated."""

    def one(var: nnx.Variable) -> NamedSharding:
        value = var.get_value()
        return NamedSharding(mesh, spec_for(lax_names.axes_of(var), value.shape, mesh, preset, fsdp_min_size))

    return map_variables(state, one)


def map_variables(state: nnx.State, fn) -> dict:
    """Apply ``fn`` to every Variable of ``state``; the result is nested like ``nnx.to_pure_dict(state)``."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = fn(var)
    return out


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def activation_constraint(mesh: Mesh) -> Callable[[jax.Array], jax.Array] | None:
    """For :func:`vitjax.sharding.activation_sharding`: pins an activation's leading (batch) axis to the batch
    axes and leaves its other axes to the partitioner. Without it, FSDP's weight-gradient matmuls may gather
    the whole batch onto every device (seen on ViT-L, whose 16 heads divide an 8-way fsdp axis). ``None`` when
    the batch is not split."""
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if ways == 1:
        return None

    def constrain(x: jax.Array) -> jax.Array:
        if x.ndim == 0 or x.shape[0] % ways:
            return x
        spec = PartitionSpec(BATCH_AXES, *[PartitionSpec.UNCONSTRAINED] * (x.ndim - 1))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return constrain


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def describe(shardings: dict, shapes: dict) -> dict[str, str]:
    """``'blocks.0.mlp.fc1.kernel' -> '(32, 128) P(fsdp, tensor)'``: the sharding plan, for logs and tests."""
    flat_s = jax.tree_util.tree_flatten_with_path(shardings)[0]
    flat_v = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
    out = {}
    for path, s in flat_s:
        name = ".".join(str(getattr(k, "key", k)) for k in path)
        shape = tuple(flat_v[path].shape)
        out[name] = f"{shape} {s.spec}"
    return out
