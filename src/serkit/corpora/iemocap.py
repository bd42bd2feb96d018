"""IEMOCAP: ``Session{1..5}/dialog/EmoEvaluation/<dialog>.txt`` + ``Session*/sentences/wav/<dialog>/<utt>.wav``.

Label lines look like ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``; the
bracket holds valence, arousal, dominance on 1-5. The speaker is the session plus the gender letter that opens
the utterance name's last field (``F000`` = female). The standard 4-class set merges ``exc`` into ``hap``
(5531 utterances: hap 1636, ang 1103, sad 1084, neu 1708).
"""

from __future__ import annotations

import re
from pathlib import Path

from serkit.corpora.base import CorpusReader, register

LINE = re.compile(
    r"^\[(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\]\s+(?P<utt>Ses\d{2}[FM]_\S+)\s+(?P<emo>\w+)\s+"
    r"\[(?P<v>[\d.]+),\s*(?P<a>[\d.]+),\s*(?P<d>[\d.]+)\]"
)
EMOTIONS = {
    "neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry", "fru": "frustrated",
    "sur": "surprised", "fea": "fearful", "dis": "disgust", "oth": "other", "xxx": "undecided",
}


@register
class Iemocap(CorpusReader):
    name = "iemocap"
    SOURCE = "https://sail.usc.edu/iemocap/ (licence request)"
    LANGUAGE = "en"
    description = "Session{1..5}/dialog/EmoEvaluation/*.txt and Session*/sentences/wav/<dialog>/<utt>.wav"
    class_sets = {
        "4class": {"neutral": "neutral", "happy": "happy", "excited": "happy", "sad": "sad", "angry": "angry"},
        "4class-noexc": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
        "all": {e: e for e in EMOTIONS.values()},
    }
    default_protocol = {"name": "leave_one_session_out"}

    def rows(self, root: Path):
        for label_file in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
            session_dir = label_file.parents[2]
            dialog = label_file.stem
            for line in label_file.read_text(errors="replace").splitlines():
                m = LINE.match(line.strip())
                if not m:
                    continue
                utt = m["utt"]
                wav = session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"
                gender_letter = utt.rsplit("_", 1)[-1][0]
                yield {
                    "id": utt,
                    "path": str(wav),
                    "duration": float(m["end"]) - float(m["start"]),
                    "emotion": EMOTIONS.get(m["emo"], m["emo"]),
                    "speaker": f"{utt[:5]}{gender_letter}",
                    "gender": "female" if gender_letter == "F" else "male",
                    "session": utt[:5],
                    "valence": float(m["v"]),
                    "arousal": float(m["a"]),
                    "dominance": float(m["d"]),
                    "dialog": dialog,
                    "improvised": "impro" in dialog,
                }
