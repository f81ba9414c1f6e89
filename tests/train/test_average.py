"""``--keep-best N`` keeps the weights of the N best evaluations by ``--eval-metric`` (raw or EMA), and
``python -m train.average`` averages the best or the latest N checkpoints as timm's ``avg_checkpoints.py``
does (every tensor's mean in float64, stored as float32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from converters import to_torch
from converters.runs import read_run, run_model, run_steps
from tests.train.common import TINY, tiny_config
from train.average import main as average_main
from train.loop import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("avg")
    cfg = tiny_config(
        wd / "run", steps=8, eval_every=2, ckpt_every=2, keep_ckpts=3, keep_best=2, eval_metric="eval_loss_ema",
        model_ema_decay=0.5, eval_batch_size=120,
    )  # fmt: skip
    run(cfg)
    evals = {}
    for line in (wd / "run" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "eval":
            evals[r["step"]] = r
    return wd, evals


def test_keep_best_keeps_the_best_evaluations(trained):
    wd, evals = trained
    assert sorted(evals) == [2, 4, 6, 8]
    ranked = sorted(evals, key=lambda s: evals[s]["eval_loss_ema"])  # a loss: lower is better
    assert run_steps(wd / "run", "best") == sorted(ranked[:2])
    assert run_steps(wd / "run", "ckpt") == [4, 6, 8]
    # the kept weights are the run's at that step (the latest checkpoint is also the final state)
    best8 = 8 in ranked[:2]
    if best8:
        a, b = read_run(wd / "run", step=8, ema=True, where="best"), read_run(wd / "run", step=8, ema=True)
        for k in a.tree:
            np.testing.assert_array_equal(np.asarray(a.tree[k]), np.asarray(b.tree[k]))


def _timm_average(state_dicts):
    """timm's avg_checkpoints.py: the float64 sum of every tensor over the checkpoints, divided, as float32."""
    out = {}
    for k in state_dicts[0]:
        out[k] = (sum(torch.from_numpy(np.asarray(sd[k])).double() for sd in state_dicts) / len(state_dicts)).float()
    return out


@pytest.mark.parametrize(("which", "ema"), [("--best", True), ("--last", False)])
def test_average_matches_timms_avg_checkpoints(trained, monkeypatch, capsys, which, ema):
    wd, evals = trained
    monkeypatch.chdir(wd)
    out = f"avg{which}.safetensors"
    argv = ["run", "--out", out, which, "-n", "3" if which == "--last" else "2", *(["--ema"] if ema else [])]
    assert average_main(argv) == 0
    text = capsys.readouterr().out
    if which == "--best":
        steps = sorted(evals, key=lambda s: evals[s]["eval_loss_ema"])[:2]
        assert f"averaged the 2 best steps {steps} (EMA)" in text
        where = "best"
    else:
        steps, where = [4, 6, 8], "ckpt"
        assert "averaged the 3 latest steps [4, 6, 8]" in text
    want = _timm_average([to_torch(run_model(read_run("run", step=s, ema=ema, where=where))) for s in steps])
    got = load_file(out)
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, **TINY)
    model.load_state_dict(got, strict=True)
    # a directory: a vitjax checkpoint with the same weights
    assert average_main(["run", "--out", "avgdir", which, "-n", "2", *(["--ema"] if ema else [])]) == 0
    import vitjax

    # (absolute: converters.orbax_io's restore of a relative directory is another issue's fix)
    m = vitjax.create_model("vit_tiny_patch16_224", pretrained=str(wd / "avgdir"), img_size=32, **TINY)
    assert m.pretrained_cfg["source"].startswith("vitjax checkpoint")
    if which == "--best":  # -n 2 as above: the same weights
        for k, v in to_torch(m).items():
            torch.testing.assert_close(torch.from_numpy(np.asarray(v)), got[k], rtol=0, atol=0, msg=k)


def test_average_errors(trained, monkeypatch, capsys):
    wd, _ = trained
    monkeypatch.chdir(wd)
    assert average_main(["nowhere", "--out", "x.safetensors"]) == 3
    assert "not a python -m train run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        average_main(["run", "--out", "x.safetensors", "-n", "0"])
