"""Feature set-up for an experiment: the cache folder for (corpus, encoder, mode, layers, precision), filled on
demand."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

#: Where feature stores live unless the config says otherwise (``features.cache_dir``).
CACHE_ENV = "SERKIT_CACHE"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "serkit" / "features"))


def feature_precision(enc: dict) -> str:
    """The resolved precision (``fp32`` / ``bf16``) the config's encoder runs in for extraction."""
    from serkit.precision import resolve_precision

    return resolve_precision(enc.get("precision", "auto"), _device(enc.get("device", "auto")))


def store_dir(cfg: dict, manifest: pd.DataFrame, encoder: dict | None = None) -> Path:
    """``<root>/<corpus>/<encoder>-<mode>-<layers>[-bf16]``: fp32 stores keep the name they had before precisions."""
    from serkit.precision import store_suffix

    enc = encoder or cfg["encoder"]
    corpus = str(manifest["corpus"].iloc[0]) if "corpus" in manifest.columns else "custom"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{enc['id']}-{enc.get('mode', 'native')}-{enc.get('layers', 'all')}")
    slug += store_suffix(feature_precision(enc))
    root = Path(cfg["features"]["cache_dir"]) if cfg["features"]["cache_dir"] else default_cache_root()
    return root / corpus / slug


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def extraction_options(enc: dict) -> dict:
    """Keyword arguments of :func:`~serkit.cache.extract_to_cache` from a config's ``encoder`` section."""
    return {"mode": enc.get("mode", "native"), "device": _device(enc.get("device", "auto")),
            "precision": feature_precision(enc), "batch_seconds": float(enc.get("batch_seconds", 120.0))}


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
        opts = extraction_options(enc)
        log(f"extracting {enc['id']} ({opts['mode']}, layers {enc.get('layers', 'all')}, {opts['precision']}) "
            f"-> {path}")
        extract_to_cache(manifest, enc["id"], enc.get("layers", "all"), path, **opts,
                         progress=bool(cfg["train"].get("progress", True)))
    return FeatureStore(path)


def usable_ids(store, manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows whose features are in the store (bad audio was reported and skipped at extraction)."""
    have = set(store.ids())
    keep = manifest["id"].astype(str).isin(have)
    return manifest[keep].reset_index(drop=True)
