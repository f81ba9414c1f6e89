"""BatchNorm statistics in the sharded loop: per data-parallel device by default (timm's DDP), over the global batch
with ``--sync-bn``. A reduced CoAtNet (BatchNorm in its stem and MBConv blocks) on 4 fake devices: with
``--sync-bn`` it trains as on one device; without, as one device whose BatchNorms split the batch into 4 groups
(the layer's equality with torch per replica is tests/models/test_bn_groups.py's)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.train.common import losses, tiny_config
from train import plan as plan_lib
from train.config import parse_args
from train.loop import run


def _run(workdir, mesh, **kw) -> tuple[list[float], float, np.ndarray]:
    """The train losses of 2 steps, the final eval loss and every BatchNorm's running variance, concatenated."""
    cfg = tiny_config(
        workdir, model="test_coatnet", img_size=32, model_args={}, steps=2, batch_size=8, eval_batch_size=360,
        mesh=mesh or {}, warmup_steps=0, lr=1e-2, **kw,
    )  # fmt: skip
    result = run(cfg, devices=jax.devices()[:1] if mesh is None else jax.devices()[:4])
    stats = jax.tree_util.tree_leaves_with_path(jax.device_get(result.state.batch_stats))
    var = [np.ravel(v) for p, v in stats if str(getattr(p[-1], "key", p[-1])) == "var"]
    assert var, "the model has BatchNorm statistics"
    ls = losses(workdir)
    return [ls[1], ls[2]], result.final_eval["eval_loss"], np.concatenate(var)


def test_per_device_statistics_are_each_devices_slice(tmp_path, monkeypatch):
    """4 devices without --sync-bn train as one device whose BatchNorms split the batch into 4 groups, and
    otherwise than with --sync-bn."""
    per_device = _run(tmp_path / "dp4", {"data": 4})
    with monkeypatch.context() as m:
        m.setattr(plan_lib, "bn_groups", lambda cfg, mesh: 4)
        one_grouped = _run(tmp_path / "one-grouped", None)
    synced = _run(tmp_path / "dp4-sync", {"data": 4}, sync_bn=True)
    np.testing.assert_allclose(per_device[0], one_grouped[0], rtol=2e-5)
    # after two AdamW updates the summation order's rounding has grown (measured 2.4e-5)
    np.testing.assert_allclose(per_device[1], one_grouped[1], rtol=2e-4)
    np.testing.assert_allclose(per_device[2], one_grouped[2], rtol=1e-4, atol=1e-6)
    # the running variance: the mean of the 4 slices' variances, below the whole batch's by the spread of their means
    assert np.abs(per_device[2] - synced[2]).max() > 1e-2 * np.abs(synced[2]).max()


@pytest.mark.slow  # the global statistics on a mesh are the behaviour the default suite's ViT mesh tests cover
def test_sync_bn_trains_as_one_device(tmp_path):
    synced = _run(tmp_path / "dp4-sync", {"data": 4}, sync_bn=True)
    one = _run(tmp_path / "one", None)
    np.testing.assert_allclose(synced[0], one[0], rtol=2e-5)
    np.testing.assert_allclose(synced[1], one[1], rtol=2e-4)
    np.testing.assert_allclose(synced[2], one[2], rtol=1e-4, atol=1e-6)


def test_a_per_device_batch_that_does_not_split_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path, model="test_coatnet", img_size=32, model_args={}, steps=1, batch_size=8,
                      grad_accum_steps=4, mesh={"data": 4})  # fmt: skip
    with pytest.raises(ValueError, match="--batch-size 8 / --grad-accum-steps 4 .* 4 data-parallel devices.*--sync-bn"):
        run(cfg, devices=jax.devices()[:4])


def test_sync_bn_flag():
    assert parse_args(["--model", "m", "--steps", "1", "--sync-bn"]).sync_bn
    assert not parse_args(["--model", "m", "--steps", "1"]).sync_bn
