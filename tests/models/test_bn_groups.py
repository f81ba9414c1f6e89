"""BatchNorm with statistic groups against torch as timm's ``train.py`` runs it under DDP: each replica's
``BatchNorm2d`` normalises its own slice of the global batch, gradients are those of the whole batch's loss,
and the running statistics are the replicas' average after the steps (``--dist-bn reduce`` without DDP's
per-forward buffer broadcast). One group is the whole batch (``--sync-bn``). Weights, running statistics,
inputs and output gradients are all random; two train steps, then eval mode."""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from jax import numpy as jnp

import vitjax
from vitjax.layers import norm

B, H, W, C = 8, 3, 2, 5
TOL = 2e-6  # float32 on both sides; the worst measured error is 3.9e-7


def _torch_bn(rng) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(C, eps=1e-3, momentum=0.2)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.normal(1, 0.3, C).astype(np.float32)))
        bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, C).astype(np.float32)))
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 1, C).astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, C).astype(np.float32)))
        bn.num_batches_tracked.fill_(3)
    return bn


def _ours(bn: torch.nn.BatchNorm2d, groups: int) -> norm.BatchNorm:
    layer = norm.BatchNorm(C, eps=1e-3, momentum=0.2)
    layer.stat_groups = groups
    layer.scale[...] = jnp.asarray(bn.weight.detach().numpy())
    layer.bias[...] = jnp.asarray(bn.bias.detach().numpy())
    layer.mean[...] = jnp.asarray(bn.running_mean.numpy())
    layer.var[...] = jnp.asarray(bn.running_var.numpy())
    layer.num_batches_tracked[...] = jnp.asarray(3, jnp.int32)
    return layer


def _err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_groups_equal_torch_per_replica(groups, kernels):
    rng = np.random.default_rng(groups)
    ref = _torch_bn(rng)
    replicas = [copy.deepcopy(ref) for _ in range(groups)]
    layer = _ours(ref, groups)
    graphdef, params, stats = nnx.split(layer, nnx.Param, ...)
    params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)

    def loss(params, x, ct, stats):
        m = nnx.merge(graphdef, params, stats)
        y = m(x)
        return jnp.sum(y * ct), (y, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)))

    vitjax.set_cpu_kernels(kernels)
    try:
        step = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
        for _ in range(2):
            x = rng.normal(0.5, 2.0, (B, H, W, C)).astype(np.float32)
            ct = rng.normal(0, 1, (B, H, W, C)).astype(np.float32)
            (g_params, g_x), (y, stats) = step(params, jnp.asarray(x), jnp.asarray(ct), stats)
            # torch: replica i normalises slice i; the loss of the whole batch is the sum of the replicas' losses
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)  # B, C, H, W
            outs = [r(part) for r, part in zip(replicas, torch.chunk(xt, groups), strict=True)]
            yt = torch.cat(outs)  # B, C, H, W
            (yt * torch.from_numpy(ct).permute(0, 3, 1, 2)).sum().backward()
            assert _err(y, yt.detach().permute(0, 2, 3, 1).numpy()) < TOL
            assert _err(g_x, xt.grad.permute(0, 2, 3, 1).numpy()) < TOL
            d_weight = sum(r.weight.grad for r in replicas).numpy()  # DDP's all-reduce of the weight gradients
            d_bias = sum(r.bias.grad for r in replicas).numpy()
            assert _err(g_params["scale"], d_weight) < TOL
            assert _err(g_params["bias"], d_bias) < TOL
            for r in replicas:
                r.zero_grad()
    finally:
        vitjax.set_cpu_kernels(True)
    # --dist-bn reduce: the replicas' running statistics averaged (torch.distributed.all_reduce / world size)
    mean = torch.stack([r.running_mean for r in replicas]).mean(0).numpy()
    var = torch.stack([r.running_var for r in replicas]).mean(0).numpy()
    assert _err(stats["mean"], mean) < TOL
    assert _err(stats["var"], var) < TOL
    assert int(stats["num_batches_tracked"]) == int(replicas[0].num_batches_tracked) == 5
    # eval mode normalises with those statistics, as the reduced replicas do
    m = nnx.merge(graphdef, params, stats)
    m.eval()
    x = rng.normal(0, 1, (B, H, W, C)).astype(np.float32)
    r = replicas[0].eval()
    with torch.no_grad():
        r.running_mean.copy_(torch.from_numpy(mean))
        r.running_var.copy_(torch.from_numpy(var))
        want = r(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert _err(m(jnp.asarray(x)), want) < TOL


def test_groups_differ_from_the_whole_batch():
    """The grouping is not a no-op: 2 groups normalise otherwise than 1 (guards the comparison above)."""
    rng = np.random.default_rng(0)
    ref = _torch_bn(rng)
    x = jnp.asarray(rng.normal(0.5, 2.0, (B, H, W, C)).astype(np.float32))
    x = x.at[: B // 2].multiply(3.0)
    one, two = _ours(ref, 1), _ours(ref, 2)
    assert _err(one(x), two(x)) > 0.1


def test_a_batch_that_does_not_split_into_the_groups_is_an_error():
    layer = _ours(_torch_bn(np.random.default_rng(0)), 4)
    with pytest.raises(ValueError, match="batch of 6 does not split into 4 equal statistic groups.*--sync-bn"):
        layer(jnp.zeros((6, H, W, C)))
