"""Time k-means backends (faiss, PyTorch, scikit-learn MiniBatchKMeans) at several k on a frame matrix.

Usage::

    python bench/kmeans.py [frames.npy | --config CONFIG --layer L] [--n 200000] [--dim 512]
                           [--ks 64 512 4096] [--backends faiss torch sklearn] [--device auto] [--niter 25]
                           [--threads 0] [--sklearn-init random|k-means++] [--save-frames PATH]

``--config`` takes the corpus and encoder of an experiment config and clusters hidden state ``--layer`` of
every utterance (from serkit's feature cache; extracted first when missing). Without either, times random
Gaussian data of shape (n, dim). The torch backend runs on ``--device`` (auto: the GPU when there is one). Prints a
markdown table: fit and assignment seconds, and inertia per point (mean squared L2 distance to the nearest centroid,
over all n points).
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
    ap.add_argument("--config", help="experiment config: cluster its corpus's frames of --layer")
    ap.add_argument("--layer", type=int, default=-3, help="hidden state to cluster with --config (default -3)")
    ap.add_argument("--save-frames", help="also save the frame matrix as .npy")
    ap.add_argument("--backends", nargs="+", default=["faiss", "sklearn"], choices=["faiss", "torch", "sklearn"])
    ap.add_argument("--device", default="auto", help="torch backend device (auto, cpu, cuda)")
    ap.add_argument("--niter", type=int, default=25)
    ap.add_argument("--max-points-per-centroid", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sklearn-init", default="random", choices=["random", "k-means++"],
                    help="MiniBatchKMeans init (k-means++ is very slow at large k)")
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    args = ap.parse_args(argv)

    if args.config:
        x, source = config_frames(args.config, args.layer)
    elif args.npy:
        x = np.ascontiguousarray(np.load(args.npy, mmap_mode="r"), dtype=np.float32)
        source = args.npy
    else:
        x = np.random.default_rng(args.seed).standard_normal((args.n, args.dim), dtype=np.float32)
        source = "random normal"
    if args.save_frames:
        np.save(args.save_frames, x)
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
            kw = {"device": args.device} if backend == "torch" else {}
            if backend == "sklearn":
                kw["init"] = args.sklearn_init
            cent = fit_kmeans(
                x,
                k,
                backend=backend,
                niter=args.niter,
                seed=args.seed,
                max_points_per_centroid=args.max_points_per_centroid,
                **kw,
            )
            t1 = time.perf_counter()
            _, d2 = assign(x, cent, return_distance=True, device=args.device if backend == "torch" else None)
            t2 = time.perf_counter()
            print(
                f"| {backend} | {k} | {t1 - t0:.2f} | {t2 - t1:.2f} | {float(d2.mean(dtype=np.float64)):.4f} |",
                flush=True,
            )


def config_frames(config: str, layer: int) -> tuple[np.ndarray, str]:
    """Every utterance's frames of hidden state ``layer`` for the config's corpus and encoder: (N, d), label."""
    from serkit.config import load_config
    from serkit.train.experiment import load_experiment_manifest
    from serkit.train.features import ensure_features, usable_ids

    cfg = load_config(config)
    manifest = load_experiment_manifest(cfg)
    store = ensure_features(manifest, cfg)
    manifest = usable_ids(store, manifest)
    li = store.layers.index(layer % (max(store.layers) + 1))
    x = np.concatenate([np.asarray(store.load(i)[li], dtype=np.float32) for i in manifest["id"].astype(str)])
    return np.ascontiguousarray(x), f"{cfg['encoder']['id']} layer {layer}, {len(manifest)} utterances of {config}"


if __name__ == "__main__":
    main()
