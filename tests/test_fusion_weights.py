"""Validation-set fusion-weight search: finds a known optimum, depends on validation data only."""

from __future__ import annotations

import numpy as np
import pytest

from serkit.fusion_weights import combine, fit_and_apply, mean_ccc, search_weights, unweighted_accuracy


def _val(seed: int = 0, n: int = 200):
    """Targets y = 0.3 A + 0.7 B exactly; C is noise. The optimum of -MSE is w = (0.3, 0.7, 0)."""
    rng = np.random.default_rng(seed)
    a, b, c = (rng.standard_normal((n, 2)) for _ in range(3))
    return {"A": a, "B": b, "C": c}, 0.3 * a + 0.7 * b


def neg_mse(pred, target) -> float:
    return -float(np.mean((pred - target) ** 2))


def test_finds_known_optimum_off_the_coarse_grid():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((100, 1)), rng.standard_normal((100, 1))
    w, best = search_weights({"A": a, "B": b}, 0.23 * a + 0.61 * b, neg_mse)
    assert w == {"A": 0.23, "B": 0.61}
    assert best == pytest.approx(0.0, abs=1e-12)


def test_three_sets_sum_to_one_and_free():
    scores, y = _val()
    w, _ = search_weights(scores, y, neg_mse)
    assert w == {"A": 0.3, "B": 0.7, "C": 0.0}
    w1, _ = search_weights(scores, 0.5 * y, neg_mse, sum_to_one=True)  # optimum 0.15/0.35 not on simplex
    assert sum(w1.values()) == pytest.approx(1.0)


def test_coordinatewise_paths_agree():
    scores, y = _val()
    w, _ = search_weights(scores, y, neg_mse, max_evals=50)  # coarse and fine both coordinate-wise
    assert w == {"A": 0.3, "B": 0.7, "C": 0.0}
    w, _ = search_weights(scores, y, neg_mse, max_evals=50, sum_to_one=True)
    assert w == {"A": 0.3, "B": 0.7, "C": 0.0}


def test_all_zero_excluded_and_metrics():
    rng = np.random.default_rng(2)
    s = {"A": rng.standard_normal((50, 2))}
    w, _ = search_weights(s, -s["A"], neg_mse)  # best would be w=0 (or negative); zero is excluded
    assert w["A"] > 0
    y = rng.standard_normal((80, 3))
    assert mean_ccc(y, y) == pytest.approx(1.0)
    onehot = np.eye(3)[[0, 1, 2, 2]]
    assert unweighted_accuracy(onehot, np.array([0, 1, 2, 0])) == pytest.approx((0.5 + 1 + 1) / 3)
    w, best = search_weights({"A": y + rng.standard_normal(y.shape), "B": y}, y, mean_ccc)
    assert w["B"] > w["A"] and best > 0.9


def test_weights_do_not_depend_on_test_data():
    val, y = _val(seed=3)
    test, _ = _val(seed=4, n=30)
    noise = {k: np.random.default_rng(5).standard_normal((30, 2)) * 100 for k in test}
    w1, pred1 = fit_and_apply(val, y, test, mean_ccc)
    w2, pred2 = fit_and_apply(val, y, noise, mean_ccc)
    assert w1 == w2
    np.testing.assert_allclose(pred1, combine(test, w1))
    assert not np.allclose(pred1, pred2)


def test_combine_errors():
    with pytest.raises(KeyError):
        combine({"A": np.zeros((2, 1))}, {"B": 1.0})
    with pytest.raises(ValueError):
        combine({"A": np.zeros((2, 1)), "B": np.zeros((3, 1))}, {"A": 1.0, "B": 1.0})


def test_fast_ccc_path_matches_plain_metric():
    rng = np.random.default_rng(6)
    y = rng.standard_normal((120, 3))
    scores = {k: 0.5 * y * (i + 1) + rng.standard_normal(y.shape) + i for i, k in enumerate("ABC")}
    w_fast, v_fast = search_weights(scores, y, mean_ccc)  # moment-based CCC

    def plain(p, t):
        return mean_ccc(p, t)

    w_slow, v_slow = search_weights(scores, y, plain)
    assert w_fast == w_slow and v_fast == pytest.approx(v_slow, abs=1e-9)
    assert v_fast == pytest.approx(mean_ccc(combine(scores, w_fast), y), abs=1e-9)
