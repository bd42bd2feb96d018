"""Corpus reader interface and the registration decorator.

A reader turns a corpus tree (its documented layout) into a manifest DataFrame. Readers register under a
short name with :func:`register`; :mod:`serkit.corpora.catalog` imports every reader and looks them up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from serkit.audio import audio_info
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


def identity(labels) -> dict[str, str]:
    return {c: c for c in labels}


def first_match(root: Path, pattern: str, predicate: Callable[[Path], bool] | None = None) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if predicate is None or predicate(p))
