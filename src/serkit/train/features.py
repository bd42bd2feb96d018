"""Feature set-up for an experiment: the cache folder for (corpus, encoder, mode, layers), filled on demand."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

#: Where feature stores live unless the config says otherwise (``features.cache_dir``).
CACHE_ENV = "SERKIT_CACHE"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "serkit" / "features"))


def store_dir(cfg: dict, manifest: pd.DataFrame, encoder: dict | None = None) -> Path:
    enc = encoder or cfg["encoder"]
    corpus = str(manifest["corpus"].iloc[0]) if "corpus" in manifest.columns else "custom"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{enc['id']}-{enc.get('mode', 'native')}-{enc.get('layers', 'all')}")
    root = Path(cfg["features"]["cache_dir"]) if cfg["features"]["cache_dir"] else default_cache_root()
    return root / corpus / slug


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def ensure_features(manifest: pd.DataFrame, cfg: dict, out_dir: Path | None = None, encoder: dict | None = None,
                    log=print):
    """Extract whatever the store lacks (resumable) and return the opened :class:`~serkit.cache.FeatureStore`."""
    from serkit.cache import FeatureStore, extract_to_cache

    enc = encoder or cfg["encoder"]
    path = store_dir(cfg, manifest, enc)
    todo = True
    if (path / "store.json").exists():
        store = FeatureStore(path)
        todo = bool(store.verify(manifest))
    if todo:
        log(f"extracting {enc['id']} ({enc.get('mode', 'native')}, layers {enc.get('layers', 'all')}) -> {path}")
        dtype = enc.get("dtype", "auto")
        extract_to_cache(manifest, enc["id"], enc.get("layers", "all"), path, mode=enc.get("mode", "native"),
                         device=_device(enc.get("device", "auto")),
                         autocast=None if dtype in ("auto", "fp32") else dtype,
                         batch_seconds=float(enc.get("batch_seconds", 120.0)),
                         progress=bool(cfg["train"].get("progress", True)))
    return FeatureStore(path)


def usable_ids(store, manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows whose features are in the store (bad audio was reported and skipped at extraction)."""
    have = set(store.ids())
    keep = manifest["id"].astype(str).isin(have)
    return manifest[keep].reset_index(drop=True)
