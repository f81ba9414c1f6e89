"""The conversion engine: one declarative table per family, run in both directions.

A :class:`Table` maps every weight of a vitjax model (a dotted NNX path such as ``blocks.3.attn.qkv.kernel``)
to one or more torch state_dict keys and a :class:`~converters.transforms.Transform`:

* ``renames``: module-path prefixes, ``("blocks.{i}.norm1", "layers.{i}.layernorm_before")``. ``{name}``
  matches one path component of digits. Unmatched paths keep their name (timm mirrors vitjax's paths).
  The leaf is then renamed and transformed by its kind: ``kernel`` -> ``weight`` (Linear transpose or conv
  layout change by rank), ``scale`` -> ``weight``, ``mean``/``var`` -> ``running_mean``/``running_var``; any
  other leaf (tokens, gammas, tables) is copied under its own name.
* ``rules``: whole-key templates with their own transform, for fused or re-laid-out tensors
  (``blocks.{i}.attn.qkv.kernel`` <- ``q_proj``, ``k_proj``, ``v_proj``). They take precedence.

The plan is built from the model, so every target is filled or reported. Missing, unexpected and mis-shaped
keys are collected and raised together in one :class:`ConversionError`, each with its name and shape.
Literal dots in templates are escaped; a key matched by two rules, or two renames of equal length, is an
error in the table and raised as such.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np
from flax import nnx

from converters.transforms import CONV, COUNTER, IDENTITY, LINEAR, Transform

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class ConversionError(ValueError):
    """A checkpoint does not fit a model; the message lists every offending key."""


def _compile(template: str, *, prefix: bool) -> re.Pattern[str]:
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append(f"(?P<{m.group(1)}>\\d+)")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(parts) + (r"(?=\.|$)" if prefix else "$"))


@dataclass(frozen=True)
class Rule:
    """A whole-key rule: one vitjax leaf <-> ``torch`` keys (templates), via ``transform``."""

    jax: str
    torch: tuple[str, ...]
    transform: Transform

    def __post_init__(self):
        object.__setattr__(self, "_re", _compile(self.jax, prefix=False))


@dataclass(frozen=True)
class Fused:
    """A torch tensor that holds several of a table's keys stacked in equal parts along its first axis (e.g.
    ``nn.MultiheadAttention``'s ``in_proj_weight`` = ``[q; k; v]``, where vitjax keeps ``q`` and ``kv``
    apart): on import it is split into ``parts`` (the keys the table's rules name), on export they are joined
    back. A tensor that does not divide into equal parts stays whole, so the check reports it."""

    key: str
    parts: tuple[str, ...]


class _SplitView(Mapping):
    """A state_dict with its :class:`Fused` tensors shown as their parts (each part sliced when read)."""

    def __init__(self, base: Mapping, parts: dict[str, tuple[str, int, int]]):
        self._base, self._parts = base, parts  # part key -> (fused key, index, rows per part)
        fused = {key for key, _, _ in parts.values()}
        self._keys = [k for k in base if k not in fused] + list(parts)

    def __getitem__(self, key: str):
        if key in self._parts:
            fused, i, rows = self._parts[key]
            return self._base[fused][i * rows : (i + 1) * rows]
        return self._base[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        base = (
            self._base.shapes() if hasattr(self._base, "shapes") else {k: tuple(v.shape) for k, v in self._base.items()}
        )
        out = {k: tuple(base[k]) for k in self._keys if k not in self._parts}
        for key, (fused, _, rows) in self._parts.items():
            out[key] = (rows, *base[fused][1:])
        return out


@dataclass(frozen=True)
class Table:
    """A family's naming table for one torch library ("timm" or "hf")."""

    name: str
    renames: Sequence[tuple[str, str]] = ()
    rules: Sequence[Rule] = ()
    # torch keys that carry no weight for us (e.g. BatchNorm's num_batches_tracked); they are accepted on
    # import and written back by ``extra_torch`` on export
    ignore: Sequence[str] = ()
    extra_torch: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    fused: Sequence[Fused] = ()  # torch tensors that hold several of the table's keys
    _renames: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        self._renames.extend((_compile(src, prefix=True), dst) for src, dst in self.renames)

    def split(self, sd: Mapping) -> Mapping:
        """``sd`` with each fused tensor replaced by its parts (``sd`` itself when it has none)."""
        parts = {}
        for f in self.fused:
            if f.key in sd and f.key not in parts:
                n = len(f.parts)
                rows = tuple(sd[f.key].shape)[0]
                if rows % n == 0:
                    parts |= {p: (f.key, i, rows // n) for i, p in enumerate(f.parts)}
        return _SplitView(sd, parts) if parts else sd

    def join(self, out: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
        """An exported state_dict with each fused tensor's parts joined back into it, in place."""
        for f in self.fused:
            keys = [prefix + p for p in f.parts]
            if all(k in out for k in keys):
                out[prefix + f.key] = np.concatenate([out.pop(k) for k in keys], axis=0)
        return out

    def ignored(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.ignore)

    def plan_key(self, key: str, ndim: int) -> tuple[tuple[str, ...], Transform]:
        """The torch key(s) and transform of one vitjax leaf."""
        hits = [r for r in self.rules if r._re.match(key)]
        if len(hits) > 1:
            raise ConversionError(f"table {self.name}: {key} matches {len(hits)} rules: {[r.jax for r in hits]}")
        if hits:
            groups = hits[0]._re.match(key).groupdict()
            return tuple(t.format(**groups) for t in hits[0].torch), hits[0].transform
        module, _, leaf = key.rpartition(".")
        leaf_name, transform = _leaf(leaf, ndim)
        renamed = self._rename(key) if not module else None
        if renamed is not None:  # a whole-key rename of a bare parameter (cls_token -> embeddings.cls_token)
            return (renamed,), transform
        module = self._rename(module) if module else module
        return (f"{module}.{leaf_name}" if module else leaf_name,), transform

    def _rename(self, path: str) -> str | None:
        best: list[tuple[int, re.Match, str]] = []
        for pattern, dst in self._renames:
            m = pattern.match(path)
            if m:
                best.append((m.end(), m, dst))
        if not best:
            return path
        best.sort(key=lambda t: -t[0])
        if len(best) > 1 and best[0][0] == best[1][0]:
            raise ConversionError(f"table {self.name}: {path} matches two renames of equal length")
        end, m, dst = best[0]
        return dst.format(**m.groupdict()) + path[end:]


def _leaf(leaf: str, ndim: int) -> tuple[str, Transform]:
    if leaf == "kernel":
        return "weight", LINEAR if ndim == 2 else CONV
    if leaf == "scale":
        return "weight", IDENTITY
    if leaf == "mean":
        return "running_mean", IDENTITY
    if leaf == "var":
        return "running_var", IDENTITY
    if leaf == "num_batches_tracked":
        return leaf, COUNTER
    return leaf, IDENTITY


# -- the model side ---------------------------------------------------------------------------------------------
def unwrap(model: nnx.Module) -> tuple[nnx.Module, str]:
    """(the model that carries the registry name and family, the path prefix of its weights in a checkpoint).

    A ``features_only`` model (vitjax's ``FeatureGetter``) wraps the network as ``model``, with prefix
    ``"model."`` as timm's ``FeatureGetterNet`` keys; any other model must come from ``vitjax.create_model``.
    """
    inner = getattr(model, "model", None)
    if isinstance(inner, nnx.Module) and hasattr(inner, "family"):
        return inner, "model."
    if not hasattr(model, "family"):
        raise ConversionError("converters work on models made by vitjax.create_model (this one has no family)")
    return model, ""


def weights(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Every weight of a model (parameters and BatchNorm statistics) by dotted path."""
    return {
        ".".join(str(p) for p in path): var
        for path, var in nnx.iter_graph(model)
        if isinstance(var, nnx.Param | nnx.BatchStat)
    }


@dataclass(frozen=True)
class Step:
    jax_key: str
    torch_keys: tuple[str, ...]
    transform: Transform
    torch_shapes: tuple[tuple[int, ...], ...]
    jax_shape: tuple[int, ...]


def plan(model: nnx.Module, table: Table) -> list[Step]:
    """The conversion steps of a model: each leaf with its torch keys and the shapes they must have."""
    steps, claimed = [], {}
    for key, var in weights(model).items():
        value = var.get_value()
        shape = tuple(value.shape)
        torch_keys, transform = table.plan_key(key, len(shape))
        spec = jax.ShapeDtypeStruct(shape, value.dtype)
        out = jax.eval_shape(transform.to_torch, spec)
        out = out if isinstance(out, tuple) else (out,)
        for tk in torch_keys:
            if tk in claimed:
                raise ConversionError(f"table {table.name}: torch key {tk} is claimed by {claimed[tk]} and {key}")
            claimed[tk] = key
        steps.append(Step(key, torch_keys, transform, tuple(tuple(o.shape) for o in out), shape))
    return steps


def expected_torch_shapes(model: nnx.Module, table: Table) -> dict[str, tuple[int, ...]]:
    return {k: s for step in plan(model, table) for k, s in zip(step.torch_keys, step.torch_shapes, strict=True)}


# -- checking -----------------------------------------------------------------------------------------------------
def _fmt(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check(steps: list[Step], shapes: Mapping[str, tuple[int, ...]], table: Table, what: str) -> list[str]:
    """Every problem with a checkpoint, one line each (empty if it fits)."""
    want = {k: s for st in steps for k, s in zip(st.torch_keys, st.torch_shapes, strict=True)}
    missing = [f"  missing    {k} {_fmt(s)}" for k, s in want.items() if k not in shapes]
    unexpected = [f"  unexpected {k} {_fmt(s)}" for k, s in shapes.items() if k not in want and not table.ignored(k)]
    mis = [
        f"  shape      {k}: checkpoint {_fmt(shapes[k])}, model needs {_fmt(s)}"
        for k, s in want.items()
        if k in shapes and tuple(shapes[k]) != tuple(s)
    ]
    problems = missing + unexpected + mis
    if problems:
        head = (
            f"{what} does not fit the model ({table.name} naming): {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mis)} mis-shaped"
        )
        return [head, *problems]
    return []
