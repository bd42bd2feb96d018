"""Multi-scale k-means on frame features, for frame-level pseudo-labels (GMP-ATL, Pan et al., Interspeech 2024).

GMP-ATL Sec. 3.1: k-means on the third-to-last HuBERT layer's frame features with k = 64, 512 and 4096; the
cluster index of every frame at every scale is a pseudo-label for retraining (Sec. 3.2).

Backends (``"auto"``: torch on a GPU when there is one, else faiss):

* ``"faiss"`` (default): ``faiss.Kmeans`` on CPU, Euclidean (``spherical=False``), Lloyd iterations on a
  subsample of at most ``k * max_points_per_centroid`` points (faiss's own default: 256).
* ``"torch"``: batched Lloyd iterations in PyTorch (:func:`torch_kmeans`) on ``device`` (``"auto"``: the GPU when
  there is one): distances as one matrix product per chunk of points, centroid sums by ``index_add_``; the
  subsample and random initialisation as faiss. For k = 4096 on a GPU this is the fast choice (faiss's GPU build
  is not on PyPI).
* ``"sklearn"``: ``MiniBatchKMeans`` (the comparison backend; ``reassignment_ratio=0`` as in HuBERT's
  ``learn_kmeans.py``), ``max_iter=niter`` epochs, on the same kind of subsample. Initialisation defaults to
  random points like faiss (``init="random"``); HuBERT's ``init="k-means++"`` is available but its sequential
  seeding costs O(k^2) distance passes (measured: over 70 s for k = 256 on 20k x 512 frames on 2 CPU cores),
  which is impractical at k = 4096.

Features are float32 (N, d); labels are int64 (N,). Assignment is always exact nearest-centroid (L2).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import numpy as np

BACKENDS = ("auto", "faiss", "torch", "sklearn")


def resolve_backend(backend: str) -> str:
    """``"auto"``: torch on a GPU when there is one, else faiss (torch on the CPU if faiss is not installed)."""
    if backend != "auto":
        return backend
    import torch

    if torch.cuda.is_available():
        return "torch"
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "torch"
    return "faiss"


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
               n_init: int = 1, verbose: bool = False, device: str = "auto") -> np.ndarray:
    """Fit k-means and return the centroids.

    Args:
        features: (N, d) float32 frame features (N >= k).
        k: number of clusters.
        backend: ``"auto"`` (:func:`resolve_backend`), ``"faiss"``, ``"torch"`` or ``"sklearn"``.
        niter: Lloyd iterations (faiss) or epochs over the data (MiniBatchKMeans ``max_iter``).
        seed: random seed (initialisation and subsampling).
        max_points_per_centroid: train on at most ``k * max_points_per_centroid`` random points; None: all.
        n_init: restarts against bad random initialisations: faiss ``nredo`` (whole runs, the lowest final
            inertia kept); sklearn ``n_init`` (MiniBatchKMeans keeps the initialisation with the lowest inertia on
            ``init_size`` points, then trains that one only, so it helps less; use ``init="k-means++"``).
        init: sklearn backend only: ``"random"`` (default, like faiss) or ``"k-means++"`` (slow for large k).
        verbose: backend progress output.
        device: torch backend only: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...

    Returns:
        (k, d) float32 centroids.
    """
    x = _as_features(features)
    if backend not in BACKENDS:
        raise ValueError(f"k-means: unknown backend {backend!r}; known: {BACKENDS}")
    backend = resolve_backend(backend)
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

    if backend == "torch":
        sub = _subsample(x, k, max_points_per_centroid, seed)
        return torch_kmeans(sub, k, niter=niter, seed=seed, n_init=n_init, device=device, verbose=verbose)

    from sklearn.cluster import MiniBatchKMeans

    sub = _subsample(x, k, max_points_per_centroid, seed)
    batch_size = min(len(sub), max(10_000, 2 * k))
    km = MiniBatchKMeans(n_clusters=k, init=init, max_iter=niter, batch_size=batch_size,
                         init_size=min(len(sub), max(3 * batch_size, 3 * k)), n_init=n_init, random_state=seed,
                         reassignment_ratio=0.0, verbose=int(verbose))
    km.fit(sub)
    return np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)


def _torch_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def _full_fp32_matmul():
    """Plain float32 matrix products inside (no TF32), the previous setting restored after."""
    import torch

    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def _nearest(x, c, chunk: int):
    """Nearest centroid of every row of torch tensors ``x`` (N, d), ``c`` (k, d): labels (N,) int64, d2 (N,)."""
    import torch

    cn = (c * c).sum(1)
    labels = torch.empty(len(x), dtype=torch.int64, device=x.device)
    d2 = torch.empty(len(x), dtype=torch.float32, device=x.device)
    for i in range(0, len(x), chunk):
        xi = x[i:i + chunk]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; argmin does not need ||x||^2
        dist = torch.addmm(cn[None, :], xi, c.T, beta=1.0, alpha=-2.0)
        m, lab = dist.min(1)
        labels[i:i + chunk] = lab
        d2[i:i + chunk] = torch.clamp(m + (xi * xi).sum(1), min=0)
    return labels, d2


def torch_kmeans(features: np.ndarray, k: int, niter: int = 25, seed: int = 0, n_init: int = 1,
                 device: str = "auto", chunk: int = 32_768, verbose: bool = False) -> np.ndarray:
    """Lloyd's k-means in PyTorch on all rows of ``features`` (N, d) float32: (k, d) float32 centroids.

    Initialisation: k distinct random rows (as faiss). Each iteration assigns every row to its nearest centroid
    (chunks of ``chunk`` rows, one matrix product each) and moves every centroid to the mean of its rows; a
    centroid left without rows is re-seeded on a random row of the largest cluster, slightly perturbed (faiss's
    rule). ``n_init`` > 1 runs that many initialisations and keeps the one with the lowest final inertia.
    Float32 throughout (TF32 is not used: matmul precision is set to "highest" for the fit).
    """
    import torch

    x_np = _as_features(features)
    if len(x_np) < k:
        raise ValueError(f"k-means: {len(x_np)} points cannot make k={k} clusters; need N >= k")
    dev = _torch_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    with _full_fp32_matmul():
        x = torch.from_numpy(x_np).to(dev)
        n, d = x.shape
        best, best_inertia = None, float("inf")
        for run in range(max(1, int(n_init))):
            c = x[torch.randperm(n, generator=gen)[:k].to(dev)].clone()
            for it in range(int(niter)):
                labels, d2 = _nearest(x, c, chunk)
                sums = torch.zeros_like(c).index_add_(0, labels, x)
                counts = torch.zeros(k, device=dev, dtype=torch.float32).index_add_(
                    0, labels, torch.ones(n, device=dev, dtype=torch.float32))
                empty = counts == 0
                c = sums / counts.clamp(min=1)[:, None]
                if bool(empty.any()):
                    big = int(counts.argmax())
                    members = torch.nonzero(labels == big).flatten().cpu()
                    pick = members[torch.randint(len(members), (int(empty.sum()),), generator=gen)]
                    noise = 1e-3 * torch.randn(len(pick), d, generator=gen).to(dev)
                    c[empty] = x[pick.to(dev)] * (1 + noise)
                if verbose:
                    print(f"torch k-means run {run} iter {it}: inertia/point {float(d2.mean()):.4f}, "
                          f"empty {int(empty.sum())}")
            _, d2 = _nearest(x, c, chunk)
            inertia = float(d2.double().sum())
            if inertia < best_inertia:
                best, best_inertia = c, inertia
        return np.ascontiguousarray(best.float().cpu().numpy(), dtype=np.float32)


def assign(features: np.ndarray, centroids: np.ndarray, return_distance: bool = False,
           chunk: int = 65_536, device: str | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) of every row: (N, d), (k, d) -> labels (N,) int64 [, squared distances (N,)].

    ``device`` None: faiss's exact flat index on the CPU; a torch device name (``"auto"``, ``"cuda"``, ``"cpu"``):
    chunked matrix products in PyTorch there (the torch backend's own rule).
    """
    x = _as_features(features)
    c = _as_features(centroids)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"assign: features have d={x.shape[1]}, centroids d={c.shape[1]}")
    faiss = None
    if device is None:
        try:
            import faiss
        except ImportError:  # faiss is a dependency; without it (e.g. a GPU image) torch does the work
            device = "auto"
    if device is not None:
        import torch

        dev = _torch_device(device)
        with _full_fp32_matmul():
            lab, dd = _nearest(torch.from_numpy(x).to(dev), torch.from_numpy(c).to(dev), chunk)
        labels, d2 = lab.cpu().numpy(), dd.cpu().numpy()
    elif faiss is not None:
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c)
        dist, lab = index.search(x, 1)
        labels, d2 = lab[:, 0].astype(np.int64), np.maximum(dist[:, 0], 0)
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
