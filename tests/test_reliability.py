"""Hostile inputs and misuse: nothing poisons a store or a model, nothing hangs, nothing overwrites (issue 28).

Each test names the guarantee it holds; docs/reliability.md lists them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serkit.audio import MAX_AMPLITUDE, prepare_signal, read_audio
from serkit.errors import AudioError, SerkitError
from tests.train.conftest import model_dir, tiny_config, tiny_corpus  # noqa: F401  (fixtures)

SR = 16_000


def _loud(path, amplitude=1e19):
    """The issue's reproduction: a finite float32 WAV at about ``amplitude`` peak."""
    sf.write(str(path), (amplitude * np.sin(np.arange(32000) / 5)).astype("float32"), SR, subtype="FLOAT")
    return path


def _tone(path, seconds=1.0, amp=0.3):
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (amp * np.sin(2 * np.pi * 220 * t)).astype("float32"), SR)
    return path


# --- 1. non-finite and absurd signals -------------------------------------------------------------------------
def test_loud_float_wav_is_a_named_error_when_read(tmp_path):
    with pytest.raises(AudioError, match="out of range: peak amplitude 1.0e\\+19"):
        read_audio(_loud(tmp_path / "loud.wav"))
    with pytest.raises(AudioError, match="out of range"):
        prepare_signal(np.full(8000, 2 * MAX_AMPLITUDE, dtype=np.float32), SR, name="array")
    with pytest.raises(AudioError, match="non-finite"):  # two channels of 3e38 sum to inf: refused per channel
        prepare_signal(np.full((8000, 2), np.inf, dtype=np.float32), SR, name="array")
    loud_but_sane = 0.9 * MAX_AMPLITUDE * np.sin(np.arange(8000) / 5)
    assert np.isfinite(prepare_signal(loud_but_sane, SR)).all()


def test_check_reports_a_loud_file_as_an_error_not_notes(tmp_path):
    from serkit.check import check_file, fatal

    rep = check_file("loud", str(_loud(tmp_path / "loud.wav")))
    assert "out of range" in rep.problems and fatal(";".join(rep.problems)) == ["out of range"]
    assert "mostly silent" not in rep.problems
    ok = check_file("ok", str(_tone(tmp_path / "ok.wav")))
    assert not fatal(";".join(ok.problems))


def test_check_cli_strict_fails_on_a_loud_file(tmp_path, capsys):
    from serkit.cli import main

    table = tmp_path / "m.csv"
    pd.DataFrame({"id": ["a", "b"], "path": [str(_tone(tmp_path / "a.wav")), str(_loud(tmp_path / "b.wav"))],
                  "emotion": ["x", "y"], "duration": [1.0, 2.0], "speaker": ["s", "s"], "gender": ["female"] * 2}
                 ).to_csv(table, index=False)
    assert main(["check", str(table), "--strict"]) == 1
    assert "out of range" in capsys.readouterr().out


def test_feature_store_refuses_non_finite_features(tmp_path):
    from serkit.cache import FeatureStore, NonFiniteFeatures

    store = FeatureStore.create(tmp_path / "store", {"encoder": "x", "layers": [0], "mode": "native",
                                                     "hidden_size": 4, "frame_rate": 50.0})
    feats = np.zeros((1, 5, 4), dtype=np.float32)
    feats[0, 2, 1] = np.nan
    with pytest.raises(NonFiniteFeatures, match="u1: non-finite features"):
        store.write("u1", "h1", feats, 0.1)
    big = np.full((1, 5, 4), 1e6, dtype=np.float32)  # finite in float32, inf in the float16 frames
    with pytest.raises(NonFiniteFeatures):
        store.write("u2", "h2", big, 0.1)
    assert len(FeatureStore(tmp_path / "store")) == 0 and not store.has_hash("h1") and not store.has_hash("h2")
    store.write("u3", "h3", np.ones((1, 5, 4), dtype=np.float32), 0.1)
    assert FeatureStore(tmp_path / "store").ids() == ["u3"]


def test_extract_skips_a_loud_file_with_its_reason(tmp_path):
    from serkit.cache import FeatureStore, extract_to_cache

    df = pd.DataFrame({"id": ["ok", "loud"], "path": [str(_tone(tmp_path / "ok.wav")),
                                                       str(_loud(tmp_path / "loud.wav"))]})
    rep = extract_to_cache(df, "fbank-40", "all", tmp_path / "store", progress=False)
    assert rep.computed == 1 and [f[0] for f in rep.failures] == ["loud"]
    errors = json.loads((tmp_path / "store" / "errors.json").read_text())
    assert errors[0]["id"] == "loud" and errors[0]["problem"].startswith("out of range")
    store = FeatureStore(tmp_path / "store")
    assert store.ids() == ["ok"] and np.isfinite(store.load("ok")).all()


def test_extract_records_non_finite_encoder_output_as_a_failure(tmp_path, monkeypatch):
    from serkit.cache import FeatureStore, extract_to_cache
    from serkit.encoders import runner

    real = runner.encode_signals

    def poisoned(*args, **kwargs):
        for utt_id, feats in real(*args, **kwargs):
            yield utt_id, (feats * np.nan if utt_id == "b" else feats)

    monkeypatch.setattr(runner, "encode_signals", poisoned)
    df = pd.DataFrame({"id": ["a", "b"], "path": [str(_tone(tmp_path / "a.wav")), str(_tone(tmp_path / "b.wav",
                                                                                            amp=0.2))]})
    rep = extract_to_cache(df, "fbank-40", "all", tmp_path / "store", progress=False)
    assert [f[0] for f in rep.failures] == ["b"] and "non-finite features" in rep.failures[0][2]
    assert FeatureStore(tmp_path / "store").ids() == ["a"]


def test_predict_refuses_loud_audio_and_never_emits_nan(model_dir, tmp_path, monkeypatch):  # noqa: F811
    from serkit.inference import Recognizer

    rec = Recognizer.from_pretrained(model_dir, device="cpu")
    with pytest.raises(SerkitError, match="out of range"):
        rec.predict(_loud(tmp_path / "loud.wav"))
    with pytest.raises(SerkitError, match="out of range"):  # the Python API with an array
        rec.predict(1e20 * np.sin(np.arange(16000) / 5), SR)
    ok = _tone(tmp_path / "ok.wav")
    assert np.isfinite(list(rec.predict(ok)["probabilities"].values())).all()
    monkeypatch.setattr(Recognizer, "_score", lambda self, head, inputs, stats: np.full(
        (len(inputs), 3), np.nan, dtype=np.float32))
    with pytest.raises(SerkitError, match="non-finite model output"):
        rec.predict(ok)
    (res,) = rec.predict_files([ok])
    assert "probabilities" not in res and "non-finite model output" in res["error"]
