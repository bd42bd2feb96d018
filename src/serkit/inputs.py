"""Audio inputs named on a command line: files, folders (searched recursively), glob patterns and manifests.

:func:`expand_inputs` turns the arguments into the audio files to score, in order and without duplicates; a path
that does not exist stays in the list (prediction reports it as a failed input), a glob that matches nothing and
a folder without audio are reported as problems.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from serkit.errors import SerkitError

#: File name endings taken as audio inside folders and globs (formats libsndfile reads).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf",
                  ".w64", ".rf64")
#: Endings of manifests: tables with a ``path`` column (and optionally ``id``, ``speaker``), as
#: :mod:`serkit.manifest` writes them; other columns are ignored.
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class Inputs:
    """``files``: audio paths; ``manifests``: ``(argument, table)``; ``problems``: ``(argument, message)``."""

    files: list[str] = field(default_factory=list)
    manifests: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files) + sum(len(m) for _, m in self.manifests) + len(self.problems)


def _audio_under(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def read_table(path: str | Path) -> pd.DataFrame:
    """A manifest of audio to predict: ``path`` required; ``id`` defaults to the row's path; relative paths are
    taken from the table's folder. Raises :class:`~serkit.errors.ManifestError`."""
    import os

    from serkit.errors import ManifestError
    from serkit.io import MAX_TABLE_BYTES, not_a_regular_file

    path = Path(path)
    problem = not_a_regular_file(path, MAX_TABLE_BYTES)
    if problem is not None:
        raise ManifestError(f"{path}: {problem}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False) if path.suffix.lower() == ".csv" \
            else pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pandas / pyarrow parse errors are ValueErrors
        raise ManifestError(f"{path}: unreadable table: {exc}") from None
    if "path" not in df.columns:
        raise ManifestError(f"{path}: a manifest needs a 'path' column; found {list(df.columns)}")
    base = path.parent.resolve()
    df = df.copy()
    df["path"] = [p if os.path.isabs(p) else str(base / p) for p in df["path"].astype(str)]
    if "id" not in df.columns:
        df["id"] = df["path"]
    df["id"] = df["id"].astype(str)
    if "speaker" in df.columns:
        df["speaker"] = df["speaker"].astype(str)
    return df.reset_index(drop=True)


def expand_inputs(args: list[str]) -> Inputs:
    """Expand command-line inputs (see the module docs); each audio file appears once."""
    out = Inputs()
    seen: set[str] = set()

    def add(paths):
        for p in paths:
            if p not in seen:
                seen.add(p)
                out.files.append(p)

    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = _audio_under(p)
            if not found:
                out.problems.append((arg, f"folder holds no audio file ({', '.join(AUDIO_SUFFIXES[:4])}, ...)"))
            add(found)
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            try:
                out.manifests.append((arg, read_table(p)))
            except SerkitError as exc:  # a bad table is one failed input, not the end of the run
                out.problems.append((arg, str(exc)))
        elif not p.exists() and glob.has_magic(arg):
            found = sorted(f for f in glob.glob(arg, recursive=True) if Path(f).is_file())
            found = [f for f in found if Path(f).suffix.lower() in AUDIO_SUFFIXES] or found
            if not found:
                out.problems.append((arg, "no file matches this pattern"))
            add(found)
        else:
            add([arg])  # a file, or a missing path that prediction reports
    return out
