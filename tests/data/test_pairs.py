"""HCLD pair construction and the pair-guaranteeing batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serkit.data.pairs import PairBatchSampler, count_pairs, make_pairs


def test_make_pairs_exact():
    emotion = torch.tensor([0, 1, 0, 1, 2, 0])
    speaker = torch.tensor([5, 5, 6, 6, 5, -1])  # item 5: unknown speaker, never paired
    pos, neg = make_pairs(emotion, speaker)
    # same speaker, different emotion
    assert pos.tolist() == [[0, 1], [0, 4], [1, 4], [2, 3]]
    # different speaker, same emotion
    assert neg.tolist() == [[0, 2], [1, 3]]
    assert pos.dtype == torch.long and neg.dtype == torch.long
    assert count_pairs(emotion, speaker) == (4, 2)


def test_make_pairs_brute_force_and_empty():
    rng = np.random.default_rng(0)
    emo, spk = rng.integers(0, 3, 12), rng.integers(0, 3, 12)
    pos, neg = make_pairs(emo, spk)
    exp_pos = [[i, j] for i in range(12) for j in range(i + 1, 12) if spk[i] == spk[j] and emo[i] != emo[j]]
    exp_neg = [[i, j] for i in range(12) for j in range(i + 1, 12) if spk[i] != spk[j] and emo[i] == emo[j]]
    assert pos.tolist() == exp_pos and neg.tolist() == exp_neg
    p, n = make_pairs([0, 0], [1, 1])
    assert p.shape == (0, 2) and n.shape == (0, 2)


def _labels(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, n), rng.integers(0, 10, n)


def test_sampler_guarantees_and_coverage():
    # sparse-ish data: 4 emotions, 10 speakers, tiny batches (random batches of 6 often lack pairs)
    emo, spk = _labels()
    s = PairBatchSampler(emo, spk, batch_size=6, min_pos=2, min_neg=1, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 34
    for b in batches[:-1]:
        p, n = count_pairs(emo[b], spk[b])
        assert p >= 2 and n >= 1, b
        assert len(set(b)) == len(b)
    assert len(batches[-1]) == 2 and sum(count_pairs(emo[batches[-1]], spk[batches[-1]])) == 1  # as many as fit
    seen = np.concatenate(batches)
    assert len(np.unique(seen)) >= 195  # about once (only the tail may need duplicates)
    assert len(seen) == 200


def test_sampler_deterministic_and_epochs():
    emo, spk = _labels(60, 1)
    a = list(PairBatchSampler(emo, spk, batch_size=8, seed=7))
    b = list(PairBatchSampler(emo, spk, batch_size=8, seed=7))
    assert a == b
    s = PairBatchSampler(emo, spk, batch_size=8, seed=7)
    s.set_epoch(1)
    assert list(s) != a
    assert list(PairBatchSampler(emo, spk, batch_size=8, seed=8)) != a
    assert len(list(PairBatchSampler(emo, spk, batch_size=8, drop_last=True))) == 7


def test_sampler_impossible_and_errors():
    with pytest.warns(UserWarning, match="no positive pair"):
        s = PairBatchSampler([0, 0, 1, 1], [0, 1, 2, 3], batch_size=2, min_pos=1, min_neg=0)
    assert sorted(i for b in s for i in b) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="too small"):
        PairBatchSampler([0, 1], [0, 0], batch_size=3, min_pos=1, min_neg=1)
    with pytest.raises(ValueError, match="lengths differ"):
        PairBatchSampler([0, 1], [0], batch_size=4)


def test_sampler_with_dataloader():
    emo, spk = _labels(40, 2)
    ds = torch.utils.data.TensorDataset(torch.as_tensor(emo), torch.as_tensor(spk))
    dl = torch.utils.data.DataLoader(ds, batch_sampler=PairBatchSampler(emo, spk, batch_size=10, seed=0))
    for e, sp in dl:
        p, n = make_pairs(e, sp)
        assert len(p) >= 1 and len(n) >= 1


def test_sampler_rare_pairs_brings_whole_pairs():
    # most speakers have one utterance: most batches have no item that can anchor a positive pair
    rng = np.random.default_rng(4)
    emo = rng.integers(0, 4, 120)
    spk = np.where(rng.random(120) < 0.9, np.arange(120) + 10, rng.integers(0, 2, 120))
    batches = list(PairBatchSampler(emo, spk, batch_size=8, min_pos=2, min_neg=1, seed=0))
    for b in batches:
        p, n = count_pairs(emo[b], spk[b])
        assert p >= 2 and n >= 1 and len(set(b)) == len(b)
    assert sum(len(b) for b in batches) == 120
