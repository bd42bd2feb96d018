"""MSP-IMPROV: ``Evaluation.txt`` + audio named ``MSP-IMPROV-S01A-F01-S-FM01.wav`` anywhere under the root.

Evaluation lines that name an utterance look like ``UTD-IMPROV-S01A-F01-S-FM01.avi; A; A:3.0; V:2.4; D:2.6; N:4.2``
(consensus class A angry, H happy, S sad, N neutral, O other, X none; then mean Activation, Valence, Dominance).
The name's fields: sentence + target emotion (S01A), speaker (F01 = the female speaker of the first dyad),
scenario (R read, S target sentence, P natural interaction, T ...). 6 sessions, 12 actors.
"""

from __future__ import annotations

import re
from pathlib import Path

from serkit.corpora.base import CorpusReader, register
from serkit.errors import CorpusError

EMOTIONS = {"A": "angry", "H": "happy", "S": "sad", "N": "neutral", "O": "other", "X": "no_agreement"}
LINE = re.compile(r"^UTD-IMPROV-(?P<name>\S+?)\.avi;\s*(?P<emo>\w);"
                  r"\s*A:(?P<a>[\d.]+);\s*V:(?P<v>[\d.]+);\s*D:(?P<d>[\d.]+)")
NAME = re.compile(r"^(?P<sent>S\d+[A-Z])-(?P<spk>[FM])(?P<ses>\d+)-(?P<scen>[A-Z])-(?P<rest>\S+)$")


@register
class MspImprov(CorpusReader):
    name = "msp-improv"
    SOURCE = "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Improv.html (licence request)"
    LANGUAGE = "en"
    description = "Evaluation.txt and **/MSP-IMPROV-<sentence>-<speaker>-<scenario>-<id>.wav"
    class_sets = {"4class": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"}}
    default_protocol = {"name": "leave_one_session_out"}

    def rows(self, root: Path):
        evaluation = next(iter(sorted(root.rglob("Evaluation.txt"))), None)
        if evaluation is None:
            raise CorpusError(f"msp-improv: no Evaluation.txt under {root}")
        audio = {p.stem.replace("MSP-IMPROV-", ""): p for p in root.rglob("MSP-IMPROV-*.wav")}
        for line in evaluation.read_text(errors="replace").splitlines():
            m = LINE.match(line.strip())
            if not m:
                continue
            n = NAME.match(m["name"])
            if not n:
                continue
            ses = int(n["ses"])
            yield {
                "id": f"MSP-IMPROV-{m['name']}",
                "path": str(audio.get(m["name"], root / f"MSP-IMPROV-{m['name']}.wav")),
                "emotion": EMOTIONS.get(m["emo"], m["emo"]),
                "speaker": f"improv_{n['spk']}{ses:02d}",
                "gender": "female" if n["spk"] == "F" else "male",
                "session": f"session{ses}",
                "arousal": float(m["a"]),
                "valence": float(m["v"]),
                "dominance": float(m["d"]),
                "scenario": n["scen"],
            }
