"""Pretrained-weight configurations: for every registered name, its weight tags and their data settings.

The values are timm's ``pretrained_cfg`` entries (and the transformers ``ViTImageProcessor`` settings for the
Hugging Face ids), stored as data in ``pretrained_cfgs.json`` next to this file so that vitjax imports
without torch or timm. ``python -m converters.gen_pretrained`` regenerates the file from the installed timm
(and a test checks that it still matches).

A config holds: ``hf_hub_id`` (the hub repo with the weights, None for untrained tags), ``hf_hub_filename``
(when not the default), ``num_classes``, ``input_size`` ``(C, H, W)``, ``interpolation``, ``crop_pct``,
``crop_mode``, ``mean``, ``std``, ``classifier`` (the head's torch module name), and ``architecture`` /
``tag``. As in timm, the default tag of a name is the first one listed for it.
"""

from __future__ import annotations

import fnmatch
import json
from functools import cache
from pathlib import Path
from typing import Any

_FILE = Path(__file__).with_name("pretrained_cfgs.json")


@cache
def _data() -> dict[str, Any]:
    return json.loads(_FILE.read_text())


def _tuples(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def split_name_tag(name: str) -> tuple[str, str | None]:
    """``"vit_base_patch16_224.augreg_in21k"`` -> ``("vit_base_patch16_224", "augreg_in21k")``. HF ids such as
    ``google/vit-base-patch16-224-in21k`` carry no tag."""
    if "/" in name:
        return name, None
    base, _, tag = name.partition(".")
    return base, tag or None


def pretrained_tags(name: str) -> list[str]:
    """The weight tags of a registered name, the default one first (empty if none is recorded)."""
    entry = _data()["models"].get(name)
    return list(entry["tags"]) if entry else []


def get_pretrained_cfg(name: str, tag: str | None = None) -> dict[str, Any]:
    """The pretrained config of ``name`` (``tag`` or the default tag); ``{}`` for names with no recorded
    weights. An unknown tag raises ``ValueError`` listing the known ones."""
    entry = _data()["models"].get(name)
    if entry is None:
        if tag:
            raise ValueError(f"no pretrained weights are recorded for {name!r}, so tag {tag!r} is unknown")
        return {}
    tags = entry["tags"]
    tag = tag or next(iter(tags))
    if tag not in tags:
        raise ValueError(f"{name!r} has no pretrained tag {tag!r}; known tags: {list(tags)}")
    return {"architecture": name, "tag": tag, **_tuples(tags[tag])}


def list_pretrained(pattern: str = "*") -> list[str]:
    """``name.tag`` for every recorded tag that has hub weights, matching a shell-style pattern."""
    out = []
    for name, entry in _data()["models"].items():
        for tag, cfg in entry["tags"].items():
            full = f"{name}.{tag}" if tag else name
            if cfg.get("hf_hub_id") and fnmatch.fnmatchcase(full, pattern):
                out.append(full)
    return sorted(out)


def source_versions() -> dict[str, str]:
    """The library versions the stored configs were generated from."""
    return dict(_data()["generated_from"])
