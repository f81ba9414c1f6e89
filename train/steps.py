"""The pure train and eval steps: functions of ``(state, batch, rng)`` with no I/O, no globals, no config object.

``make_train_step`` closes over static choices only (graph definitions, the optimizer, numbers) and returns
``step(state, batch, rng) -> (state, metrics)``, to be wrapped in ``jax.jit`` by the loop. Inside:

* the batch holds ``image`` (uint8 NHWC) and ``label`` (int32); images are normalised on the device;
* mixup / cutmix (timm's ``Mixup`` in batch mode: one lambda per batch, partner = the batch reversed) and label
  smoothing make soft targets; the loss is soft-target cross-entropy, or binary cross-entropy (``--bce-loss``,
  optionally on targets binarised at ``--bce-target-thresh``), as timm's ``train.py`` picks them;
* gradient accumulation scans over ``accum`` micro-batches, carrying BatchNorm statistics from one to the next;
* with ``compute_dtype=bfloat16`` the fp32 master weights are cast inside the loss, so gradients, the optimizer
  and the stored weights stay fp32;
* a step whose loss or gradient norm is not finite leaves the state untouched (``metrics['finite'] == 0``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from flax import nnx
from jax import numpy as jnp

from train.optim import ema_decay, ema_update
from train.state import TrainState
from vitjax.sharding import activation_sharding

Batch = dict[str, jax.Array]


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float], dtype) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    m = jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, -1)  # 1, 1, 1, C
    s = jnp.asarray(std, jnp.float32).reshape(1, 1, 1, -1)  # 1, 1, 1, C
    return ((x - m) / s).astype(dtype)


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mix(
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float = 1.0,
    switch_prob: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """timm's batch-mode Mixup/CutMix: mix each sample with the one at the mirrored batch position.

    With both alphas set, cutmix is used with probability ``switch_prob``; ``prob`` is the chance of mixing
    at all. CutMix's lambda is corrected to the area of the clipped box."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, y
    k_do, k_switch, k_lam, k_cy, k_cx = jax.random.split(key, 5)
    b, h, w, _ = x.shape
    use_cut = (
        jax.random.uniform(k_switch) < switch_prob
        if mixup_alpha > 0 and cutmix_alpha > 0
        else jnp.asarray(cutmix_alpha > 0)
    )
    lam_mix = jax.random.beta(k_lam, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0)
    lam_cut = jax.random.beta(k_lam, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1.0)
    lam = jnp.where(use_cut, lam_cut, lam_mix)
    do = jax.random.uniform(k_do) < prob
    lam = jnp.where(do, lam, 1.0)
    # cutmix box: side ratio sqrt(1 - lam), centre uniform, clipped to the image
    rat = jnp.sqrt(1.0 - lam)
    ch, cw = (h * rat).astype(jnp.int32), (w * rat).astype(jnp.int32)
    cy, cx = jax.random.randint(k_cy, (), 0, h), jax.random.randint(k_cx, (), 0, w)
    y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
    x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
    rows, cols = jnp.arange(h).reshape(h, 1), jnp.arange(w).reshape(1, w)
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # H, W
    lam_box = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
    flipped = x[::-1]
    x_cut = jnp.where(box.reshape(1, h, w, 1), flipped, x)  # B, H, W, C
    x_mix = (x * lam + flipped * (1.0 - lam)).astype(x.dtype)
    mixing = do
    x = jnp.where(mixing & use_cut, x_cut, jnp.where(mixing, x_mix, x))
    lam = jnp.where(mixing & use_cut, lam_box, lam)
    return x, y * lam + y[::-1] * (1.0 - lam)


def soft_target_loss(
    logits: jax.Array, targets: jax.Array, *, bce: bool = False, bce_target_thresh: float | None = None
) -> jax.Array:
    """The mean loss on soft targets (``B, K``: smoothed and mixed): cross-entropy (timm's
    ``SoftTargetCrossEntropy``), or with ``bce`` binary cross-entropy averaged over every logit (timm's
    ``BinaryCrossEntropy``, whose targets are first binarised at ``bce_target_thresh`` when given)."""
    logits = logits.astype(jnp.float32)
    if not bce:
        return optax.softmax_cross_entropy(logits, targets).mean()
    if bce_target_thresh is not None:
        targets = (targets > bce_target_thresh).astype(targets.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean()


def cast_floats(tree: Any, dtype) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def make_train_step(
    train_def: nnx.GraphDef,
    rest: dict,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule | None,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    compute_dtype=jnp.float32,
    label_smoothing: float = 0.0,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    mix_prob: float = 1.0,
    mix_switch_prob: float = 0.5,
    accum_steps: int = 1,
    ema_decay_rate: float = 0.0,
    ema_warmup: bool = True,
    constrain: Callable[[jax.Array], jax.Array] | None = None,
    bce: bool = False,
    bce_target_thresh: float | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """``constrain``: the batch-axis activation constraint of ``train.mesh.activation_constraint``; ``bce``,
    ``bce_target_thresh``: the loss (:func:`soft_target_loss`). ``lr_schedule`` None: the lr is
    ``state.sched['lr']`` (set between steps by the loop, ``--sched plateau``) and ``tx`` ends without it."""
    if num_classes <= 0:
        raise ValueError(
            "the model has no classifier (num_classes=0, e.g. a ViTModel backbone): pass --num-classes N to train it"
        )

    def loss_fn(params, stats, x, y, key):
        model = nnx.merge(train_def, cast_floats(params, compute_dtype), stats, rest)
        nnx.reseed(model, dropout=key)
        with activation_sharding(constrain):
            logits = model(x).astype(jnp.float32)
        loss = soft_target_loss(logits, y, bce=bce, bce_target_thresh=bce_target_thresh)
        return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        k_mix, k_drop = jax.random.split(rng)
        x = normalize(batch["image"], mean, std, jnp.float32)
        y = smooth_one_hot(batch["label"], num_classes, label_smoothing)
        x, y = mix(
            x,
            y,
            k_mix,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=mix_prob,
            switch_prob=mix_switch_prob,
        )
        x = x.astype(compute_dtype)
        if accum_steps == 1:
            (loss, stats), grads = grad_fn(state.params, state.batch_stats, x, y, k_drop)
        else:
            b = x.shape[0]
            if b % accum_steps:
                raise ValueError(f"batch {b} is not divisible by {accum_steps} accumulation steps")
            xs = x.reshape(accum_steps, b // accum_steps, *x.shape[1:])  # A, B/A, H, W, C
            ys = y.reshape(accum_steps, b // accum_steps, y.shape[-1])  # A, B/A, K

            def micro(carry, inp):
                g_sum, l_sum, st = carry
                xi, yi, i = inp
                (li, st), gi = grad_fn(state.params, st, xi, yi, jax.random.fold_in(k_drop, i))
                return (jax.tree.map(jnp.add, g_sum, gi), l_sum + li, st), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            carry = (zeros, jnp.zeros((), jnp.float32), state.batch_stats)
            (g_sum, l_sum, stats), _ = jax.lax.scan(micro, carry, (xs, ys, jnp.arange(accum_steps)))
            grads = jax.tree.map(lambda g: g / accum_steps, g_sum)
            loss = l_sum / accum_steps
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if lr_schedule is None:
            lr = state.sched["lr"]
            updates = jax.tree.map(lambda u: u * lr, updates)
        else:
            lr = lr_schedule(state.step)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state)
        if state.ema:
            d = ema_decay(new.step, ema_decay_rate, ema_warmup)
            new = new.replace(ema=ema_update(state.ema, {"params": params, "batch_stats": stats}, d))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # a non-finite step changes nothing but the step counter
        kept = state.replace(step=state.step + 1)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, kept)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr,
            "finite": finite.astype(jnp.int32),
        }
        return new, metrics

    return step


def make_eval_step(
    eval_def: nnx.GraphDef,
    rest: dict,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    compute_dtype=jnp.float32,
    constrain: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[dict, dict, Batch], dict[str, jax.Array]]:
    """``eval_step(params, batch_stats, batch) -> sums`` of ``loss``, ``top1``, ``top5`` and ``count`` over the
    examples with ``batch['valid'] == 1`` (padding of the last batch has 0). ``constrain`` as for the train
    step."""

    def step(params: dict, stats: dict, batch: Batch) -> dict[str, jax.Array]:
        model = nnx.merge(eval_def, cast_floats(params, compute_dtype), stats, rest)
        with activation_sharding(constrain):
            logits = model(normalize(batch["image"], mean, std, compute_dtype)).astype(jnp.float32)
        labels, valid = batch["label"], batch["valid"].astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        k = min(5, logits.shape[-1])
        topk = jax.lax.top_k(logits, k)[1]  # B, k
        hits = topk == labels.reshape(-1, 1)  # B, k
        return {
            "loss": (loss * valid).sum(),
            "top1": (hits[:, 0] * valid).sum(),
            "top5": (hits.any(axis=-1) * valid).sum(),
            "count": valid.sum(),
        }

    return step
