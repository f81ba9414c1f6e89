"""The sharding plan: logical axes -> mesh axes by the rules table, snapshotted for a tiny ViT."""

from __future__ import annotations

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import vitjax
from tests.train.common import TINY
from train import mesh as mesh_lib
from vitjax.sharding import activation_sharding


def _plan(shape: dict, preset: str = "auto", fsdp_min_size: int = 0) -> dict[str, P]:
    model = vitjax.create_model("vit_tiny_patch16_224", img_size=32, abstract=True, **TINY)
    mesh = mesh_lib.make_mesh(shape)
    sh = mesh_lib.variable_shardings(nnx.state(model, nnx.Param), mesh, preset, fsdp_min_size)
    flat = jax.tree_util.tree_flatten_with_path(sh)[0]
    return {".".join(str(getattr(k, "key", k)) for k in p): s.spec for p, s in flat}


def test_plan_snapshot_data_fsdp_tensor():
    plan = _plan({"data": 2, "fsdp": 2, "tensor": 2})
    want = {
        "blocks.0.attn.qkv.kernel": P("fsdp", "tensor"),  # (embed, qkv)
        "blocks.0.attn.qkv.bias": P("tensor"),
        "blocks.0.attn.proj.kernel": P("tensor", "fsdp"),  # (qkv, embed)
        "blocks.0.mlp.fc1.kernel": P("fsdp", "tensor"),  # (embed, mlp)
        "blocks.0.mlp.fc2.kernel": P("tensor", "fsdp"),  # (mlp, embed)
        "blocks.0.norm1.scale": P("fsdp"),
        "patch_embed.proj.kernel": P(None, None, None, "fsdp"),
        "pos_embed": P(None, None, "fsdp"),
        "cls_token": P(None, None, "fsdp"),
        "head.kernel": P("fsdp", "tensor"),  # (embed, classes)
    }
    for name, spec in want.items():
        assert plan[name] == spec, (name, plan[name])
    # every weight matrix is split over both parameter axes
    assert all(
        s == P("fsdp", "tensor") or s == P("tensor", "fsdp")
        for k, s in plan.items()
        if k.endswith("kernel") and "blocks" in k
    )


def test_presets_and_fallbacks():
    dp = _plan({"data": 2, "fsdp": 2, "tensor": 2}, "dp")
    assert all(all(a is None for a in s) for s in dp.values())
    tp = _plan({"data": 2, "fsdp": 2, "tensor": 2}, "tp")
    assert tp["blocks.0.mlp.fc1.kernel"] == P(None, "tensor")
    only_data = _plan({"data": 8})
    assert all(all(a is None for a in s) for s in only_data.values())
    # 10 classes do not split 4 ways: the head's class axis stays replicated
    assert _plan({"data": 2, "tensor": 4})["head.kernel"] == P(None, None)


def test_fsdp_min_size_keeps_small_parameters_whole_on_fsdp():
    shapes = {"data": 2, "fsdp": 2, "tensor": 2}
    full, thr = _plan(shapes), _plan(shapes, fsdp_min_size=1000)
    assert full["blocks.0.norm1.scale"] == P("fsdp") and thr["blocks.0.norm1.scale"] == P(None)
    assert thr["blocks.0.attn.qkv.bias"] == P("tensor")  # tensor splits are not affected
    big = [k for k, s in full.items() if "fsdp" in s and k.endswith("kernel") and "blocks" in k]
    assert big and all(thr[k] == full[k] for k in big)  # the weight matrices (>= 1000 elements) stay split
    mesh = mesh_lib.make_mesh({"fsdp": 8})
    assert mesh_lib.spec_for(("embed", "mlp"), (64, 15), mesh, fsdp_min_size=64 * 16) == P(None, None)
    assert mesh_lib.spec_for(("embed", "mlp"), (64, 16), mesh, fsdp_min_size=64 * 16) == P("fsdp", None)


def test_one_mesh_axis_once_per_parameter():
    mesh = mesh_lib.make_mesh({"fsdp": 8})
    assert mesh_lib.spec_for(("embed", "embed"), (64, 64), mesh) == P("fsdp", None)


def test_make_mesh_shapes():
    assert dict(mesh_lib.make_mesh({"fsdp": 2}).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert dict(mesh_lib.make_mesh(None, jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 12 devices"):
        mesh_lib.make_mesh({"data": 3, "fsdp": 4})


def test_activation_constraint_pins_the_batch_axis():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4})
    constrain = mesh_lib.activation_constraint(mesh)
    out = jax.jit(lambda x: constrain(x * 2.0))(jax.numpy.ones((8, 3, 5)))
    assert out.sharding.spec[0] == ("data", "fsdp")
    assert constrain(jax.numpy.ones((6, 3))).shape == (6, 3)  # a batch the axes do not divide is left alone
    assert mesh_lib.activation_constraint(mesh_lib.make_mesh({"data": 1, "tensor": 8})) is None


def test_models_mark_block_boundaries():
    """Every block's input and output passes the active constraint (``vitjax.sharding.activation_sharding``)."""
    seen = []

    def record(x):
        seen.append(x.shape)
        return x

    model = vitjax.create_model("vit_tiny_patch16_224", img_size=32, **TINY)
    x = jax.numpy.ones((2, 32, 32, 3))
    with activation_sharding(record):
        model(x)
    assert len(seen) == 2 * len(model.blocks) and all(s[0] == 2 for s in seen)
    seen.clear()
    model(x)  # outside the context: untouched
    assert seen == []
