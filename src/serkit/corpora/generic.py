"""Corpora the user lays out: a CSV table, or a folder per class.

CSV (``serkit prepare csv --root table.csv``): columns ``path`` and ``emotion`` at least; optional ``id``,
``speaker``, ``gender``, ``session``, ``valence``, ``arousal``, ``dominance``, ``transcript``, ``split``. Relative
paths are resolved against the CSV's folder.

Folder (``serkit prepare folder --root DIR``): ``DIR/<class>/**/*.wav|flac|ogg|mp3``; the speaker is the file's
parent folder below the class folder when there is one (``DIR/<class>/<speaker>/x.wav``), else ``unknown``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serkit.corpora.base import CorpusReader, register
from serkit.errors import CorpusError
from serkit.manifest import normalise_gender

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


@register
class CsvCorpus(CorpusReader):
    name = "csv"
    SOURCE = "your own data"
    description = "a CSV with columns path, emotion [, id, speaker, gender, session, valence, arousal, dominance]"
    default_protocol = {"name": "speaker_kfold", "k": 5}
    default_normalize = "auto"

    def read(self, root, *, with_duration: bool = True):
        root = Path(root).expanduser().resolve()
        if not root.is_file():
            raise CorpusError(f"csv: {root} is not a file (give the CSV table as --root)")
        self._table = root
        return super().read(root.parent, with_duration=with_duration)

    def rows(self, root: Path):
        from serkit.io import MAX_TABLE_BYTES, not_a_regular_file

        problem = not_a_regular_file(self._table, MAX_TABLE_BYTES)
        if problem is not None:
            raise CorpusError(f"csv: {self._table}: {problem}")
        table = pd.read_csv(self._table, keep_default_na=False)
        for col in ("path", "emotion"):
            if col not in table.columns:
                raise CorpusError(f"csv: {self._table} lacks column {col!r}; found {list(table.columns)}")
        for i, r in enumerate(table.to_dict("records")):
            p = Path(str(r["path"]))
            p = p if p.is_absolute() else root / p
            row = {k: v for k, v in r.items() if v != ""}
            row.update(
                id=str(r.get("id") or p.stem),
                path=str(p),
                emotion=str(r["emotion"]),
                speaker=str(r.get("speaker") or "unknown"),
                gender=normalise_gender(r.get("gender", "")),
            )
            for c in ("valence", "arousal", "dominance", "duration"):
                if c in row:
                    row[c] = float(row[c])
            yield row


@register
class FolderCorpus(CorpusReader):
    name = "folder"
    SOURCE = "your own data"
    description = "DIR/<class>/[<speaker>/]*.wav"
    default_protocol = {"name": "random", "test_fraction": 0.2}
    default_normalize = "auto"

    def rows(self, root: Path):
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(class_dir.rglob("*")):
                if path.suffix.lower() not in AUDIO_SUFFIXES:
                    continue
                rel = path.relative_to(class_dir)
                speaker = rel.parts[0] if len(rel.parts) > 1 else "unknown"
                yield {
                    "id": f"{class_dir.name}/{rel.with_suffix('').as_posix()}",
                    "path": str(path),
                    "emotion": class_dir.name,
                    "speaker": speaker,
                    "gender": "unknown",
                }
