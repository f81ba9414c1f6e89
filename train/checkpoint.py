"""Checkpoints: an orbax ``CheckpointManager`` (async writes, the last N kept) holding, per step, the train
state (weights, optimizer, EMA, step, key) and the data iterator's state.

* Restoring reads into a target of abstract arrays carrying the *current* mesh's shardings, so a checkpoint
  written on one mesh or device count restores onto another.
* Orbax writes each step into a temporary directory renamed into place when complete, so a run killed
  mid-write leaves no partial step behind. A finished step that cannot be read (a corrupt or truncated file)
  is reported, moved aside to ``<workdir>/corrupt/``, and the previous step is used.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

_MIN_REPLICA_SLICE = 1 << 20
_registered = False


def _small_arrays_written_whole() -> None:
    """Orbax splits the write of a replicated array across its replicas, compiling one slicing program per
    shape; for arrays under 1 MiB (a ViT has about a hundred) those compiles cost far more than the split saves,
    so they are written by their first replica only. (This sets orbax's process-wide jax.Array handler.)"""
    global _registered
    if _registered:
        return
    _registered = True
    handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE)
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # orbax warns about the override itself
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_log.setLevel(level)


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int, *, async_save: bool = True):
        _small_arrays_written_whole()
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.async_save = async_save
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=self.async_save,
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        return self.manager.save(step, args=args, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
        """``(step, state, data_state)`` from the newest readable step, or None if there is none."""
        for step in reversed(self.steps()):
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
                out = self.manager.restore(step, args=args)
                return step, out["state"], out["data"]
            except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                print(
                    f"[checkpoint] step {step} in {self.directory} is unreadable ({msg}); "
                    "falling back to the previous one",
                    file=sys.stderr,
                    flush=True,
                )
                self._quarantine(step)
        return None

    def _quarantine(self, step: int) -> None:
        """Move an unreadable step out of the manager's directory (process 0), then reopen the manager."""
        self.manager.close()
        if jax.process_index() == 0:
            dest = self.directory.parent / "corrupt" / str(step)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest)
            shutil.move(str(self.directory / str(step)), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine-{step}")
        self.manager = self._open()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def metric_mode(metric: str) -> str:
    """Whether a higher (``max``: accuracies) or a lower (``min``: losses) value of ``metric`` is better."""
    return "min" if "loss" in metric else "max"


class BestKeeper:
    """The weights (``params``, ``batch_stats``, ``ema``) of the ``keep`` best evaluated steps by one eval
    metric, in ``<workdir>/best/<step>/`` (timm's ``CheckpointSaver``, ``--keep-best`` = its ``max_history``);
    ``<workdir>/best/metrics.json`` records every evaluated step's metrics. A run directory's best steps are
    read as its other checkpoints (``converters.runs.read_run(..., where="best")``)."""

    def __init__(self, directory: str | Path, keep: int, metric: str):
        _small_arrays_written_whole()
        self.directory = Path(directory).absolute()
        self.metric = metric
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            best_fn=lambda m: m[metric],
            best_mode=metric_mode(metric),
            keep_checkpoints_without_metrics=False,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            raise ValueError(f"--eval-metric {self.metric!r} is not among the eval metrics {sorted(metrics)}")
        if step in self.manager.all_steps():
            return
        weights = {"params": state.params, "batch_stats": state.batch_stats, "ema": state.ema}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(weights)), metrics=metrics)
        if jax.process_index() == 0:
            path = self.directory / "metrics.json"
            seen = json.loads(path.read_text()) if path.exists() else {}
            seen[str(step)] = metrics
            path.write_text(json.dumps(seen, indent=1, sort_keys=True))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
