"""Loading a model and predicting imports neither Lightning nor matplotlib (a fast start for a user)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_recognizer_imports_neither_lightning_nor_matplotlib(tiny_corpus, spk_model):
    model_dir = spk_model
    clip = tiny_corpus / "spk0" / "high_0.wav"
    code = (
        "import json, sys\n"
        "from serkit import Recognizer\n"
        f"r = Recognizer.from_pretrained({str(model_dir)!r}).predict({str(clip)!r})\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'matplotlib'})\n"
        "print(json.dumps({'label': r['label'], 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["label"] in ("low", "mid", "high")
    assert res["heavy"] == [], f"inference imported {res['heavy']}"
