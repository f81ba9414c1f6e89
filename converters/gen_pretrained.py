"""Regenerate ``vitjax/pretrained_cfgs.json`` from the installed timm (and transformers' ViT processor).

    python -m converters.gen_pretrained            # rewrite the file
    python -m converters.gen_pretrained --check    # exit 1 if the stored file differs from what timm says

Run it after a new family is registered: every registered name that timm knows gets its tags (default tag
first, as timm orders them) with the fields vitjax uses; the Hugging Face ids get the settings of
transformers' ``ViTImageProcessor``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import vitjax
from vitjax import pretrained

FIELDS = (
    "hf_hub_id",
    "hf_hub_filename",
    "num_classes",
    "input_size",
    "test_input_size",
    "interpolation",
    "crop_pct",
    "test_crop_pct",
    "crop_mode",
    "mean",
    "std",
    "classifier",
    "license",
)
_OPTIONAL = ("hf_hub_filename", "test_input_size", "test_crop_pct", "license")


def _timm_entry(name: str) -> dict[str, Any] | None:
    from timm.models._registry import _model_default_cfgs, get_pretrained_cfg

    default = _model_default_cfgs.get(name)
    if default is None:
        return None
    tags = {}
    for tag in default.tags:  # timm's order: the default tag first
        cfg = get_pretrained_cfg(f"{name}.{tag}").to_dict()  # resolved: full hub ids
        row = {k: cfg.get(k) for k in FIELDS}
        row = {k: v for k, v in row.items() if not (k in _OPTIONAL and v in (None, ""))}
        row["hf_hub_id"] = row.get("hf_hub_id") or None
        tags[tag] = row
    return {"tags": tags}


def _hf_entry(name: str) -> dict[str, Any]:
    from transformers import ViTImageProcessor

    proc = ViTImageProcessor()
    resample = {2: "bilinear", 3: "bicubic"}[int(proc.resample)]
    size = (proc.size["height"], proc.size["width"])
    row = {
        "hf_hub_id": name,
        "num_classes": vitjax.get_spec(name).config().num_classes,
        "input_size": (3, *size),
        "interpolation": resample,
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "mean": tuple(proc.image_mean),
        "std": tuple(proc.image_std),
        "classifier": "classifier",
        "license": "apache-2.0",
        # resize on uint8 tensors with torchvision's antialiased kernel (transformers' TorchvisionBackend)
        "resize_backend": "torchvision_uint8",
    }
    return {"tags": {"": row}}


# transformers' image towers: their hub repos' preprocessor_config.json (resize with PIL's bicubic here, where
# transformers 5 resizes uint8 tensors with torchvision's; the two differ by rounding)
_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_TOWER_DATA = {
    "hf_dinov2": dict(_IMAGENET, size=224, crop_pct=224 / 256, crop_mode="center"),  # shortest edge 256, crop 224
    "hf_clip": dict(
        mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711), crop_mode="center"
    ),
    "hf_siglip": dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_mode="squash"),
}


def _hf_tower_entry(name: str) -> dict[str, Any]:
    data = _TOWER_DATA[vitjax.get_spec(name).family]
    size = data.get("size") or vitjax.get_spec(name).config().img_size
    row = {
        "hf_hub_id": name,
        "num_classes": 0,
        "input_size": (3, size, size),
        "interpolation": "bicubic",
        "crop_pct": data.get("crop_pct", 1.0),
        "crop_mode": data["crop_mode"],
        "mean": data["mean"],
        "std": data["std"],
        "classifier": "classifier",
    }
    return {"tags": {"": row}}


def generate() -> dict[str, Any]:
    import timm
    import transformers

    models = {}
    for name in vitjax.list_models():
        family = vitjax.get_spec(name).family
        if family == "hf_vit":
            entry = _hf_entry(name)
        elif family in _TOWER_DATA:
            entry = _hf_tower_entry(name)
        else:
            entry = _timm_entry(name)
        if entry is not None:
            models[name] = entry
    return {"generated_from": {"timm": timm.__version__, "transformers": transformers.__version__}, "models": models}


def dumps(data: dict[str, Any]) -> str:
    """JSON with one line per tag, so that diffs stay readable."""
    lines = ["{", f'"generated_from": {json.dumps(data["generated_from"])},', '"models": {']
    names = list(data["models"])
    for i, name in enumerate(names):
        lines.append(f'  {json.dumps(name)}: {{"tags": {{')
        tags = list(data["models"][name]["tags"].items())
        for j, (tag, row) in enumerate(tags):
            lines.append(f"    {json.dumps(tag)}: {json.dumps(row)}" + ("," if j < len(tags) - 1 else ""))
        lines.append("  }}" + ("," if i < len(names) - 1 else ""))
    lines += ["}", "}", ""]
    return "\n".join(lines)


def stale_names(stored: dict[str, Any] | None = None) -> list[str]:
    """Registered names whose stored configs differ from (or are missing beside) what timm/transformers say.
    Entries for names registered elsewhere (another checkout's families) are left alone."""
    stored = stored if stored is not None else json.loads(Path(pretrained._FILE).read_text())
    fresh = json.loads(dumps(generate()))["models"]
    return sorted(n for n, entry in fresh.items() if stored["models"].get(n) != entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.gen_pretrained", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the stored file is stale")
    args = parser.parse_args(argv)
    path = Path(pretrained._FILE)
    if args.check:
        stale = stale_names()
        print(f"{path}: " + (f"STALE for {stale}; regenerate it" if stale else "up to date"))
        return int(bool(stale))
    data = generate()
    if path.exists():  # keep entries of names this checkout does not register
        old = json.loads(path.read_text())["models"]
        data["models"] = dict(sorted({**old, **data["models"]}.items()))
    text = dumps(data)
    from converters.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {path} ({len(json.loads(text)['models'])} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
