"""Conventional, quiet CLI: options refused before any model loads, `serkit info` without torch, one name for the
predicted label."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from serkit.cli import main
from tests.conftest import REPO

DEFAULT_MODEL = REPO / "src" / "serkit" / "default_model"


@pytest.fixture
def no_model_loads(monkeypatch):
    from serkit.inference import Recognizer

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(Recognizer, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("options", [["--out", "results.txt"], ["--out", "results"], ["--timeline", "figs"]])
def test_predict_refuses_options_before_a_model_loads(options, no_model_loads, tone, tmp_path, capsys):
    clip = tone("a.wav")
    assert main(["predict", str(clip), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("serkit predict: error: ")
    assert options[1] in err
    assert not (tmp_path / options[1]).exists()


def test_info_does_not_import_torch():
    code = ("import sys; from serkit.cli import main; rc = main(['info', sys.argv[1], '--json']); "
            "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code, str(DEFAULT_MODEL)], capture_output=True, text=True, env=env,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "False"
    assert json.loads(proc.stdout)["classes"] == json.loads((DEFAULT_MODEL / "labels.json").read_text())["classes"]


def test_fold_predictions_read_with_the_predicted_label_named_label(tmp_path):
    from serkit.train.logs import read_fold_predictions

    old = pd.DataFrame({"id": ["1"], "speaker": ["s"], "true": ["sad"], "pred": ["happy"], "p_happy": [0.7]})
    (tmp_path / "old").mkdir()
    old.to_csv(tmp_path / "old" / "predictions.csv", index=False)
    assert list(read_fold_predictions(tmp_path / "old").columns) == ["id", "speaker", "true", "label", "p_happy"]
    reg = pd.DataFrame({"id": ["1"], "speaker": ["s"], "true_arousal": [0.1], "pred_arousal": [0.2]})
    (tmp_path / "reg").mkdir()
    reg.to_csv(tmp_path / "reg" / "predictions.csv", index=False)
    assert read_fold_predictions(tmp_path / "reg")["arousal"].tolist() == [0.2]
