"""Single-clip feature-stage operations tried on pooled cached features, each choice made on validation UA only.

Logistic regression on the training part of each fold (standardised features; C in {0.01, 0.1, 1}), variants:
``all`` (mean+std of every layer), ``mean`` (means only), ``uttnorm`` (each layer's mean and std parts z-scored
within the utterance), ``top4`` (the top four hidden states), and with ``--nap`` the nuisance-attribute projection
of the within-emotion, between-speaker subspace (the training speakers' per-emotion mean offsets; rank 0, 4, 16 or
64 chosen on validation). Global features (no speaker statistics): the single-clip track.

    python bench/single_clip_ops.py configs/emodb/baseline.yaml all,mean,uttnorm,top4 all
"""
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score
from sklearn.preprocessing import StandardScaler

from serkit.config import load_config
from serkit.protocols import make_folds
from serkit.train.experiment import experiment_protocol, load_experiment_manifest
from serkit.train.features import ensure_features, usable_ids

cfg = load_config(sys.argv[1], ["features.normalize=none"])
m = load_experiment_manifest(cfg)
store = ensure_features(m, cfg)
m = usable_ids(store, m)
P = np.stack([store.pooled(i) for i in m["id"]]).astype(np.float32)  # (n, L, 2d)
n, L, D2 = P.shape
classes = sorted(m["emotion"].unique())
y = m["emotion"].map({c: i for i, c in enumerate(classes)}).to_numpy()
spk = m["speaker"].astype(str).to_numpy()
folds = make_folds(m, experiment_protocol(cfg, m), seed=0)
idx = {u: i for i, u in enumerate(m["id"])}

def ua(a, b):
    return recall_score(a, b, average="macro")

def nap_basis(Z, yy, ss, r):
    # within-emotion between-speaker offsets
    offs = []
    for c in np.unique(yy):
        mc = Z[yy == c].mean(0)
        for s in np.unique(ss[yy == c]):
            sel = (yy == c) & (ss == s)
            offs.append(Z[sel].mean(0) - mc)
    O = np.stack(offs)
    _, _, Vt = np.linalg.svd(O, full_matrices=False)
    return Vt[:r].T

def feats(X, kind):
    if kind == "all":
        return X.reshape(len(X), -1)
    if kind == "mean":
        return X[:, :, :D2 // 2].reshape(len(X), -1)
    if kind == "uttnorm":  # per-utterance layer norm on each layer's mean and std parts
        d = D2 // 2
        a, b = X[:, :, :d], X[:, :, d:]
        a = (a - a.mean(-1, keepdims=True)) / (a.std(-1, keepdims=True) + 1e-5)
        b = (b - b.mean(-1, keepdims=True)) / (b.std(-1, keepdims=True) + 1e-5)
        return np.concatenate([a, b], -1).reshape(len(X), -1)
    if kind.startswith("top"):
        k = int(kind[3:])
        return X[:, -k:].reshape(len(X), -1)
    raise ValueError(kind)

def run(kind, Cs=(0.01, 0.1, 1.0), ranks=(0,)):
    res = []
    for f in folds:
        tr = np.array([idx[u] for u in f.train]); va = np.array([idx[u] for u in f.val])
        te = np.array([idx[u] for u in f.test])
        X = feats(P, kind)
        sc = StandardScaler().fit(X[tr]); Z = sc.transform(X).astype(np.float32)
        best = None
        for r in ranks:
            Zr = Z
            if r:
                B = nap_basis(Z[tr], y[tr], spk[tr], r); Zr = Z - (Z @ B) @ B.T
            for C in Cs:
                clf = LogisticRegression(C=C, max_iter=1000).fit(Zr[tr], y[tr])
                v = ua(y[va], clf.predict(Zr[va]))
                if best is None or v > best[0]:
                    best = (v, r, C, ua(y[te], clf.predict(Zr[te])))
        res.append(best)
    r = np.array([b[3] for b in res]); v = np.array([b[0] for b in res])
    print(f"{kind:8s} ranks={ranks} Cs={Cs}: test UA {r.mean():.4f} ± {r.std():.4f} val {v.mean():.4f} "
          f"chosen {[(b[1], b[2]) for b in res]}", flush=True)

t = time.time()
for kind in sys.argv[2].split(","):
    run(kind)
if len(sys.argv) > 3:
    run(sys.argv[3], ranks=(0, 4, 16, 64))
print("time", time.time() - t)
