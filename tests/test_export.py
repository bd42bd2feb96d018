"""ONNX export: the graph computes what the torch Recognizer computes, and onnxruntime matches torch.

Stated tolerance: max abs difference of class probabilities ``serkit.export.TOLERANCE`` (1e-3).
"""

import json

import numpy as np
import pytest
import soundfile as sf

from serkit.cli import main
from serkit.constants import SAMPLE_RATE
from serkit.inference import Recognizer
from serkit.train.final import train_final
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401  (session fixture)

pytest.importorskip("onnxruntime")


def _tiny_whisper_dir(path):
    """A randomly initialised 1-block Whisper saved as a local model folder (no hub access)."""
    import torch
    import transformers

    from tests.encoders.tiny import tiny_config as encoder_config

    torch.manual_seed(0)
    config = encoder_config("whisper")
    config.encoder_layers = 1
    transformers.WhisperForAudioClassification(config).save_pretrained(path)
    return path


def _stats(rec, rng):
    """Some speaker's statistics ``(layers, dim)`` (any positive std exercises the same computation)."""
    shape = (len(rec.encoder_info["layers"]), rec.encoder.hidden_size)
    return rng.normal(0, 0.1, shape).astype(np.float32), rng.uniform(0.5, 2.0, shape).astype(np.float32)


def _probabilities(result) -> np.ndarray:
    return np.array(list(result["probabilities"].values()))


@pytest.mark.parametrize("features", [{"level": "pooled", "normalize": "none"},
                                      {"level": "pooled", "normalize": "speaker"},
                                      {"level": "frames", "normalize": "speaker"}])
def test_graph_module_computes_what_the_recognizer_predicts(tiny_corpus, tmp_path, features):  # noqa: F811
    import torch

    from serkit.cache import pooled_statistics
    from serkit.encoders.runner import encode_signals
    from serkit.export import graph_module

    cfg = tiny_config(tiny_corpus, features=features, train={"epochs": 1})
    if features["level"] == "pooled":
        cfg["model"] = {"name": "pooled_mlp", "layers": "all", "hidden": [], "dropout": 0.0}
    rec = Recognizer.from_pretrained(train_final(cfg, tmp_path / "m", log=lambda *a: None))
    graph = graph_module(rec)
    x, _ = sf.read(str(tiny_corpus / "spk0" / "high_2.wav"), dtype="float32")
    stats = _stats(rec, np.random.default_rng(0)) if graph.normalize else None
    inputs = [torch.from_numpy(x)[None]] + ([torch.from_numpy(s) for s in stats] if stats else [])
    with torch.no_grad():
        scores, pooled, frames = graph(*inputs)
    want = rec.predict(x, SAMPLE_RATE, enroll=stats)
    np.testing.assert_allclose(scores.numpy(), _probabilities(want), atol=1e-4)  # results round to 1e-4
    ((_, feats),) = list(encode_signals(rec.encoder, [("x", x)], rec.encoder_info["layers"]))
    np.testing.assert_allclose(pooled.numpy(), pooled_statistics(feats).numpy(), atol=1e-5)
    assert int(frames) == feats.shape[1]


def test_export_whisper_model_and_onnxruntime_matches_torch(tiny_corpus, tmp_path, capsys):  # noqa: F811
    """A Whisper (native length) frame-level, speaker-normalised model: the hardest path (dynamic frame axis,
    float16 rounding, statistics inputs). Exported with the CLI; onnxruntime's probabilities compared with the
    torch Recognizer's on clips of several lengths off the frame grid, and on a 30 s signal (the longest)."""
    import onnxruntime as ort
    import torch

    from serkit.export import METADATA_KEY, TOLERANCE, graph_module

    enc = _tiny_whisper_dir(tmp_path / "tiny-whisper")
    cfg = tiny_config(tiny_corpus, encoder={"id": str(enc), "layers": "all"},
                      features={"level": "frames", "normalize": "speaker", "cache_dir": str(tmp_path / "cache")},
                      train={"epochs": 1})
    model_dir = train_final(cfg, tmp_path / "model", log=lambda *a: None)
    capsys.readouterr()
    assert main(["export", str(model_dir), "--format", "onnx"]) == 0
    assert "max |diff|" in capsys.readouterr().out

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert [i.name for i in session.get_inputs()] == meta["inputs"] == ["waveform", "speaker_mean", "speaker_std"]
    assert meta["classes"] == ["high", "low", "mid"] and meta["check"]["max_abs_diff"] <= TOLERANCE
    rec = Recognizer.from_pretrained(model_dir)
    graph = graph_module(rec)
    stats = _stats(rec, np.random.default_rng(1))
    files = sorted((tiny_corpus / "spk3").glob("*.wav"))[:4]
    signals = [sf.read(str(f), dtype="float32")[0][:-37] for f in files]  # 0.4-0.7 s, cut off the frame grid
    signals.append(np.tile(signals[0], 80)[: 30 * SAMPLE_RATE - 77])  # about Whisper's longest input
    diffs = []
    for x in signals:
        assert len(x) % 320  # off the 20 ms frame grid
        got, pooled, frames = session.run(None, {"waveform": x[None], "speaker_mean": stats[0], "speaker_std": stats[1]})
        with torch.no_grad():
            ref = graph(torch.from_numpy(x)[None], *map(torch.from_numpy, stats))
        diffs.append(np.abs(got - ref[0].numpy()).max())
        np.testing.assert_allclose(pooled, ref[1].numpy(), rtol=1e-4, atol=1e-4)
        assert int(frames) == int(ref[2]) == int(rec.encoder.num_frames(torch.tensor([len(x)]))[0])
        if len(x) <= rec.window * SAMPLE_RATE:  # one window: the Recognizer's own result
            want = rec.predict(x, SAMPLE_RATE, enroll=stats)
            diffs.append(np.abs(got - _probabilities(want)).max() - 1e-4)  # results are rounded to 1e-4
            assert rec.labels.classes[int(np.argmax(got))] == want["label"]
    assert max(diffs) <= TOLERANCE, diffs


def test_export_errors(tiny_corpus, tmp_path, capsys):  # noqa: F811
    capsys.readouterr()
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "not a serkit model folder" in capsys.readouterr().err
    model_dir = train_final(tiny_config(tiny_corpus, train={"epochs": 1}), tmp_path / "m", log=lambda *a: None)
    capsys.readouterr()
    assert main(["export", str(model_dir), "--format", "tflite"]) == 2
    assert capsys.readouterr().err.startswith("serkit export: error: --format 'tflite'")
