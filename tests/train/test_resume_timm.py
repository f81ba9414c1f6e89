"""Exact resume with issue 24's training options: LAMB, BCE with a target threshold, a schedule in epochs with
warmup, EMA and ``--keep-best``. A run restarted from its step-6 checkpoint logs the same losses, bit for bit,
and keeps the same best checkpoints as the uninterrupted run. The same for ``--precision bf16``."""

from __future__ import annotations

import shutil

from converters.runs import run_steps
from tests.train.common import losses, tiny_config
from train.loop import run


def test_resume_is_exact(tmp_path):
    kw = dict(
        steps=None, epochs=0.1, warmup_steps=0, warmup_epochs=0.04, sched_on_updates=True, sched="cosine",
        opt="lamb", bce_loss=True, bce_target_thresh=0.2, mixup=0.8, model_ema_decay=0.5, keep_best=2,
        eval_every=3, ckpt_every=3, eval_metric="top1_ema", eval_batch_size=120,
    )  # fmt: skip
    ref = run(tiny_config(tmp_path / "a", **kw))
    assert ref.steps_done == 9  # ceil(0.1 x 89 updates per epoch)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "ckpt" / "9")
    shutil.rmtree(tmp_path / "b" / "best" / "9", ignore_errors=True)
    again = run(tiny_config(tmp_path / "b", **kw))
    assert again.steps_done == 9
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert run_steps(tmp_path / "b", "best") == run_steps(tmp_path / "a", "best")
    assert again.final_eval == ref.final_eval


def test_bf16_resume_is_exact(tmp_path, capfd):
    """bf16 compute (fp32 master weights) inside the loop: its losses are not fp32's, and a run resumed from its
    step-6 checkpoint logs the uninterrupted run's losses bit for bit and ends with its evaluation."""
    kw = dict(steps=9, ckpt_every=3, eval_batch_size=120)
    ref = run(tiny_config(tmp_path / "a", precision="bf16", **kw))
    fp32 = run(tiny_config(tmp_path / "fp32", **kw))
    assert losses(tmp_path / "a")[1] != losses(tmp_path / "fp32")[1]  # bf16 is in use from the first step
    assert ref.final_eval != fp32.final_eval
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "ckpt" / "9")
    capfd.readouterr()
    again = run(tiny_config(tmp_path / "b", precision="bf16", **kw))
    assert "resumed from step 6" in capfd.readouterr().err
    assert again.steps_done == 9
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert again.final_eval == ref.final_eval
