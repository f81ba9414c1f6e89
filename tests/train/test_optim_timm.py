"""Every ``--opt`` against timm's torch optimizer (``timm.optim.create_optimizer_v2``, timm's parameter groups:
no weight decay on biases, 1-D weights and ``no_weight_decay()`` names) over a few updates on the same random
gradients: the weights after each update agree to float32 rounding."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
import torch
from timm.optim import create_optimizer_v2

from train import optim

SHAPES = {
    "patch_embed.proj": {"weight": (6, 5), "bias": (6,)},
    "pos_embed": (1, 3, 6),
    "blocks.0.norm1": {"weight": (6,), "bias": (6,)},
    "blocks.0.attn.qkv": {"weight": (6, 18), "bias": (18,)},
    "head": {"weight": (6, 4), "bias": (4,)},
}


class Model(torch.nn.Module):
    """Parameters named as in a timm ViT (flattened: ``blocks.0.attn.qkv.weight`` ...)."""

    def __init__(self, values: dict[str, np.ndarray]):
        super().__init__()
        self.names = list(values)
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values.values()])

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        return iter(zip(self.names, self.ps, strict=True))

    def no_weight_decay(self):
        return {"pos_embed"}


def _flat() -> dict[str, tuple[int, ...]]:
    out = {}
    for k, v in SHAPES.items():
        if isinstance(v, dict):
            out.update({f"{k}.{leaf}": s for leaf, s in v.items()})
        else:
            out[k] = v
    return out


def _tree(flat: dict[str, np.ndarray]) -> dict:
    """The same arrays as a vitjax pure dict (``weight`` -> ``kernel`` / ``scale``, dotted -> nested)."""
    tree: dict = {}
    for k, v in flat.items():
        parts = k.split(".")
        if parts[-1] == "weight":
            parts[-1] = "scale" if v.ndim == 1 else "kernel"
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


@pytest.mark.parametrize(
    ("opt", "kw"),
    [
        ("adamw", {}),
        ("nadamw", {}),
        ("lamb", {}),
        ("sgd", {"momentum": 0.9}),
        ("momentum", {"momentum": 0.8}),
        ("lion", {}),
    ],
)
def test_updates_match_timm(opt, kw):
    rng = np.random.default_rng(0)
    shapes = _flat()
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in shapes.items()} for _ in range(4)]
    lr, wd = 0.05 if opt != "lion" else 0.005, 0.1

    model = Model(init)
    ref = create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=wd, **kw)

    params = _tree(init)
    tx = optim.make_optimizer(params, opt=opt, lr_schedule=lambda s: lr, weight_decay=wd, **kw)
    state = tx.init(params)
    update = jax.jit(tx.update)
    worst = 0.0
    for g in grads:
        for name, p in zip(model.names, model.ps, strict=True):
            p.grad = torch.from_numpy(g[name].copy())
        ref.step()
        updates, state = update(_tree(g), state, params)
        params = optax.apply_updates(params, updates)
        want = _tree({n: p.detach().numpy().copy() for n, p in zip(model.names, model.ps, strict=True)})
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=2e-5, atol=2e-6)
            worst = max(worst, float(np.abs(np.asarray(a) - b).max()))
    print(f"{opt}: worst abs difference {worst:.1e} over {len(grads)} updates")


def test_lamb_trust_ratio_only_where_weight_decay_applies():
    """timm's ``always_adapt=False``: biases, norms and no-decay names take the plain Adam step (and with no
    weight decay at all, every parameter does)."""
    params = _tree({k: np.ones(s, np.float32) for k, s in _flat().items()})
    grads = jax.tree.map(lambda p: np.full(p.shape, 0.01, np.float32), params)  # global norm < 1: no clipping
    for wd in (0.0, 0.1):
        tx = optim.make_optimizer(params, opt="lamb", lr_schedule=lambda s: 1.0, weight_decay=wd)
        updates, _ = tx.update(grads, tx.init(params), params)
        adam_step = -0.01 / (0.01 + 1e-6)  # the first bias-corrected Adam step of a constant gradient
        np.testing.assert_allclose(
            np.asarray(updates["pos_embed"]), adam_step, rtol=2e-5
        )  # optax: bias corrections in fp32
        np.testing.assert_allclose(
            np.asarray(updates["head"]["bias"]), adam_step, rtol=2e-5
        )  # optax: bias corrections in fp32
        kernel = np.asarray(updates["head"]["kernel"])
        if wd:  # ||w|| / ||adam + wd w|| scales the decayed kernel's step
            np.testing.assert_allclose(kernel, -1.0, rtol=2e-5)
        else:
            np.testing.assert_allclose(kernel, adam_step, rtol=2e-5)  # optax: bias corrections in fp32
