"""Check, extract and predict agree on unusable audio: what `serkit check` calls fatal is never encoded."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serkit.audio import MIN_SECONDS, audio_info, read_audio
from serkit.check import check_manifest, fatal
from serkit.errors import AudioError
from serkit.features.extraction import extract_to_cache
from serkit.features.store import FeatureStore
from tests.train.conftest import model_dir, tiny_corpus  # noqa: F401

SR = 16_000


def _tone(seconds, sr=SR, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
            ).astype(np.float32)


@pytest.fixture
def degenerate(tmp_path):
    """One good file and one of each kind of unusable audio; returns the manifest."""
    files = {}

    def put(name, data, sr=SR, **kw):
        files[name] = tmp_path / f"{name}.wav"
        sf.write(files[name], data, sr, **kw)

    put("good", _tone(1.0))
    put("silent", np.zeros(SR, np.float32))
    put("one_ms", _tone(0.001))
    x = _tone(1.0)
    put("phase_cancelled", np.stack([x, -x], axis=1))  # loud channels that sum to nothing
    put("one_hz", _tone(1.0)[:1000], sr=1, subtype="PCM_16")  # 1000 samples declared as 1000 s
    put("truncated", _tone(1.0), subtype="PCM_16")
    raw = files["truncated"].read_bytes()
    files["truncated"].write_bytes(raw[: len(raw) // 2])  # the data chunk ends half-way through
    return pd.DataFrame({"id": list(files), "path": [str(p) for p in files.values()]})


def test_header_checks(degenerate):
    paths = dict(zip(degenerate["id"], degenerate["path"], strict=True))
    with pytest.raises(AudioError, match="bad sample rate: the header declares 1 Hz"):
        read_audio(paths["one_hz"])
    with pytest.raises(AudioError, match="truncated: the header declares 16000 frames"):
        read_audio(paths["truncated"])
    with pytest.raises(AudioError, match="truncated"):
        audio_info(paths["truncated"])
    assert audio_info(paths["good"])["frames"] == SR


def test_check_and_extract_agree(degenerate, tmp_path):
    report = check_manifest(degenerate, progress=False).set_index("id")
    verdict = {uid: fatal(p) for uid, p in report["problems"].items()}
    assert verdict == {"good": [], "silent": ["silent"], "one_ms": ["too short to use"],
                       "phase_cancelled": ["silent"], "one_hz": ["bad sample rate"], "truncated": ["truncated"]}
    assert "cancel" in report.loc["phase_cancelled", "notes"]

    rep = extract_to_cache(degenerate, "fbank-40", "all", tmp_path / "store", progress=False)
    assert FeatureStore(tmp_path / "store").ids() == ["good"]
    skipped = {uid: problem for uid, _, problem in rep.failures}
    assert {uid: p.split(":")[0] for uid, p in skipped.items()} == \
        {uid: v[0] for uid, v in verdict.items() if v}, skipped
    errors = json.loads((tmp_path / "store" / "errors.json").read_text())
    assert {e["id"]: e["problem"] for e in errors} == skipped


def test_predict_refuses_clips_too_short_to_carry_an_emotion(model_dir, tmp_path):  # noqa: F811
    from serkit.inference import Recognizer

    rec = Recognizer.from_pretrained(model_dir)
    sf.write(tmp_path / "ten_ms.wav", _tone(0.01), SR)
    sf.write(tmp_path / "one_s.wav", _tone(1.0), SR)
    short, ok = rec.predict_files([tmp_path / "ten_ms.wav", tmp_path / "one_s.wav"])
    assert "label" not in short and "too short to use" in short["error"] and f"{MIN_SECONDS} s" in short["error"]
    assert ok["label"] in ("high", "low", "mid")
    with pytest.raises(AudioError, match="too short to use"):
        rec.predict(_tone(0.2), SR)
