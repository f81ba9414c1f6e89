"""Repeated augmentation (``--aug-repeats``): timm's ``RepeatAugSampler`` rule, on numpy.

Each epoch the dataset is permuted, every index repeated ``num_repeats`` times in a row, and the list dealt
round-robin to ``num_replicas`` ranks (wrapping around to even them out), so the copies of an example go to
different ranks, each with its own augmentation draw. Each rank keeps only its first ``num_selected`` indices:
``floor(n // 256 * 256 / num_replicas)`` for datasets of 256 or more, else ``ceil(n / num_replicas)`` (and
at most its share), so an epoch still shows about ``n`` examples. timm permutes with torch seeded by the epoch;
here the permutation comes from numpy seeded by the run's seed and the epoch, and everything after it is timm's rule
(``rank_indices`` takes the permutation as an argument so a test can feed it torch's).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def num_selected(n: int, num_repeats: float, num_replicas: int, selected_round: int = 256, selected_ratio=0) -> int:
    """How many indices each rank takes per epoch."""
    per_rank = math.ceil(n * num_repeats / num_replicas)
    ratio = selected_ratio or num_replicas
    if selected_round and n >= selected_round:
        k = int(math.floor(n // selected_round * selected_round / ratio))
    else:
        k = int(math.ceil(n / ratio))
    return min(k, per_rank)


def rank_indices(perm: np.ndarray, num_repeats: float, num_replicas: int, selected_round: int = 256) -> np.ndarray:
    """One epoch's indices of every rank, ``(num_replicas, num_selected)``, from the epoch's permutation."""
    n = len(perm)
    perm = np.asarray(perm, np.int64)
    if float(num_repeats).is_integer():
        repeated = np.repeat(perm, int(num_repeats))
    else:  # a fractional count: index i of the repeated list is perm[i // num_repeats]
        size = math.ceil(num_repeats * n)
        repeated = perm[[int(i // num_repeats) for i in range(size)]]
    per_rank = math.ceil(n * num_repeats / num_replicas)
    k = num_selected(n, num_repeats, num_replicas, selected_round)
    positions = np.arange(num_replicas)[:, None] + num_replicas * np.arange(per_rank)[None, :k]  # R, k
    return repeated[positions % len(repeated)]


def batches_per_epoch(n: int, num_repeats: float, num_replicas: int, batch: int) -> int:
    """The full batches of ``batch`` (per rank) in a rank's epoch: timm's drop-last loader over the sampler,
    ``len(loader) = num_selected // batch``. An epoch is what the sampler selects, not ``len(train)``."""
    return num_selected(n, num_repeats, num_replicas) // batch


class RepeatAugStream:
    """The training stream of every rank over epochs: rank ``r``'s ``t``-th example is
    ``rank_indices(perm(epoch))[r, t % k]`` with ``epoch = t // k``, where ``k`` is the rank's share of an
    epoch (``num_selected``) or, given the per-rank ``batch``, the part of it that fills whole batches (timm's
    loader drops the rest of each epoch). ``key(r, t)`` numbers the draws so each (epoch, rank, slot) gets its
    own augmentation."""

    def __init__(self, n: int, num_repeats: float, num_replicas: int, seed: int, batch: int | None = None):
        if num_repeats < 1:
            raise ValueError(f"--aug-repeats {num_repeats} must be >= 1 (0 turns repeated augmentation off)")
        self.n, self.num_repeats, self.num_replicas, self.seed = n, num_repeats, num_replicas, seed
        self.per_rank = num_selected(n, num_repeats, num_replicas)
        if batch is not None:
            self.per_rank = batches_per_epoch(n, num_repeats, num_replicas, batch) * batch
            if not self.per_rank:
                raise ValueError(
                    f"--aug-repeats: an epoch gives each of {num_replicas} processes "
                    f"{num_selected(n, num_repeats, num_replicas)} of {n} examples, less than one batch of {batch}"
                )
        self.epoch = functools.lru_cache(maxsize=4)(self._epoch)  # thread-safe; grain reads from threads

    def _epoch(self, e: int) -> np.ndarray:
        perm = np.random.default_rng((self.seed, 2, e)).permutation(self.n)
        return rank_indices(perm, self.num_repeats, self.num_replicas)

    def index(self, rank: int, t: int) -> int:
        e, j = divmod(t, self.per_rank)
        return int(self.epoch(e)[rank, j])

    def key(self, rank: int, t: int) -> int:
        e, j = divmod(t, self.per_rank)
        return (e * self.num_replicas + rank) * self.per_rank + j
