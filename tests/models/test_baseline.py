"""The pooled-statistics head (``pooled_mlp``), including its closed-form ridge fit (``train.solver: ridge``)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from serkit.errors import ConfigError
from serkit.models.catalog import build_model
from serkit.models.registry import ModelSpec

SPEC = ModelSpec(task="regression", num_outputs=2, num_layers=3, hidden_size=5)


@pytest.mark.parametrize("n", [12, 60])  # fewer utterances than features (dual form) and more (primal form)
def test_ridge_fit_is_sklearns_standardised_ridge(n):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (n, 3, 10)).astype(np.float32)
    y = (x.reshape(n, -1)[:, :4] @ rng.normal(size=(4, 2)) + rng.normal(0, 0.1, (n, 2))).astype(np.float32)
    test = rng.normal(2.0, 3.0, (7, 3, 10)).astype(np.float32)
    model = build_model(SPEC, "pooled_mlp", layers="all", hidden=[], dropout=0.5, input_norm="batchnorm")
    model.fit_ridge(torch.from_numpy(x), torch.from_numpy(y), alpha=3.0)
    model.eval()
    got = model({"pooled": torch.from_numpy(test)})["prediction"].detach().numpy()
    ref = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(x.reshape(n, -1), y).predict(test.reshape(7, -1))
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_ridge_fit_refuses_a_head_it_cannot_solve():
    x, y = torch.randn(8, 3, 10), torch.randn(8, 2)
    with pytest.raises(ConfigError, match="solver: ridge"):
        build_model(SPEC, "pooled_mlp", hidden=[16]).fit_ridge(x, y, 1.0)
    cls = ModelSpec(task="classification", num_outputs=2, num_layers=3, hidden_size=5)
    with pytest.raises(ConfigError, match="solver: ridge"):
        build_model(cls, "pooled_mlp", hidden=[]).fit_ridge(x, y, 1.0)
