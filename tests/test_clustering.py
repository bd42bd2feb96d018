"""Multi-scale k-means: shapes per scale, sensible clusters on blobs for both backends, errors."""

from __future__ import annotations

import numpy as np
import pytest

from serkit.clustering import assign, fit_kmeans, inertia_per_point, multiscale_pseudo_labels


def _blobs(n_per: int = 60, k: int = 4, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32) * 10
    x = np.concatenate([c + 0.1 * rng.standard_normal((n_per, d)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_blobs_recovered(backend):
    x, truth = _blobs()
    # random init may put two centroids in one blob: faiss restarts, sklearn uses k-means++ (cheap at k=4)
    init = "k-means++" if backend == "sklearn" else "random"
    cent = fit_kmeans(x, 4, backend=backend, niter=20, seed=0, n_init=10, init=init)
    assert cent.shape == (4, 8) and cent.dtype == np.float32
    labels = assign(x, cent)
    assert labels.dtype == np.int64
    # each true blob maps to one cluster, and the four clusters are distinct
    mapping = {t: np.unique(labels[truth == t]) for t in range(4)}
    assert all(len(v) == 1 for v in mapping.values())
    assert len({int(v[0]) for v in mapping.values()}) == 4
    assert inertia_per_point(x, cent) < 1.0


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_multiscale_shapes(backend):
    x, _ = _blobs(n_per=30)
    labels = multiscale_pseudo_labels(x, ks=(2, 8, 16), backend=backend, niter=5)
    assert sorted(labels) == [2, 8, 16]
    for k, lab in labels.items():
        assert lab.shape == (len(x),) and lab.min() >= 0 and lab.max() < k


def test_errors():
    x, _ = _blobs(n_per=2)
    with pytest.raises(ValueError, match="N >= k"):
        fit_kmeans(x, 64)
    with pytest.raises(ValueError, match="backend"):
        fit_kmeans(x, 2, backend="cuml")
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        fit_kmeans(x[0], 2)
