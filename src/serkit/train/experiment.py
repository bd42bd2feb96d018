"""What an experiment config reads before any fold: its manifest (corpus reader, table or union of corpora, class
set applied) and its protocol (the config's, else the corpus's published one)."""

from __future__ import annotations

import pandas as pd

from serkit.errors import ConfigError


def load_experiment_manifest(cfg: dict) -> pd.DataFrame:
    """The config's manifest: a prepared table, or the corpus read from ``root`` / $SERKIT_DATA; class set applied."""
    from serkit.corpora import apply_class_set, prepare
    from serkit.manifest import read_manifest

    if isinstance(cfg["corpus"], list):  # several corpora (cross-corpus): each read, its class set applied
        roots = cfg["root"] if isinstance(cfg["root"], dict) else {}
        parts = []
        for c in cfg["corpus"]:
            part = prepare(c, roots.get(c))
            parts.append(apply_class_set(part, cfg["class_set"], corpus=c) if cfg["class_set"] else part)
        df = pd.concat(parts, ignore_index=True)
    elif cfg["manifest"]:
        df = read_manifest(cfg["manifest"])
    else:
        df = prepare(cfg["corpus"], cfg["root"])
    if cfg["class_set"] and not isinstance(cfg["corpus"], list):
        df = apply_class_set(df, cfg["class_set"], corpus=cfg["corpus"])
    if cfg["task"] == "regression":
        missing = [t for t in cfg["targets"] if t not in df.columns]
        if missing:
            raise ConfigError(f"task: regression needs the target column(s) {missing} (config 'targets'); the "
                              f"manifest has {list(df.columns)}")
        df = df.dropna(subset=list(cfg["targets"])).reset_index(drop=True)
        if df.empty:
            raise ConfigError(f"task: regression: no utterance has values for all targets {cfg['targets']}")
    return df


def experiment_protocol(cfg: dict, manifest: pd.DataFrame) -> dict:
    """The config's protocol, else the corpus reader's; a dimensional task balances no class column."""
    if cfg["protocol"]:
        protocol = dict(cfg["protocol"])
    elif "corpus" in manifest.columns and manifest["corpus"].nunique() > 1:
        protocol = {"name": "cross_corpus"}
    else:
        from serkit.corpora import get_reader

        protocol = dict(get_reader(str(manifest["corpus"].iloc[0])).default_protocol)
    if cfg["task"] == "regression":
        protocol.setdefault("classes", None)
    return protocol
