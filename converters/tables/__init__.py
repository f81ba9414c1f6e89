"""Naming tables, one module per family; :func:`tables_for` picks the ones for a model and a torch library.

The choice is a function of the model's registry family and its config: a MaxxViT built with
``use_nchw_attn`` or a pool-less ``NormMlpClassifierHead`` stores some weights as 1x1 convs in timm, so its
table depends on those fields (:func:`converters.tables.maxxvit.tables`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from converters.engine import ConversionError, Table, unwrap
from converters.tables import byobnet, hf_vit, maxxvit, vit

# (vitjax family, torch library) -> the model's config -> table(s). A list holds alternative namings of one
# library, tried in order of how many checkpoint keys they explain (transformers 4 vs 5 names, timm's
# features_only naming).
TABLES: dict[tuple[str, str], Callable[[Any], list[Table]]] = {
    ("vision_transformer", "timm"): lambda cfg: [vit.TIMM],
    ("vision_transformer_relpos", "timm"): lambda cfg: [vit.TIMM],
    ("deit", "timm"): lambda cfg: [vit.TIMM],
    ("hf_vit", "hf"): lambda cfg: [hf_vit.HF5, hf_vit.HF4],
    ("byoanet", "timm"): lambda cfg: [byobnet.TIMM, byobnet.TIMM_FEATURES],
    ("maxxvit", "timm"): maxxvit.tables,
}


def sources_for(family: str) -> list[str]:
    """The torch libraries whose naming a family converts to and from ("timm", "hf")."""
    return [src for fam, src in TABLES if fam == family]


def tables_for(model: Any, source: str) -> list[Table]:
    """The tables converting ``model`` (from ``vitjax.create_model``, or its features wrapper) to and from
    ``source``'s naming, first-preferred first."""
    inner, _ = unwrap(model)
    choose = TABLES.get((inner.family, source))
    if choose is None:
        known = sources_for(inner.family)
        raise ConversionError(f"no {source!r} naming for {inner.family} models; this family converts with {known}")
    return choose(getattr(inner, "cfg", None))
