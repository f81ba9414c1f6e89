"""Fine-tuning through ``python -m train --pretrained``: a timm checkpoint made for another size and class count
loads with its trunk bit for bit, its position embeddings and patch kernels resampled exactly as timm resamples
them and a fresh head; a run exports to a timm state_dict that loads with ``strict=True`` and gives the run's
logits; ``create_model(pretrained=RUN_DIR)`` and ``--pretrained RUN_DIR [--pretrained-ema]`` read runs. Every
path is relative (the tests run inside their tmp directory)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import vitjax
from converters import to_torch
from converters.__main__ import main as converters_main
from converters.engine import weights
from converters.runs import read_run, run_model
from train.__main__ import main as train_main

NAME = "vit_tiny_patch16_224"
# the fine-tuned model: two blocks of ViT-Ti at 32 px with 8 px patches and 10 classes
FT = dict(depth=2, num_classes=10, img_size=32, patch_size=8)
FT_FLAGS = ["--depth", "2", "--num-classes", "10", "--img-size", "32", "--patch-size", "8"]
RUN_FLAGS = ["--batch-size", "16", "--fast-compile", "--no-progress", "--log-every", "1"]


def _timm_checkpoint(path) -> dict[str, torch.Tensor]:
    """A two-block ViT-Ti at 224 px, 16 px patches, 5 classes, every float tensor random."""
    torch.manual_seed(0)
    m = timm.create_model(NAME, depth=2, num_classes=5)
    sd = {k: (torch.randn_like(v) * 0.05).contiguous() for k, v in m.state_dict().items()}
    save_file(sd, path)
    return sd


def test_finetune_from_timm_checkpoint(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    sd = _timm_checkpoint("vit.safetensors")
    # lr 0: the one step leaves the weights as loaded
    argv = ["--model", NAME, "--pretrained", "vit.safetensors", *FT_FLAGS, "--workdir", "ft", "--steps", "1"]
    assert train_main([*argv, *RUN_FLAGS, "--lr", "0", "--warmup-lr", "0"]) == 0
    err = capfd.readouterr().err
    assert "pretrained weights from vit.safetensors: 28 tensors loaded as they are" in err
    assert "resampled: patch_embed.proj.weight (192, 3, 16, 16) -> (192, 3, 8, 8), pos_embed (1, 197, 192)" in err
    assert "re-initialised: head.bias (10,), head.weight (10, 192)" in err

    got = {k: np.asarray(v) for k, v in to_torch(run_model(read_run("ft"))).items()}
    assert sorted(got) == sorted(sd)
    for k, v in sd.items():
        if k.startswith(("head.", "pos_embed", "patch_embed.proj.weight")):
            continue
        np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)  # the trunk, bit for bit
    ref_pos = timm.layers.resample_abs_pos_embed(sd["pos_embed"], (4, 4), (14, 14), num_prefix_tokens=1)
    ref_patch = timm.layers.resample_patch_embed(sd["patch_embed.proj.weight"], [8, 8])
    for key, ref in (("pos_embed", ref_pos), ("patch_embed.proj.weight", ref_patch)):
        err_ = np.abs(got[key] - ref.numpy()).max() / np.abs(ref.numpy()).max()
        print(f"{key}: max rel error to timm's resample {err_:.1e}")
        assert err_ < 1e-5, key
    fresh = vitjax.create_model(NAME, seed=0, **FT)  # the head is vitjax's initialisation with the run's seed
    for k in ("head.kernel", "head.bias"):
        np.testing.assert_array_equal(
            np.asarray(weights(run_model(read_run("ft")))[k].get_value()), weights(fresh)[k].get_value()
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A three-step run with EMA (checkpoints at steps 2 and 3), inside its own directory."""
    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        argv = ["--model", NAME, *FT_FLAGS, "--embed-dim", "32", "--num-heads", "2", "--workdir", "run"]
        assert train_main([*argv, *RUN_FLAGS, "--steps", "3", "--ckpt-every", "2", "--model-ema-decay", "0.5"]) == 0
    return root


@pytest.mark.parametrize("ema", [False, True])
def test_export_run_loads_in_timm_strictly(trained, monkeypatch, ema):
    monkeypatch.chdir(trained)
    out = f"out{int(ema)}.safetensors"
    assert converters_main(["to-torch", "--src", "run", "--out", out, *(["--ema"] if ema else [])]) == 0
    from safetensors.torch import load_file

    ref = timm.create_model(NAME, **FT, embed_dim=32, num_heads=2).eval()
    ref.load_state_dict(load_file(out), strict=True)
    ours = run_model(read_run("run", ema=ema))
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    got = np.asarray(ours(x))
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"ema={ema}: logits max rel error to timm {err:.1e}")
    assert err < 1e-5
    raw, avg = read_run("run"), read_run("run", ema=True)
    assert raw.step == avg.step == 3
    assert any(not np.array_equal(raw.tree[k], avg.tree[k]) for k in raw.tree)  # the EMA is another set


def test_create_model_and_finetune_from_a_run(trained, monkeypatch, capfd):
    monkeypatch.chdir(trained)
    kw = dict(FT, embed_dim=32, num_heads=2)
    run = read_run("run", step=2)
    model = vitjax.create_model(NAME, pretrained="run", **kw)  # the latest step (3)
    latest = read_run("run")
    for k, v in weights(model).items():
        np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(latest.tree[k]), err_msg=k)
    assert any(not np.array_equal(run.tree[k], latest.tree[k]) for k in run.tree)
    # another class count and size from a run: a fresh head, resampled embeddings
    other = vitjax.create_model(NAME, pretrained="run", **{**kw, "num_classes": 3, "img_size": 48})
    assert weights(other)["head.kernel"].get_value().shape == (32, 3)
    assert weights(other)["pos_embed"].get_value().shape == (1, 37, 32)
    np.testing.assert_array_equal(
        np.asarray(weights(other)["blocks.1.mlp.fc1.kernel"].get_value()), latest.tree["blocks.1.mlp.fc1.kernel"]
    )
    # python -m train from a run's EMA weights, at another class count
    argv = ["--model", NAME, "--pretrained", "run", "--pretrained-ema", *FT_FLAGS, "--num-classes", "4"]
    argv += ["--embed-dim", "32", "--num-heads", "2", "--workdir", "ft2", "--steps", "1", "--lr", "0"]
    assert train_main([*argv, *RUN_FLAGS]) == 0
    assert "pretrained weights from run run step 3 (EMA)" in capfd.readouterr().err
    ema, ft = read_run("run", ema=True), read_run("ft2")
    for k, v in ft.tree.items():
        if not k.startswith("head."):
            np.testing.assert_array_equal(np.asarray(v), np.asarray(ema.tree[k]), err_msg=k)


def test_run_errors(trained, monkeypatch):
    from converters.io import CheckpointError

    monkeypatch.chdir(trained)
    with pytest.raises(CheckpointError, match="no checkpoint of step 1 in ckpt/; it has steps \\[2, 3\\]"):
        read_run("run", step=1)
    assert converters_main(["to-torch", "--src", "run", "--step", "7", "--out", "x.safetensors"]) == 3
