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
