"""TESS: ``<OAF|YAF>_<word>_<emotion>.wav`` anywhere under the root; 2 female speakers (older / younger)."""

from __future__ import annotations

from pathlib import Path

from serkit.corpora.base import CorpusReader, register

EMOTIONS = {"angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy", "neutral": "neutral",
            "ps": "surprised", "pleasant_surprise": "surprised", "pleasant_surprised": "surprised", "sad": "sad"}


@register
class Tess(CorpusReader):
    name = "tess"
    SOURCE = "https://doi.org/10.5683/SP2/E8H2MF"
    LANGUAGE = "en"
    LICENSE = "cc-by-nc-nd-4.0"
    description = "**/<OAF|YAF>_<word>_<emotion>.wav"
    class_sets = {"7class": {e: e for e in set(EMOTIONS.values())},
                  "4class": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"}}
    default_protocol = {"name": "leave_one_speaker_out"}

    def rows(self, root: Path):
        for path in sorted(root.rglob("*.wav")):
            parts = path.stem.split("_", 2)
            if len(parts) != 3 or parts[0].upper() not in ("OAF", "YAF"):
                continue
            spk, word, emo = parts[0].upper(), parts[1], parts[2].lower()
            if emo not in EMOTIONS:
                continue
            yield {
                "id": f"{spk}_{word}_{emo}",
                "path": str(path),
                "emotion": EMOTIONS[emo],
                "speaker": f"tess_{spk}",
                "gender": "female",
                "transcript": f"Say the word {word}",
            }
