"""An ImageFolder with a truncated JPEG: training stops with an error naming the file (no bare PIL traceback)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from tests.train.common import tiny_config
from train.data import ImageError, image_folder
from train.loop import run


def _folder(root, n=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(root / split / c / f"{i}.jpg")
    return root


def test_truncated_jpeg_is_named(tmp_path):
    root = _folder(tmp_path / "imgs")
    bad = root / "train" / "b" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    data = image_folder(root)
    i = data.train.images.index(str(bad))
    with pytest.raises(ImageError, match=f"{bad}: cannot read this image"):
        data.train.load(i)
    cfg = tiny_config(tmp_path / "wd", data=str(root), steps=4, batch_size=8, eval_batch_size=8)
    with pytest.raises(ImageError, match=f"{bad}: cannot read this image"):  # every image is read within 4 steps
        run(cfg, devices=jax.devices()[:1])
