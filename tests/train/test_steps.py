"""The pure steps, without the loop: mixup/cutmix targets, gradient accumulation, bf16 compute with fp32 master
weights, the non-finite guard, and BatchNorm statistics kept in the state and equal on 1 and 8 devices."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax import numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.train.common import TINY
from train import mesh as mesh_lib
from train import optim
from train import state as state_lib
from train.steps import make_eval_step, make_train_step, mix, smooth_one_hot
from vitjax.layers import BatchNorm, Linear, create_conv2d

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _batch(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, (n,), dtype=np.int32),
    }


def _vit_setup(remat: bool = False, **step_kw):
    parts = state_lib.build_parts("vit_tiny_patch16_224", dict(img_size=32, **TINY), remat=remat)
    params = nnx.to_pure_dict(parts.params)
    lr = optim.schedule(1e-3, 10)
    tx = optim.make_optimizer(params, opt="adamw", lr_schedule=lr, weight_decay=0.05, clip_grad=1.0)
    mesh = mesh_lib.make_mesh(None, jax.devices()[:1])
    sh = state_lib.shardings(parts, tx, mesh, "auto", ema=True)
    st = state_lib.init_state("vit_tiny_patch16_224", dict(img_size=32, **TINY), tx, sh, seed=0)
    step = make_train_step(parts.train_def, parts.rest, tx, lr, num_classes=10, mean=MEAN, std=STD, **step_kw)
    return parts, st, jax.jit(step, compiler_options=state_lib.RUN_ONCE)  # quick compiles for tests


@pytest.fixture(scope="module")
def vit():
    """One compiled fp32 step with EMA, shared by the tests below."""
    return _vit_setup(ema_decay_rate=0.9)


def test_mixup_and_cutmix_targets():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 3)), jnp.float32)
    y = smooth_one_hot(jnp.arange(8) % 10, 10, 0.1)
    np.testing.assert_allclose(np.asarray(y.sum(-1)), 1.0, rtol=1e-6)
    xm, ym = mix(x, y, jax.random.key(0), mixup_alpha=0.8, cutmix_alpha=0.0)
    lam = float(ym[0, 0] - y[7, 0]) / float(y[0, 0] - y[7, 0])  # sample 0 is class 0, its partner class 7
    np.testing.assert_allclose(np.asarray(xm), np.asarray(lam * x + (1 - lam) * x[::-1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ym.sum(-1)), 1.0, rtol=1e-6)
    xc, yc = mix(x, y, jax.random.key(1), mixup_alpha=0.0, cutmix_alpha=1.0)
    from_self = np.isclose(np.asarray(xc), np.asarray(x)).all(-1)  # B, H, W
    from_partner = np.isclose(np.asarray(xc), np.asarray(x[::-1])).all(-1)
    assert (from_self | from_partner).all()
    area_kept = from_self[0].mean()
    lam_c = float(yc[0, 0] - y[7, 0]) / float(y[0, 0] - y[7, 0])
    assert lam_c == pytest.approx(area_kept, abs=1e-6)


def test_grad_accumulation_matches_one_batch(vit):
    batch, rng = _batch(), jax.random.key(3)
    results = []
    for accum in (1, 2, 4):
        _, st, step = vit if accum == 1 else _vit_setup(accum_steps=accum, ema_decay_rate=0.9)
        new, m = step(st, batch, rng)
        # Adam's first moment after one update is (1 - b1) * the clipped gradient: linear in it, unlike the new
        # parameters (the first Adam step is ~lr * sign(g), which flips for gradients near zero).
        mu = optax.tree_utils.tree_get(new.opt_state, "mu")
        results.append((float(m["loss"]), float(m["grad_norm"]), jax.device_get(mu)))
    for loss, gn, mu in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        assert gn == pytest.approx(results[0][1], rel=1e-4)
        for a, b in zip(jax.tree.leaves(mu), jax.tree.leaves(results[0][2]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


def test_remat_gives_the_same_step(vit):
    batch, rng = _batch(), jax.random.key(0)
    parts, st, step = _vit_setup(remat=True, ema_decay_rate=0.9)
    assert parts.model.grad_checkpointing
    _, m = step(st, batch, rng)
    _, st0, step0 = vit
    _, m0 = step0(st0, batch, rng)
    assert float(m["loss"]) == pytest.approx(float(m0["loss"]), rel=1e-6)
    assert float(m["grad_norm"]) == pytest.approx(float(m0["grad_norm"]), rel=1e-5)


def test_bf16_compute_keeps_fp32_master_weights(vit):
    batch, rng = _batch(), jax.random.key(0)
    _, st32, step32 = vit
    _, st16, step16 = _vit_setup(compute_dtype=jnp.bfloat16)
    new32, m32 = step32(st32, batch, rng)
    new16, m16 = step16(st16, batch, rng)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new16.params))
    assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=2e-2)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(st16.params), jax.tree.leaves(new16.params), strict=True)
    )


def test_non_finite_step_changes_nothing(vit):
    _, st, step = vit
    before = jax.device_get(st)
    head = st.params["head"]
    poisoned = st.replace(params={**st.params, "head": {**head, "bias": head["bias"].at[0].set(jnp.nan)}})
    new, m = step(poisoned, _batch(), jax.random.key(0))
    assert int(m["finite"]) == 0 and int(new.step) == 1
    np.testing.assert_array_equal(
        np.asarray(new.params["blocks"][0]["mlp"]["fc1"]["kernel"]), before.params["blocks"][0]["mlp"]["fc1"]["kernel"]
    )
    assert jax.tree.all(
        jax.tree.map(lambda a, b: np.array_equal(a, b), jax.device_get(new.opt_state), before.opt_state)
    )


def test_ema_follows_updates(vit):
    _, st, step = vit
    new, _ = step(st, _batch(), jax.random.key(0))  # first update: decay 0, the EMA is the weights
    for a, b in zip(jax.tree.leaves(new.ema["params"]), jax.tree.leaves(new.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    newer, _ = step(new, _batch(seed=1), jax.random.key(1))
    d = float(optim.ema_decay(2, 0.9))
    a, b, p = (np.asarray(t["head"]["kernel"]) for t in (newer.ema["params"], new.params, newer.params))
    np.testing.assert_allclose(a, d * b + (1 - d) * p, rtol=1e-5, atol=1e-7)


class TinyBN(nnx.Module):
    """conv -> BatchNorm -> relu -> mean pool -> linear: the smallest BatchNorm classifier."""

    def __init__(self, *, rngs: nnx.Rngs):
        # a bias before BN has no gradient but noise
        self.conv = create_conv2d(3, 8, 3, stride=2, bias=False, rngs=rngs)
        self.bn = BatchNorm(8)
        self.head = Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))


def test_batchnorm_statistics_in_state_match_across_devices():
    model = TinyBN(rngs=nnx.Rngs(0))
    model.train()
    train_def, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    model.eval()
    eval_def = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
    params, stats, rest = (nnx.to_pure_dict(t) for t in (params, stats, rest))
    lr = optim.schedule(1e-2, 10)
    tx = optim.make_optimizer(params, opt="adamw", lr_schedule=lr, weight_decay=0.0)
    st = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        ema={},
        key=jax.random.key_data(jax.random.key(0)),
    )
    step = make_train_step(train_def, rest, tx, lr, num_classes=10, mean=MEAN, std=STD, accum_steps=2)
    batch = _batch(16, 16)
    outs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = mesh_lib.make_mesh(None, devices)
        bsh = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))
        placed = {k: jax.device_put(v, bsh) for k, v in batch.items()}
        s = jax.device_put(st, mesh_lib.replicated(mesh))
        for i in range(2):
            s, m = jax.jit(step, compiler_options=state_lib.RUN_ONCE)(s, placed, jax.random.key(i))
        outs.append((float(m["loss"]), jax.device_get(s.batch_stats)))
    (l1, s1), (l8, s8) = outs
    assert l8 == pytest.approx(l1, rel=1e-5)
    assert int(s1["bn"]["num_batches_tracked"]) == 4  # 2 steps x 2 micro-batches
    assert not np.allclose(s1["bn"]["mean"], 0.0)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    ev = jax.jit(make_eval_step(eval_def, rest, mean=MEAN, std=STD))
    r = ev(s.params, s.batch_stats, {**placed, "valid": jnp.ones(16, jnp.int32)})
    assert float(r["count"]) == 16 and 0 <= float(r["top1"]) <= 16


def test_backbone_without_classifier_is_refused():
    """A model with no head (HF ViTModel, num_classes=0) gets a clear error, not a division by zero."""
    with pytest.raises(ValueError, match="--num-classes"):
        make_train_step(None, {}, None, None, num_classes=0, mean=(0.5,), std=(0.5,))


def test_label_smoothing_values_match_torch():
    """The smoothed targets hold 1 - e + e/K at the label and e/K elsewhere, and the training loss on them
    (softmax cross-entropy, as the train step computes it) equals torch's ``cross_entropy(label_smoothing=e)``."""
    import torch

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 10)).astype(np.float32) * 3
    labels = np.array([0, 3, 9, 3, 5, 1])
    for eps in (0.0, 0.1, 0.3):
        y = np.asarray(smooth_one_hot(jnp.asarray(labels), 10, eps))
        want = np.full((6, 10), eps / 10, np.float32)
        want[np.arange(6), labels] += 1 - eps
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=0)
        ours = float(optax.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(y)).mean())
        ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=eps)
        assert ours == pytest.approx(float(ref), rel=1e-6)


def test_batchnorm_statistics_after_a_train_step_match_torch():
    """After one train step the running mean / variance in the state equal torch's BatchNorm2d (train mode,
    momentum 0.1, unbiased variance) run on the same pre-BatchNorm activations."""
    import torch

    from train.steps import normalize

    model = TinyBN(rngs=nnx.Rngs(1))
    model.train()
    train_def, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    params, stats, rest = (nnx.to_pure_dict(t) for t in (params, stats, rest))
    lr = optim.schedule(1e-2, 10)
    tx = optim.make_optimizer(params, opt="adamw", lr_schedule=lr, weight_decay=0.0)
    st = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        ema={},
        key=jax.random.key_data(jax.random.key(0)),
    )
    step = make_train_step(train_def, rest, tx, lr, num_classes=10, mean=MEAN, std=STD)
    batch = _batch(16, 16, seed=3)
    s, _ = jax.jit(step)(st, batch, jax.random.key(0))
    pre_bn = np.asarray(model.conv(normalize(jnp.asarray(batch["image"]), MEAN, STD, jnp.float32)))  # B, H, W, C
    bn = torch.nn.BatchNorm2d(8).train()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(np.asarray(stats["bn"]["mean"])))
        bn.running_var.copy_(torch.from_numpy(np.asarray(stats["bn"]["var"])))
        bn(torch.from_numpy(pre_bn).permute(0, 3, 1, 2))
    got = jax.device_get(s.batch_stats)["bn"]
    np.testing.assert_allclose(got["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert int(got["num_batches_tracked"]) == int(bn.num_batches_tracked) == 1
