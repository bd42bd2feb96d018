import numpy as np
import pytest
import torch

from serkit.losses.regression import ccc as torch_ccc
from serkit.metrics import ccc, classification_metrics, mean_std, regression_metrics


def test_wa_ua_f1_hand_case():
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    p = [0, 0, 0, 1, 1, 0, 2, 2]
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["wa"] == pytest.approx(6 / 8)
    assert m["ua"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    f1_a = 2 * (3 / 4) * (3 / 4) / (3 / 2)
    f1_b = 2 * (1 / 2) * (1 / 2) / 1
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + 1) / 3)
    assert m["recall_b"] == pytest.approx(0.5)


def test_ua_ignores_absent_classes():
    m = classification_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert m["ua"] == pytest.approx(0.75) and np.isnan(m["recall_c"])


def test_ccc_against_reference_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(scale=0.5, size=200) + 0.3
    r = np.corrcoef(x, y)[0, 1]
    ref = 2 * r * x.std() * y.std() / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert ccc(x, y) == pytest.approx(ref)
    assert ccc(y, y) == pytest.approx(1.0)
    t = torch_ccc(torch.tensor(np.stack([x, y], 1)), torch.tensor(np.stack([y, y], 1)))
    assert t[0].item() == pytest.approx(ref) and t[1].item() == pytest.approx(1.0)
    m = regression_metrics(np.stack([x, y], 1), np.stack([y, y], 1), ["arousal", "valence"])
    assert m["ccc_mean"] == pytest.approx((ref + 1) / 2)


def test_mean_std():
    mean, std = mean_std([{"ua": 0.5}, {"ua": 0.7}])
    assert mean["ua"] == pytest.approx(0.6) and std["ua"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
