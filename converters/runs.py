"""A ``python -m train`` run directory as a source of weights (read here, not in ``train``, so that
``vitjax.create_model(name, pretrained=RUN_DIR)`` reaches it through the converters as any other checkpoint).

A run directory (``--workdir``) holds ``config.json`` (the :class:`~train.config.TrainConfig`), ``model.json``
(the model name and the exact ``create_model`` overrides the run built, dataset class count included) and
``ckpt/<step>/`` (orbax: the whole train state). Only the weights are read from a step (the optimizer state is
not), raw or EMA.

Filling a model from a run goes the way of every other checkpoint (:func:`converters.adapt.load_state_dict_into`):
a model of the run's own shapes is filled directly, bit for bit; one of another ``img_size``, ``patch_size`` or
``num_classes`` gets the run's weights under their torch names, resampled and with a fresh head exactly as a
timm checkpoint would be. ``vitjax.create_model(name, pretrained=RUN_DIR)`` and ``python -m converters to-torch
--src RUN_DIR`` read runs through this module; ``python -m train`` writes ``model.json``
(:func:`write_model_file`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
from flax import nnx

MODEL_FILE = "model.json"


def is_run_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / "ckpt").is_dir()


def write_model_file(workdir: str | os.PathLike, model: str, overrides: Mapping[str, Any]) -> None:
    """Record what the run builds (``model.json``), so that its checkpoints can be read without its dataset."""
    text = json.dumps({"model": model, "overrides": dict(overrides)}, indent=2, sort_keys=True)
    Path(workdir, MODEL_FILE).write_text(text)


def run_steps(path: str | os.PathLike, where: str = "ckpt") -> list[int]:
    """The checkpointed steps of a run (complete ones only: orbax renames a step into place when written) in
    ``ckpt/`` (the latest ones) or ``best/`` (the best evaluated ones, ``--keep-best``)."""
    ckpt = Path(path) / where
    if not ckpt.is_dir():
        return []
    return sorted(int(d.name) for d in ckpt.iterdir() if d.name.isdigit() and (d / "state").is_dir())


@dataclass
class RunWeights:
    path: Path
    model: str
    overrides: dict[str, Any]
    step: int
    ema: bool
    tree: dict[str, jax.Array] = field(repr=False)  # weight path -> array (parameters and BatchNorm statistics)


def read_run(path: str | os.PathLike, *, step: int | None = None, ema: bool = False, where: str = "ckpt") -> RunWeights:
    """The weights of one checkpointed step of a run (default: the latest), raw or ``ema``, from ``ckpt/`` or
    ``best/`` (``where``)."""
    import orbax.checkpoint as ocp

    from converters.io import CheckpointError

    path = Path(path)
    if not is_run_dir(path):
        raise CheckpointError(f"{path}: not a python -m train run directory (no config.json and ckpt/)")
    try:
        desc = json.loads((path / MODEL_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read {MODEL_FILE} ({e})") from e
    steps = run_steps(path, where)
    if not steps:
        raise CheckpointError(f"{path}: the run has no checkpoint in {where}/ yet")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"{path}: no checkpoint of step {step} in {where}/; it has steps {steps}")
    where = (path / where / str(step) / "state").absolute()
    ck = ocp.PyTreeCheckpointer()
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # orbax warns that the item has no step metadata (the manager holds it)
    try:
        saved = ck.metadata(where).item_metadata.tree
        if ema and not saved.get("ema"):
            raise CheckpointError(f"{path}: the run kept no EMA weights (--model-ema-decay was 0)")
        src = saved["ema"] if ema else {"params": saved["params"], "batch_stats": saved["batch_stats"]}
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=dev), src)
        args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=dev, global_shape=s.shape, dtype=s.dtype), target)
        item = {"ema": target} if ema else target
        restore_args = {"ema": args} if ema else args
        out = ck.restore(where, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    except CheckpointError:
        raise
    except Exception as e:  # orbax / tensorstore raise many types for damaged files
        raise CheckpointError(f"{where}: the checkpoint cannot be read ({type(e).__name__}: {e})") from e
    finally:
        absl_log.setLevel(level)
    out = out["ema"] if ema else out
    tree = {}
    for part in ("params", "batch_stats"):
        for p, v in jax.tree_util.tree_flatten_with_path(out.get(part) or {})[0]:
            tree[".".join(str(getattr(k, "key", k)) for k in p)] = v
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in desc["overrides"].items()}
    return RunWeights(path, desc["model"], overrides, step, ema, tree)


def run_model(run: RunWeights) -> nnx.Module:
    """The run's own model (eval mode) holding its weights."""
    import vitjax
    from converters.engine import weights

    model = vitjax.create_model(run.model, abstract=True, **run.overrides)
    for k, var in weights(model).items():
        var.set_value(run.tree[k])
    return model


def load_run_into(
    model: nnx.Module,
    path: str | os.PathLike,
    *,
    step: int | None = None,
    ema: bool = False,
    init: Callable[[], nnx.Module] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fill ``model`` (from ``create_model``, abstract or not) with a run's weights; returns the pretrained config
    describing them (the run's input size, the model's classifier)."""
    from converters import to_torch
    from converters.adapt import load_state_dict_into
    from converters.engine import ConversionError, weights
    from converters.tables import sources_for
    from vitjax.pretrained import get_pretrained_cfg

    run = read_run(path, step=step, ema=ema)
    inner = getattr(model, "model", model)
    source = run_model(run)
    if source.family != inner.family:
        raise ConversionError(
            f"{path} trained a {run.model} ({source.family} family); it cannot fill a {inner.model_name}"
        )
    cfg = {k: v for k, v in get_pretrained_cfg(run.model).items() if k not in ("hf_hub_id", "hf_hub_filename")}
    if hasattr(source.cfg, "img_size"):
        size = source.cfg.img_size
        cfg["input_size"] = (3, *((size, size) if isinstance(size, int) else size))
    targets, have = weights(inner), weights(source)
    same = set(targets) == set(have) and all(
        tuple(v.get_value().shape) == tuple(have[k].get_value().shape) for k, v in targets.items()
    )
    if same:
        for k, var in targets.items():
            var.set_value(have[k].get_value().astype(var.get_value().dtype))
    else:
        naming = sources_for(inner.family)[0]
        load_state_dict_into(
            model,
            to_torch(source, target=naming),
            pretrained_cfg=cfg,
            init=init,
            naming=naming,
            what=str(path),
            progress=progress,
        )
    return {**cfg, "source": f"run {path} step {run.step}" + (" (EMA)" if ema else "")}
