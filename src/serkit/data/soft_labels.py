"""A training set of real utterances (one-hot soft labels) followed by pre-mixed variants (their soft labels).

Used by waveform-mixup recipes whose mixes are extracted once into a feature store (:mod:`serkit.augment.variants`).
Items are the feature datasets' dicts plus ``emotion_soft`` ``(classes,)`` float32 and ``index``.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class SoftLabelTrainSet(Dataset):
    """A fold's training items (one-hot ``emotion_soft``) followed by pre-mixed variants (their soft labels).

    ``base`` and ``variants`` are feature datasets; ``soft`` is ``(len(variants), classes)``; ``parents`` (the
    parent id of each variant) with ``per_epoch=m`` serves, per epoch, ``m`` variants of each parent (drawn from
    ``(seed, epoch, parent)``) instead of all of them, so an epoch has ``len(base) + m * parents`` items.
    ``enc`` / ``rows`` are the base set's (class weights etc. come from real utterances).
    """

    def __init__(self, base, variants, soft: np.ndarray, num_classes: int, parents=None, per_epoch: int | None = None,
                 seed: int = 0):
        self.base, self.variants = base, variants
        self.soft = np.asarray(soft, dtype=np.float32)
        if len(self.soft) != len(variants):
            raise ValueError(f"{len(variants)} variants but {len(self.soft)} soft labels")
        self.num_classes, self.seed, self.epoch = num_classes, int(seed), 0
        self.enc, self.rows, self.ids = base.enc, base.rows, list(base.ids)
        self.n_base = len(base)
        self.per_epoch = int(per_epoch) if per_epoch else None
        if self.per_epoch:
            if parents is None:
                raise ValueError("per_epoch needs the parents of the variants")
            groups: dict[str, list[int]] = {}
            for j, p in enumerate(parents):
                groups.setdefault(str(p), []).append(j)
            self.groups = [groups[p] for p in sorted(groups)]
            self.n_extra = self.per_epoch * len(self.groups)
        else:
            self.n_extra = len(variants)

    def __len__(self) -> int:
        return self.n_base + self.n_extra

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for d in (self.base, self.variants):
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def variant_index(self, k: int) -> int:
        if not self.per_epoch:
            return k
        g, r = divmod(k, self.per_epoch)
        members = self.groups[g]
        rng = np.random.default_rng((self.seed, self.epoch, g))
        order = rng.permutation(len(members))
        return members[order[r % len(members)]]

    def __getitem__(self, i: int) -> dict:
        if i < self.n_base:
            item = dict(self.base[i])
            soft = np.zeros(self.num_classes, dtype=np.float32)
            soft[int(item["emotion"])] = 1.0
        else:
            j = self.variant_index(i - self.n_base)
            item = dict(self.variants[j])
            soft = self.soft[j]
        item["index"] = i
        item["emotion_soft"] = soft
        return item
