"""Speaker-verification scoring: EER and cosine trials."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serkit.verification import _triu_from_linear, cosine_trials, eer, speaker_eer


def test_eer_separated_and_overlapping():
    rate, thr = eer([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    assert rate == 0.0 and 0.3 < thr <= 0.8
    # sorted: .9T .8T .7N .4T .3N .2N -> at threshold .7: FNR = 1/3 = FPR
    rate, thr = eer([0.9, 0.8, 0.4, 0.7, 0.3, 0.2], [1, 1, 1, 0, 0, 0])
    assert rate == pytest.approx(1 / 3) and thr == pytest.approx(0.7)
    # sorted: .9T .8N .6N .5T .1N; FNR stays 1/2 while FPR jumps 1/3 -> 2/3: crossing interpolated halfway
    rate, thr = eer([0.9, 0.5, 0.8, 0.6, 0.1], [1, 1, 0, 0, 0])
    assert rate == pytest.approx(0.5) and thr == pytest.approx(0.7)
    # reversed scores: everything wrong
    assert eer([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both"):
        eer([0.1, 0.2], [1, 1])


def test_triu_mapping():
    for n in (2, 3, 7, 50):
        i, j = _triu_from_linear(np.arange(n * (n - 1) // 2), n)
        ei, ej = np.triu_indices(n, k=1)
        assert (i == ei).all() and (j == ej).all()


def test_cosine_trials_and_speaker_eer():
    x = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0], [5.0, 5.0]])
    spk = torch.tensor([0, 0, 1, 1, -1])  # unknown speaker dropped
    scores, labels = cosine_trials(x, spk)
    assert len(scores) == 6
    assert labels.tolist() == [True, False, False, False, False, True]
    assert scores[0] == pytest.approx(2.0 / np.hypot(2.0, 0.1))
    assert speaker_eer(x, spk) == 0.0
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 8))
    spk = np.repeat(np.arange(8), 5)
    s_all, l_all = cosine_trials(emb, spk)
    s, lab = cosine_trials(emb, spk, max_trials=100, seed=1)
    assert len(s) == 100
    assert set(zip(s.round(12), lab, strict=True)) <= set(zip(s_all.round(12), l_all, strict=True))
    assert (cosine_trials(emb, spk, max_trials=100, seed=1)[0] == s).all()
    assert 0.2 < speaker_eer(emb, spk) < 0.8  # random embeddings: near chance
