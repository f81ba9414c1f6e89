"""Checkpoints: an orbax ``CheckpointManager`` (async writes, the last N kept) holding, per step, the train
state (weights, optimizer, EMA, step, key) and the data iterator's state.

* Restoring reads into a target of abstract arrays carrying the *current* mesh's shardings, so a checkpoint
  written on one mesh or device count restores onto another.
* Orbax writes each step into a temporary directory renamed into place when complete, so a run killed
  mid-write leaves no partial step behind. A finished step that cannot be read (a corrupt or truncated file)
  is reported, moved aside to ``<workdir>/corrupt/``, and the previous step is used.
* Each step also records its format version and the shape of every array of the state (``meta``). A step of a
  newer format, or of another model or training setup (a workdir reused with other flags), stops the run with
  an error naming the step and the differences; nothing in the workdir is moved or overwritten.
* One run per workdir: process 0 holds an exclusive lock on ``<workdir>/lock`` (released when the process
  ends, however it ends); a second run on the same workdir stops at once with an error.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

_MIN_REPLICA_SLICE = 1 << 20
_registered = False
FORMAT, VERSION = "vitjax-train-state", 1


class WorkdirError(ValueError):
    """A workdir that this run cannot use: locked by another run, or holding an incompatible checkpoint."""


def layout(tree: Any) -> dict[str, list[int]]:
    """Every array of a state as ``{path: shape}`` (what a checkpoint must match to restore into it)."""
    return {jax.tree_util.keystr(p): [int(d) for d in x.shape] for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _differences(saved: dict[str, list[int]], want: dict[str, list[int]], limit: int = 6) -> list[str]:
    out = [
        f"  {k}: checkpoint {tuple(saved[k])}, this run {tuple(want[k])}"
        for k in want
        if k in saved and saved[k] != want[k]
    ]
    out += [f"  {k}: not in the checkpoint" for k in want if k not in saved]
    out += [f"  {k}: not in this run" for k in saved if k not in want]
    return out[:limit] + ([f"  ... and {len(out) - limit} more"] if len(out) > limit else [])


def _lock(path: Path):
    """An exclusive, non-blocking lock on ``path`` (the open file holds it), or :class:`WorkdirError`."""
    f = open(path, "a+")  # noqa: SIM115 - held open for the run's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise WorkdirError(
            f"{path.parent}: another run is using this workdir ({holder}); wait for it to end or use another --workdir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    f.flush()
    return f


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
    """``lock``: hold the workdir's lock (``directory``'s parent) until :meth:`close` (process 0 of a run)."""

    def __init__(self, directory: str | Path, keep: int, *, async_save: bool = True, lock: bool = False):
        _small_arrays_written_whole()
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.async_save = async_save
        self._lock = None
        if lock:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.directory.parent / "lock")
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
        meta = {"format": FORMAT, "version": VERSION, "layout": layout(state)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
        )
        return self.manager.save(step, args=args, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
        """``(step, state, data_state)`` from the newest readable step, or None if there is none. Raises
        :class:`WorkdirError` for a step of a newer format or of another state layout (see the module docstring)."""
        want = layout(target)
        for step in reversed(self.steps()):
            try:
                meta = self._meta(step)
                if meta is not None:
                    self._check(step, meta, want)
                args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
                out = self.manager.restore(step, args=args)
                return step, out["state"], out["data"]
            except WorkdirError:
                raise
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

    def _meta(self, step: int) -> dict | None:
        """The step's format and layout record (None for steps written before it existed)."""
        if not (self.directory / str(step) / "meta").is_dir():
            return None
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(out, dict):
            raise ValueError(f"meta is a {type(out).__name__}, not a record")
        return out

    def _check(self, step: int, meta: dict, want: dict[str, list[int]]) -> None:
        where = self.directory / str(step)
        if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
            raise WorkdirError(
                f"{where}: written by a newer version of vitjax's training (checkpoint format "
                f"{meta.get('format')!r} version {meta.get('version')}; this one reads {FORMAT!r} version {VERSION}); "
                "use that version or another --workdir"
            )
        if meta.get("layout") != want:
            raise WorkdirError(
                f"{where} holds another model or training setup than this run{_previous_run(self.directory.parent)}"
                "; its arrays differ:\n"
                + "\n".join(_differences(meta.get("layout") or {}, want))
                + "\nuse another --workdir, or the flags of that run"
            )

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
        try:
            self.manager.wait_until_finished()
            self.manager.close()
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the workdir's lock
                self._lock = None


def _previous_run(workdir: Path) -> str:
    """`` (model NAME with {...}, per config.json)`` for a message, or ``""`` if the workdir has no config."""
    try:
        cfg = json.loads((workdir / "config.json").read_text())
        args = f" with {cfg['model_args']}" if cfg.get("model_args") else ""
        return f" (per its config.json: {cfg['model']}{args}, img_size {cfg.get('img_size')}, data {cfg.get('data')!r})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


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
