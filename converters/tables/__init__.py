"""Naming tables, one module per family; :func:`table_for` picks the one for a model and a torch library."""

from __future__ import annotations

from converters.engine import ConversionError, Table
from converters.tables import byobnet, hf_vit, maxxvit, vit

# (vitjax family, torch library) -> table(s). A list holds alternative namings of one library, tried in order
# of how many checkpoint keys they explain (transformers 4 vs 5 names).
TABLES: dict[tuple[str, str], list[Table]] = {
    ("vision_transformer", "timm"): [vit.TIMM],
    ("vision_transformer_relpos", "timm"): [vit.TIMM],
    ("hf_vit", "hf"): [hf_vit.HF5, hf_vit.HF4],
    ("byoanet", "timm"): [byobnet.TIMM, byobnet.TIMM_FEATURES],
    **maxxvit.TABLES,  # "maxxvit" and its config-dependent layouts (+nchw_attn, +conv_head)
}


def sources_for(family: str) -> list[str]:
    return [src for fam, src in TABLES if fam == family]


def tables_for(family: str, source: str) -> list[Table]:
    """The tables converting ``family`` to/from ``source`` (alternative namings first-preferred first)."""
    tables = TABLES.get((family, source))
    if not tables:
        known = sources_for(family)
        raise ConversionError(f"no {source!r} naming for {family} models; this family converts with {known}")
    return tables
