"""HCLD pair construction: positive pairs (same speaker, different emotion) and negative pairs (different
speaker, same emotion), and a batch sampler that guarantees some of each in every batch.

HCLD (Li et al., ICASSP 2025, Sec. III-D1) builds its instance-level contrastive decoupling loss (ICLD) from
"samples from the same person expressing different emotions" (positives ``x+``) and "samples from different
people expressing the same emotion" (negatives ``x-``) inside a batch; with the paper's batch size of 32 a random
batch may contain none of one kind, so :class:`PairBatchSampler` repairs batches to contain at least ``min_pos``
and ``min_neg`` of them whenever the data allow it.

Labels below 0 (unknown speaker or emotion, serkit's ``-1``) never form pairs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64)


def _pair_masks(emotion: np.ndarray, speaker: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangular (i<j) bool matrices ``(n, n)`` of positive and negative pairs."""
    n = len(emotion)
    known = (emotion >= 0) & (speaker >= 0)
    valid = np.triu(np.ones((n, n), dtype=bool), k=1) & known[:, None] & known[None, :]
    same_spk = speaker[:, None] == speaker[None, :]
    same_emo = emotion[:, None] == emotion[None, :]
    return valid & same_spk & ~same_emo, valid & ~same_spk & same_emo


def make_pairs(emotion, speaker) -> tuple[torch.Tensor, torch.Tensor]:
    """All HCLD pairs within one batch.

    ``emotion``, ``speaker``: ``(n,)`` integer labels (tensor, array or list; ``< 0`` = unknown, never paired).
    Returns ``(pos_pairs (P, 2) long, neg_pairs (N, 2) long)`` of index pairs ``i < j`` in lexicographic order:
    positives share the speaker and differ in emotion, negatives differ in speaker and share the emotion
    (HCLD Sec. III-D1, sets ``x+`` and ``x-``). Tensors are on the device of ``emotion`` when it is a tensor.
    """
    device = emotion.device if isinstance(emotion, torch.Tensor) else None
    emo, spk = _as_numpy(emotion), _as_numpy(speaker)
    if len(emo) != len(spk):
        raise ValueError(f"emotion ({len(emo)}) and speaker ({len(spk)}) lengths differ")
    pos, neg = _pair_masks(emo, spk)
    out = []
    for m in (pos, neg):
        ij = np.stack(np.nonzero(m), axis=1).reshape(-1, 2)
        out.append(torch.as_tensor(ij, dtype=torch.long, device=device))
    return out[0], out[1]


def count_pairs(emotion, speaker) -> tuple[int, int]:
    """``(number of positive pairs, number of negative pairs)`` among ``n`` items (see :func:`make_pairs`)."""
    pos, neg = _pair_masks(_as_numpy(emotion), _as_numpy(speaker))
    return int(pos.sum()), int(neg.sum())


class PairBatchSampler(Sampler[list[int]]):
    """Batch sampler (pass as ``DataLoader(batch_sampler=...)``) yielding lists of dataset indices.

    Each epoch shuffles all items (``numpy`` generator seeded with ``(seed, epoch)``; call :meth:`set_epoch`
    before each epoch), cuts them into batches of ``batch_size`` and repairs, batch by batch, any batch with
    fewer than ``min_pos`` positive or ``min_neg`` negative pairs: an item that completes a missing pair with a
    batch item (or, when no batch item can anchor one, a whole pair) is swapped in from a later batch of the same
    epoch (the evicted item takes its place there, so coverage stays exactly once); only when no later item fits
    is an item from an earlier batch duplicated in (coverage then "about once"; this happens when pairs are rare,
    e.g. few speakers with several emotions). Items already forming the guaranteed pairs are never evicted.
    Each repair costs O(N) numpy work; batches that already hold the pairs cost O(batch^2).
    If the whole data set has no pair of a kind, that guarantee is dropped with a warning; a final short batch
    (``drop_last=False``) holds as many of the guaranteed pairs as fit.

    ``emotion``, ``speaker``: ``(N,)`` per-item labels (``< 0`` = unknown). ``drop_last``: drop the final short
    batch. ``len(sampler)`` is the number of batches per epoch.
    """

    def __init__(self, emotion: Sequence[int] | np.ndarray | torch.Tensor,
                 speaker: Sequence[int] | np.ndarray | torch.Tensor, batch_size: int = 32, min_pos: int = 1,
                 min_neg: int = 1, seed: int = 0, drop_last: bool = False):
        self.emotion, self.speaker = _as_numpy(emotion), _as_numpy(speaker)
        if len(self.emotion) != len(self.speaker):
            raise ValueError(f"emotion ({len(self.emotion)}) and speaker ({len(self.speaker)}) lengths differ")
        if len(self.emotion) == 0:
            raise ValueError("PairBatchSampler: no items")
        if min_pos < 0 or min_neg < 0:
            raise ValueError("min_pos and min_neg must be >= 0")
        if batch_size < max(2, 2 * (min_pos + min_neg)):
            raise ValueError(f"batch_size={batch_size} too small for min_pos={min_pos}, min_neg={min_neg}; "
                             f"needs >= {max(2, 2 * (min_pos + min_neg))}")
        self.batch_size, self.seed, self.drop_last = int(batch_size), int(seed), bool(drop_last)
        self.epoch = 0
        self.known = (self.emotion >= 0) & (self.speaker >= 0)
        self.has_partner = {"pos": self._partner_flags("pos"), "neg": self._partner_flags("neg")}
        has_pos = bool(self.has_partner["pos"].any())
        has_neg = bool(self.has_partner["neg"].any())
        if min_pos and not has_pos:
            warnings.warn("PairBatchSampler: the data hold no positive pair (same speaker, different emotion); "
                          "min_pos is not enforced", stacklevel=2)
        if min_neg and not has_neg:
            warnings.warn("PairBatchSampler: the data hold no negative pair (different speaker, same emotion); "
                          "min_neg is not enforced", stacklevel=2)
        self.min_pos = int(min_pos) if has_pos else 0
        self.min_neg = int(min_neg) if has_neg else 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle deterministically for ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.emotion)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _partner_flags(self, kind: str) -> np.ndarray:
        """Bool ``(N,)``: does each item have at least one ``kind`` partner anywhere in the data set?"""
        emo, spk, known = self.emotion, self.speaker, self.known
        group = spk if kind == "pos" else emo
        _, g_inv, g_cnt = np.unique(group[known], return_inverse=True, return_counts=True)
        _, c_inv, c_cnt = np.unique(np.stack([spk[known], emo[known]], 1), axis=0, return_inverse=True,
                                    return_counts=True)
        flags = np.zeros(len(emo), dtype=bool)
        flags[known] = (g_cnt[g_inv.ravel()] - c_cnt[c_inv.ravel()]) > 0
        return flags

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.emotion))
        n_batches = len(self)
        bs = self.batch_size
        for b in range(n_batches):
            start = b * bs
            stop = min(start + bs, len(order))
            self._repair(order, start, stop, rng)
            yield [int(i) for i in order[start:stop]]

    def _repair(self, order: np.ndarray, start: int, stop: int, rng: np.random.Generator) -> None:
        """Edit ``order[start:stop]`` in place (swaps with ``order[stop:]``) to hold the guaranteed pairs."""
        emo, spk = self.emotion, self.speaker
        batch = order[start:stop]  # a view: edits go to ``order``
        pos, neg = _pair_masks(emo[batch], spk[batch])
        protected: set[int] = set()  # batch positions that must stay
        for m, need in ((pos, self.min_pos), (neg, self.min_neg)):
            for i, j in list(zip(*np.nonzero(m), strict=True))[:need]:
                protected.update((int(i), int(j)))
        missing = {"pos": max(0, self.min_pos - int(pos.sum())), "neg": max(0, self.min_neg - int(neg.sum()))}
        for kind in ("pos", "neg"):
            for _ in range(missing[kind]):
                if not self._add_pair(order, start, stop, kind, protected, rng):
                    break

    def _fits(self, i: int, kind: str) -> np.ndarray:
        """Bool ``(N,)``: items forming a ``kind`` pair with item ``i``."""
        emo, spk, known = self.emotion, self.speaker, self.known
        if kind == "pos":
            return (spk == spk[i]) & (emo != emo[i]) & known
        return (spk != spk[i]) & (emo == emo[i]) & known

    def _add_pair(self, order: np.ndarray, start: int, stop: int, kind: str, protected: set[int],
                  rng: np.random.Generator) -> bool:
        """Complete one more ``kind`` pair in ``order[start:stop]``; False when impossible."""
        batch = order[start:stop]  # view
        free = [p for p in range(len(batch)) if p not in protected]
        if not free:
            return False
        later = order[stop:]
        in_batch = np.zeros(len(self.emotion), dtype=bool)
        in_batch[batch] = True
        can = self.has_partner[kind]
        # 1) anchor on a batch item; its partner (from a later batch, else duplicated) replaces a free item
        for a in rng.permutation(len(batch)):
            if not can[batch[a]]:
                continue
            choices = [p for p in free if p != a]
            if not choices:
                break
            evict = choices[int(rng.integers(len(choices)))]
            fits = self._fits(int(batch[a]), kind)
            cand = np.nonzero(fits[later])[0]
            if len(cand):
                c = stop + int(cand[rng.integers(len(cand))])
                order[start + evict], order[c] = order[c], order[start + evict]
            else:
                pool = np.nonzero(fits & ~in_batch)[0]
                if not len(pool):
                    continue
                order[start + evict] = pool[rng.integers(len(pool))]
            protected.update((int(a), int(evict)))
            return True
        # 2) no batch item can anchor one: bring in a whole pair over two free items
        if len(free) < 2:
            return False
        e1, e2 = (free[int(k)] for k in rng.choice(len(free), size=2, replace=False))
        for pool_pos, swap in ((later, True), (np.nonzero(~in_batch)[0], False)):
            anchors = [int(c) for c in rng.permutation(len(pool_pos)) if can[pool_pos[c]]][:64]
            for c1 in anchors:
                fits = self._fits(int(pool_pos[c1]), kind)[pool_pos]
                fits[c1] = False
                cand = np.nonzero(fits)[0]
                if not len(cand):
                    continue
                c2 = int(cand[rng.integers(len(cand))])
                if swap:
                    for e, c in ((e1, stop + c1), (e2, stop + c2)):
                        order[start + e], order[c] = order[c], order[start + e]
                else:
                    order[start + e1], order[start + e2] = pool_pos[c1], pool_pos[c2]
                protected.update((int(e1), int(e2)))
                return True
        return False
