"""Repeated augmentation (train.sampler) against timm's ``RepeatAugSampler``, and the training pipeline with the
augmentation flags: what each process reads, and that a resumed iterator gives the same batches."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from timm.data.distributed_sampler import RepeatAugSampler

from train import augment, data, sampler


@pytest.mark.parametrize("n", [10, 37, 300, 1000])
@pytest.mark.parametrize("repeats", [3, 2, 1.5])
@pytest.mark.parametrize("replicas", [1, 2, 4, 8])
def test_rank_indices_match_timm(n, repeats, replicas):
    """Fed the permutation timm's sampler draws (torch, seeded by the epoch), every rank gets timm's list."""
    for epoch in (0, 3):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).numpy()
        ours = sampler.rank_indices(perm, repeats, replicas)
        for rank in range(replicas):
            s = RepeatAugSampler(range(n), num_replicas=replicas, rank=rank, num_repeats=repeats)
            s.set_epoch(epoch)
            theirs = list(iter(s))
            assert len(theirs) == len(s) == sampler.num_selected(n, repeats, replicas)
            assert ours[rank].tolist() == theirs, (n, repeats, replicas, epoch, rank)


def test_stream_spans_epochs_with_fresh_permutations():
    st = sampler.RepeatAugStream(300, 3, 2, seed=5)
    k = st.per_rank
    assert k == 128  # 300 // 256 * 256 / 2
    first = [st.index(0, t) for t in range(k)]
    second = [st.index(0, t) for t in range(k, 2 * k)]
    assert first == st.epoch(0)[0].tolist() and second == st.epoch(1)[0].tolist() and first != second
    keys = {st.key(r, t) for r in range(2) for t in range(3 * k)}
    assert len(keys) == 2 * 3 * k  # every (epoch, rank, slot) has its own augmentation draws
    with pytest.raises(ValueError, match="--aug-repeats"):
        sampler.RepeatAugStream(300, 0.5, 2, seed=0)


def _folder(root, n_per_class=6, size=(48, 40)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_per_class), ("val", 2)):
        for cls in ("a", "b", "c"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
    return data.image_folder(root)


AUG = dict(aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1)


def test_repeated_batches_follow_the_ranks_and_resume(tmp_path):
    ds = _folder(tmp_path)  # 18 images: each rank takes ceil(18 / 2) = 9 per epoch
    aug = augment.TrainAugment(32, **AUG)
    kw = dict(img_size=32, global_batch=6, steps=7, seed=3, augment=aug, aug_repeats=3)
    shards = [list(data.train_batches(ds, process_index=p, process_count=2, **kw)) for p in range(2)]
    stream = sampler.RepeatAugStream(len(ds.train), 3, 2, seed=3)
    for p in range(2):
        labels = np.concatenate([b["label"] for b in shards[p]])
        want = [ds.train.labels[stream.index(p, t)] for t in range(7 * 3)]
        np.testing.assert_array_equal(labels, want)
    # the copies of an example sit on different processes, with different augmentations
    first = [stream.index(p, 0) for p in range(2)]
    assert first[0] == first[1]
    assert not np.array_equal(shards[0][0]["image"][0], shards[1][0]["image"][0])
    # an iterator restored from its state continues with the same pixels
    it = iter(data.train_batches(ds, process_index=1, process_count=2, **kw))
    for _ in range(4):
        next(it)
    again = iter(data.train_batches(ds, process_index=1, process_count=2, **kw))
    again.set_state(it.get_state())
    for step in range(4, 7):
        b = next(again)
        for key in ("image", "label"):
            np.testing.assert_array_equal(b[key], shards[1][step][key])


def test_augmented_stream_is_the_same_for_any_process_count_and_resumes(tmp_path):
    ds = _folder(tmp_path)
    aug = augment.TrainAugment(32, vflip=0.5, **AUG)
    kw = dict(img_size=32, global_batch=4, steps=6, seed=1, augment=aug)
    whole = list(data.train_batches(ds, **kw))
    halves = [list(data.train_batches(ds, process_index=p, process_count=2, **kw)) for p in range(2)]
    for step, ref in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([h[step]["image"] for h in halves]), ref["image"])
    it = iter(data.train_batches(ds, **kw))
    next(it), next(it)
    again = iter(data.train_batches(ds, **kw))
    again.set_state(it.get_state())
    np.testing.assert_array_equal(next(again)["image"], whole[2]["image"])
    # the draws depend on the seed, not only the order: one picture repeated gives other pixels under another seed
    same = data.Dataset(data.Split([ds.train.images[0]] * 8, np.zeros(8, np.int32)), ds.val, 3, False, (0.08, 1), 0.5)
    one, two = (next(iter(data.train_batches(same, **{**kw, "seed": s})))["image"] for s in (1, 2))
    assert not np.array_equal(one, two)


def test_training_package_imports_without_torch():
    code = (
        "import sys; import train.data, train.augment, train.sampler, train.config;"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "n,repeats,replicas,batch", [(1000, 3, 2, 64), (300, 3, 4, 8), (37, 2, 2, 4), (600, 1.5, 8, 48)]
)
def test_an_epoch_is_what_the_sampler_selects(n, repeats, replicas, batch, monkeypatch):
    """With --aug-repeats, timm's train.py counts an epoch as its drop-last loader over the RepeatAugSampler
    (``num_selected // per-rank batch`` updates), not ``len(train) // batch``; our schedule counts the same, and
    fed torch's permutations, the stream's batches of every rank over two epochs are timm's loader's batches."""
    from torch.utils.data import DataLoader

    from train import schedule
    from train.config import TrainConfig

    cfg = TrainConfig(
        model="vit_tiny_patch16_224", epochs=3, warmup_epochs=2, warmup_prefix=True, cooldown_epochs=1,
        aug_repeats=repeats, batch_size=batch,
    )  # fmt: skip
    per = batch // replicas
    monkeypatch.setattr(
        sampler.RepeatAugStream,
        "_epoch",
        lambda self, e: sampler.rank_indices(
            torch.randperm(self.n, generator=torch.Generator().manual_seed(e)).numpy(), self.num_repeats, replicas
        ),
    )
    stream = sampler.RepeatAugStream(n, repeats, replicas, seed=0, batch=per)
    for rank in range(replicas):
        s = RepeatAugSampler(range(n), num_replicas=replicas, rank=rank, num_repeats=repeats)
        loader = DataLoader(range(n), batch_size=per, sampler=s, drop_last=True)
        # timm's train.py: updates_per_epoch = ceil(len(loader) / grad_accum); the run is epochs + warmup (as a
        # prefix) + cooldown epochs of it
        assert schedule.updates_per_epoch(cfg, n, replicas) == len(loader)
        assert schedule.total_steps(cfg, n, replicas) == (3 + 2 + 1) * len(loader)
        want = []
        for epoch in (0, 1):
            s.set_epoch(epoch)
            want += [b.tolist() for b in loader]
        got = [[stream.index(rank, t) for t in range(k * per, (k + 1) * per)] for k in range(2 * len(loader))]
        assert got == want
    if n == 1000:  # 1000 // 256 * 256 / 2 = 384 per rank, 12 batches of 32: not 1000 // 64 = 15
        assert schedule.updates_per_epoch(cfg, n, replicas) == 12


def test_an_epoch_shorter_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="--aug-repeats.*less than one batch of 8"):
        sampler.RepeatAugStream(10, 3, 2, seed=0, batch=8)  # each of 2 ranks selects ceil(10 / 2) = 5
