"""The losses against timm's on the same inputs: soft-target cross-entropy (``SoftTargetCrossEntropy``) and
binary cross-entropy (``BinaryCrossEntropy``, with smoothing and a target threshold) on smoothed, mixed targets,
as a function and as the loss the train step reports."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from jax import numpy as jnp
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

from tests.train.common import TINY
from train import mesh as mesh_lib
from train import optim
from train import state as state_lib
from train.steps import make_train_step, mix, normalize, smooth_one_hot, soft_target_loss

K = 10


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((8, K)) * 3).astype(np.float32)
    labels = rng.integers(0, K, (8,)).astype(np.int32)
    return logits, labels


def _mixed(labels, smoothing):
    y = smooth_one_hot(jnp.asarray(labels), K, smoothing)
    x = jnp.zeros((8, 4, 4, 3), jnp.float32)
    return np.array(mix(x, y, jax.random.key(3), mixup_alpha=0.8, cutmix_alpha=0.0)[1])


def _close(ours, ref):
    ours, ref = float(ours), float(ref)
    print(f"ours {ours:.8f} timm {ref:.8f}")
    assert ours == pytest.approx(ref, rel=2e-6)


@pytest.mark.parametrize("thresh", [None, 0.2])
def test_bce_matches_timm(thresh):
    logits, labels = _inputs()
    # integer labels: timm smooths them itself
    ref = BinaryCrossEntropy(smoothing=0.1, target_threshold=thresh)(torch.from_numpy(logits), torch.from_numpy(labels))
    y = smooth_one_hot(jnp.asarray(labels), K, 0.1)
    _close(soft_target_loss(jnp.asarray(logits), y, bce=True, bce_target_thresh=thresh), ref)
    # mixed (dense) targets, as with mixup / cutmix: timm takes them as they are
    ym = _mixed(labels, 0.1)
    ref = BinaryCrossEntropy(smoothing=0.1, target_threshold=thresh)(torch.from_numpy(logits), torch.from_numpy(ym))
    _close(soft_target_loss(jnp.asarray(logits), jnp.asarray(ym), bce=True, bce_target_thresh=thresh), ref)


def test_soft_target_ce_matches_timm():
    logits, labels = _inputs(1)
    ym = _mixed(labels, 0.1)
    ref = SoftTargetCrossEntropy()(torch.from_numpy(logits), torch.from_numpy(ym))
    _close(soft_target_loss(jnp.asarray(logits), jnp.asarray(ym)), ref)


@pytest.mark.parametrize("bce", [False, True])
def test_train_step_reports_timms_loss(bce):
    """The step's loss on a two-block ViT equals timm's loss on that model's logits (no dropout: train-mode
    logits are the eval-mode ones)."""
    overrides = dict(img_size=32, **TINY)
    parts = state_lib.build_parts("vit_tiny_patch16_224", overrides)
    params = nnx.to_pure_dict(parts.params)
    tx = optim.make_optimizer(params, opt="adamw", lr_schedule=lambda s: 0.0, weight_decay=0.0)
    mesh = mesh_lib.make_mesh(None, jax.devices()[:1])
    sh = state_lib.shardings(parts, tx, mesh, "auto", ema=False)
    st = state_lib.init_state("vit_tiny_patch16_224", overrides, tx, sh, seed=0)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    step = make_train_step(
        parts.train_def, parts.rest, tx, lambda s: 0.0, num_classes=K, mean=mean, std=std, label_smoothing=0.1,
        bce=bce, bce_target_thresh=0.2 if bce else None,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), "label": rng.integers(0, K, (8,))}
    batch["label"] = batch["label"].astype(np.int32)
    model = state_lib.model_from(parts, jax.device_get(st.params), jax.device_get(st.batch_stats))
    logits = torch.from_numpy(np.array(model(normalize(batch["image"], mean, std, jnp.float32))))
    labels = torch.from_numpy(batch["label"]).long()
    loss_fn = BinaryCrossEntropy(smoothing=0.1, target_threshold=0.2) if bce else None
    if bce:
        ref = loss_fn(logits, labels)
    else:
        ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    _, metrics = jax.jit(step, compiler_options=state_lib.RUN_ONCE)(st, batch, jax.random.key(0))  # quick compile
    _close(metrics["loss"], ref)
