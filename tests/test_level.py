"""Input level normalisation (``encoder.level_db``): a clip's active frames are scaled to one level, whatever its
gain, padding or silence, and a model trained that way predicts the same for a clip recorded louder or softer, in
torch and in its ONNX graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from serkit.config import load_config
from serkit.constants import SAMPLE_RATE
from serkit.errors import ConfigError
from serkit.level import MAX_PEAK, scale_to_level
from tests.train.conftest import (
    tiny_config,
    tiny_corpus,  # noqa: F401
)


def _active_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x ** 2)))


def _speech_like(seconds: float, amplitude: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t) * (1 + 0.1 * rng.standard_normal(len(t)))).astype(np.float32)


def test_the_active_frames_reach_the_level_whatever_the_gain_silence_or_padding():
    voiced = _speech_like(0.5, 0.01)
    clip = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), voiced, np.zeros(SAMPLE_RATE // 2, np.float32)])
    waves = torch.zeros(3, len(clip) + 4000)
    waves[0, :len(clip)] = torch.from_numpy(clip)
    waves[1, :len(clip)] = torch.from_numpy(clip * 20)     # 26 dB louder
    waves[2, :len(voiced)] = torch.from_numpy(voiced)      # no silence around it
    lengths = torch.tensor([len(clip), len(clip), len(voiced)])
    out = scale_to_level(waves, lengths, -23.0).numpy()
    start = SAMPLE_RATE
    for row in out[:2]:
        assert _active_db(row[start:start + len(voiced)]) == pytest.approx(-23.0, abs=0.3)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # the gain is gone
    np.testing.assert_allclose(out[2, :len(voiced)], out[0, start:start + len(voiced)], atol=1e-6)
    assert not out[:, len(clip):].any()                     # padding stays zero


def test_a_silent_signal_stays_silent_and_the_peak_is_capped():
    waves = torch.zeros(2, 8000)
    waves[1, 100] = 0.5                                     # one click: its level would need a huge gain
    out = scale_to_level(waves, torch.tensor([8000, 8000]), -3.0)
    assert not out[0].any()
    assert float(out[1].abs().max()) == pytest.approx(MAX_PEAK, rel=1e-5)


def test_level_db_is_checked_with_the_key_named(tiny_corpus):  # noqa: F811
    for bad in ("loud", 6.0, -100, True):
        with pytest.raises(ConfigError, match="encoder.level_db"):
            load_config(tiny_config(tiny_corpus, encoder={"level_db": bad}))
    assert load_config(tiny_config(tiny_corpus, encoder={"level_db": -23}))["encoder"]["level_db"] == -23


def test_a_model_trained_at_a_level_predicts_the_same_at_any_gain(tiny_corpus, tmp_path):  # noqa: F811
    """The store and the model folder record the level; ``predict`` and the ONNX graph apply it: the same clip at
    a fifth of its gain gets the same probabilities (and without a level it does not)."""
    import soundfile as sf

    from serkit.export import export_onnx
    from serkit.inference import Recognizer
    from serkit.inference.onnx import OnnxRecognizer
    from serkit.train.final import train_final

    clip, _ = sf.read(str(min((tiny_corpus / "spk4").glob("*.wav"))), dtype="float32")
    probs = {}
    for level in (None, -23.0):
        cfg = tiny_config(tiny_corpus, encoder={"level_db": level},
                          features={"cache_dir": str(tmp_path / "cache"), "level": "pooled", "layers": "all"},
                          train={"epochs": 2})
        cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
        model = train_final(cfg, tmp_path / f"m{level}", log=lambda *a: None)
        enc = json.loads((model / "encoder.json").read_text())
        assert enc.get("level_db") == level
        rec = Recognizer.from_pretrained(model)
        probs[level] = [np.array(list(rec.predict(x, SAMPLE_RATE)["probabilities"].values()))
                        for x in (clip, clip * 0.2)]
    assert sorted(p.name for p in (tmp_path / "cache" / "csv").iterdir()) == \
        ["fbank-40-native-all", "fbank-40-native-all-level-23"]
    np.testing.assert_allclose(probs[-23.0][0], probs[-23.0][1], atol=1e-4)
    assert np.abs(probs[None][0] - probs[None][1]).max() > 1e-3
    onnx_rec = OnnxRecognizer.from_folder(model, path=export_onnx(model, log=lambda *a: None), threads=1)
    for x, p in zip((clip, clip * 0.2), probs[-23.0], strict=True):
        got = np.array(list(onnx_rec.predict(x, SAMPLE_RATE)["probabilities"].values()))
        np.testing.assert_allclose(got, p, atol=1e-3)
