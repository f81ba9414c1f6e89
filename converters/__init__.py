"""Weight conversion between timm / transformers state_dicts and vitjax models, in both directions.

    converters.from_torch(model, state_dict_or_path, source="timm")   # fills every weight, or raises
    sd = converters.to_torch(model, target="timm")                      # dict[str, np.ndarray], strict-loadable

Strict: a checkpoint with missing, unexpected or mis-shaped keys raises one :class:`ConversionError` that
lists every offender, and says which registered model the checkpoint looks like. Nothing in the model is
changed unless the whole checkpoint fits.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Collection, Mapping
from functools import cache
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax import numpy as jnp

from converters.engine import ConversionError, Table, check, expected_torch_shapes, plan, unwrap, weights
from converters.io import CheckpointError, load_state_dict, save_safetensors, shapes_of, to_numpy
from converters.tables import tables_for

__all__ = [
    "CheckpointError",
    "ConversionError",
    "from_torch",
    "guess_model",
    "load_state_dict",
    "other_classifier",
    "save_safetensors",
    "to_torch",
    "to_torch_with",
]

_log = logging.getLogger(__name__)
_PREFIXES = {"hf": ("vit.",)}  # ViTForImageClassification wraps ViTModel as `vit.`


def _strip(sd: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    if prefix and sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _choose_table(model: nnx.Module, tables: list[Table], keys) -> Table:
    if len(tables) == 1:
        return tables[0]
    keys = set(keys)
    return max(tables, key=lambda t: len(keys & set(expected_torch_shapes(model, t))))


def from_torch(
    model: nnx.Module,
    state_dict: Mapping[str, Any] | str | os.PathLike,
    source: str = "timm",
    *,
    shardings: Mapping[str, jax.sharding.Sharding] | None = None,
    keep: Collection[str] = (),
    progress: bool = False,
) -> nnx.Module:
    """Fill every weight of ``model`` from a timm (``source="timm"``) or transformers (``"hf"``) state_dict.

    ``state_dict`` is a mapping of torch tensors or numpy arrays, or a path to ``.safetensors`` / ``.pth`` /
    ``.bin``. Works on abstract models (``create_model(..., abstract=True)``). For a ``features_only`` model
    the checkpoint may be timm's features model (``model.*`` keys) or the full model; weights of pruned
    layers and of the head are then ignored. ``shardings`` (weight path -> Sharding) places each converted
    array straight onto its devices. ``keep``: weight paths (of the inner model) not taken from the checkpoint
    (e.g. a freshly initialised classifier); they must already hold values. ``progress``: a tqdm bar over the
    tensors. Returns the model.
    """
    what = str(state_dict) if isinstance(state_dict, str | os.PathLike) else "state_dict"
    sd = load_state_dict(state_dict) if isinstance(state_dict, str | os.PathLike) else state_dict
    inner, prefix = unwrap(model)
    sd = _strip(sd, "model.") if prefix else sd
    for p in _PREFIXES.get(source, ()):
        sd = _strip(sd, p)
    table = _choose_table(inner, tables_for(inner, source), sd.keys())
    sd = table.split(sd)
    steps = [st for st in plan(inner, table) if st.jax_key not in keep]
    shapes = shapes_of(sd)
    if prefix:  # features_only: the pruned layers and the head of a full checkpoint are not needed
        wanted = {k for st in steps for k in st.torch_keys}
        shapes = {k: s for k, s in shapes.items() if k in wanted}
    problems = check(steps, shapes, table, what)
    if problems:
        guess = guess_model(shapes_of(sd), source, inner.family) if not prefix else None
        if guess and guess != inner.model_name:
            problems.insert(1, f"  this checkpoint looks like {guess}, not {inner.model_name}")
        raise ConversionError("\n".join(problems))

    targets = weights(inner)
    converted = {}
    bar = steps
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(steps, desc=f"converting {inner.model_name}", unit="tensor", leave=False)
    for st in bar:  # convert everything before touching the model
        value = st.transform.to_jax(*(to_numpy(sd[k]) for k in st.torch_keys))
        dtype = targets[st.jax_key].get_value().dtype
        arr = np.asarray(value).astype(dtype, copy=False)
        sharding = shardings.get(prefix + st.jax_key) if shardings else None
        converted[st.jax_key] = jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr)
    for key, value in converted.items():
        targets[key].set_value(value)
    return model


def to_torch(model: nnx.Module, target: str = "timm") -> dict[str, np.ndarray]:
    """The model's weights as a ``target`` ("timm" / "hf") state_dict of numpy arrays, loadable with
    ``load_state_dict(..., strict=True)`` after ``torch.from_numpy``."""
    inner, _ = unwrap(model)
    return to_torch_with(model, tables_for(inner, target)[0])


def to_torch_with(model: nnx.Module, table: Table) -> dict[str, np.ndarray]:
    """:func:`to_torch` with an explicit naming table (e.g. transformers-4 names for the HF ViT)."""
    inner, prefix = unwrap(model)
    targets = weights(inner)
    out: dict[str, np.ndarray] = {}
    for st in plan(inner, table):
        value = np.asarray(jax.device_get(targets[st.jax_key].get_value()))
        arrays = st.transform.to_torch(value)
        arrays = arrays if isinstance(arrays, tuple) else (arrays,)
        for k, a in zip(st.torch_keys, arrays, strict=True):
            out[prefix + k] = np.require(a, requirements=["C", "W"])
    if table.extra_torch is not None:
        out.update({prefix + k: v for k, v in table.extra_torch(out).items()})
    return table.join(out, prefix)


def other_classifier(have: Mapping[str, tuple[int, ...]], want: Mapping[str, tuple[int, ...]], what: str) -> bool:
    """Whether a checkpoint's classifier (``have``: its head tensors and shapes) is one for another class count
    than the model's (``want``), so that it is dropped and the model keeps a fresh head; says so when it is.

    That holds when the checkpoint has no head, when the model has none (``num_classes=0``), or when both heads
    have the same tensors, alike in every dimension but the class count (the first). Any other difference (a
    missing or extra tensor, another width) is damage, left to the strict check to report by name.
    """
    have, want = {k: tuple(s) for k, s in have.items()}, {k: tuple(s) for k, s in want.items()}
    if have == want:
        return False
    if have and want:
        if set(have) != set(want) or any(not have[k] or have[k][1:] != want[k][1:] for k in want):
            return False
        counts = {s[0] for s in have.values()}
        if len(counts) != 1:
            return False
    n_have = next(iter(have.values()))[0] if have else 0
    n_want = next(iter(want.values()))[0] if want else 0
    dropped = f"its head ({', '.join(sorted(have))}) is left out" if have else "it has no classifier"
    kept = "the model keeps a freshly initialised one" if want else "the model has none"
    _log.warning(f"{what}: a classifier for {n_have} classes, the model's for {n_want}: {dropped}; {kept}")
    return True


@cache
def _signature(name: str, source: str) -> dict[str, tuple[int, ...]]:
    import vitjax

    model = vitjax.create_model(name, abstract=True)
    return expected_torch_shapes(model, tables_for(model, source)[0])


def _score(have: set, want: set) -> float:
    return len(have & want) / max(len(have | want), 1)


# a block's index in a torch key: ViT `blocks.3.`, transformers `layers.3.` / `encoder.layer.3.`, stages `stages.1.2.`
# (byoanet) or `stages.1.blocks.2.` (maxxvit)
_BLOCK = re.compile(r"^(?:blocks|layers|encoder\.layer)\.(\d+)\.|^stages\.(\d+)\.(?:blocks\.)?(\d+)\.")


def _stages_of_checkpoint(shapes: Mapping[str, tuple[int, ...]]) -> tuple[tuple[int, ...], list[Counter]]:
    """Blocks per stage counted in a checkpoint's keys (a ViT: one stage), and how many 1-D tensors (norms,
    biases) of each length each stage has."""
    blocks: dict[int, set[int]] = {}
    lengths: dict[int, Counter] = {}
    for k, shape in shapes.items():
        m = _BLOCK.match(k)
        if m:
            stage, block = (0, m[1]) if m[1] is not None else (int(m[2]), m[3])
            blocks.setdefault(stage, set()).add(int(block))
            if len(shape) == 1:
                lengths.setdefault(stage, Counter())[int(shape[0])] += 1
    order = sorted(blocks)
    return tuple(len(blocks[s]) for s in order), [lengths.get(s, Counter()) for s in order]


def _depths_of_config(cfg: Any) -> tuple[int, ...]:
    """Blocks per stage, from a model config: ``depth`` (ViT), ``depths`` (MaxxViT) or ``blocks`` (ByobNet)."""
    if hasattr(cfg, "depths"):
        return tuple(cfg.depths)
    if hasattr(cfg, "blocks"):
        return tuple(sum(b.d for b in (st if isinstance(st, tuple) else (st,))) for st in cfg.blocks)
    return (cfg.depth,)


def _width_votes(cfg: Any, lengths: list[Counter]) -> int:
    """How many 1-D tensors of the checkpoint's stages are as long as the config's width of that stage
    (``embed_dim``; 0 for configs without it): a block's norms and most biases are as wide as its stage."""
    dims = getattr(cfg, "embed_dim", None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    if len(dims) != len(lengths):
        return 0
    return sum(ls[d] for d, ls in zip(dims, lengths, strict=True))


def _candidates(shapes: Mapping[str, tuple[int, ...]], family: str) -> list[str]:
    """The models of ``family`` worth comparing in full with a checkpoint, chosen from their configs alone (no
    model is built): those with the checkpoint's blocks per stage (else the nearest such counts) whose stage
    widths match the most of the checkpoint's norms and biases."""
    import vitjax

    have, lengths = _stages_of_checkpoint(shapes)
    configs = {name: vitjax.get_spec(name).config() for name in vitjax.list_models(family=family)}
    dist = {}
    for name, cfg in configs.items():
        want = _depths_of_config(cfg)
        if len(want) == len(have):
            dist[name] = sum(abs(a - b) for a, b in zip(want, have, strict=True))
    if not dist:
        return []
    nearest = [n for n, d in dist.items() if d == min(dist.values())]
    votes = {n: _width_votes(configs[n], lengths) for n in nearest}
    return [n for n in nearest if votes[n] == max(votes.values())]


def guess_model(shapes: Mapping[str, tuple[int, ...]], source: str = "timm", family: str | None = None) -> str | None:
    """Which registered model a ``source`` checkpoint (its keys and shapes) belongs to.

    Within ``family``, the configs pick the candidates (blocks per stage and widths read off the checkpoint's
    keys and shapes, see :func:`_candidates`), so that only a few models are built, abstractly; of those, the
    one with exactly these keys and shapes is named, else the closest (share of matching keys and shapes above
    one half). Otherwise, or with no family given, the checkpoint's top-level module names are compared with
    one model of each family and the answer names that family (``"a <family> checkpoint"``), or None if
    nothing is close.
    """
    import vitjax
    from converters.tables import TABLES

    have = {(k, tuple(s)) for k, s in shapes.items()}
    if family is not None:
        best, best_score = None, 0.5
        for name in _candidates(shapes, family):
            score = _score(have, set(_signature(name, source).items()))
            if score == 1.0:
                return name
            if score > best_score:
                best, best_score = name, score
        if best is not None:
            return best
    tops = {k.split(".")[0] for k in shapes}
    best, best_score = None, 0.5
    for fam in sorted({f for f, src in TABLES if src == source and f != family}):
        names = vitjax.list_models(family=fam)
        if names:
            score = _score(tops, {k.split(".")[0] for k in _signature(names[0], source)})
            if score > best_score:
                best, best_score = f"a {fam} checkpoint", score
    return best
