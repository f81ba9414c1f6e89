"""The lr of every update against timm's scheduler (``timm.scheduler.create_scheduler_v2``) driven as timm's
``train.py`` drives it (``step_update`` after every update, ``step`` at every epoch's end), with the same
arguments, per epoch and per update; the run's length as timm's; ``--warmup-steps`` as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.scheduler import create_scheduler_v2

from train import optim, schedule
from train.config import TrainConfig

UPE, BATCH = 7, 4  # updates per epoch, batch: a training set of 30 images (timm's loader drops the last 2)


def _timm_lrs(num_epochs: int, upe: int, **kw) -> tuple[list[float], int]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=kw.pop("lr"))
    sched, epochs = create_scheduler_v2(opt, num_epochs=num_epochs, updates_per_epoch=upe, **kw)
    lrs, updates = [], 0
    for epoch in range(epochs):
        for _ in range(upe):
            lrs.append(opt.param_groups[0]["lr"])
            updates += 1
            sched.step_update(num_updates=updates)
        sched.step(epoch + 1)
    return lrs, epochs


CASES = {
    "cosine": dict(sched="cosine", warmup_epochs=3, cooldown_epochs=2),
    "cosine-prefix": dict(sched="cosine", warmup_epochs=3, warmup_prefix=True, cooldown_epochs=1),
    "step": dict(sched="step", warmup_epochs=2, decay_epochs=3, decay_rate=0.5, cooldown_epochs=2),
    "multistep": dict(sched="multistep", warmup_epochs=1, decay_milestones=(2, 5, 8), decay_rate=0.3),
    "constant-cooldown": dict(sched="constant", warmup_epochs=1, warmup_prefix=True, cooldown_epochs=3),
    "poly": dict(sched="poly", warmup_epochs=2, decay_rate=2.0, cooldown_epochs=1),
    "constant": dict(sched="constant", warmup_epochs=2),
}


@pytest.mark.parametrize("on_updates", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_lr_of_every_update_matches_timm(case, on_updates):
    kw = CASES[case]
    common = dict(lr=0.1, warmup_lr=1e-3, min_lr=1e-4)
    ref, epochs = _timm_lrs(10, UPE, step_on_epochs=not on_updates, **common, **kw)
    cfg = TrainConfig(model="m", epochs=10, batch_size=BATCH, sched_on_updates=on_updates, **common, **kw)
    total = schedule.total_steps(cfg, 30)
    assert schedule.updates_per_epoch(cfg, 30) == UPE
    assert total == epochs * UPE == len(ref)
    fn = schedule.lr_schedule(cfg, total, UPE)
    ours = np.asarray([float(fn(u)) for u in range(total)])
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-7 * common["lr"])  # fp32 rounding of lr


def test_warmup_steps_keeps_its_meaning():
    """``--steps`` with ``--warmup-steps``: the per-update cosine with a warmup prefix the loop always had."""
    cfg = TrainConfig(model="m", steps=50, warmup_steps=8, lr=0.1, warmup_lr=0.01, min_lr=1e-3)
    fn = schedule.lr_schedule(cfg, schedule.total_steps(cfg, 1000), 1000 // 64)
    before = optim.schedule(0.1, 50, 8, 0.01, 1e-3)
    np.testing.assert_allclose([float(fn(u)) for u in range(60)], [float(before(u)) for u in range(60)], rtol=1e-6)
    # and it is timm's cosine on updates with the warmup as a prefix
    ref, _ = _timm_lrs(42, 1, sched="cosine", lr=0.1, warmup_lr=0.01, min_lr=1e-3, warmup_epochs=8,
                       warmup_prefix=True, step_on_epochs=False)  # fmt: skip
    np.testing.assert_allclose([float(fn(u)) for u in range(50)], ref, rtol=2e-6)


def test_bad_schedule_flags():
    with pytest.raises(ValueError, match="not both"):
        schedule.plan(TrainConfig(model="m", steps=10, warmup_steps=2, warmup_epochs=1.0), 10, 5)
    with pytest.raises(ValueError, match="needs the schedule on updates"):
        schedule.plan(TrainConfig(model="m", epochs=2, warmup_steps=2, sched_on_updates=False), 10, 5)


def test_the_loop_runs_the_schedule(tmp_path):
    """An ``--epochs`` run on digits (1437 training images, 89 updates of 16 per epoch) lasts timm's number of
    updates and logs, at every step, the schedule's lr."""
    import json

    from tests.train.common import tiny_config
    from train.loop import run

    cfg = tiny_config(
        tmp_path, steps=None, epochs=0.08, warmup_steps=0, warmup_epochs=0.03, sched="poly", decay_rate=2.0,
        sched_on_updates=True, lr=0.01, min_lr=1e-4, warmup_lr=1e-3,
    )  # fmt: skip
    result = run(cfg)
    assert result.total_steps == result.steps_done == 8  # ceil(0.08 x 89)
    fn = schedule.lr_schedule(cfg, 8, 89)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in logged if r["kind"] == "train"}
    assert sorted(lrs) == list(range(1, 9))
    np.testing.assert_allclose([lrs[s] for s in range(1, 9)], [float(fn(s - 1)) for s in range(1, 9)], rtol=1e-5)
    assert lrs[1] == pytest.approx(1e-3) and lrs[3] > lrs[2] > lrs[1] and lrs[8] < lrs[4]
