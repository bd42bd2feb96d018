"""Berlin EmoDB: ``wav/SSTTTEv.(wav|flac)`` — SS speaker, TTT text, E emotion letter, v version. 535 files."""

from __future__ import annotations

from pathlib import Path

from serkit.corpora.base import CorpusReader, register

EMOTIONS = {"W": "angry", "L": "bored", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}
GENDER = {"03": "male", "08": "female", "09": "female", "10": "male", "11": "male",
          "12": "male", "13": "female", "14": "female", "15": "male", "16": "female"}
TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}


@register
class EmoDB(CorpusReader):
    name = "emodb"
    SOURCE = "http://emodb.bilderbar.info/download/"
    LANGUAGE = "de"
    description = "wav/SSTTTEv.wav (or .flac)"
    class_sets = {
        "7class": {e: e for e in EMOTIONS.values()},
        # the six classes EmoDB shares with RAVDESS (bored dropped): cross-corpus experiments
        "6class": {e: e for e in EMOTIONS.values() if e != "bored"},
        "4class": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    }
    default_protocol = {"name": "speaker_kfold", "k": 5, "grouping": "sorted"}  # 5 folds of 2 speakers

    def rows(self, root: Path):
        folder = root / "wav" if (root / "wav").is_dir() else root
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".wav", ".flac") or len(path.stem) != 7:
                continue
            spk, text, emo = path.stem[:2], path.stem[2:5], path.stem[5]
            if emo not in EMOTIONS:
                continue
            yield {
                "id": path.stem,
                "path": str(path),
                "emotion": EMOTIONS[emo],
                "speaker": f"emodb_{spk}",
                "gender": GENDER.get(spk, "unknown"),
                "transcript": TEXTS.get(text, ""),
            }
