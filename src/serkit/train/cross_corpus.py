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


def cross_table(cfg: dict, folds, results: list[dict], protocol: dict, out: Path, log=print) -> dict:
    """Run the in-corpus cross-validations (resumable) and write the table; returns results.json's entry."""
    from serkit.train.cv import run_cv

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


def format_cross_table(entry: dict, cfg: dict) -> str:
    """Markdown: one row per training set, one column per test corpus; in-corpus figures on the diagonal."""
    key = entry["metric"]
    tests = sorted({r["test"] for r in entry["rows"]} | set(entry["in_corpus"]))
    trains = sorted({"+".join(r["train"]) for r in entry["rows"]} | set(entry["in_corpus"]))
    cell = {("+".join(r["train"]), r["test"]): r[key] for r in entry["rows"]}
    title = (f"Cross-corpus {key.upper()} (rows: training corpora, columns: test corpus; diagonal: in-corpus "
             f"speaker-independent cross-validation). Classes: {cfg['class_set']}; feature normalisation: "
             f"{cfg['features']['normalize']}.")
    lines = [title, "",
             "| train \\ test | " + " | ".join(tests) + " |", "|---|" + "---|" * len(tests)]
    for tr in trains:
        vals = []
        for te in tests:
            if tr == te and te in entry["in_corpus"]:
                ic = entry["in_corpus"][te]
                vals.append(f"({ic[key]:.3f} ± {ic['std']:.3f}, in-corpus, {ic['folds']} folds)")
            elif (tr, te) in cell:
                vals.append(f"**{cell[(tr, te)]:.3f}**")
            else:
                vals.append("-")
        lines.append(f"| {tr} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
