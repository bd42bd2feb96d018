"""Time k-means backends (faiss vs scikit-learn MiniBatchKMeans) at several k on a frame matrix.

Usage::

    python bench/kmeans.py [frames.npy] [--n 200000] [--dim 512] [--ks 64 512 4096]
                           [--backends faiss sklearn] [--niter 25] [--threads 0]
                           [--sklearn-init random|k-means++]

Without a path, times random Gaussian data of shape (n, dim). Prints a markdown table: fit and assignment
seconds, and inertia per point (mean squared L2 distance to the nearest centroid, over all n points).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from serkit.clustering import assign, fit_kmeans


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npy", nargs="?", help="(N, d) frame matrix; default: random data")
    ap.add_argument("--n", type=int, default=200_000, help="rows of random data")
    ap.add_argument("--dim", type=int, default=512, help="columns of random data")
    ap.add_argument("--ks", type=int, nargs="+", default=[64, 512, 4096])
    ap.add_argument("--backends", nargs="+", default=["faiss", "sklearn"], choices=["faiss", "sklearn"])
    ap.add_argument("--niter", type=int, default=25)
    ap.add_argument("--max-points-per-centroid", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sklearn-init", default="random", choices=["random", "k-means++"],
                    help="MiniBatchKMeans init (k-means++ is very slow at large k)")
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    args = ap.parse_args(argv)

    if args.npy:
        x = np.ascontiguousarray(np.load(args.npy, mmap_mode="r"), dtype=np.float32)
        source = args.npy
    else:
        x = np.random.default_rng(args.seed).standard_normal((args.n, args.dim), dtype=np.float32)
        source = "random normal"
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    print(
        f"data: {source}, shape {x.shape}, niter {args.niter}, "
        f"max_points_per_centroid {args.max_points_per_centroid}\n"
    )
    print("| backend | k | fit s | assign s | inertia / point |")
    print("|---|---:|---:|---:|---:|")
    for k in args.ks:
        for backend in args.backends:
            if len(x) < k:
                print(f"| {backend} | {k} | - | - | N < k |")
                continue
            t0 = time.perf_counter()
            cent = fit_kmeans(
                x,
                k,
                backend=backend,
                niter=args.niter,
                seed=args.seed,
                max_points_per_centroid=args.max_points_per_centroid,
            )
            t1 = time.perf_counter()
            _, d2 = assign(x, cent, return_distance=True)
            t2 = time.perf_counter()
            print(
                f"| {backend} | {k} | {t1 - t0:.2f} | {t2 - t1:.2f} | {float(d2.mean(dtype=np.float64)):.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
