"""Feature set-up for an experiment: the cache folder for (corpus, encoder, mode, layers, precision), filled on
demand."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from serkit.features.extraction import encoder_options, extraction_options, feature_precision

#: Where feature stores live unless the config says otherwise (``features.cache_dir``).
CACHE_ENV = "SERKIT_CACHE"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "serkit" / "features"))


def store_dir(cfg: dict, manifest: pd.DataFrame, encoder: dict | None = None) -> Path:
    """``<root>/<corpus>/<encoder>-<mode>-<layers>[-bf16]``: fp32 stores keep the name they had before precisions."""
    from serkit.precision import store_suffix

    enc = encoder_options(encoder or cfg["encoder"])
    corpus = str(manifest["corpus"].iloc[0]) if "corpus" in manifest.columns else "custom"
    rev = f"-rev{enc['revision']}" if enc.get("revision") else ""  # another revision: another store
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{enc['id']}{rev}-{enc['mode']}-{enc['layers']}")
    slug += store_suffix(feature_precision(enc))
    if enc.get("level_db") is not None:  # inputs scaled to a level (serkit.level): another store
        slug += f"-level{float(enc['level_db']):g}"
    root = Path(cfg["features"]["cache_dir"]) if cfg["features"]["cache_dir"] else default_cache_root()
    return root / corpus / slug


class StoreUnion:
    """Several corpora's feature stores (same encoder, mode and layers) read as one, by utterance id; what a
    multi-corpus (cross-corpus) experiment trains and tests on. Offers what the datasets read of a store."""

    def __init__(self, stores: dict):
        self.stores = dict(stores)
        first = next(iter(self.stores.values()))
        for name, st in self.stores.items():
            if st.layers != first.layers or st.hidden_size != first.hidden_size:
                raise ValueError(f"feature stores differ: {name} has layers {st.layers} x {st.hidden_size}, "
                                 f"another {first.layers} x {first.hidden_size}")
        self._where = {}
        for name, st in self.stores.items():
            for u in st.ids():
                if u in self._where:
                    raise ValueError(f"utterance id {u!r} is in the stores of both {self._where[u]} and {name}")
                self._where[u] = name
        self.layers, self.hidden_size, self.spec = first.layers, first.hidden_size, dict(first.spec)
        self.root = first.root
        self.frame_rate = first.frame_rate

    def _store(self, utt_id: str):
        return self.stores[self._where[str(utt_id)]]

    def ids(self) -> list[str]:
        return list(self._where)

    def entry(self, utt_id: str) -> dict:
        return self._store(utt_id).entry(utt_id)

    def load(self, utt_id: str):
        return self._store(utt_id).load(utt_id)

    def pooled(self, utt_id: str):
        return self._store(utt_id).pooled(utt_id)


def ensure_features(manifest: pd.DataFrame, cfg: dict, out_dir: Path | None = None, encoder: dict | None = None,
                    log=print):
    """Extract whatever the store lacks (resumable) and return the opened :class:`~serkit.features.store.FeatureStore`
    (a :class:`StoreUnion` of one store per corpus when the manifest holds several corpora)."""
    from serkit.features.extraction import extract_to_cache
    from serkit.features.store import FeatureStore

    if "corpus" in manifest.columns and manifest["corpus"].nunique() > 1:
        return StoreUnion({c: ensure_features(m.reset_index(drop=True), cfg, out_dir, encoder, log)
                           for c, m in manifest.groupby(manifest["corpus"].astype(str))})

    enc = encoder_options(encoder or cfg["encoder"])
    path = store_dir(cfg, manifest, enc)
    todo = True
    if (path / "store.json").exists():
        store = FeatureStore(path)
        todo = bool(store.verify(manifest))
    if todo:
        opts = extraction_options(enc)
        log(f"extracting {enc['id']} ({opts['mode']}, layers {enc['layers']}, {opts['precision']}) "
            f"-> {path}")
        encoder = enc["id"]
        if enc.get("revision"):  # a pinned hub revision (branch, tag or commit)
            from serkit.encoders import load_encoder

            encoder = load_encoder(enc["id"], mode=opts["mode"], revision=str(enc["revision"]), device=opts["device"],
                                   level_db=opts["level_db"])
        extract_to_cache(manifest, encoder, enc["layers"], path, **opts,
                         chunk_seconds=float(enc.get("chunk_seconds", 30.0)),
                         progress=bool(cfg["train"]["progress"]))
    return FeatureStore(path)


def usable_ids(store, manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows whose features are in the store (bad audio was reported and skipped at extraction)."""
    have = set(store.ids())
    keep = manifest["id"].astype(str).isin(have)
    return manifest[keep].reset_index(drop=True)
