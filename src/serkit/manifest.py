"""The manifest: one table per corpus, one row per utterance.

Columns: ``id, path, duration, emotion, speaker, gender`` always (see :data:`MANIFEST_REQUIRED`), plus
``session``, ``valence/arousal/dominance``, ``transcript``, ``split`` where the corpus has them. ``path`` is
absolute, so a manifest alone is enough to find the audio. CSV or Parquet by the file suffix.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from serkit.constants import MANIFEST_REQUIRED
from serkit.errors import ManifestError
from serkit.io import MAX_TABLE_BYTES, atomic_path, not_a_regular_file

GENDERS = ("female", "male", "unknown")


def normalise_gender(value) -> str:
    """Map F/M/female/Male/... to ``female`` / ``male``; anything else to ``unknown``."""
    v = str(value).strip().lower()
    if v in ("f", "female", "woman", "w"):
        return "female"
    if v in ("m", "male", "man"):
        return "male"
    return "unknown"


def validate_manifest(df: pd.DataFrame, source: str = "<manifest>") -> pd.DataFrame:
    """Check required columns, unique ids and gender values; return ``df`` with string ids."""
    missing = [c for c in MANIFEST_REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")
    df = df.copy()
    df["id"] = df["id"].astype(str)
    df["speaker"] = df["speaker"].astype(str)
    if "session" in df.columns:
        df["session"] = df["session"].astype(str)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise ManifestError(f"{source}: duplicate id(s) {list(dup[:5])}")
    bad = sorted(set(df["gender"].astype(str)) - set(GENDERS))
    if bad:
        raise ManifestError(f"{source}: gender must be one of {GENDERS}, found {bad}")
    return df.reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically as CSV (``.csv``) or Parquet (``.parquet``/``.pq``) by suffix."""
    path = Path(path)
    df = validate_manifest(df, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ManifestError(f"{path}: manifest suffix must be .csv or .parquet, got {suffix!r}")
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Load and validate a manifest; relative audio paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ManifestError(f"{path}: manifest suffix must be .csv or .parquet, got {suffix!r}")
    problem = not_a_regular_file(path, MAX_TABLE_BYTES)
    if problem is not None:
        raise ManifestError(f"{path}: {problem}")
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype={"id": str, "speaker": str, "session": str}, keep_default_na=False,
                             na_values={c: [""] for c in ("valence", "arousal", "dominance", "duration")})
        else:
            df = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: empty file, not a manifest") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:  # pyarrow's errors are ValueError / OSError
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ManifestError(f"{path}: cannot read the manifest ({why})") from None
    if df.empty:
        raise ManifestError(f"{path}: the manifest has no rows (columns {list(df.columns)})")
    df = validate_manifest(df, str(path))
    base = path.parent.resolve()
    df["path"] = [p if os.path.isabs(p) else str(base / p) for p in df["path"].astype(str)]
    return df


def class_distribution(df: pd.DataFrame, column: str = "emotion") -> dict[str, int]:
    """Counts per class, largest first."""
    return {str(k): int(v) for k, v in df[column].value_counts().items()}
