"""The seed models' recipes (``train/recipes/*.yaml``): each file is a valid config with the ingredients its
recipe is known for, and a shortened copy of each (tiny width / depth, 32-256 px, 2 steps of 8) trains through
``python -m train --config FILE --data DIR --workdir W`` on a generated ImageFolder, every other value of the file
reaching the run. The fine-tune recipes start from a generated timm-named checkpoint made for another class count
(and, for the ViT, another image size): the run replaces the head and resamples the position embeddings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.numpy import save_file

import vitjax
from converters import to_torch
from tests.train.common import losses
from train.__main__ import main
from train.config import parse_args

RECIPES = Path(__file__).resolve().parents[2] / "train" / "recipes"
VIT_TINY = ["--depth", "2", "--embed-dim", "32", "--num-heads", "2", "--patch-size", "8"]
# How each recipe is shortened: flags on the command line (the ViTs take --depth / --embed-dim / --num-heads),
# model fields written into a copy of the file (the conv nets' widths and depths have no flag), and the image
# size of the generated pretrained checkpoint (fine-tune recipes only).
SHORT = {
    "vit_relpos_base_patch16_clsgap_224": (VIT_TINY + ["--img-size", "32"], {}, None),
    "vit_medium_patch16_reg4_gap_256": (VIT_TINY + ["--img-size", "48"], {}, 32),
    # halo attention needs maps divisible by its block size 8 at stride 32: a multiple of 256 px
    "halonet50ts": (["--img-size", "256"], {"width_factor": 0.25, "stem_chs": 16}, None),
    "maxxvitv2_rmlp_base_rw_224": (
        ["--img-size", "64"],
        {"depths": [1, 1, 1, 1], "embed_dim": [32, 32, 64, 64], "stem_width": [16, 32]},
        64,
    ),
}
RUN = ["--steps", "2", "--batch-size", "8", "--fast-compile", "--no-progress", "--log-every", "1"]


def _file(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def test_one_recipe_per_seed_model_with_its_ingredients():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(SHORT)
    cfgs = {}
    for name in SHORT:
        values = _file(name)
        cfg = cfgs[name] = parse_args(["--config", str(RECIPES / f"{name}.yaml")])
        assert cfg.model == name and cfg.steps is None and cfg.epochs > 0
        for key, want in values.items():  # every value of the file is the config's
            got = getattr(cfg, key)
            assert (list(got) if isinstance(got, tuple) else got) == want, (name, key)
        assert (RECIPES / f"{name}.yaml").read_text().startswith("# "), "each file opens with its sources"
    swin = cfgs["vit_relpos_base_patch16_clsgap_224"]  # Swin-style: AdamW, clipping, EMA, warmup + cosine, ...
    assert (swin.opt, swin.sched) == ("adamw", "cosine") and swin.clip_grad and swin.model_ema_decay > 0
    assert swin.warmup_epochs > 0 and swin.aa.startswith("rand-") and swin.reprob > 0 and swin.mixup and swin.cutmix
    sbb = cfgs["vit_medium_patch16_reg4_gap_256"]  # in12k -> in1k fine-tune: NAdamW, layer decay, BCE
    assert sbb.pretrained == "vit_medium_patch16_reg4_gap_256.sbb_in12k"
    assert sbb.opt == "nadamw" and sbb.layer_decay and sbb.bce_loss
    a1 = cfgs["halonet50ts"]  # ResNet Strikes Back A1: LAMB, BCE > 0.2, RandAugment, repeats x3, drop path
    assert (a1.opt, a1.bce_loss, a1.bce_target_thresh, a1.aug_repeats) == ("lamb", True, 0.2, 3)
    assert a1.aa.startswith("rand-") and a1.model_args["drop_path"] > 0 and a1.clip_grad is None
    assert cfgs["maxxvitv2_rmlp_base_rw_224"].pretrained == "maxxvitv2_rmlp_base_rw_224.sw_in12k"


def _folder(root: Path) -> None:
    """3 classes of random RGB pictures: 6 each to train on, 2 each to evaluate."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("a", "b", "c"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def _pretrained(name: str, flags: list[str], fields: dict, img_size: int, path: str) -> None:
    """A timm-named checkpoint of the shortened model for 11 classes at ``img_size``, every tensor random."""
    args = {**fields, "num_classes": 11, "img_size": img_size}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        if flag != "--img-size":
            args[flag[2:].replace("-", "_")] = int(value)
    sd = to_torch(vitjax.create_model(name, **args))
    rng = np.random.default_rng(1)
    save_file({k: (rng.standard_normal(v.shape) * 0.05).astype(np.float32) for k, v in sd.items()}, path)


# The conv nets' runs cost several times the ViTs' (halonet50ts keeps its 16 blocks, which have no flag, at
# 256 px; the MaxxViT-V2 with one block per stage still compiles conv, grid-attention and MLP-bias blocks):
# they are in the slow set.
HEAVY = {"halonet50ts", "maxxvitv2_rmlp_base_rw_224"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(SHORT)])
def test_shortened_recipe_trains(name, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    _folder(Path("data"))
    flags, fields, pre_size = SHORT[name]
    values = _file(name)
    config = str(RECIPES / f"{name}.yaml")
    if fields:  # a copy of the file with the model made small
        short = {**values, "model_args": {**values.get("model_args", {}), **fields}}
        Path("short.yaml").write_text(yaml.safe_dump(short))
        config = "short.yaml"
    extra = []
    if pre_size:
        _pretrained(name, flags, fields, pre_size, "pre.safetensors")
        extra = ["--pretrained", "pre.safetensors"]
    assert main(["--config", config, "--data", "data", "--workdir", "run", *RUN, *flags, *extra]) == 0
    err = capfd.readouterr().err
    ran = json.loads(Path("run/config.json").read_text())
    overridden = {"steps", "batch_size", "fast_compile", "progress", "log_every", "img_size", "pretrained"}
    for key, want in values.items():  # the recipe's values reached the run
        if key not in overridden:
            got = ran[key] if key != "model_args" else {k: ran[key][k] for k in want}
            assert got == want, (key, got, want)
    assert ran["steps"] == 2 and ran["batch_size"] == 8
    run_losses = losses("run")
    assert sorted(run_losses) == [1, 2] and all(math.isfinite(v) for v in run_losses.values())
    if pre_size:  # the head was made for 11 classes: a fresh one for the folder's 3
        assert "pretrained weights from" in err and "re-initialised: head" in err
        if pre_size != int(flags[flags.index("--img-size") + 1]):
            assert "resampled: pos_embed" in err
