"""TAVA (speech variant): ``recordings/sSS_AFFECT_audio.(wav|flac)`` + ``SummaryData.csv``.

Dimensional labels meanValence / meanArousal / meanDominance (about -1..1) from the rows with
``Variant == speech``, matched on Speaker Number + Affect Name; ``emotion`` is the affect name.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from serkit.corpora.base import CorpusReader, register
from serkit.errors import CorpusError
from serkit.manifest import normalise_gender

NAME = re.compile(r"^s(\d+)_(.+)_audio$")


@register
class Tava(CorpusReader):
    name = "tava"
    SOURCE = "https://github.com/juansgomez87/tava-data"
    description = "recordings/sSS_AFFECT_audio.wav + SummaryData.csv"
    class_sets = {}
    default_protocol = {"name": "speaker_kfold", "k": 5, "grouping": "sorted", "classes": None}  # dimensional

    def rows(self, root: Path):
        table = root / "SummaryData.csv"
        if not table.exists():
            raise CorpusError(f"tava: {table} not found")
        summary = pd.read_csv(table, encoding="utf-8-sig")
        summary = summary[summary["Variant"].astype(str).str.lower() == "speech"]
        index = {(int(r["Speaker Number"]), str(r["Affect Name"]).strip().lower()): r for _, r in summary.iterrows()}
        folder = root / "recordings" if (root / "recordings").is_dir() else root
        for path in sorted(folder.iterdir()):
            m = NAME.match(path.stem)
            if not m or path.suffix.lower() not in (".wav", ".flac"):
                continue
            spk, affect = int(m.group(1)), m.group(2).lower()
            row = index.get((spk, affect))
            if row is None:
                raise CorpusError(f"tava: {path.name} has no speech row in {table} (speaker {spk}, affect {affect})")
            yield {
                "id": path.stem,
                "path": str(path),
                "emotion": affect,
                "speaker": f"tava_{spk:02d}",
                "gender": normalise_gender(row["Sex"]),
                "valence": float(row["meanValence"]),
                "arousal": float(row["meanArousal"]),
                "dominance": float(row["meanDominance"]),
                "valence_std": float(row["stdValence"]),
                "arousal_std": float(row["stdArousal"]),
                "dominance_std": float(row["stdDominance"]),
            }
