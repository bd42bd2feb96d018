"""Corpus reader interface, registry and class sets.

A reader turns a corpus tree (its documented layout) into a manifest DataFrame. Readers register under a
short name; ``serkit prepare NAME --root DIR --out FILE`` finds them here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from serkit.audio import audio_info
from serkit.constants import DATA_ENV
from serkit.errors import CorpusError
from serkit.manifest import validate_manifest

#: A class set maps a corpus's emotion names to the labels used for training; ``None`` drops the class.
ClassSet = Mapping[str, str | None]


class CorpusReader:
    """One corpus: how to read it, its named class sets and its standard protocol.

    Subclasses set ``name``, ``class_sets`` (the first is the default), ``default_protocol`` and implement
    :meth:`rows`, yielding one dict per utterance with at least ``id, path, emotion, speaker, gender``.
    """

    name: str = ""
    description: str = ""
    #: where the corpus comes from (its official download page), named by `serkit prepare` help and errors
    SOURCE: str = ""
    #: the speech's language (ISO 639-1) and the corpus's licence as a Hugging Face hub licence id; None where
    #: unknown or not an open licence (a licence agreement, "free for research"): model cards say ``other``
    LANGUAGE: str | None = None
    LICENSE: str | None = None
    class_sets: dict[str, ClassSet] = {}
    default_protocol: dict = {}
    #: ``features.normalize`` for configs that do not name it (user layouts: ``auto``, chosen on validation)
    default_normalize: str = "none"
    audio_glob: str = "**/*.wav"

    def rows(self, root: Path):  # pragma: no cover - interface
        raise NotImplementedError

    def read(self, root: str | Path, *, with_duration: bool = True) -> pd.DataFrame:
        """Read the corpus under ``root`` into a validated manifest (absolute paths, sorted by id)."""
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise CorpusError(f"{self.name}: root {root} is not a folder{self._from_source()}")
        rows = list(self.rows(root))
        if not rows:
            raise CorpusError(f"{self.name}: no utterances found under {root} (expected layout: {self.description})"
                              f"{self._from_source()}")
        df = pd.DataFrame(rows)
        df["path"] = [str(Path(p).resolve()) for p in df["path"]]
        if with_duration and "duration" not in df.columns:
            df["duration"] = [_duration_or_nan(p) for p in df["path"]]
        df["corpus"] = self.name
        df = df.sort_values("id").reset_index(drop=True)
        front = ["id", "path", "duration", "emotion", "speaker", "gender"]
        df = df[front + [c for c in df.columns if c not in front]]
        return validate_manifest(df, f"{self.name} reader")


    def _from_source(self) -> str:
        """``"; the corpus comes from URL"`` for error messages (empty for user layouts)."""
        return f"; the corpus comes from {self.SOURCE}" if self.SOURCE.startswith("http") else ""


def _duration_or_nan(path: str) -> float:
    try:
        return float(audio_info(path)["duration"])
    except Exception:
        return float("nan")  # `serkit check` reports the file by name


_REGISTRY: dict[str, CorpusReader] = {}


def register(cls: type[CorpusReader]) -> type[CorpusReader]:
    """Class decorator: make a reader available by its ``name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def get_reader(name: str) -> CorpusReader:
    from serkit import corpora as _  # noqa: F401  (imports every reader module)

    key = name.lower().replace("_", "-")
    if key not in _REGISTRY:
        raise CorpusError(f"unknown corpus {name!r}; known: {sorted(_REGISTRY)} (`serkit prepare --help` says where "
                          f"each comes from)")
    return _REGISTRY[key]


def available() -> list[str]:
    from serkit import corpora as _  # noqa: F401

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


def identity(labels) -> dict[str, str]:
    return {c: c for c in labels}


def first_match(root: Path, pattern: str, predicate: Callable[[Path], bool] | None = None) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if predicate is None or predicate(p))
