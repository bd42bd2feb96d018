"""t-SNE plots of a run's test utterances before (pooled encoder features) and after (the model's embedding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from serkit.errors import ConfigError
from serkit.io import atomic_write


def tsne_plot(run_dir: str | Path, out_png: str | Path, fold: int | None = 0, seed: int = 0) -> dict:
    """t-SNE of test utterances before (pooled encoder features: per-layer frame means, averaged over layers) and
    after (the model's embedding, ``foldK/test_embeddings.npy``, written by models that return one), coloured by
    true emotion.

    ``fold``: one fold's test set (one model; default 0), or ``None`` for every fold's test set together (each
    embedded by its own fold's model). Returns silhouette scores of both views (true emotion as cluster labels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    from serkit.config import load_config
    from serkit.features.store import FeatureStore
    from serkit.train.experiment import load_experiment_manifest
    from serkit.train.features import store_dir
    from serkit.train.logs import read_fold_predictions

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    folds = sorted(int(p.name[4:]) for p in run_dir.glob("fold*") if (p / "test_embeddings.npy").exists())
    if fold is not None:
        folds = [f for f in folds if f == fold]
    if not folds:
        raise ConfigError(f"{run_dir}: no fold with test_embeddings.npy (the model returns no embedding)")
    pred = pd.concat([read_fold_predictions(run_dir / f"fold{f}") for f in folds])
    after = np.concatenate([np.load(run_dir / f"fold{f}" / "test_embeddings.npy") for f in folds])
    store = FeatureStore(store_dir(cfg, load_experiment_manifest(cfg)))
    d = store.hidden_size
    before = np.stack([store.pooled(i)[:, :d].mean(0) for i in pred["id"]])
    labels = pred["true"].astype(str).to_numpy()
    classes = sorted(set(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    scores = {}
    for ax, (title, x) in zip(axes, (("before (pooled encoder features)", before), ("after (model embedding)", after))):
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30, len(x) - 1)).fit_transform(x)
        scores[title.split()[0]] = float(silhouette_score(x, labels)) if len(classes) > 1 else float("nan")
        for c in classes:
            k = labels == c
            ax.scatter(y[k, 0], y[k, 1], s=8, label=c)
        ax.set_title(f"{title}\nsilhouette {scores[title.split()[0]]:.3f}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(markerscale=2, fontsize=8, loc="best")
    which = f"fold {folds[0]}" if fold is not None else f"all {len(folds)} folds"
    fig.suptitle(f"{cfg['name']}: t-SNE of test utterances ({which}, n={len(labels)})")
    fig.tight_layout()
    atomic_write(out_png, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return scores
