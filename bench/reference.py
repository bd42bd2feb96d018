"""Reference scores from pooled cached features: mean+std of every layer -> standardise -> logistic regression
(classification) or ridge regression (dimensional), on the config's folds (test folds are never used to fit).
With the config's ``features.normalize: speaker`` the pooled features are speaker-normalised exactly as serkit's
datasets do it (see serkit.data.normalize).

    python bench/reference.py configs/ravdess/baseline.yaml
    python bench/reference.py configs/ravdess/baseline.yaml --set features.normalize=none
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from serkit.config import load_config
from serkit.metrics import classification_metrics, mean_std, regression_metrics
from serkit.protocols import make_folds
from serkit.train.experiment import experiment_protocol, load_experiment_manifest
from serkit.train.features import ensure_features, usable_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=100.0)
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    m = load_experiment_manifest(cfg)
    store = ensure_features(m, cfg)
    m = usable_ids(store, m)
    if cfg["features"].get("normalize", "none") == "speaker":
        from serkit.data.normalize import SpeakerNormalizer

        norm = SpeakerNormalizer.from_store(store, m)
        X = np.stack([norm.apply(s, store.pooled(i), "pooled").reshape(-1) for i, s in zip(m["id"], m["speaker"])])
    else:
        X = np.stack([store.pooled(i).reshape(-1) for i in m["id"]])
    folds = make_folds(m, experiment_protocol(cfg, m), seed=int(cfg["train"]["seed"]))
    idx = {u: i for i, u in enumerate(m["id"])}
    per = []
    t0 = time.time()
    for f in folds:
        tr = [idx[u] for u in f.train + f.val]  # the reference has no model selection: fit on train + val
        te = [idx[u] for u in f.test]
        if cfg["task"] == "classification":
            classes = sorted(m["emotion"].unique())
            y = m["emotion"].map({c: i for i, c in enumerate(classes)}).to_numpy()
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=2000))
            clf.fit(X[tr], y[tr])
            per.append(classification_metrics(y[te], clf.predict(X[te]), classes))
        else:
            Y = m[cfg["targets"]].to_numpy(float)
            reg = make_pipeline(StandardScaler(), Ridge(alpha=args.alpha))
            reg.fit(X[tr], Y[tr])
            per.append(regression_metrics(reg.predict(X[te]), Y[te], cfg["targets"]))
    mean, std = mean_std(per)
    keys = (["wa", "ua", "macro_f1"] if cfg["task"] == "classification"
            else ["ccc_arousal", "ccc_valence", "ccc_dominance", "ccc_mean"])
    print(f"{cfg['name']}: reference on pooled mean+std of layers {store.layers} "
          f"(normalisation: {cfg['features'].get('normalize', 'none')}), {len(folds)} folds, "
          f"{time.time() - t0:.0f} s")
    for k in keys:
        print(f"  {k}: {mean[k]:.4f} ± {std[k]:.4f}   per fold: " + " ".join(f"{p[k]:.3f}" for p in per))


if __name__ == "__main__":
    main()
