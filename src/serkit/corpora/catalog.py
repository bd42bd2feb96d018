"""The catalog of corpus readers: imports every reader module (each registers itself), looks readers up by name,
reads a corpus from its default place and maps its classes to a class set."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

# each reader module registers its reader on import
import serkit.corpora.cremad
import serkit.corpora.emodb
import serkit.corpora.generic
import serkit.corpora.iemocap
import serkit.corpora.msp_improv
import serkit.corpora.msp_podcast
import serkit.corpora.ravdess
import serkit.corpora.savee
import serkit.corpora.tava
import serkit.corpora.tess  # noqa: F401
from serkit.constants import DATA_ENV
from serkit.corpora.base import _REGISTRY, ClassSet, CorpusReader
from serkit.errors import CorpusError


def get_reader(name: str) -> CorpusReader:
    key = name.lower().replace("_", "-")
    if key not in _REGISTRY:
        raise CorpusError(f"unknown corpus {name!r}; known: {sorted(_REGISTRY)} (`serkit prepare --help` says where "
                          f"each comes from)")
    return _REGISTRY[key]


def available() -> list[str]:
    return sorted(_REGISTRY)


def default_root(name: str) -> Path | None:
    """``$SERKIT_DATA/corpora/<name>`` when SERKIT_DATA is set and that folder exists, else None."""
    base = os.environ.get(DATA_ENV)
    if not base:
        return None
    folder = Path(base) / "corpora" / name.lower()
    return folder if folder.is_dir() else None


def prepare(name: str, root: str | Path | None = None) -> pd.DataFrame:
    """Read corpus ``name`` from ``root`` (default: :func:`default_root`)."""
    reader = get_reader(name)
    if root is None:
        root = default_root(reader.name)
        if root is None:
            raise CorpusError(f"{name}: give --root DIR (or set {DATA_ENV} so that $SERKIT_DATA/corpora/{name} "
                              f"exists){reader._from_source()}")
    return reader.read(root)


def apply_class_set(
    df: pd.DataFrame, class_set: str | ClassSet | None, corpus: str | None = None, column: str = "emotion"
) -> pd.DataFrame:
    """Map and drop classes. ``class_set`` is a mapping, a named set of ``corpus``, or None (keep all).

    Rows whose class maps to ``None`` or is absent from the mapping are dropped; a ``raw_emotion`` column keeps
    the corpus's own label.
    """
    if class_set is None:
        return df
    if isinstance(class_set, str):
        corpus = corpus or (str(df["corpus"].iloc[0]) if "corpus" in df.columns and len(df) else None)
        if corpus is None:
            raise CorpusError(f"class set {class_set!r} given by name but the corpus is unknown")
        sets = get_reader(corpus).class_sets
        if class_set not in sets:
            raise CorpusError(f"{corpus}: unknown class set {class_set!r}; known: {sorted(sets)}")
        mapping = sets[class_set]
    else:
        mapping = class_set
    out = df.copy()
    if "raw_emotion" not in out.columns:
        out["raw_emotion"] = out[column]
    out[column] = out["raw_emotion"].map(lambda e: mapping.get(e))
    out = out[out[column].notna()].reset_index(drop=True)
    if out.empty:
        raise CorpusError(f"class set kept no utterances (mapping keys {sorted(mapping)})")
    return out


