"""Multi-scale k-means on frame features, for frame-level pseudo-labels (GMP-ATL, Pan et al., Interspeech 2024).

GMP-ATL Sec. 3.1: k-means on the third-to-last HuBERT layer's frame features with k = 64, 512 and 4096; the
cluster index of every frame at every scale is a pseudo-label for retraining (Sec. 3.2).

Backends:

* ``"faiss"`` (default): ``faiss.Kmeans`` on CPU, Euclidean (``spherical=False``), Lloyd iterations on a
  subsample of at most ``k * max_points_per_centroid`` points (faiss's own default: 256).
* ``"sklearn"``: ``MiniBatchKMeans`` (the comparison backend; ``reassignment_ratio=0`` as in HuBERT's
  ``learn_kmeans.py``), ``max_iter=niter`` epochs, on the same kind of subsample. Initialisation defaults to
  random points like faiss (``init="random"``); HuBERT's ``init="k-means++"`` is available but its sequential
  seeding costs O(k^2) distance passes (measured: over 70 s for k = 256 on 20k x 512 frames on 2 CPU cores),
  which is impractical at k = 4096.

Features are float32 (N, d); labels are int64 (N,). Assignment is always exact nearest-centroid (L2).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BACKENDS = ("faiss", "sklearn")


def _as_features(features) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"k-means: features must be (N, d), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("k-means: features contain NaN or inf")
    return x


def _subsample(x: np.ndarray, k: int, max_points_per_centroid: int | None, seed: int) -> np.ndarray:
    if max_points_per_centroid is None or len(x) <= k * max_points_per_centroid:
        return x
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x), size=k * max_points_per_centroid, replace=False))
    return x[idx]


def fit_kmeans(features: np.ndarray, k: int, backend: str = "faiss", niter: int = 25, seed: int = 0,
               max_points_per_centroid: int | None = 256, init: str = "random",
               n_init: int = 1, verbose: bool = False) -> np.ndarray:
    """Fit k-means and return the centroids.

    Args:
        features: (N, d) float32 frame features (N >= k).
        k: number of clusters.
        backend: ``"faiss"`` or ``"sklearn"``.
        niter: Lloyd iterations (faiss) or epochs over the data (MiniBatchKMeans ``max_iter``).
        seed: random seed (initialisation and subsampling).
        max_points_per_centroid: train on at most ``k * max_points_per_centroid`` random points; None: all.
        n_init: restarts against bad random initialisations: faiss ``nredo`` (whole runs, the lowest final
            inertia kept); sklearn ``n_init`` (MiniBatchKMeans keeps the initialisation with the lowest inertia on
            ``init_size`` points, then trains that one only, so it helps less; use ``init="k-means++"``).
        init: sklearn backend only: ``"random"`` (default, like faiss) or ``"k-means++"`` (slow for large k).
        verbose: backend progress output.

    Returns:
        (k, d) float32 centroids.
    """
    x = _as_features(features)
    if backend not in BACKENDS:
        raise ValueError(f"k-means: unknown backend {backend!r}; known: {BACKENDS}")
    if k < 1:
        raise ValueError(f"k-means: k must be >= 1, got {k}")
    if len(x) < k:
        raise ValueError(f"k-means: {len(x)} points cannot make k={k} clusters; need N >= k "
                         f"(collect more frames or lower k)")
    if backend == "faiss":
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=False, gpu=False, verbose=verbose,
                          nredo=n_init,
                          max_points_per_centroid=max_points_per_centroid or len(x))
        km.train(x)
        return np.ascontiguousarray(km.centroids, dtype=np.float32)

    from sklearn.cluster import MiniBatchKMeans

    sub = _subsample(x, k, max_points_per_centroid, seed)
    batch_size = min(len(sub), max(10_000, 2 * k))
    km = MiniBatchKMeans(n_clusters=k, init=init, max_iter=niter, batch_size=batch_size,
                         init_size=min(len(sub), max(3 * batch_size, 3 * k)), n_init=n_init, random_state=seed,
                         reassignment_ratio=0.0, verbose=int(verbose))
    km.fit(sub)
    return np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)


def assign(features: np.ndarray, centroids: np.ndarray, return_distance: bool = False,
           chunk: int = 65_536) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) of every row: (N, d), (k, d) -> labels (N,) int64 [, squared distances (N,)]."""
    x = _as_features(features)
    c = _as_features(centroids)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"assign: features have d={x.shape[1]}, centroids d={c.shape[1]}")
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency; numpy fallback
        faiss = None
    if faiss is not None:
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c)
        dist, lab = index.search(x, 1)
        labels, d2 = lab[:, 0].astype(np.int64), np.maximum(dist[:, 0], 0)
    else:  # pragma: no cover
        labels = np.empty(len(x), dtype=np.int64)
        d2 = np.empty(len(x), dtype=np.float32)
        cn = (c.astype(np.float64) ** 2).sum(1)
        for i in range(0, len(x), chunk):
            xi = x[i:i + chunk].astype(np.float64)
            dd = (xi ** 2).sum(1)[:, None] - 2 * xi @ c.T.astype(np.float64) + cn[None, :]
            labels[i:i + chunk] = dd.argmin(1)
            d2[i:i + chunk] = np.maximum(dd.min(1), 0)
    return (labels, d2) if return_distance else labels


def inertia_per_point(features: np.ndarray, centroids: np.ndarray) -> float:
    """Mean squared L2 distance of each point to its nearest centroid."""
    _, d2 = assign(features, centroids, return_distance=True)
    return float(np.mean(d2, dtype=np.float64))


def fit_multiscale(features: np.ndarray, ks: Iterable[int] = (64, 512, 4096), backend: str = "faiss",
                   **kw) -> dict[int, np.ndarray]:
    """One k-means per scale: ``{k: centroids (k, d)}``; ``kw`` go to :func:`fit_kmeans`."""
    return {int(k): fit_kmeans(features, int(k), backend=backend, **kw) for k in ks}


def multiscale_pseudo_labels(features: np.ndarray, ks: Iterable[int] = (64, 512, 4096), backend: str = "faiss",
                             centroids: dict[int, np.ndarray] | None = None, **kw) -> dict[int, np.ndarray]:
    """Pseudo-labels at every scale: ``{k: labels (N,) int64 in [0, k)}``.

    Fits k-means on ``features`` (``kw`` go to :func:`fit_kmeans`) unless ``centroids`` ``{k: (k, d)}`` from
    :func:`fit_multiscale` are given (e.g. fitted on training frames, applied to every utterance).
    """
    ks = [int(k) for k in ks]
    if centroids is None:
        centroids = fit_multiscale(features, ks, backend=backend, **kw)
    missing = [k for k in ks if k not in centroids]
    if missing:
        raise KeyError(f"multiscale_pseudo_labels: no centroids for k={missing}")
    return {k: assign(features, centroids[k]) for k in ks}
