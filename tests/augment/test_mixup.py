"""EAM (MLL paper Eqs. 1-4) and LAM (Kang et al. 2023) waveform mixup."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from serkit.augment import (
    EnergyAdaptiveMixup,
    LabelAdaptiveMixup,
    WaveformMixup,
    energy_adaptive_mix,
    label_adaptive_mix,
)

X_I = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)  # l_i = 8 -> l_mix <= 3
X_J = np.array([2, -2, 1, 0, 3], dtype=np.float32)  # l_j = 5


def test_eam_hand_computed_case():
    mixed, lam, info = energy_adaptive_mix(X_I, X_J, l_mix=3, s_i=2, s_j=1, snr_db=10.0)
    # segments by hand
    seg_i = [3.0, 4.0, 5.0]
    seg_j = [-2.0, 1.0, 0.0]
    p_i = sum(v * v for v in seg_i) / 3  # 50/3
    p_j = sum(v * v for v in seg_j) / 3  # 5/3
    scale = math.sqrt(p_i / (10 ** (10.0 / 10) * p_j))  # sqrt(50/3 / (10 * 5/3)) = 1
    assert scale == pytest.approx(1.0)
    assert info["scale"] == pytest.approx(scale)
    seg_j2 = [scale * v for v in seg_j]
    p_j2 = sum(v * v for v in seg_j2) / 3
    # SNR scaling: P'_i / P''_j = 10^(SNR/10)
    assert p_i / info["p_j_scaled"] == pytest.approx(10.0)
    assert info["p_i"] == pytest.approx(p_i) and info["p_j"] == pytest.approx(p_j)
    # replaced segment and untouched rest
    expected = [1, 2, 3 - 2, 4 + 1, 5 + 0, 6, 7, 8]
    np.testing.assert_allclose(mixed, expected, rtol=1e-6)
    assert mixed.dtype == np.float32 and mixed.shape == X_I.shape
    np.testing.assert_array_equal(X_I, np.arange(1, 9))  # input not modified
    # lam formula (Eq. 4)
    lam_expected = p_j2 / (p_i + p_j2) * 3 / 8  # (1/11) * 3/8
    assert lam == pytest.approx(lam_expected)
    assert lam == pytest.approx(3 / 88)
    y = (1 - lam) * np.eye(4)[0] + lam * np.eye(4)[2]
    assert y.sum() == pytest.approx(1.0)


def test_eam_snr_ratio_non_trivial_scale():
    rng = np.random.default_rng(0)
    x_i = rng.standard_normal(100).astype(np.float32)
    x_j = 3 * rng.standard_normal(80).astype(np.float32)
    mixed, lam, info = energy_adaptive_mix(x_i, x_j, l_mix=40, s_i=10, s_j=30, snr_db=-3.0)
    seg_i = x_i[10:50].astype(np.float64)
    seg_j = x_j[30:70].astype(np.float64)
    p_i, p_j = np.mean(seg_i ** 2), np.mean(seg_j ** 2)
    scale = np.sqrt(p_i / (10 ** (-0.3) * p_j))
    p_j2 = np.mean((scale * seg_j) ** 2)
    assert p_i / p_j2 == pytest.approx(10 ** (-0.3))
    assert info["scale"] == pytest.approx(scale) and info["p_j_scaled"] == pytest.approx(p_j2)
    np.testing.assert_allclose(mixed[10:50], seg_i + scale * seg_j, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mixed[:10], x_i[:10])
    np.testing.assert_array_equal(mixed[50:], x_i[50:])
    assert lam == pytest.approx(p_j2 / (p_i + p_j2) * 40 / 100)


def test_eam_random_draws_respect_constraints():
    rng = np.random.default_rng(1)
    for _ in range(200):
        l_i, l_j = int(rng.integers(3, 60)), int(rng.integers(1, 60))
        x_i = rng.standard_normal(l_i).astype(np.float32) + 0.1
        x_j = rng.standard_normal(l_j).astype(np.float32) + 0.1
        mixed, lam, info = energy_adaptive_mix(x_i, x_j, rng)
        assert info["mixed"]
        assert 1 <= info["l_mix"] < l_i / 2 and info["l_mix"] <= l_j
        assert 0 <= info["s_i"] <= l_i - info["l_mix"] and 0 <= info["s_j"] <= l_j - info["l_mix"]
        assert -5.0 <= info["snr_db"] <= 10.0
        assert 0 < lam < 0.5 and len(mixed) == l_i


def test_eam_silent_and_too_short_do_not_mix():
    mixed, lam, info = energy_adaptive_mix(X_I, np.zeros(5, np.float32), l_mix=3, s_i=0, s_j=0, snr_db=0.0)
    assert lam == 0.0 and not info["mixed"]
    np.testing.assert_array_equal(mixed, X_I)
    mixed, lam, info = energy_adaptive_mix(np.zeros(8, np.float32), X_J, l_mix=3, s_i=0, s_j=0, snr_db=0.0)
    assert lam == 0.0 and not info["mixed"] and np.all(np.isfinite(mixed))
    mixed, lam, _ = energy_adaptive_mix(X_I[:2], X_J, np.random.default_rng(0))
    assert lam == 0.0 and len(mixed) == 2
    with pytest.raises(ValueError):
        energy_adaptive_mix(X_I, X_J, l_mix=4, s_i=0, s_j=0, snr_db=0.0)  # not < l_i / 2


def test_eam_torch_in_torch_out():
    mixed, lam, _ = energy_adaptive_mix(torch.from_numpy(X_I), torch.from_numpy(X_J), l_mix=3, s_i=2, s_j=1,
                                        snr_db=10.0)
    assert isinstance(mixed, torch.Tensor) and mixed.dtype == torch.float32
    assert mixed.tolist() == pytest.approx([1, 2, 1, 5, 5, 6, 7, 8])
    assert lam == pytest.approx(3 / 88)


def test_lam_hand_computed_weights_and_placement():
    x_i = np.array([1, 1, 1, 1], np.float32)
    x_j = np.array([2, 3], np.float32)
    mixed, lam, info = label_adaptive_mix(x_i, x_j, offset=1)
    np.testing.assert_array_equal(mixed, [1, 3, 4, 1])
    assert info["w_i"] == pytest.approx(4 / 6) and info["w_j"] == pytest.approx(2 / 6)
    assert lam == pytest.approx(2 / 6) and info["w_i"] + info["w_j"] == pytest.approx(1.0)
    # shorter dominant sample: output takes the longer length, default placement at the start
    mixed, lam, info = label_adaptive_mix(x_j, x_i)
    np.testing.assert_array_equal(mixed, [3, 4, 1, 1])
    assert lam == pytest.approx(4 / 6) and info["shorter"] == "i"


def test_lam_batch_soft_labels_and_same_class_one_hot():
    waves = [np.ones(4, np.float32), np.ones(2, np.float32)]
    mix = LabelAdaptiveMixup(p=1.0)
    assert isinstance(mix, WaveformMixup)
    out, soft = mix(waves, np.array([1, 3]), 4, np.random.default_rng(0))
    np.testing.assert_allclose(soft, [[0, 4 / 6, 0, 2 / 6], [0, 4 / 6, 0, 2 / 6]], rtol=1e-6)
    assert [len(w) for w in out] == [4, 4]
    _, soft = mix(waves, np.array([2, 2]), 4, np.random.default_rng(0))
    np.testing.assert_array_equal(soft, np.eye(4, dtype=np.float32)[[2, 2]])


@pytest.mark.parametrize("cls", [EnergyAdaptiveMixup, LabelAdaptiveMixup])
def test_batch_interface(cls):
    rng = np.random.default_rng(3)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (400, 300, 500, 350, 420, 380)]
    labels = np.array([0, 0, 1, 1, 2, 2])
    mix = cls(p=1.0, different_class=True)
    res = mix.mix_batch(waves, labels, 3, rng)
    assert res.soft_labels.shape == (6, 3) and res.soft_labels.dtype == np.float32
    np.testing.assert_allclose(res.soft_labels.sum(1), 1.0, rtol=1e-6)
    assert np.all(res.partners >= 0) and np.all(labels[res.partners] != labels)
    for i in range(6):
        j = res.partners[i]
        np.testing.assert_allclose(res.soft_labels[i, labels[i]], 1 - res.lams[i], rtol=1e-5)
        np.testing.assert_allclose(res.soft_labels[i, labels[j]], res.lams[i], rtol=1e-5)
    # one-hot labels in, p = 0: identity
    same, soft = cls(p=0.0)(waves, np.eye(3)[labels], 3, rng)
    assert all(a is b for a, b in zip(same, waves, strict=True))
    np.testing.assert_array_equal(soft, np.eye(3)[labels])
    # a batch of one is never mixed
    _, soft = cls(p=1.0)(waves[:1], labels[:1], 3, rng)
    np.testing.assert_array_equal(soft, [[1, 0, 0]])
