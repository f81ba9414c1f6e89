"""Packed datasets (train.records): ArrayRecord and webdataset tar shards packed from a generated ImageFolder of
JPEGs yield its examples (bytes, labels, class order), processes read disjoint and complete shares, a tiny
``python -m train`` run on them resumes bit for bit, and bad input (short or damaged shards, labels out of range,
empty class folders, bad packer flags) is an error naming the shard, label or folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.train.common import TINY_FLAGS, assert_resumes_exactly, losses
from train import data, records
from train.__main__ import main as train_main

FORMATS = ("arrayrecord", "tar")
CLASSES = ("ant", "bee", "cat")


def _folder(root: Path, n_train: int = 6, n_val: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                w, h = int(rng.integers(64, 129)), int(rng.integers(64, 129))
                img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
                ext = ".png" if (c, i) == (1, 0) else ".jpeg" if (c, i) == (2, 1) else ".jpg"
                img.save(root / split / name / f"{i:02d}{ext}", quality=90)
    return root


def _pack(src: Path, out: Path, fmt: str, shards: int = 3) -> Path:
    argv = ["pack", "--src", str(src), "--out", str(out), "--format", fmt, "--shards", str(shards), "--no-progress"]
    assert data.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("records") / "folder")


@pytest.fixture(scope="module", params=FORMATS)
def packed(request, folder, tmp_path_factory) -> tuple[str, Path]:
    return request.param, _pack(folder, tmp_path_factory.mktemp(request.param) / "packed", request.param)


def test_packed_split_is_the_image_folder(folder, packed):
    fmt, root = packed
    ref, got = data.load_dataset(str(folder), 32), data.load_dataset(str(root), 32)
    assert isinstance(got.train, records.PackedSplit)
    assert got.classes == ref.classes == CLASSES and got.num_classes == 3
    for split in ("train", "val"):
        r, g = getattr(ref, split), getattr(got, split)
        assert np.array_equal(g.labels, r.labels) and g.labels.dtype == np.int32
        assert len(list((root / split).glob(f"*{records._SUFFIX[fmt]}"))) == (3 if split == "train" else 3)
        for i in range(len(r)):
            assert g.read(i) == Path(r.images[i]).read_bytes()  # stored as they were, not re-encoded
            assert np.array_equal(np.asarray(g.load(i)), np.asarray(r.load(i)))
    kw = dict(img_size=32, global_batch=6, steps=4, seed=3)
    for a, b in zip(data.train_batches(ref, **kw), data.train_batches(got, **kw), strict=True):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    ev_ref, ev_got = (
        data.eval_batches(ref, img_size=32, global_batch=4),
        data.eval_batches(got, img_size=32, global_batch=4),
    )
    for a, b in zip(ev_ref, ev_got, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in ("image", "label", "valid"))
    if fmt == "tar":  # the webdataset layout: NNNNNN.<ext> + NNNNNN.cls, keys the split's example indices
        import tarfile

        with tarfile.open(root / "train" / "train-00000-of-00003.tar") as tar:
            names = tar.getnames()
            assert names[:4] == ["000000.jpg", "000000.cls", "000001.jpg", "000001.cls"]
            assert tar.extractfile("000000.cls").read() == b"0"


@pytest.mark.parametrize("procs", [2, 3])
def test_processes_read_disjoint_and_complete_shares(packed, procs, monkeypatch):
    _, root = packed
    d = data.load_dataset(str(root), 32)
    seen: dict[int, list[int]] = {}
    real_read = records.PackedSplit.read
    p_now = [0]

    def read(self, i):
        seen.setdefault(p_now[0], []).append((id(self), i))
        return real_read(self, i)

    monkeypatch.setattr(records.PackedSplit, "read", read)
    kw = dict(img_size=32, global_batch=6, steps=3, seed=1)  # 18 train examples: one epoch
    whole = list(data.train_batches(d, **kw))
    seen.clear()
    shares = []
    for p in range(procs):
        p_now[0] = p
        shares.append(list(data.train_batches(d, process_index=p, process_count=procs, **kw)))
        ev = data.eval_batches(d, img_size=32, global_batch=6, process_index=p, process_count=procs)
        list(ev)
    for step, ref in enumerate(whole):
        for key in ("image", "label"):
            assert np.array_equal(np.concatenate([s[step][key] for s in shares]), ref[key])
    for split, n in ((d.train, 18), (d.val, 6)):
        reads = [[i for who, i in seen[p] if who == id(split)] for p in range(procs)]
        flat = sorted(i for r in reads for i in r)
        assert flat == list(range(n))  # complete, and each example read by exactly one process (disjoint)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_run_on_packed_shards_resumes_exactly(fmt, folder, tmp_path, capsys):
    root = _pack(folder, tmp_path / "packed", fmt, shards=2)
    flags = [
        "--model", "vit_tiny_patch16_224", *TINY_FLAGS, "--num-classes", "3", "--img-size", "32",
        "--data", str(root), "--batch-size", "8", "--steps", "4", "--ckpt-every", "2", "--log-every", "1",
        "--no-progress", "--fast-compile", "--eval-batch-size", "8", "--data-workers", "2",
    ]  # fmt: skip
    assert_resumes_exactly(train_main, flags, tmp_path, capsys)


def _shard(root: Path, fmt: str, k: int = 1) -> Path:
    return root / "train" / f"train-{k:05d}-of-00003{records._SUFFIX[fmt]}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_short_shard_is_named_before_training(fmt, folder, tmp_path):
    root = _pack(folder, tmp_path / "packed", fmt)
    shard = _shard(root, fmt)
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(records.ShardError, match=str(shard)):
        data.load_dataset(str(root), 32)
    shard.unlink()
    with pytest.raises(records.ShardError, match=f"{shard}.*missing"):
        data.load_dataset(str(root), 32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_shard_is_named(fmt, folder, tmp_path):
    root = _pack(folder, tmp_path / "packed", fmt)
    shard = _shard(root, fmt)
    raw = bytearray(shard.read_bytes())
    if fmt == "arrayrecord":  # a record's bytes changed: its chunk hash no longer matches
        start = len(raw) // 3
        raw[start : start + 64] = bytes(64)
        shard.write_bytes(bytes(raw))
        d = data.load_dataset(str(root), 32)
        with pytest.raises(records.ShardError, match=f"{shard}: record"):
            [d.train.load(i) for i in range(len(d.train))]
    else:  # an image member's bytes zeroed: the tar is intact, the image is not
        start = raw.index(b"\xff\xd8\xff", 512)
        raw[start : start + 600] = bytes(600)
        shard.write_bytes(bytes(raw))
        d = data.load_dataset(str(root), 32)
        with pytest.raises(records.ShardError, match=rf"{shard}: record \d+ is not a readable image"):
            [d.train.load(i) for i in range(len(d.train))]
        raw[:100] = b"x" * 100  # the first member's header destroyed
        shard.write_bytes(bytes(raw))
        with pytest.raises(records.ShardError, match=str(shard)):
            data.load_dataset(str(root), 32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_label_out_of_range_is_named_before_training(fmt, folder, tmp_path):
    root = _pack(folder, tmp_path / "packed", fmt)
    meta_path = root / records.META
    meta = json.loads(meta_path.read_text())
    meta["splits"]["train"][2]["labels"][-1][0] = 7
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(records.ShardError, match=r"train-00002-of-00003.*label 7 is outside the 3 classes"):
        data.load_dataset(str(root), 32)
    meta["splits"]["train"][2]["labels"][-1][0] = 1  # in range, but not the shard's own label
    meta_path.write_text(json.dumps(meta))
    if fmt == "tar":
        with pytest.raises(records.ShardError, match=r"train-00002-of-00003.tar: example \d+'s .cls label"):
            data.load_dataset(str(root), 32)
    else:
        d = data.load_dataset(str(root), 32)
        with pytest.raises(records.ShardError, match=r"train-00002-of-00003.array_record: record \d+ .* label 2"):
            [d.train.read(i) for i in range(len(d.train))]


def test_empty_class_folder_is_an_error_before_training(tmp_path, capsys):
    src = _folder(tmp_path / "folder", n_train=2, n_val=1)
    for f in (src / "val" / "bee").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="val/bee is an empty class folder"):
        data.load_dataset(str(src), 32)
    argv = ["--model", "vit_tiny_patch16_224", *TINY_FLAGS, "--img-size", "32", "--data", str(src), "--steps", "2"]
    with pytest.raises(ValueError, match="val/bee is an empty class folder"):
        train_main([*argv, "--workdir", str(tmp_path / "run"), "--no-progress"])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(SystemExit) as e:
        data.main(["pack", "--src", str(src), "--out", str(tmp_path / "p"), "--format", "tar", "--shards", "1"])
    assert e.value.code == 2 and "val/bee is an empty class folder" in capsys.readouterr().err
    (src / "val" / "bee").rmdir()
    (src / "val" / "cow").mkdir()
    with pytest.raises(ValueError, match="val has class folders that .*train lacks: cow"):
        data.image_folder(src)


def test_packer_flags_and_no_overwrite(tmp_path, capsys):
    src = _folder(tmp_path / "folder", n_train=2, n_val=1)
    out = _pack(src, tmp_path / "packed", "arrayrecord", shards=5)  # more shards than val examples: 3 val shards
    meta = json.loads((out / records.META).read_text())
    assert [len(meta["splits"][s]) for s in ("train", "val")] == [5, 3]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    base = ["pack", "--src", str(src), "--out", str(out)]
    for extra, message in (
        (["--format", "tar", "--shards", "2"], "already holds a packed dataset"),
        (["--format", "zip", "--shards", "2"], "--format"),
        (["--format", "tar", "--shards", "0"], "--shards"),
    ):
        with pytest.raises(SystemExit) as e:
            data.main([*base, *extra])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in out.rglob("*") if "partial" in p.name or "tmp" in p.name]


def test_interrupted_pack_leaves_no_dataset_and_no_partial_shard(tmp_path):
    src = _folder(tmp_path / "folder", n_train=2, n_val=1)
    folder = data.image_folder(src)
    train = [(p, Path(p).name, int(c)) for p, c in zip(folder.train.images, folder.train.labels, strict=True)]
    train[4] = (str(src / "train" / "gone.jpg"), "gone.jpg", 2)  # the third of three shards fails half-way
    out = tmp_path / "packed"
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        records.pack(out, {"train": train}, CLASSES, fmt="tar", shards=3, progress=False)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["train-00000-of-00003.tar", "train-00001-of-00003.tar"]
    assert not records.is_packed(out) and not (out / records.META).exists()


def _bad_folder(root: Path) -> tuple[Path, Path, Path]:
    src = _folder(root, n_train=3, n_val=2)
    bad_train, bad_val = src / "train" / "bee" / "02.jpg", src / "val" / "ant" / "01.jpg"
    for f in (bad_train, bad_val):
        f.write_bytes(f.read_bytes()[:40])  # truncated inside the JPEG header: PIL cannot open it
    return src, bad_train, bad_val


@pytest.mark.parametrize("fmt", [None, *FORMATS])
def test_skip_bad_images_replaces_and_counts(fmt, tmp_path, capsys):
    src, bad_train, bad_val = _bad_folder(tmp_path / "folder")
    root = src if fmt is None else _pack(src, tmp_path / "packed", fmt, shards=2)
    d = data.load_dataset(str(root), 32)
    kw = dict(img_size=32, global_batch=9, steps=2, seed=0)  # 9 train examples: each read twice
    with pytest.raises((OSError, ValueError)):  # the default: the first unreadable image stops the pipeline
        list(data.train_batches(d, **kw))
    runs = []
    for _ in range(2):
        bad = data.BadImages()
        runs.append(list(data.train_batches(d, bad_images=bad, **kw)))
        assert bad.count == 2 and len(bad.errors) == 1
    shard = None if fmt is None else root / "train" / f"train-00001-of-00002{records._SUFFIX[fmt]}"
    name = str(bad_train) if fmt is None else f"{shard} record 1"  # 9 examples: shard 1 holds 4..8
    assert list(bad.errors) == [name] and name in capsys.readouterr().err
    for a, b in zip(*runs, strict=True):  # the replacement is a function of the position: the same every run
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    labels = np.concatenate([b["label"] for b in runs[0]])
    assert np.bincount(labels, minlength=3).tolist() == [6, 4, 8]  # bee/02 replaced by the next example, cat/00
    ev = list(data.eval_batches(d, img_size=32, global_batch=6, bad_images=bad))
    assert ev[0]["valid"].tolist() == [1, 0, 1, 1, 1, 1] and bad.count == 3


def test_skip_bad_images_flag_runs_to_the_end(tmp_path, capsys):
    src, bad_train, _ = _bad_folder(tmp_path / "folder")
    flags = [
        "--model", "vit_tiny_patch16_224", *TINY_FLAGS, "--num-classes", "3", "--img-size", "32",
        "--data", str(src), "--batch-size", "8", "--steps", "2", "--log-every", "1", "--no-progress", "--fast-compile",
    ]  # fmt: skip
    assert train_main([*flags, "--workdir", str(tmp_path / "skips"), "--skip-bad-images"]) == 0
    err = capsys.readouterr().err
    assert f"skipping unreadable image {bad_train}" in err and "unreadable images" in err.splitlines()[-1]
    assert sorted(losses(tmp_path / "skips")) == [1, 2]


def _foreign_tar(path: Path, examples: list[tuple[str, str, bytes, str, bytes]]) -> None:
    """A webdataset tar as other tools write it: ``(key, image ext, image bytes, label ext, label bytes)``."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, ext, image, label_ext, label in examples:
            for name, payload in ((f"{key}.{ext}", image), (f"{key}.{label_ext}", label)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_foreign_webdataset_tars(folder, tmp_path):
    """Tars without dataset.json: examples in member order keyed up to the first dot, labels from .cls or .txt,
    no class names, the class count the largest label plus one; bad labels name the shard and member."""
    src = data.image_folder(folder)
    files = [Path(p).read_bytes() for p in src.train.images]
    root = tmp_path / "wds"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    order = [5, 0, 17, 3, 9, 12]  # member order, not key order
    a = [(f"z{i:02d}", "JPEG" if i % 2 else "jpg", files[i], "cls", b"%d\n" % (3 * i)) for i in order[:3]]
    b = [(f"imgs/a{i:02d}", "jpeg", files[i], "txt", b" %d " % (3 * i)) for i in order[3:]]
    _foreign_tar(root / "train" / "part-0.tar", a)
    _foreign_tar(root / "train" / "part-1.tar", b)
    _foreign_tar(root / "val" / "v.tar", [("k", "jpg", files[1], "cls", b"2")])
    d = data.load_dataset(str(root), 32)
    assert d.classes == () and d.num_classes == 3 * 17 + 1 and len(d.train) == 6 and len(d.val) == 1
    assert d.train.labels.tolist() == [3 * i for i in order]
    for k, i in enumerate(order):
        assert d.train.read(k) == files[i]
    batch = next(iter(data.train_batches(d, img_size=32, global_batch=6, steps=1, seed=0)))
    assert sorted(batch["label"].tolist()) == sorted(3 * i for i in order)
    _foreign_tar(root / "val" / "v.tar", [("k", "jpg", files[1], "cls", b"two")])
    with pytest.raises(records.ShardError, match=rf"{root / 'val' / 'v.tar'}: member k.cls: label 'two'"):
        data.load_dataset(str(root), 32)
    _foreign_tar(root / "val" / "v.tar", [("k", "jpg", files[1], "json", b"{}")])
    with pytest.raises(records.ShardError, match=rf"{root / 'val' / 'v.tar'}: example k has no \.cls"):
        data.load_dataset(str(root), 32)
    (root / "val" / "v.tar").unlink()
    with pytest.raises(records.ShardError, match=rf"{root / 'val'}: no .tar shards"):
        data.load_dataset(str(root), 32)
