"""The cross-corpus table of a ``cross_corpus`` run: train corpora x test corpus, with the in-corpus figure.

Each cross fold (train on some corpora, test on another; validation speakers from the training corpora) gives
one cell. The in-corpus figure of a corpus is a speaker-independent cross-validation on that corpus alone, with
the same classes, head and features, on the corpus's published protocol (its reader's ``default_protocol``,
``val_speakers`` as the cross protocol's); it runs in ``DIR/in_corpus/<corpus>/`` (skip it with protocol option
``in_corpus: false``). ``DIR/cross_corpus.md`` holds the table; results.json ``cross_corpus`` the numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path

from serkit.io import atomic_write_text
from serkit.report import format_cross_table


def in_corpus_config(cfg: dict, corpus: str, protocol: dict) -> dict:
    """``cfg`` restricted to one corpus, on that corpus's published protocol."""
    from serkit.corpora import get_reader

    sub = copy.deepcopy(cfg)
    roots = cfg["root"] if isinstance(cfg["root"], dict) else {}
    sub.update(name=f"{cfg['name']}-in-{corpus}", corpus=corpus, root=roots.get(corpus))
    own = dict(get_reader(corpus).default_protocol)
    for k in ("val_speakers", "val_fraction", "val_min_share"):
        if k in protocol:
            own[k] = protocol[k]
    sub["protocol"] = own
    return sub


def cross_table(cfg: dict, folds, results: list[dict], protocol: dict, out: Path, run_cv, log=print) -> dict:
    """Run the in-corpus cross-validations (resumable, each ``run_cv(cfg, out_dir, log=log)``: the runner's own
    cross-validation) and write the table; returns results.json's entry."""
    key = "ua" if cfg["task"] == "classification" else "ccc_mean"
    by_fold = {r["fold"]: r for r in results}
    corpora = sorted({f.test_corpus for f in folds} | {c for f in folds for c in f.train_corpora})
    in_corpus = {}
    if protocol.get("in_corpus", True):
        for c in corpora:
            log(f"in-corpus cross-validation of {c} (same classes, head and features)")
            s = run_cv(in_corpus_config(cfg, c, protocol), out / "in_corpus" / c, log=log)
            in_corpus[c] = {key: s["mean"][key], "std": s["std"][key], "folds": len(s["folds"]),
                            "protocol": s["protocol"]}
    rows = []
    for f in folds:
        if f.index not in by_fold:
            continue
        m = by_fold[f.index]["metrics"]
        rows.append({"train": f.train_corpora, "test": f.test_corpus, key: m[key], "wa": m.get("wa"),
                     "n_test": len(f.test), f"in_corpus_{key}": in_corpus.get(f.test_corpus, {}).get(key)})
    entry = {"metric": key, "rows": rows, "in_corpus": in_corpus}
    atomic_write_text(out / "cross_corpus.md", format_cross_table(entry, cfg))
    return entry
