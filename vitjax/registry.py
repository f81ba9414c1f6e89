"""The model registry: an explicit table of family modules, each exporting ``MODELS`` (name -> ModelSpec).

No import-time registration: a family module is imported the first time the registry is read.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
from flax import nnx
from jax import numpy as jnp

_FAMILY_MODULES = (
    "vitjax.models.vit",
    "vitjax.models.vit_zoo",
    "vitjax.models.deit",
    "vitjax.models.vit_relpos",
    "vitjax.models.hf_vit",
    "vitjax.models.byoanet",
    "vitjax.models.maxxvit",
)


@dataclass(frozen=True)
class ModelSpec:
    """One registered name: the family's config and model classes and the variant's config fields."""

    name: str
    family: str  # the reference source: 'vision_transformer', 'vision_transformer_relpos', 'hf_vit', ...
    config_cls: type
    model_cls: type
    args: Mapping[str, Any]
    pretrained: Mapping[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any) -> Any:
        return self.config_cls(**{**self.args, **overrides})


def variants(
    family: str, config_cls: type, model_cls: type, table: Mapping[str, Mapping[str, Any]], **common: Any
) -> dict[str, ModelSpec]:
    """Build a family's ``MODELS`` from its variant table (``common`` holds fields shared by every row)."""
    return {name: ModelSpec(name, family, config_cls, model_cls, {**common, **args}) for name, args in table.items()}


_registry: dict[str, ModelSpec] | None = None


def registry() -> dict[str, ModelSpec]:
    global _registry
    if _registry is None:
        reg: dict[str, ModelSpec] = {}
        for mod in _FAMILY_MODULES:
            for name, spec in importlib.import_module(mod).MODELS.items():
                if name in reg:
                    raise RuntimeError(f"model {name!r} is registered twice")
                reg[name] = spec
        _registry = reg
    return _registry


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a shell-style pattern (as ``timm.list_models``), sorted."""
    return sorted(
        n for n, s in registry().items() if fnmatch.fnmatchcase(n, pattern) and (family is None or s.family == family)
    )


def get_spec(name: str) -> ModelSpec:
    try:
        return registry()[name]
    except KeyError:
        close = [n for n in registry() if name.split("_")[0] in n][:5]
        hint = f"; similar: {close}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}. See vitjax.list_models().") from None


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    *,
    features_only: bool = False,
    out_indices: int | tuple[int, ...] | None = None,
    seed: int = 0,
    abstract: bool = False,
    **overrides: Any,
) -> nnx.Module:
    """Build a registered model, timm-style.

    Args:
        name: a name from :func:`list_models` (timm's names; HF ids such as ``google/vit-base-patch16-224-in21k``),
            optionally with a weight tag as timm writes it (``vit_base_patch16_224.augreg_in21k``).
        pretrained: ``True`` loads the default (or named) tag's weights from the Hugging Face hub (timm's
            ``timm/<name>.<tag>`` repos; the transformers repo for HF ids); ``"name.tag"`` picks another tag;
            any other string is a local ``.safetensors`` / ``.pth`` / ``.bin`` / ``.npz`` / ``.msgpack`` file, a
            vitjax checkpoint directory (``python -m converters to-jax``) or a hub repo id. Weights made for
            another ``img_size`` or ``patch_size`` are resampled as timm does; a classifier of another size is
            replaced by a fresh one. See :func:`converters.hub.load_pretrained`.
        features_only: return a :class:`~vitjax.models.features.FeatureGetter` whose call gives a list of NHWC
            feature maps (timm's ``features_only``); ``out_indices`` picks them (timm's default otherwise).
        seed: seed of the parameter initialisation and of the dropout / drop-path streams.
        abstract: build parameters as shapes only (``jax.ShapeDtypeStruct``), to be filled by a converter or a
            checkpoint without paying for a random initialisation.
        **overrides: config fields (``num_classes``, ``img_size``, ``global_pool``, ``drop_rate``,
            ``drop_path_rate``, ``embed_dim``, ``depth``, ...); unknown names raise ``TypeError``.

    The model is returned in eval mode (dropout and drop-path off, BatchNorm on running statistics); call
    ``model.train()`` to train.
    """
    from vitjax.pretrained import get_pretrained_cfg, split_name_tag

    tag = None
    if name not in registry():
        name, tag = split_name_tag(name)
    if isinstance(pretrained, str) and not os.path.exists(pretrained):
        base, weights_tag = split_name_tag(pretrained)
        if base == name and weights_tag:  # pretrained="name.tag"
            tag, pretrained = weights_tag, True
    spec = get_spec(name)
    pretrained_cfg = get_pretrained_cfg(name, tag)
    if tag and "num_classes" in pretrained_cfg:  # as timm: a tag brings its own classifier size
        overrides.setdefault("num_classes", pretrained_cfg["num_classes"])
    cfg = spec.config(**overrides)

    def build() -> nnx.Module:
        model = spec.model_cls(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
        model.model_name, model.family = name, spec.family
        model.pretrained_cfg = dict(pretrained_cfg)
        if features_only:
            from vitjax.models.features import FeatureGetter

            idx = out_indices if out_indices is not None else spec.model_cls.default_out_indices
            model = FeatureGetter(model, idx)
        model.eval()
        return model

    if not abstract and not pretrained:
        return build()
    model = nnx.eval_shape(build)
    _materialize_rng_state(model, seed)
    if pretrained:
        # The one place vitjax reaches into converters: reading checkpoints needs converters' tables (and,
        # for .pth files, torch), which vitjax itself never imports.
        from converters.hub import load_pretrained

        load_pretrained(model, pretrained, tag=tag, init=build)
    return model


def _materialize_rng_state(model: nnx.Module, seed: int) -> None:
    """Give an abstract model concrete dropout/drop-path RNG streams (only the weights stay abstract)."""
    for i, (_, var) in enumerate(nnx.iter_graph(model)):
        if isinstance(var, nnx.RngKey):
            var.set_value(jax.random.fold_in(jax.random.key(seed), i))
        elif isinstance(var, nnx.RngCount):
            var.set_value(jnp.zeros((), jnp.uint32))
