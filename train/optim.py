"""The optimizer: ``clip_by_global_norm`` -> AdamW / NAdamW / LAMB / SGD / Lion as timm's, with timm's
weight-decay exclusions and layer-wise lr decay, the schedule of ``train.schedule``, and the weight EMA with
timm's warmup.

Every piece works on pure dicts of parameters (``nnx.to_pure_dict``), keyed by paths such as
``blocks.3.attn.qkv.kernel``.

* Weight decay (timm ``param_groups_weight_decay``): no decay for 1-D parameters (biases, norm scales,
  LayerScale gammas), nor for position embeddings, class / register / distillation tokens and
  relative-position bias tables (:data:`NO_DECAY`).
* Layer decay (timm ``param_groups_layer_decay``, BEiT): parameter group ``i`` of ``L + 2`` groups (the stem is
  0, block ``k`` is ``k + 1``, the final ``norm`` joins the last block as in timm's ViT grouping, everything
  else (``fc_norm``, head) is ``L + 1``) has its lr scaled by
  ``layer_decay ** (L + 1 - i)``. Blocks are ``blocks.{k}`` (ViT) or ``stages.{s}.blocks.{b}`` counted in
  order (conv nets, MaxxViT); other stage modules (downsamples) join their stage's first block. The scale
  multiplies the update, so, as in timm, it scales the decoupled weight decay too.
* :func:`schedule` (kept for callers that want a plain per-update cosine): ``warmup_lr -> lr`` linearly over
  ``warmup_steps``, then a half cosine from ``lr`` to ``min_lr`` at ``total_steps`` (timm's cosine with
  ``warmup_prefix=True`` on updates). Runs take theirs from ``train.schedule``.
* EMA (timm ``ModelEmaV3``): after ``t`` optimizer updates, ``ema <- d * ema + (1 - d) * params`` with
  ``d = 0`` for ``t <= 1`` and ``d = min(decay, 1 - (1 + t') ** (-2/3))``, ``t' = t - 1`` (the warmup, when
  on);
  otherwise ``d = decay``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from jax import numpy as jnp

NO_DECAY = frozenset(
    {"pos_embed", "cls_token", "reg_token", "dist_token", "relative_position_bias_table", "rel_pos_table"}
)
STEM = frozenset({"patch_embed", "cls_token", "reg_token", "dist_token", "pos_embed", "stem", "pos_drop"})


def _paths(tree: Mapping) -> list[tuple[str, ...]]:
    return [tuple(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _map_with_path(fn: Callable[[tuple[str, ...], Any], Any], tree: Mapping) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(tuple(str(getattr(k, "key", k)) for k in p), x), tree)


def decay_mask(params: Mapping) -> Any:
    """True where weight decay applies (same structure as ``params``)."""
    return _map_with_path(lambda path, x: len(x.shape) > 1 and not (set(path) & NO_DECAY), params)


def layer_ids(params: Mapping) -> tuple[Any, int]:
    """(the layer id of every parameter, the number of groups), as described in the module docstring."""
    blocks: list[tuple[int, ...]] = []
    for path in _paths(params):
        key = _block_key(path)
        if key is not None and key not in blocks:
            blocks.append(key)
    blocks.sort()
    index = {k: i + 1 for i, k in enumerate(blocks)}
    first_of_stage: dict[int, int] = {}
    for k, i in index.items():
        if len(k) == 2:
            first_of_stage.setdefault(k[0], i)
    last = len(blocks) + 1

    def one(path: tuple[str, ...], _x: Any) -> int:
        if path[0] in STEM:
            return 0
        if path[0] == "norm" and blocks:
            return last - 1
        key = _block_key(path)
        if key is not None:
            return index[key]
        if path[0] == "stages" and len(path) > 1 and path[1].isdigit():
            return first_of_stage.get(int(path[1]), last)
        return last

    return _map_with_path(one, params), last + 1


def _block_key(path: tuple[str, ...]) -> tuple[int, ...] | None:
    text = ".".join(path)
    m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.", text)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.match(r"^blocks\.(\d+)\.", text)
    return (int(m.group(1)),) if m else None


def layer_scales(params: Mapping, layer_decay: float) -> Any:
    ids, n = layer_ids(params)
    return jax.tree.map(lambda i: layer_decay ** (n - 1 - i), ids)


def schedule(
    lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0
) -> optax.Schedule:
    """Linear warmup then cosine decay to ``min_lr`` at ``total_steps``; a function of the step (0-based)."""
    decay_steps = max(total_steps - warmup_steps, 1)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_lr + (lr - warmup_lr) * step / max(warmup_steps, 1)
        t = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cos = min_lr + 0.5 * (lr - min_lr) * (1.0 + jnp.cos(math.pi * t))
        return jnp.where(step < warmup_steps, warm, cos)

    return fn


def _scale_by_tree(scales: Any) -> optax.GradientTransformation:
    return optax.stateless(lambda updates, params=None: jax.tree.map(lambda u, s: u * s, updates, scales))


DEFAULT_BETAS = {"lion": (0.9, 0.99)}  # timm's; the Adam family's are (0.9, 0.999)
DEFAULT_EPS = {"lamb": 1e-6}  # timm's; the others' is 1e-8


def clip_by_global_norm_timm(max_norm: float) -> optax.GradientTransformation:
    """timm ``Lamb``'s own clipping: the gradients divided by ``max(global_norm / max_norm, 1)``."""

    def update(updates, state, params=None):
        scale = jnp.maximum(optax.tree.norm(updates) / max_norm, 1.0)
        return jax.tree.map(lambda g: g / scale, updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def scale_by_nadam_timm(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """timm ``NAdamW``'s direction: ``(b1 m_t + (1 - b1) g) / (1 - b1^t)`` over ``sqrt(v_t / (1 - b2^t)) + eps``
    (optax's nesterov Adam corrects the gradient term by ``1 - b1^t`` and the momentum one by ``1 - b1^(t+1)``)."""

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros((), jnp.int32), mu=zeros(), nu=zeros())

    def update(updates, state, params=None):
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        count = state.count + 1
        t = count.astype(jnp.float32)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        out = jax.tree.map(
            lambda m, v, g: ((b1 * m + (1 - b1) * g) / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps), mu, nu, updates
        )
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(
    params: Mapping,
    *,
    opt: str,
    lr_schedule: optax.Schedule | None,
    weight_decay: float,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    momentum: float = 0.9,
    clip_grad: float | None = None,
    layer_decay: float | None = None,
) -> optax.GradientTransformation:
    """The full chain; ``params`` (a pure dict of arrays or shapes) gives the decay mask and layer scales.

        Each optimizer follows timm's (``timm.optim.create_optimizer_v2``) where it differs from optax's default:
        ``adamw`` (torch AdamW), ``nadamw`` (timm NAdamW, :func:`scale_by_nadam_timm`), ``lamb`` (timm Lamb: its
        own global-norm clipping at 1, L2 decay inside the update and the trust ratio only where weight decay
        applies, ``always_adapt=False``), ``sgd`` / ``nesterov`` (SGD with Nesterov momentum, L2 decay added to
        the gradient), ``momentum`` (the same without Nesterov), ``lion``. ``betas`` and ``eps`` default to timm's
    (Lion 0.9, 0.99; LAMB eps 1e-6). ``lr_schedule`` None leaves the lr out (the updates are the negated
    unit-lr direction): the train step multiplies them by the lr kept in its state (``--sched plateau``)."""
    b1, b2 = betas or DEFAULT_BETAS.get(opt, (0.9, 0.999))
    eps = eps if eps is not None else DEFAULT_EPS.get(opt, 1e-8)
    parts = [optax.clip_by_global_norm(clip_grad)] if clip_grad else []
    mask = decay_mask(params)
    decayed = jax.tree.map(lambda m: bool(m) and weight_decay != 0, mask)
    if opt == "adamw":
        parts += [optax.scale_by_adam(b1, b2, eps), optax.add_decayed_weights(weight_decay, mask)]
    elif opt == "nadamw":
        parts += [scale_by_nadam_timm(b1, b2, eps), optax.add_decayed_weights(weight_decay, mask)]
    elif opt == "lamb":
        parts += [
            clip_by_global_norm_timm(1.0),
            optax.scale_by_adam(b1, b2, eps),
            optax.add_decayed_weights(weight_decay, mask),
            optax.masked(optax.scale_by_trust_ratio(), decayed),
        ]
    elif opt in ("sgd", "nesterov", "momentum"):
        parts += [
            optax.add_decayed_weights(weight_decay, mask),
            optax.trace(decay=momentum, nesterov=opt != "momentum"),
        ]
    elif opt == "lion":
        parts += [optax.scale_by_lion(b1, b2), optax.add_decayed_weights(weight_decay, mask)]
    else:
        raise ValueError(f"unknown optimizer {opt!r}; use adamw, nadamw, lamb, sgd, nesterov, momentum or lion")
    if layer_decay is not None and layer_decay != 1.0:
        parts.append(_scale_by_tree(layer_scales(params, layer_decay)))
    parts.append(optax.scale(-1.0) if lr_schedule is None else optax.scale_by_learning_rate(lr_schedule))
    return optax.chain(*parts)


def ema_decay(updates: jax.Array, decay: float, warmup: bool = True) -> jax.Array:
    """The EMA decay after ``updates`` optimizer updates (timm ``ModelEmaV3.get_decay``)."""
    t = jnp.maximum(jnp.asarray(updates, jnp.float32) - 1.0, 0.0)
    d = jnp.minimum(1.0 - (1.0 + t) ** (-2.0 / 3.0), decay) if warmup else jnp.asarray(decay, jnp.float32)
    return jnp.where(t <= 0, 0.0, d)


def ema_update(ema: Any, new: Any, d: jax.Array) -> Any:
    """``d * ema + (1 - d) * new`` for float leaves; other leaves (counters) are copied."""

    def one(e, n):
        if jnp.issubdtype(e.dtype, jnp.floating):
            return (d * e + (1.0 - d) * n).astype(e.dtype)
        return n

    return jax.tree.map(one, ema, new)
