"""Fitting a timm / transformers state_dict to a vitjax model made for the same architecture at any size.

How a checkpoint is adapted (:func:`load_state_dict_into`), mirroring timm's ``load_pretrained``: the state_dict's
naming (timm / transformers) is detected from its keys (the original formats timm's ViT filter reads, OpenAI
CLIP, open_clip, Meta DINOv2, AIMv2, are renamed to timm's by :mod:`converters.originals`), the family's filter
(``converters.resample``) resamples position embeddings and patch kernels for another ``img_size`` /
``patch_size``, and a classifier whose shape differs from the model's (another ``num_classes``, or none) is
dropped and the model keeps a freshly initialised one. Everything else must fit exactly
(``converters.from_torch``'s strict check).

Used by every reader of :mod:`converters.hub` (and by :mod:`converters.orbax_io` for a checkpoint of another
size); :func:`fresh_weights` also by :mod:`converters.npz`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import jax
from flax import nnx

from converters import from_torch, originals, other_classifier
from converters.engine import ConversionError, expected_torch_shapes, plan, unwrap, weights
from converters.io import shapes_of
from converters.resample import Resize, Target, apply_filter
from converters.tables import sources_for, tables_for


class StateDictView(MutableMapping[str, Any]):
    """A state_dict with edits (renamed, replaced or dropped keys) over a lazy base such as
    :class:`~converters.io.SafetensorsFile`: base tensors are read only when accessed, so a checkpoint is
    streamed tensor by tensor into the model."""

    def __init__(self, base: Mapping[str, Any]):
        self._base = base
        self._keys: dict[str, str | None] = {k: k for k in base}  # our key -> base key (None: overridden)
        self._over: dict[str, Any] = {}

    def rename(self, fn: Callable[[str], str]) -> StateDictView:
        new = {}
        for k, src in self._keys.items():
            nk = fn(k)
            if nk in new:
                raise ConversionError(f"two checkpoint keys map to {nk}")
            new[nk] = src
            if src is None:
                self._over[nk] = self._over.pop(k)
        self._keys = new
        return self

    def __getitem__(self, key: str) -> Any:
        src = self._keys[key]
        return self._over[key] if src is None else self._base[src]

    def __setitem__(self, key: str, value: Any) -> None:
        self._keys[key] = None
        self._over[key] = value

    def __delitem__(self, key: str) -> None:
        del self._keys[key]
        self._over.pop(key, None)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def shapes(self) -> dict[str, tuple[int, ...]]:
        base = shapes_of(self._base)
        return {k: tuple(self._over[k].shape) if src is None else base[src] for k, src in self._keys.items()}


# -- adapting a torch-named state_dict to the model --------------------------------------------------------------
def _detect_naming(inner: nnx.Module, keys) -> str:
    sources = sources_for(inner.family)
    if not sources:
        raise ConversionError(f"no converter tables for the {inner.family} family")
    if len(sources) == 1:
        return sources[0]
    keys = set(keys)
    return max(sources, key=lambda s: len(keys & set(expected_torch_shapes(inner, tables_for(inner, s)[0]))))


def _table_for(inner: nnx.Module, naming: str, keys) -> Any:
    tables = tables_for(inner, naming)
    if len(tables) == 1:
        return tables[0]
    keys = set(keys)
    return max(tables, key=lambda t: len(keys & set(expected_torch_shapes(inner, t))))


def _classifier_prefixes(cfg: Mapping[str, Any], naming: str) -> tuple[str, ...]:
    c = cfg.get("classifier") or ("classifier" if naming == "hf" else "head")
    names = (c,) if isinstance(c, str) else tuple(c)
    if naming != "hf" and "head" in names and "head_dist" not in names:
        names += ("head_dist",)  # DeiT distilled: the distillation head is a classifier of the same classes
    return tuple(f"{x}." for x in names)


def fresh_weights(init: Callable[[], nnx.Module], paths: list[str]) -> dict[str, jax.Array]:
    """The initial values of some weights of a model, computed without materialising the others (the model is
    built inside ``jax.jit``; XLA drops every initialiser whose result is not returned)."""

    def subset():
        inner, _ = unwrap(init())
        w = weights(inner)
        return {p: w[p].get_value() for p in paths}

    return jax.jit(subset)()


def load_state_dict_into(
    model: nnx.Module,
    sd: Mapping[str, Any],
    *,
    pretrained_cfg: Mapping[str, Any] | None = None,
    init: Callable[[], nnx.Module] | None = None,
    resize: Resize | None = None,
    naming: str | None = None,
    what: str = "checkpoint",
    progress: bool = False,
) -> nnx.Module:
    """Fill ``model`` from a timm / transformers state_dict made for this architecture at any size.

    ``pretrained_cfg`` describes the checkpoint (its ``input_size`` locates the source position grid, its
    ``classifier`` names the head). ``init`` rebuilds the model concretely, for weights that are not taken
    from the checkpoint (default: the model's class on its config, seed 0). ``resize`` overrides the family's
    resampling (timm: bicubic with antialias)."""
    inner, prefix = unwrap(model)
    cfg = dict(pretrained_cfg or getattr(inner, "pretrained_cfg", {}) or {})
    sd = StateDictView(sd)
    if prefix:  # timm's features_only checkpoints carry `model.`
        sd.rename(lambda k: k.removeprefix("model."))
    original = originals.to_timm(sd, inner.family, what) if naming in (None, "timm") else None
    naming = "timm" if original else naming or _detect_naming(inner, sd.keys())
    if naming == "hf":  # ViTForImageClassification: `vit.*` (+ `classifier.*`) around ViTModel's keys
        sd.rename(lambda k: k.removeprefix("vit."))
    table = _table_for(inner, naming, sd.keys())
    steps = plan(inner, table)
    want = {k: s for st in steps for k, s in zip(st.torch_keys, st.torch_shapes, strict=True)}
    src_size = tuple(cfg["input_size"][-2:]) if cfg.get("input_size") else None
    try:
        sd = apply_filter(inner.family, naming, sd, Target(getattr(inner, "cfg", None), src_size, want), resize)
    except ValueError as e:  # nothing to resample to: e.g. a position table made for another number of prefix tokens
        have = shapes_of(sd)
        msg = f"{what} does not fit {inner.model_name} (no resampling fits its size-dependent weights: {e})\n"
        msg += "\n".join(
            f"  shape      {k}: checkpoint {tuple(have[k])}, model needs {tuple(s)}"
            for k, s in want.items()
            if k in have and tuple(have[k]) != tuple(s)
        )
        raise ConversionError(originals.explain(msg, original) if original else msg) from None

    keep: list[str] = []
    if not prefix:  # a features_only model takes what it needs and has no classifier
        heads = _classifier_prefixes(cfg, naming)
        have = shapes_of(sd)
        ck = {k: tuple(s) for k, s in have.items() if k.startswith(heads)}
        mk = {k: tuple(s) for k, s in want.items() if k.startswith(heads)}
        if other_classifier(ck, mk, what):  # another num_classes (or none): drop the checkpoint's head
            for k in ck:
                del sd[k]
            keep = [st.jax_key for st in steps if set(st.torch_keys) & set(mk)]
        if keep:
            if init is None:
                cls, mcfg = type(inner), inner.cfg

                def init():
                    m = cls(mcfg, rngs=nnx.Rngs(params=0, dropout=1))
                    m.model_name, m.family = inner.model_name, inner.family
                    return m

            targets = weights(inner)
            for p, v in fresh_weights(init, keep).items():
                targets[p].set_value(v)
    try:
        from_torch(model, sd, source=naming, keep=keep, progress=progress)
    except ConversionError as e:
        msg = f"{what}: {e}"
        if naming == "hf" and "missing    pooler.dense" in msg:
            msg += (
                "\n  (a checkpoint without the pooler, such as ViTForImageClassification's: build the model with "
                "representation_size=None and num_classes=<its classes>)"
            )
        raise ConversionError(originals.explain(msg, original) if original else msg) from None
    return model
