"""A fold's training items followed by extra labelled items (e.g. speed-perturbed copies of them).

Items are the datasets' own dicts; ``enc`` (encoded labels per item, what samplers and class weights read),
``rows`` and ``ids`` cover both parts in item order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from serkit.data.features import item_lengths


class ExtendedTrainSet(Dataset):
    """``base`` (the fold's training items) then ``extra`` (items with their own labels, read the same way)."""

    def __init__(self, base, extra):
        self.base, self.extra = base, extra
        self.enc = {k: np.concatenate([np.asarray(v), np.asarray(extra.enc[k])]) for k, v in base.enc.items()}
        self.rows = pd.concat([base.rows, extra.rows], ignore_index=True)
        self.ids = list(base.ids) + list(extra.ids)
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
        if i < self.n_base:
            return self.base[i]
        item = dict(self.extra[i - self.n_base])
        if "index" in item:
            item["index"] = i  # the item's place in this set
        return item
