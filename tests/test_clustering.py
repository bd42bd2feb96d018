"""Multi-scale k-means: shapes per scale, sensible clusters on blobs for every backend, errors."""

from __future__ import annotations

import numpy as np
import pytest

from serkit.clustering import assign, fit_kmeans, inertia_per_point, multiscale_pseudo_labels, torch_kmeans


def _blobs(n_per: int = 60, k: int = 4, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32) * 10
    x = np.concatenate([c + 0.1 * rng.standard_normal((n_per, d)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


@pytest.mark.parametrize("backend", ["faiss", "torch", "sklearn"])
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


@pytest.mark.parametrize("backend", ["faiss", "torch", "sklearn"])
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


def test_torch_assign_matches_faiss():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    c = rng.standard_normal((37, 16)).astype(np.float32)
    lab_f, d_f = assign(x, c, return_distance=True)
    lab_t, d_t = assign(x, c, return_distance=True, device="cpu", chunk=700)  # several chunks
    assert (lab_f == lab_t).mean() > 0.999  # ties in float32 may differ
    np.testing.assert_allclose(d_t, d_f, rtol=1e-4, atol=1e-3)


def test_torch_centroids_are_cluster_means():
    # converged Lloyd centroids are the exact means of their rows (restarts keep the lowest inertia)
    x = np.array([[0, 0], [0, 2], [10, 0], [10, 2], [11, 1]], dtype=np.float32)
    c = torch_kmeans(x, 2, niter=5, seed=0, n_init=5)
    got = sorted(map(tuple, np.round(c, 4)))
    assert got == [(0.0, 1.0), (10.3333, 1.0)]


def test_torch_empty_cluster_reseeded():
    # 200 copies of two points and k = 4: random starts repeat a point, so clusters go empty; every centroid
    # must stay finite and both points must keep a centroid of their own
    x = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]], dtype=np.float32), 100, axis=0)
    c = torch_kmeans(x, 4, niter=5, seed=3)
    assert c.shape == (4, 2) and np.isfinite(c).all()
    assert inertia_per_point(x, c) < 1e-4


def test_torch_matches_faiss_quality_on_random_data():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4000, 8)).astype(np.float32)
    i_t = inertia_per_point(x, fit_kmeans(x, 32, backend="torch", niter=20, seed=0))
    i_f = inertia_per_point(x, fit_kmeans(x, 32, backend="faiss", niter=20, seed=0))
    assert abs(i_t - i_f) / i_f < 0.05


def test_auto_backend_resolves():
    import torch

    from serkit.clustering import resolve_backend

    assert resolve_backend("auto") == ("torch" if torch.cuda.is_available() else "faiss")
    assert resolve_backend("sklearn") == "sklearn"
    x, _ = _blobs(n_per=20)
    assert fit_kmeans(x, 4, backend="auto", niter=5).shape == (4, 8)
