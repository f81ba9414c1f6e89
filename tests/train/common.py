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
