"""A fold's training items followed by extra labelled items (e.g. speed-perturbed copies of them).

Items are the datasets' own dicts; ``enc`` / ``rows`` / ``ids`` are the base set's, so class weights and
per-utterance records come from the real utterances.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from serkit.data.features import item_lengths


class ExtendedTrainSet(Dataset):
    """``base`` (the fold's training items) then ``extra`` (items with their own labels, read the same way)."""

    def __init__(self, base, extra):
        self.base, self.extra = base, extra
        self.enc, self.rows, self.ids = base.enc, base.rows, list(base.ids)
        self.n_base = len(base)

    def __len__(self) -> int:
        return self.n_base + len(self.extra)

    def set_epoch(self, epoch: int) -> None:
        for d in (self.base, self.extra):
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def lengths(self) -> np.ndarray | None:
        a, b = item_lengths(self.base), item_lengths(self.extra)
        return None if a is None or b is None else np.concatenate([a, b])

    def __getitem__(self, i: int) -> dict:
        return self.base[i] if i < self.n_base else self.extra[i - self.n_base]
