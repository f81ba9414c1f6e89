"""The optimizer pieces against their definitions: schedule values, the weight-decay mask and layer-wise lr
scales (against timm's own parameter groups), the EMA decay (against timm's ModelEmaV3), AdamW (against
torch.optim.AdamW)."""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
import pytest
import timm
import torch
from flax import nnx
from timm.optim import param_groups_layer_decay
from timm.utils.model_ema import ModelEmaV3

import vitjax
from tests.train.common import TINY
from train import optim


def _params(name="vit_tiny_patch16_224", **kw):
    model = vitjax.create_model(name, img_size=32, abstract=True, **{**TINY, **kw})
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _flat(tree) -> dict[str, object]:
    return {".".join(str(getattr(k, "key", k)) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _timm_name(path: str) -> str:
    head, _, leaf = path.rpartition(".")
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return f"{head}.{leaf}" if head else leaf


def test_schedule_matches_definition():
    lr, warm_lr, min_lr, total, warm = 1e-3, 1e-5, 1e-6, 100, 10
    fn = optim.schedule(lr, total, warm, warm_lr, min_lr)
    ref = optax.warmup_cosine_decay_schedule(warm_lr, lr, warm, total, min_lr)
    for s in [0, 1, 5, 9, 10, 11, 50, 99, 100, 120]:
        if s < warm:
            want = warm_lr + (lr - warm_lr) * s / warm
        else:
            t = min((s - warm) / (total - warm), 1.0)
            want = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))
        assert float(fn(s)) == pytest.approx(want, rel=1e-5, abs=1e-9), s  # fp32 arithmetic
        assert float(fn(s)) == pytest.approx(float(ref(s)), rel=1e-5, abs=1e-9), s
    assert float(fn(warm)) == pytest.approx(lr) and float(fn(total)) == pytest.approx(min_lr)


@pytest.mark.parametrize("layer_decay", [0.75, 0.5])
def test_decay_mask_and_layer_scales_match_timm(layer_decay):
    params = _params()
    tm = timm.create_model("vit_tiny_patch16_224", img_size=32, **TINY)
    groups = param_groups_layer_decay(tm, 0.05, tm.no_weight_decay(), layer_decay=layer_decay)
    names = {id(p): n for n, p in tm.named_parameters()}
    want = {names[id(p)]: (g["weight_decay"] > 0, g["lr_scale"]) for g in groups for p in g["params"]}
    mask = {_timm_name(k): v for k, v in _flat(optim.decay_mask(params)).items()}
    scales = {_timm_name(k): v for k, v in _flat(optim.layer_scales(params, layer_decay)).items()}
    assert set(mask) == set(want)
    for name, (decay, scale) in want.items():
        assert mask[name] == decay, name
        assert scales[name] == pytest.approx(scale, rel=1e-12), name
    assert not mask["pos_embed"] and not mask["cls_token"] and mask["blocks.0.attn.qkv.weight"]


def test_decay_mask_relpos_table_and_stage_layer_ids():
    flat = _flat(optim.decay_mask(_params("vit_relpos_small_patch16_224", class_token=True, global_pool="token")))
    assert not flat["cls_token"] and flat["blocks.0.attn.rel_pos.mlp.fc1.kernel"]
    fake = {
        "stem": {"conv": {"kernel": np.zeros((3, 3, 3, 8))}},
        "stages": {
            0: {"downsample": {"kernel": np.zeros((8, 8))}, "blocks": {0: {"k": np.zeros(2)}, 1: {"k": np.zeros(2)}}},
            1: {"blocks": {0: {"k": np.zeros(2)}}},
        },
        "head": {"fc": {"kernel": np.zeros((8, 4))}},
        "relative_position_bias_table": np.zeros((9, 2)),
    }
    ids, n = optim.layer_ids(fake)
    assert n == 5
    flat_ids = _flat(ids)
    assert flat_ids["stem.conv.kernel"] == 0
    assert flat_ids["stages.0.downsample.kernel"] == 1 and flat_ids["stages.0.blocks.1.k"] == 2
    assert flat_ids["stages.1.blocks.0.k"] == 3 and flat_ids["head.fc.kernel"] == 4
    assert not _flat(optim.decay_mask(fake))["relative_position_bias_table"]


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_decay_matches_timm(warmup):
    ema = ModelEmaV3(torch.nn.Linear(2, 2), decay=0.999, use_warmup=warmup)
    for t in [1, 2, 3, 10, 100, 10_000, 10**6]:
        assert float(optim.ema_decay(t, 0.999, warmup)) == pytest.approx(ema.get_decay(t), rel=1e-6, abs=1e-7), t


def test_ema_update_definition():
    ema = {"w": np.full((3,), 2.0, np.float32), "n": np.int32(4)}
    new = {"w": np.full((3,), 4.0, np.float32), "n": np.int32(5)}
    out = optim.ema_update(ema, new, 0.75)
    np.testing.assert_allclose(out["w"], 0.75 * 2.0 + 0.25 * 4.0)
    assert int(out["n"]) == 5


def test_adamw_matches_torch():
    """Five AdamW steps on a 2-D weight (decayed) and a bias (not decayed) at a constant lr, like torch's."""
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(5)]
    tx = optim.make_optimizer(params, opt="adamw", lr_schedule=lambda s: 1e-2, weight_decay=0.1)
    p, st = jax.tree.map(np.copy, params), None
    st = tx.init(p)
    for g in grads:
        up, st = tx.update(g, st, p)
        p = optax.apply_updates(p, up)
    tw, tb = (torch.nn.Parameter(torch.from_numpy(params[k].copy())) for k in ("w", "b"))
    opt = torch.optim.AdamW([{"params": [tw]}, {"params": [tb], "weight_decay": 0.0}], lr=1e-2, weight_decay=0.1)
    for g in grads:
        tw.grad, tb.grad = torch.from_numpy(g["w"]), torch.from_numpy(g["b"])
        opt.step()
    np.testing.assert_allclose(np.asarray(p["w"]), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(p["b"]), tb.detach().numpy(), rtol=1e-5, atol=1e-6)
