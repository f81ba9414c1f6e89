"""Shared settings of the training tests: a two-block ViT at 32 px that compiles and steps in well under a second."""

from __future__ import annotations

import json
from pathlib import Path

from train.config import TrainConfig

TINY = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=10)
TINY_FLAGS = ["--patch-size", "8", "--depth", "2", "--embed-dim", "32", "--num-heads", "2", "--num-classes", "10"]


def tiny_config(workdir, **kw) -> TrainConfig:
    base = dict(
        model="vit_tiny_patch16_224",
        img_size=32,
        model_args=dict(TINY),
        data="digits",
        workdir=str(workdir),
        batch_size=16,
        steps=10,
        lr=3e-3,
        warmup_steps=2,
        log_every=1,
        progress=False,
        fast_compile=True,
        keep_ckpts=5,
    )
    return TrainConfig(**{**base, **kw})


def losses(workdir) -> dict[int, float]:
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "train":
            out[r["step"]] = r["loss"]
    return out


def assert_resumes_exactly(main, flags: list[str], tmp_path: Path, capsys) -> None:
    """Run ``main(flags)`` for 4 steps (checkpoints every 2), then rerun a copy of its workdir without the step-4
    checkpoint: it must resume from step 2 and log the same losses bit for bit."""
    import shutil

    import numpy as np

    wd = tmp_path / "run"
    assert main([*flags, "--workdir", str(wd)]) == 0
    ref = losses(wd)
    assert sorted(ref) == [1, 2, 3, 4] and all(np.isfinite(v) for v in ref.values())
    resumed = tmp_path / "resumed"
    shutil.copytree(wd, resumed)
    shutil.rmtree(resumed / "ckpt" / "4")
    capsys.readouterr()
    assert main([*flags, "--workdir", str(resumed)]) == 0
    assert "resumed from step 2" in capsys.readouterr().err
    assert losses(resumed) == ref  # steps 3-4 recomputed from the step-2 checkpoint and data state
