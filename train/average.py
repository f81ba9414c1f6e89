"""``python -m train.average RUN_DIR --out OUT [--best | --last] [-n N] [--ema]``: the mean of the weights of
several checkpoints of a run, as timm's ``avg_checkpoints.py``.

``--best`` (the default when the run kept any, ``--keep-best``) averages the ``N`` best evaluated steps by the
run's ``--eval-metric``; ``--last`` the ``N`` latest steps of ``ckpt/``. ``--ema`` averages their EMA weights.
Every float weight (parameters and BatchNorm statistics) is averaged in float64 and stored in its own dtype.
``OUT`` ending in ``.safetensors`` is written under timm / transformers names (``load_state_dict(strict=True)``);
anything else is a vitjax checkpoint directory (``vitjax.create_model(name, pretrained=OUT)``). Both are written
beside their destination and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from converters.io import CheckpointError
from converters.runs import is_run_dir, read_run, run_model, run_steps
from train.checkpoint import metric_mode


def pick_steps(run_dir: Path, *, best: bool, n: int) -> tuple[list[int], dict[int, dict]]:
    """The steps to average (best first for ``best``, else oldest first) and the metrics recorded for them."""
    if not is_run_dir(run_dir):
        raise CheckpointError(f"{run_dir}: not a python -m train run directory (no config.json and ckpt/)")
    if not best:
        steps = run_steps(run_dir, "ckpt")
        if not steps:
            raise CheckpointError(f"{run_dir}: no checkpoints in ckpt/")
        return steps[-n:], {}
    steps = run_steps(run_dir, "best")
    if not steps:
        raise CheckpointError(f"{run_dir}: no best checkpoints (train with --keep-best N and evaluations)")
    metrics = {int(k): v for k, v in json.loads((run_dir / "best" / "metrics.json").read_text()).items()}
    metric = json.loads((run_dir / "config.json").read_text()).get("eval_metric", "top1")
    ranked = sorted(steps, key=lambda s: metrics[s][metric], reverse=metric_mode(metric) == "max")
    return ranked[:n], {s: metrics[s] for s in ranked[:n]}


def average(run_dir: str | Path, steps: list[int], *, best: bool, ema: bool = False):
    """The run's model holding the mean weights of ``steps``."""
    runs = [read_run(run_dir, step=s, ema=ema, where="best" if best else "ckpt") for s in steps]
    mean = {}
    for k, v in runs[0].tree.items():
        if np.issubdtype(np.asarray(v).dtype, np.floating):
            total = sum(np.asarray(r.tree[k], np.float64) for r in runs)
            mean[k] = (total / len(runs)).astype(np.asarray(v).dtype)
        else:
            mean[k] = np.asarray(v)
    runs[0].tree = mean
    return run_model(runs[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.average", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a python -m train run directory (its --workdir)")
    p.add_argument("--out", required=True, type=Path, help="a .safetensors file (timm names) or a directory")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", dest="best", action="store_true", default=None, help="the N best evaluated steps")
    which.add_argument("--last", dest="best", action="store_false", help="the N latest steps")
    p.add_argument("-n", type=int, default=10, help="how many checkpoints (default 10, as timm)")
    p.add_argument("--ema", action="store_true", help="average the EMA weights")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("-n must be >= 1")
    best = args.best if args.best is not None else bool(run_steps(args.run, "best"))
    try:
        steps, metrics = pick_steps(args.run, best=best, n=args.n)
        model = average(args.run, steps, best=best, ema=args.ema)
        if args.out.suffix == ".safetensors":
            from converters.stream import save_torch
            from converters.tables import sources_for

            out = save_torch(model, args.out, sources_for(model.family)[0], metadata={"format": "pt"})
        else:
            from converters import orbax_io

            out = orbax_io.save(model, args.out, extra={"averaged": {"run": str(args.run), "steps": steps}})
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    what = "best" if best else "latest"
    print(f"averaged the {len(steps)} {what} steps {steps}" + (" (EMA)" if args.ema else "") + f" of {args.run}")
    for s, m in metrics.items():
        print(f"  step {s}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(m.items())))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
