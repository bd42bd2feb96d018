"""Does another corpus add to a corpus's single-clip track? scikit-learn's logistic regression on pooled cached
features (mean + std of every layer, global: no speaker statistics), on the target corpus's folds: its training +
validation utterances (and their speed-perturbed copies), optionally with every utterance of another corpus in the
shared classes (and that corpus's copies) added to each fold's training set. Test folds are the target's only.

    python bench/extra_corpus.py --target ravdess --extra emodb [--C 0.1]

Reads the feature caches and the copies' stores that ``serkit cv configs/<corpus>/single-clip.yaml`` writes.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from serkit.augment.speed import ensure_speed_store
from serkit.config import load_config
from serkit.metrics import classification_metrics
from serkit.protocols import make_folds
from serkit.train.experiment import experiment_protocol, load_experiment_manifest
from serkit.train.features import ensure_features, store_dir, usable_ids


def pooled(corpus: str):
    """``(cfg, manifest, X, copies table, X of the copies)`` for ``configs/<corpus>/single-clip.yaml``."""
    cfg = load_config(f"configs/{corpus}/single-clip.yaml")
    m = load_experiment_manifest(cfg)
    store = ensure_features(m, cfg)
    m = usable_ids(store, m)
    x = np.stack([store.pooled(i).reshape(-1) for i in m["id"]]).astype(np.float32)
    speeds, table = ensure_speed_store(m, cfg["features"]["speed_perturb"], cfg["encoder"], store_dir(cfg, m),
                                       progress=False, log=print)
    xs = np.stack([speeds.pooled(i).reshape(-1) for i in table["id"]]).astype(np.float32)
    return cfg, m, x, table, xs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="ravdess")
    ap.add_argument("--extra", default="emodb")
    ap.add_argument("--C", type=float, default=0.1)
    args = ap.parse_args()
    cfg, m, x, table, xs = pooled(args.target)
    _, me, xe, table_e, xes = pooled(args.extra)
    classes = sorted(m["emotion"].unique())
    cid = {c: i for i, c in enumerate(classes)}
    y, ys = m["emotion"].map(cid).to_numpy(), table["emotion"].map(cid).to_numpy()
    ke, kes = me["emotion"].isin(cid).to_numpy(), table_e["emotion"].isin(cid).to_numpy()
    extra = [(xe[ke], me["emotion"][ke].map(cid).to_numpy()), (xes[kes], table_e["emotion"][kes].map(cid).to_numpy())]
    folds = make_folds(m, experiment_protocol(cfg, m), seed=int(cfg["train"]["seed"]))
    idx = {u: i for i, u in enumerate(m["id"])}
    parent = table["parent"].to_numpy()
    shared = sorted(set(me["emotion"]) & set(cid))
    print(f"{args.target} single clip, {len(folds)} folds; {args.extra} adds {int(ke.sum())} utterances of {shared}")
    for name, n_extra in (("target + copies", 0), (f"+ {args.extra}", 1), (f"+ {args.extra} + its copies", 2)):
        per = []
        for f in folds:
            seen = set(f.train + f.val)  # no model selection here: fit on train + validation
            tr = [idx[u] for u in f.train + f.val]
            k = np.array([p in seen for p in parent])
            parts = [(x[tr], y[tr]), (xs[k], ys[k]), *extra[:n_extra]]
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=1000, class_weight="balanced"))
            clf.fit(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            te = [idx[u] for u in f.test]
            per.append(classification_metrics(y[te], clf.predict(x[te]), classes)["ua"])
        print(f"  {name:28s} UA {np.mean(per):.4f} ± {np.std(per):.4f}   per fold: "
              + " ".join(f"{p:.3f}" for p in per), flush=True)


if __name__ == "__main__":
    main()
