"""MSP-Podcast: ``Labels/labels_consensus.csv`` + ``Audios/<FileName>``.

Columns FileName, EmoClass (A S H U F D C N O X), EmoAct, EmoVal, EmoDom (1-7), SpkrID, Gender, Split_Set
(Train, Development, Test1, Test2, Test3). ``split`` becomes train / validation / test*.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serkit.corpora.base import CorpusReader, register
from serkit.errors import CorpusError
from serkit.manifest import normalise_gender

EMOTIONS = {"A": "angry", "S": "sad", "H": "happy", "U": "surprised", "F": "fearful", "D": "disgust",
            "C": "contempt", "N": "neutral", "O": "other", "X": "no_agreement"}
SPLITS = {"train": "train", "development": "validation", "dev": "validation", "test1": "test",
          "test2": "test2", "test3": "test3", "test": "test"}


@register
class MspPodcast(CorpusReader):
    name = "msp-podcast"
    SOURCE = "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html (licence request)"
    LANGUAGE = "en"
    description = "Labels/labels_consensus.csv and Audios/<FileName>"
    class_sets = {
        "8class": {e: e for e in ("angry", "sad", "happy", "surprised", "fearful", "disgust", "contempt", "neutral")},
        "4class": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    }
    default_protocol = {"name": "official"}

    def rows(self, root: Path):
        table = root / "Labels" / "labels_consensus.csv"
        if not table.exists():
            raise CorpusError(f"msp-podcast: {table} not found")
        labels = pd.read_csv(table)
        need = {"FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"}
        if missing := need - set(labels.columns):
            raise CorpusError(f"msp-podcast: {table} lacks column(s) {sorted(missing)}")
        for r in labels.itertuples(index=False):
            spk = str(r.SpkrID)
            yield {
                "id": Path(r.FileName).stem,
                "path": str(root / "Audios" / r.FileName),
                "emotion": EMOTIONS.get(str(r.EmoClass), str(r.EmoClass)),
                "speaker": "unknown" if spk.lower() in ("unknown", "nan", "") else f"msp_{spk}",
                "gender": normalise_gender(r.Gender),
                "arousal": float(r.EmoAct),
                "valence": float(r.EmoVal),
                "dominance": float(r.EmoDom),
                "split": SPLITS.get(str(r.Split_Set).lower(), str(r.Split_Set).lower()),
            }
