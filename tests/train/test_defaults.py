"""Experiments without a config file: `serkit cv TABLE.csv` (serkit.train.defaults)."""

import json

import pandas as pd
import pytest

from serkit.cli import main
from serkit.config import load_config
from serkit.errors import ConfigError
from serkit.train.defaults import table_config
from tests.conftest import CORPORA, needs_shared, write_tone
from tests.train.conftest import tiny_corpus  # noqa: F401


def _table(tmp_path, speakers=4, per=6, classes=("a", "b", "c")):
    rows = []
    for s in range(speakers):
        for u in range(per):
            p = write_tone(tmp_path / "audio" / f"s{s}_{u}.wav", seconds=0.3, freq=200 + 50 * u, seed=u)
            rows.append({"path": str(p), "emotion": classes[u % len(classes)], "speaker": f"spk{s}"})
    table = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def test_table_config_defaults(tmp_path):
    cfg = load_config(table_config(_table(tmp_path)))
    assert cfg["corpus"] == "csv" and cfg["protocol"] == {"name": "speaker_kfold", "k": 4}
    assert cfg["features"]["normalize"] == "auto"
    assert cfg["train"]["select"] == {"train.weight_decay": [0.1, 10.0, 100.0]}
    assert cfg["objective"] == [{"name": "cross_entropy", "class_weights": "balanced"}]
    # a user-layout config that leaves normalisation out gets auto; a published corpus's gets none
    assert load_config({"corpus": "csv", "root": "t.csv"})["features"]["normalize"] == "auto"
    assert load_config({"corpus": "ravdess"})["features"]["normalize"] == "none"
    # no speakers: the speaker-dependent split, labelled so
    t = pd.read_csv(tmp_path / "table.csv").drop(columns="speaker")
    t.to_csv(tmp_path / "nospk.csv", index=False)
    assert table_config(tmp_path / "nospk.csv")["protocol"]["name"] == "random"
    with pytest.raises(ConfigError, match="recipe"):
        table_config(tmp_path / "table.csv", recipe="no-such-recipe")
    mll = table_config(tmp_path / "table.csv", recipe="mll")
    assert mll["recipe"] == "mll" and mll["corpus"] == "csv" and "class_set" not in mll
    # regression: the CCC objective (monitored) and the linear head in closed form, its ridge penalty chosen
    t = pd.read_csv(tmp_path / "table.csv").assign(arousal=0.1, valence=-0.2)
    t.to_csv(tmp_path / "dims.csv", index=False)
    reg = load_config(table_config(tmp_path / "dims.csv", task="regression"))
    assert reg["targets"] == ["arousal", "valence"] and reg["objective"] == [{"name": "ccc"}]
    assert reg["train"]["solver"] == "ridge" and list(reg["train"]["select"]) == ["train.ridge_alpha"]


def test_protocol_is_checked_before_extraction(tmp_path, capsys):
    # two speakers showing one class each: a test fold of one class is refused before any audio is read
    table = _table(tmp_path, speakers=3, per=4, classes=("a",))
    t = pd.read_csv(table)
    t.loc[t["speaker"] == "spk0", "emotion"] = "b"
    t.to_csv(table, index=False)
    cache = tmp_path / "cache"
    rc = main(["cv", str(table), "--out", str(tmp_path / "run"), "--set", f"features.cache_dir={cache}"])
    assert rc == 2 and "only class" in capsys.readouterr().err
    assert not cache.exists()


@needs_shared
def test_cv_on_a_table_of_shared_corpus_files_without_config(tmp_path, monkeypatch):
    from serkit.corpora import prepare

    m = prepare("emodb", CORPORA / "emodb")
    m = m[m["speaker"].isin(["emodb_03", "emodb_10", "emodb_11"]) & m["emotion"].isin(["angry", "neutral", "sad"])]
    m = m.groupby("speaker").head(10)
    table = tmp_path / "mine.csv"
    m[["path", "emotion", "speaker", "gender"]].to_csv(table, index=False)
    out = tmp_path / "run"
    rc = main(["cv", str(table), "--out", str(out), "--set", "encoder.id=openai/whisper-tiny.en",
               "--set", f"features.cache_dir={tmp_path / 'cache'}", "--set", "train.epochs=2",
               "--set", "train.progress=false", "--set", "train.select={train.weight_decay: [0.1]}"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == {"name": "speaker_kfold", "k": 3} and len(res["folds"]) == 3
    assert res["feature_normalisation"].startswith("auto")
    for f in res["folds"]:
        sel = f["selection"]
        assert f["normalisation"]["mode"] == sel["chosen"]["features.normalize"]
        assert [c["choice"]["features.normalize"] for c in sel["candidates"]] == ["speaker", "none"]
        assert 0.0 <= f["metrics"]["ua"] <= 1.0
    assert "Chosen on the validation speakers" in (out / "report.md").read_text()


def test_regression_default_head_is_fitted_in_closed_form_and_predicts(tiny_corpus, tmp_path):  # noqa: F811
    # `serkit cv TABLE --task regression`: the linear head is fitted as ridge regression, its penalty chosen per fold
    # on validation; `serkit train` saves the same head for `serkit predict`
    from serkit.inference import Recognizer
    from serkit.train.final import train_final

    table = tiny_corpus / "table.csv"
    sets = ["--set", "encoder.id=fbank-40", "--set", f"features.cache_dir={tmp_path / 'cache'}",
            "--set", "features.speaker_min_seconds=0", "--set", "train.progress=false"]
    assert main(["cv", str(table), "--task", "regression", "--out", str(tmp_path / "run"), *sets]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    for f in res["folds"]:
        assert f["best_epoch"] == 0 and f["refit_epochs"] == 1  # one closed-form fit, nothing iterated
        alphas = [c["choice"]["train.ridge_alpha"] for c in f["selection"]["candidates"]
                  if c["choice"]["features.normalize"] == "none"]
        assert alphas == [1.0, 10.0, 100.0, 1000.0, 10000.0]
    assert res["mean"]["ccc_arousal"] > 0.5  # arousal is the tone's class: learnable from filterbanks
    cfg = load_config(table_config(table, task="regression"),
                      [s for s in sets if s != "--set"])
    model = train_final(cfg, tmp_path / "m", log=lambda *a: None)
    rec = Recognizer.from_pretrained(model, device="cpu")
    got = rec.predict_files(sorted((tiny_corpus / "spk1").glob("*.wav")))
    assert all(set(r["values"]) == {"arousal", "valence"} for r in got)
    low = [r["values"]["arousal"] for r in got if "/low_" in r["file"]]
    high = [r["values"]["arousal"] for r in got if "/high_" in r["file"]]
    assert min(high) > max(low)
