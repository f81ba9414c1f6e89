"""The augmentation flags on the command line: parsed as timm's train.py, bad values refused by argparse, and a
tiny ``python -m train`` run with RandAugment, random erasing and repeated augmentation on a generated
ImageFolder that, interrupted and resumed, repeats its losses bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.train.common import TINY_FLAGS, assert_resumes_exactly
from train import augment, data
from train.__main__ import main
from train.config import parse_args


def test_augmentation_flags_parse():
    cfg = parse_args(
        ["--model", "vit_tiny_patch16_224", "--steps", "3", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25",
         "--remode", "rand", "--recount", "2", "--color-jitter", "0.3", "--train-interpolation", "bicubic",
         "--scale", "0.2,1", "--ratio", "0.5,2", "--hflip", "0.3", "--vflip", "0.1", "--aug-repeats", "3",
         "--crop-pct", "0.9"]
    )  # fmt: skip
    assert (cfg.aa, cfg.reprob, cfg.remode, cfg.recount) == ("rand-m9-mstd0.5-inc1", 0.25, "rand", 2)
    assert (cfg.color_jitter, cfg.train_interpolation, cfg.scale, cfg.ratio) == (0.3, "bicubic", (0.2, 1), (0.5, 2))
    assert (cfg.hflip, cfg.vflip, cfg.aug_repeats, cfg.crop_pct) == (0.3, 0.1, 3, 0.9)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    aug = data.train_augment(cfg, data.digits(32), 32, mean, std)
    assert aug == augment.TrainAugment(
        32, scale=(0.2, 1), ratio=(0.5, 2), hflip=0.3, vflip=0.1, interpolation="bicubic",
        aa="rand-m9-mstd0.5-inc1", color_jitter=(0.3, 0.3, 0.3), reprob=0.25, remode="rand", recount=2,
        mean=mean, std=std,
    )  # fmt: skip
    # the datasets' defaults where a flag is not given: timm's for ImageFolder, plain for digits
    plain = parse_args(["--model", "vit_tiny_patch16_224", "--steps", "3"])
    folder = data.Dataset(None, None, 2, False, (0.08, 1.0), 0.5)
    a = data.train_augment(plain, folder, 32, mean, std)
    assert (a.interpolation, a.color_jitter, a.hflip, a.scale, a.reprob, a.aa) == (
        "random", (0.4, 0.4, 0.4), 0.5, (0.08, 1.0), 0.0, None,
    )  # fmt: skip
    d = data.train_augment(plain, data.digits(32), 32, mean, std)
    assert (d.interpolation, d.color_jitter, d.hflip, d.scale) == ("bilinear", None, 0.0, (0.5, 1.0))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--remode", "zero"], "--remode"),
        (["--train-interpolation", "cubic"], "--train-interpolation"),
        (["--aa", "rand-m9-q2"], "--aa"),
        (["--aa", "autoaug"], "--aa"),
    ],
)
def test_bad_augmentation_flags_are_command_line_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--model", "vit_tiny_patch16_224", "--steps", "3", *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,message",
    [(["--reprob", "1.5"], "--reprob"), (["--aug-repeats", "0.5"], "--aug-repeats"), (["--crop-pct", "0"], "crop")],
)
def test_out_of_range_augmentation_values_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--model", "vit_tiny_patch16_224", "--steps", "3", *flags])


def test_config_file_values_are_checked(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("model: vit_tiny_patch16_224\nsteps: 3\nremode: zero\n")
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(f)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "run.yaml" in err and "remode" in err and "zero" in err


def test_tiny_run_with_randaugment_erasing_and_repeats_resumes_exactly(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for split, n in (("train", 8), ("val", 2)):
        for c in range(3):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                size = (40 + 4 * i, 36 + 3 * c)
                arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / f"class{c}" / f"{i}.png")
    flags = [
        "--model", "vit_tiny_patch16_224", *TINY_FLAGS, "--num-classes", "3", "--img-size", "32",
        "--data", str(root), "--batch-size", "8", "--steps", "4", "--ckpt-every", "2", "--log-every", "1",
        "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--aug-repeats", "3", "--no-progress",
        "--fast-compile", "--eval-batch-size", "8", "--crop-pct", "0.8",
    ]  # fmt: skip
    seen = []  # --crop-pct reaches the eval pipeline
    real_eval = data.eval_batches
    monkeypatch.setattr(data, "eval_batches", lambda *a, **kw: seen.append(kw["crop_pct"]) or real_eval(*a, **kw))
    assert_resumes_exactly(main, flags, tmp_path, capsys)
    assert seen and set(seen) == {0.8}  # every evaluation, the first run's and the resumed one's
