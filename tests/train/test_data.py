"""The grain pipelines: the digits split, per-process shards that assemble the same global batches, iterator
state resume, and an ImageFolder tree."""

from __future__ import annotations

import numpy as np
from PIL import Image

from train import data

KW = dict(img_size=32, global_batch=16, steps=8, seed=0, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5)


def test_digits_split_is_fixed_and_stratified():
    d = data.digits(32)
    assert (len(d.train), len(d.val)) == (1437, 360)
    assert d.train.images[0].shape == (32, 32, 3) and d.train.images[0].dtype == np.uint8
    assert np.bincount(d.val.labels).min() >= 35
    assert np.array_equal(d.val.labels, data.digits.__wrapped__(32).val.labels)


def test_process_shards_assemble_the_global_batch_and_resume():
    d = data.digits(32)
    whole = list(data.train_batches(d, **KW))
    for procs in (2, 4):
        shards = [list(data.train_batches(d, process_index=p, process_count=procs, **KW)) for p in range(procs)]
        for step, ref in enumerate(whole):
            for key in ("image", "label"):
                assert np.array_equal(np.concatenate([s[step][key] for s in shards]), ref[key])
    it = iter(data.train_batches(d, **KW))
    for _ in range(3):
        next(it)
    state = it.get_state()
    again = iter(data.train_batches(d, process_index=1, process_count=2, **KW))
    again.set_state(state)  # the state is the step: valid for another process count
    assert np.array_equal(next(again)["label"], whole[3]["label"][8:])


def test_epochs_reshuffle():
    d = data.digits(32)
    kw = {**KW, "global_batch": 479, "steps": 6}  # 1437 = 3 x 479: two epochs
    labels = [b["label"] for b in data.train_batches(d, **kw)]
    first, second = np.concatenate(labels[:3]), np.concatenate(labels[3:])
    assert np.array_equal(np.sort(first), np.sort(d.train.labels)) and not np.array_equal(first, second)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                size = (40 + 7 * i, 30 + 5 * i)
                Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    d = data.image_folder(tmp_path)
    assert d.num_classes == 2 and len(d.train) == 12 and len(d.val) == 6
    batch = next(iter(data.train_batches(d, **{**KW, "global_batch": 4})))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    ev = data.eval_batches(d, img_size=32, global_batch=4)
    assert len(ev) == 2 and ev[1]["valid"].tolist() == [1, 1, 0, 0]
    assert ev[0]["image"].shape == (4, 32, 32, 3)


def test_crop_box_rule():
    rng = np.random.default_rng(0)
    for _ in range(100):
        left, top, right, bottom = data.crop_box(40, 30, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
    assert data.crop_box(40, 30, (1.0, 1.0), (1.0, 1.0), rng) == (5, 0, 35, 30)  # fallback: centre crop


def test_image_folder_matches_torchvision(tmp_path):
    """Class order, file order and labels equal torchvision's ``ImageFolder`` on the same tree: class names
    that sort differently by case and digits, every extension torchvision reads (any case), files it skips."""
    from torchvision.datasets import ImageFolder

    rng = np.random.default_rng(1)
    exts = (".png", ".JPG", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".TIFF")
    for split in ("train", "val"):
        for c, cls in enumerate(("b", "B", "a_2", "a10", "10", "9", "Zebra")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                ext = exts[(c + i) % len(exts)]
                mode = "L" if ext == ".pgm" else "RGB"
                arr = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(arr).convert(mode).save(tmp_path / split / cls / f"{i}_{c}{ext}")
            (tmp_path / split / cls / "notes.txt").write_text("not an image")
    d = data.image_folder(tmp_path)
    for split, ours in (("train", d.train), ("val", d.val)):
        ref = ImageFolder(str(tmp_path / split))
        assert d.num_classes == len(ref.classes) == 7
        assert [str(p) for p in ours.images] == [p for p, _ in ref.samples]
        assert ours.labels.tolist() == [y for _, y in ref.samples]
