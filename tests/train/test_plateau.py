"""``--sched plateau`` against timm's ``PlateauLRScheduler`` (built by ``create_scheduler_v2`` and stepped as
timm's ``train.py`` steps it: ``step(epoch + 1, metric)`` after each epoch's evaluation): the lr of every epoch
for the same sequence of eval metrics; a run's logged lr at every step against timm driven by that run's own
eval metrics; an interrupted plateau run resumes bit for bit; flags it cannot honour are errors naming them."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from timm.scheduler import create_scheduler_v2

from tests.train.common import TINY_FLAGS, assert_resumes_exactly, tiny_config
from train import data as data_lib
from train import schedule
from train.__main__ import main
from train.config import TrainConfig, parse_args
from train.loop import run


def _timm_epoch_lrs(metrics, *, lr, eval_metric="top1", **kw) -> tuple[list[float], int]:
    """The lr timm's plateau scheduler gives each epoch when epoch ``e`` ends with ``metrics[e]``."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the scheduler's deprecation notice
        sched, epochs = create_scheduler_v2(
            opt, sched="plateau", num_epochs=len(metrics), plateau_mode="min" if "loss" in eval_metric else "max", **kw
        )
    lrs = []
    for epoch, m in enumerate(metrics):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(epoch + 1, m)
    return lrs, epochs


def _our_epoch_lrs(metrics, cfg: TrainConfig) -> list[float]:
    p = schedule.plateau(cfg)
    state, lrs = p.init(), []
    for epoch, m in enumerate(metrics):
        lrs.append(state.lr)
        state = schedule.Plateau.decode(schedule.Plateau.encode(p.step(state, epoch + 1, m)))  # via the state
    return lrs


rng = np.random.default_rng(0)
RISING = list(np.round(np.cumsum(rng.uniform(-1, 2, 30)) + 50, 1))  # improvements, dips and stalls
FLAT = [60.0, 61.0, 61.0, 61.005, 61.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0]
LOSSES = list(np.round(2.0 / np.arange(1, 25) + rng.uniform(0, 0.2, 24), 3))
CASES = {
    "max": (RISING, dict(patience_epochs=2, decay_rate=0.5)),
    "threshold-and-min-lr": (FLAT, dict(patience_epochs=0, decay_rate=0.5, min_lr=0.02)),
    "warmup": (RISING, dict(patience_epochs=1, warmup_epochs=3, warmup_lr=1e-3)),
    "fractional-warmup": (FLAT, dict(patience_epochs=0, warmup_epochs=2.5, warmup_lr=1e-3, decay_rate=0.3)),
    "min-loss": (LOSSES, dict(patience_epochs=1, decay_rate=0.2, eval_metric="eval_loss")),
    "tiny-steps": (FLAT, dict(patience_epochs=0, decay_rate=0.9999999, min_lr=0.0)),  # changes under eps kept
}


@pytest.mark.parametrize("case", list(CASES))
def test_lr_of_every_epoch_matches_timm(case):
    metrics, kw = CASES[case]
    cfg = TrainConfig(model="m", epochs=len(metrics), sched="plateau", lr=0.1, **kw)
    timm_kw = {k: v for k, v in kw.items() if k != "eval_metric"}
    ref, epochs = _timm_epoch_lrs(metrics, lr=0.1, eval_metric=cfg.eval_metric, **timm_kw)
    assert epochs == len(metrics) == schedule.total_steps(cfg, 30) // schedule.updates_per_epoch(cfg, 30)
    assert _our_epoch_lrs(metrics, cfg) == ref  # float64, exactly
    assert len(set(ref)) == 1 if case == "tiny-steps" else len(set(ref)) > 2  # the case decays (or must not)


TINY_FLAGS_DICT = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)


def _folder(tmp_path, classes=2, n_train=8, n_val=2):
    rng = np.random.default_rng(1)
    root = tmp_path / "folder"
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
                arr[..., c] = 30 * i  # a little class signal
                Image.fromarray(arr).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_the_loop_steps_the_plateau_on_each_epochs_eval(tmp_path):
    """16 training images in batches of 8: epochs of 2 updates; the lr logged at every step is the lr timm's
    scheduler gives that step's epoch, driven by the eval metric the run logged at each epoch's end."""
    root = _folder(tmp_path)
    cfg = tiny_config(
        tmp_path / "run", data=str(root), model_args=dict(TINY_FLAGS_DICT, num_classes=2), batch_size=8,
        steps=None, epochs=5, warmup_steps=0, warmup_epochs=1, warmup_lr=1e-4, sched="plateau",
        patience_epochs=0, decay_rate=0.5, lr=3e-3, hflip=0.0,
    )  # fmt: skip
    result = run(cfg)
    assert result.total_steps == result.steps_done == 10
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in logged if r["kind"] == "train"}
    evals = {r["step"]: r["top1"] for r in logged if r["kind"] == "eval"}
    assert sorted(evals) == [2, 4, 6, 8, 10]  # every epoch's end (and the final one)
    ref, _ = _timm_epoch_lrs([evals[s] for s in (2, 4, 6, 8, 10)], lr=3e-3,
                             patience_epochs=0, decay_rate=0.5, warmup_epochs=1, warmup_lr=1e-4)  # fmt: skip
    per_step = [np.float32(ref[(s - 1) // 2]) for s in range(1, 11)]
    assert [np.float32(lrs[s]) for s in range(1, 11)] == per_step
    assert per_step[0] == np.float32(1e-4) and per_step[2] == np.float32(3e-3)  # the warmup epoch, then lr
    assert per_step[-1] < per_step[2]  # top-1 stalled (2 validation images per class): the lr decayed


def test_a_plateau_run_resumes_exactly(tmp_path, capsys):
    """Epochs of 2 updates with a 1-epoch warmup: the step-2 checkpoint holds the lr after the warmup (a resume
    that restarted the schedule would take the warmup lr again and other losses)."""
    root = _folder(tmp_path)
    flags = [
        "--model", "vit_tiny_patch16_224", *TINY_FLAGS, "--num-classes", "2", "--img-size", "32",
        "--data", str(root), "--batch-size", "8", "--steps", "4", "--ckpt-every", "2", "--log-every", "1",
        "--sched", "plateau", "--warmup-epochs", "1", "--warmup-lr", "1e-5", "--lr", "3e-3",
        "--patience-epochs", "0", "--no-progress", "--fast-compile",
    ]  # fmt: skip
    assert_resumes_exactly(main, flags, tmp_path, capsys)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--sched-on-updates"], "--sched-on-updates"),
        (["--warmup-steps", "3"], "--warmup-steps"),
        (["--cooldown-epochs", "2"], "--cooldown-epochs"),
        (["--patience-epochs", "-1"], "--patience-epochs"),
    ],
)
def test_flags_plateau_cannot_honour_are_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--model", "vit_tiny_patch16_224", "--epochs", "3", "--sched", "plateau", *flags])


def test_plateau_without_validation_images_is_an_error(tmp_path, monkeypatch):
    real = data_lib.load_dataset

    def no_val(spec, img_size):
        return dataclasses.replace(real(spec, img_size), val=data_lib.Split([], np.zeros(0, np.int32)))

    monkeypatch.setattr(data_lib, "load_dataset", no_val)
    cfg = tiny_config(tmp_path, steps=None, epochs=1, warmup_steps=0, sched="plateau")
    with pytest.raises(ValueError, match="--sched plateau.*--data digits has no validation images"):
        run(cfg)
