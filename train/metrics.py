"""What a run writes on process 0: ``metrics.jsonl`` (one JSON object per logged step or evaluation),
TensorBoard event files (``tb/``), ``curves.png`` at the end, and a progress bar with throughput and ETA.

A train record holds ``loss``, ``lr``, ``grad_norm``, ``images_per_sec`` and ``data_wait``: the share (0 to 1) of
the logging interval the loop spent waiting for its next batch, near 0 when the input pipeline keeps up (the
progress bar shows it as ``wait``).

On resume, ``metrics.jsonl`` keeps only the records up to the restored step, so that a resumed run's file
reads like an uninterrupted one's.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


class MetricsWriter:
    def __init__(self, workdir: str | Path, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        with self.path.open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(Path(workdir) / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = int(record["step"])
        prefix = "eval/" if record.get("kind") == "eval" else "train/"
        for k, v in record.items():
            if k not in ("step", "kind") and isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(prefix + k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            break
    return out


def plot_curves(metrics_path: str | Path, out: str | Path) -> None:
    """Loss, learning rate and eval accuracy against the step, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics_path)
    train = [r for r in recs if r.get("kind") == "train"]
    evals = [r for r in recs if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="train loss", xlabel="step")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="step")
    for key in ("top1", "top5", "top1_ema", "top5_ema"):
        pts = [(r["step"], r[key]) for r in evals if key in r]
        if pts:
            axes[2].plot(*zip(*pts, strict=True), marker="o", label=key)
    axes[2].set(title="eval accuracy (%)", xlabel="step")
    if evals:
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


class Progress:
    """A tqdm bar (process 0 only) showing loss, throughput and ETA."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
