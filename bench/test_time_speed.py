"""Does averaging over speed-perturbed copies of the test clip help the single-clip track? scikit-learn's logistic
regression on pooled cached features (mean + std of every layer, global), trained on each fold's training +
validation utterances and their speed-perturbed copies; each test clip is scored on its own and as the mean of the
class probabilities of the clip and its copies (test-time augmentation: only the clip itself is used).

    python bench/test_time_speed.py --corpus ravdess [--C 0.1]

Reads the feature cache and the copies' store that ``serkit cv configs/<corpus>/single-clip.yaml`` writes.
"""

from __future__ import annotations

import argparse

import numpy as np
from extra_corpus import pooled
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from serkit.metrics import classification_metrics
from serkit.protocols import make_folds
from serkit.train.experiment import experiment_protocol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default="ravdess")
    ap.add_argument("--C", type=float, default=0.1)
    args = ap.parse_args()
    cfg, m, x, table, xs = pooled(args.corpus)
    classes = sorted(m["emotion"].unique())
    cid = {c: i for i, c in enumerate(classes)}
    y, ys = m["emotion"].map(cid).to_numpy(), table["emotion"].map(cid).to_numpy()
    folds = make_folds(m, experiment_protocol(cfg, m), seed=int(cfg["train"]["seed"]))
    idx = {u: i for i, u in enumerate(m["id"])}
    parent = table["parent"].to_numpy()
    rows = {"clip": [], "clip + copies (mean prob)": [], "clip + copies (mean log-prob)": []}
    for f in folds:
        seen = set(f.train + f.val)
        tr = [idx[u] for u in f.train + f.val]
        k = np.array([p in seen for p in parent])
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=1000, class_weight="balanced"))
        clf.fit(np.concatenate([x[tr], xs[k]]), np.concatenate([y[tr], ys[k]]))
        te = [idx[u] for u in f.test]
        p = clf.predict_proba(x[te])
        copies = [np.nonzero(parent == u)[0] for u in f.test]
        pc = np.stack([clf.predict_proba(xs[c]) for c in copies])          # (test, copies, classes)
        mean_p = (p + pc.sum(1)) / (1 + pc.shape[1])
        mean_lp = (np.log(p + 1e-12) + np.log(pc + 1e-12).sum(1))
        for name, q in zip(rows, (p, mean_p, mean_lp)):
            rows[name].append(classification_metrics(y[te], q.argmax(1), classes)["ua"])
    print(f"{args.corpus} single clip, {len(folds)} folds, LR C={args.C}, trained with copies")
    for name, per in rows.items():
        print(f"  {name:32s} UA {np.mean(per):.4f} ± {np.std(per):.4f}   per fold: "
              + " ".join(f"{v:.3f}" for v in per), flush=True)


if __name__ == "__main__":
    main()
