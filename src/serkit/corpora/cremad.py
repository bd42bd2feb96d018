"""CREMA-D: ``AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav`` + ``VideoDemographics.csv`` (ActorID, Sex)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serkit.corpora.base import CorpusReader, register
from serkit.manifest import normalise_gender

EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before", "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}


@register
class CremaD(CorpusReader):
    name = "crema-d"
    SOURCE = "https://github.com/CheyneyComputerScience/CREMA-D"
    LANGUAGE = "en"
    LICENSE = "odbl"
    description = "AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav and VideoDemographics.csv"
    class_sets = {
        "6class": {e: e for e in EMOTIONS.values()},
        "4class": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    }
    default_protocol = {"name": "speaker_kfold", "k": 5}

    def rows(self, root: Path):
        demo_path = next(iter(sorted(root.rglob("VideoDemographics.csv"))), None)
        sex = {}
        if demo_path is not None:
            demo = pd.read_csv(demo_path)
            sex = {str(a): normalise_gender(s) for a, s in zip(demo["ActorID"], demo["Sex"], strict=True)}
        base = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
        for path in sorted(base.glob("*.wav")):
            parts = path.stem.split("_")
            if len(parts) != 4 or parts[2] not in EMOTIONS:
                continue
            actor, sentence, emo, level = parts
            yield {
                "id": path.stem,
                "path": str(path),
                "emotion": EMOTIONS[emo],
                "speaker": f"cremad_{actor}",
                "gender": sex.get(actor, "unknown"),
                "transcript": SENTENCES.get(sentence, ""),
                "intensity": level,
            }
