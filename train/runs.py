"""What a fine-tuning start did: fill the model from ``--pretrained`` (anything ``create_model(pretrained=...)``
takes, or a run directory, raw or EMA, through the same loading path) and report which tensors were loaded as
they are, resampled (another ``img_size`` / ``patch_size``) and re-initialised (another ``num_classes``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flax import nnx

from converters.runs import is_run_dir, load_run_into, read_run, run_model


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)  # torch names taken as they are
    resampled: list[str] = field(default_factory=list)  # "name (from) -> (to)"
    reinitialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # in the checkpoint, not in the model

    def lines(self) -> list[str]:
        out = [f"pretrained weights from {self.source}: {len(self.loaded)} tensors loaded as they are"]
        if self.resampled:
            out.append("  resampled: " + ", ".join(self.resampled))
        if self.reinitialised:
            out.append("  re-initialised: " + ", ".join(self.reinitialised))
        if self.dropped:
            out.append("  not used: " + ", ".join(self.dropped))
        return out


def _source_shapes(model: nnx.Module, spec: Any, *, step: int | None, ema: bool) -> tuple[dict, str] | None:
    """The checkpoint's tensors (torch names -> shapes) and their naming, or None where no cheap view exists."""
    from converters import to_torch
    from converters.adapt import _detect_naming
    from converters.hub import read_state_dict, resolve
    from converters.io import shapes_of
    from converters.tables import sources_for

    inner = getattr(model, "model", model)
    if spec is not True and is_run_dir(spec):
        naming = sources_for(inner.family)[0]
        return {
            k: tuple(v.shape) for k, v in to_torch(run_model(read_run(spec, step=step, ema=ema)), naming).items()
        }, naming
    source = resolve(model, spec)
    if source.kind not in ("torch", "hf_flax"):
        return None
    shapes = shapes_of(read_state_dict(source))
    naming = _detect_naming(inner, shapes)
    if naming == "hf":
        shapes = {k.removeprefix("vit."): s for k, s in shapes.items()}
    return {k: tuple(s) for k, s in shapes.items()}, naming


def load_weights(
    model: nnx.Module,
    spec: bool | str | os.PathLike,
    *,
    ema: bool = False,
    step: int | None = None,
    init: Callable[[], nnx.Module] | None = None,
) -> LoadReport:
    """Fill ``model`` from anything ``create_model(pretrained=...)`` takes, or a run directory (``ema``: its EMA
    weights, ``step``: another than the latest); report what was loaded, resampled and re-initialised."""
    from converters.adapt import _classifier_prefixes, _table_for
    from converters.engine import expected_torch_shapes
    from converters.hub import load_pretrained

    inner = getattr(model, "model", model)
    before = _source_shapes(model, spec, step=step, ema=ema)
    if spec is not True and is_run_dir(spec):
        inner.pretrained_cfg = load_run_into(model, spec, step=step, ema=ema, init=init)
    else:
        if ema or step is not None:
            raise ValueError("--pretrained-ema and a step only apply to a python -m train run directory")
        load_pretrained(model, spec, init=init)
    report = LoadReport(inner.pretrained_cfg.get("source", str(spec)))
    if before is None:
        report.loaded = ["(every tensor; this format gives no per-tensor report)"]
        return report
    have, naming = before
    want = expected_torch_shapes(inner, _table_for(inner, naming, have))
    heads = _classifier_prefixes(inner.pretrained_cfg, naming)
    for k, shape in want.items():
        shape = tuple(shape)
        if k in have and have[k] == shape:
            report.loaded.append(k)
        elif k in have and not k.startswith(heads):
            report.resampled.append(f"{k} {have[k]} -> {shape}")
        else:
            report.reinitialised.append(f"{k} {shape}")
    report.dropped = [f"{k} {s}" for k, s in have.items() if k not in want]
    return report
