"""RAVDESS speech: ``Actor_XX/03-01-EE-II-SS-RR-AA.(wav|flac)``.

EE emotion (01 neutral ... 08 surprised), II intensity (01 normal, 02 strong), SS statement, RR repetition,
AA actor (odd = male, even = female). 24 actors, 1440 files.
"""

from __future__ import annotations

from pathlib import Path

from serkit.corpora.base import CorpusReader, register

EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


@register
class Ravdess(CorpusReader):
    name = "ravdess"
    SOURCE = "https://zenodo.org/records/1188976 (Audio_Speech_Actors_01-24.zip)"
    LANGUAGE = "en"
    LICENSE = "cc-by-nc-sa-4.0"
    description = "Actor_XX/03-01-EE-II-SS-RR-AA.wav (or .flac)"
    class_sets = {
        "8class": {e: e for e in EMOTIONS.values()},
        "7class": {e: e for e in EMOTIONS.values() if e != "calm"},
        # the six classes RAVDESS shares with EmoDB (and CREMA-D, TESS...): cross-corpus experiments
        "6class": {e: e for e in EMOTIONS.values() if e not in ("calm", "surprised")},
        "4class": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    }
    default_protocol = {"name": "speaker_kfold", "k": 6, "grouping": "sorted"}  # the published 6 x 4 actors

    def rows(self, root: Path):
        for path in sorted(root.glob("Actor_*/*")):
            if path.suffix.lower() not in (".wav", ".flac"):
                continue
            parts = path.stem.split("-")
            if len(parts) != 7 or parts[0] != "03" or parts[1] not in ("01",):
                continue  # not the audio-only speech part (modality 03, vocal channel 01)
            _, _, emo, intensity, statement, rep, actor = parts
            if emo not in EMOTIONS:
                continue
            yield {
                "id": path.stem,
                "path": str(path),
                "emotion": EMOTIONS[emo],
                "speaker": f"ravdess_{actor}",
                "gender": "male" if int(actor) % 2 else "female",
                "intensity": "strong" if intensity == "02" else "normal",
                "transcript": STATEMENTS.get(statement, ""),
                "repetition": int(rep),
            }
