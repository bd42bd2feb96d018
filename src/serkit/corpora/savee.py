"""SAVEE: ``AudioData/{DC,JE,JK,KL}/{a,d,f,h,n,sa,su}NN.wav``; 4 male speakers, 480 files."""

from __future__ import annotations

import re
from pathlib import Path

from serkit.corpora.base import CorpusReader, register

EMOTIONS = {"a": "angry", "d": "disgust", "f": "fearful", "h": "happy", "n": "neutral", "sa": "sad", "su": "surprised"}
NAME = re.compile(r"^(sa|su|a|d|f|h|n)(\d+)$")


@register
class Savee(CorpusReader):
    name = "savee"
    SOURCE = "http://kahlan.eps.surrey.ac.uk/savee/"
    LANGUAGE = "en"
    description = "AudioData/{DC,JE,JK,KL}/{a,d,f,h,n,sa,su}NN.wav"
    class_sets = {
        "7class": {e: e for e in EMOTIONS.values()},
        "4class": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    }
    default_protocol = {"name": "leave_one_speaker_out"}

    def rows(self, root: Path):
        base = root / "AudioData" if (root / "AudioData").is_dir() else root
        for spk_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for path in sorted(spk_dir.glob("*.wav")):
                m = NAME.match(path.stem)
                if not m:
                    continue
                yield {
                    "id": f"{spk_dir.name}_{path.stem}",
                    "path": str(path),
                    "emotion": EMOTIONS[m.group(1)],
                    "speaker": f"savee_{spk_dir.name}",
                    "gender": "male",
                }
