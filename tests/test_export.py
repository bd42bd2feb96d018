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


def _run_graph(graph, feed):
    import torch

    with torch.no_grad():
        out = graph(*(torch.from_numpy(feed[k]) for k in graph.input_names()))
    return dict(zip(graph.output_names(), (o.numpy() for o in out), strict=True))


def _owned_pooled(feats, own, n):
    """The Recognizer's rule for the frames a window owns (samples own[0]:own[1] of n)."""
    from serkit.features.pooling import pooled_statistics

    t = feats.shape[1]
    fa = round(own[0] / n * t)
    fb = max(round(own[1] / n * t), fa + 1)
    part = feats[:, fa:min(fb, t)]
    return pooled_statistics(part).numpy(), part.shape[1]


@pytest.mark.parametrize("features", [{"level": "pooled", "normalize": "none"},
                                      {"level": "pooled", "normalize": "speaker"},
                                      {"level": "frames", "normalize": "speaker"},
                                      {"level": "frames", "normalize": "speaker", "layers": "-1",
                                       "frame_norm": "layer", "pool_frames": 2}])
def test_graph_module_computes_what_the_recognizer_predicts(tiny_corpus, tmp_path, features):  # noqa: F811
    from serkit.encoders.runner import encode_signals
    from serkit.export import graph_inputs, graph_module

    cfg = tiny_config(tiny_corpus, features=features, train={"epochs": 1}, **_encoder_for(features, tmp_path))
    if features["level"] == "pooled":
        cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
        cfg["features"]["layers"] = "all"
    rec = Recognizer.from_pretrained(train_final(cfg, tmp_path / "m", log=lambda *a: None))
    graph = graph_module(rec)
    x, _ = sf.read(str(tiny_corpus / "spk0" / "high_2.wav"), dtype="float32")
    stats = _stats(rec, np.random.default_rng(0)) if graph.normalize else None
    out = _run_graph(graph, graph_inputs(graph, x, stats=stats))
    head = graph.head_names[0]
    want = rec.predict(x, SAMPLE_RATE, enroll=stats)
    np.testing.assert_allclose(out[f"scores_{head}"], _probabilities(want), atol=1e-4)  # results round to 1e-4
    ((_, feats),) = list(encode_signals(rec.encoder, [("x", x)], rec.encoder_info["layers"]))
    for own in [(0, len(x)), (1234, 5555), (len(x) - 100, len(x))]:
        out = _run_graph(graph, graph_inputs(graph, x, own=own, stats=stats))
        ref, frames = _owned_pooled(feats, own, len(x))
        np.testing.assert_allclose(out["pooled"], ref, atol=1e-5)
        assert int(out["frames"]) == frames


def test_export_whisper_model_and_onnxruntime_matches_torch(tiny_corpus, tmp_path, capsys):  # noqa: F811
    """A Whisper (native length) frame-level, speaker-normalised model: the hardest path (dynamic frame axis,
    float16 rounding, statistics inputs). Exported with the CLI; onnxruntime's outputs compared with torch's
    graph and with the Recognizer's predictions on clips of several lengths off the frame grid, and on a
    30 s signal (Whisper's longest)."""
    import onnxruntime as ort
    import torch

    from serkit.export import TOLERANCE, graph_inputs, graph_module
    from serkit.model_folder import METADATA_KEY

    enc = _tiny_whisper_dir(tmp_path / "tiny-whisper")
    cfg = tiny_config(tiny_corpus, encoder={"id": str(enc), "layers": "all"},
                      features={"level": "frames", "normalize": "speaker", "cache_dir": str(tmp_path / "cache")},
                      train={"epochs": 1}, predict={"window_seconds": 1.0, "hop_seconds": 0.5})
    model_dir = train_final(cfg, tmp_path / "model", log=lambda *a: None)
    capsys.readouterr()
    assert main(["export", str(model_dir), "--format", "onnx"]) == 0
    assert "max |diff|" in capsys.readouterr().out

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    rec = Recognizer.from_pretrained(model_dir)
    graph = graph_module(rec)
    assert [i.name for i in session.get_inputs()] == meta["inputs"] == graph.input_names()
    assert [o.name for o in session.get_outputs()] == meta["outputs"] == graph.output_names()
    assert meta["classes"] == ["high", "low", "mid"] and meta["check"]["max_abs_diff"] <= TOLERANCE
    stats = _stats(rec, np.random.default_rng(1))
    files = sorted((tiny_corpus / "spk3").glob("*.wav"))[:4]
    signals = [sf.read(str(f), dtype="float32")[0][:-37] for f in files]  # 0.4-0.7 s, cut off the frame grid
    signals.append(np.tile(signals[0], 80)[: 30 * SAMPLE_RATE - 77])  # about Whisper's longest input
    diffs = []
    for x in signals:
        assert len(x) % 320  # off the 20 ms frame grid
        feed = graph_inputs(graph, x, own=(len(x) // 4, len(x)), stats=stats)
        got = dict(zip(graph.output_names(), session.run(None, feed), strict=True))
        ref = _run_graph(graph, feed)
        diffs.append(np.abs(got["scores_speaker"] - ref["scores_speaker"]).max())
        np.testing.assert_allclose(got["pooled"], ref["pooled"], rtol=1e-4, atol=1e-4)
        assert int(got["frames"]) == int(ref["frames"]) > 0
        frames = int(rec.encoder.num_frames(torch.tensor([len(x)]))[0])
        assert abs(int(got["frames"]) - 0.75 * frames) <= 1
        if len(x) <= rec.window * SAMPLE_RATE:  # one window: the Recognizer's own result
            want = rec.predict(x, SAMPLE_RATE, enroll=stats)
            diffs.append(np.abs(got["scores_speaker"] - _probabilities(want)).max() - 1e-4)  # rounded to 1e-4
            assert rec.labels.classes[int(np.argmax(got["scores_speaker"]))] == want["label"]
    assert max(diffs) <= TOLERANCE, diffs

    # the same through the Recognizer API: files, a long file scored in windows, each head
    onnx_rec = Recognizer.from_pretrained(model_dir, backend="onnx")
    assert onnx_rec.backend == "onnx" and set(onnx_rec.heads) == set(rec.heads) == {"speaker", "global"}
    long = tmp_path / "long.wav"
    sf.write(str(long), np.concatenate(signals[:4] * 2), SAMPLE_RATE)  # about 4 s: 7 windows
    enroll = sorted((tiny_corpus / "spk3").glob("*.wav")) * 2  # at least 10 s of the speaker
    for kwargs in ({"enroll": enroll}, {"same_speaker": True}, {}):
        a = rec.predict_files([*files, long], **kwargs)
        b = onnx_rec.predict_files([*files, long], **kwargs)
        assert [r["head"] for r in a] == [r["head"] for r in b], kwargs
        assert len(a[-1]["windows"]) == len(b[-1]["windows"]) >= 6
        diff = max(abs(ra["probabilities"][c] - rb["probabilities"][c])
                   for ra, rb in zip(a, b, strict=True) for c in ra["probabilities"])
        assert diff <= TOLERANCE and [r["label"] for r in a] == [r["label"] for r in b], (kwargs, diff)
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(long), "--backend", "onnx", "--enroll", *map(str, enroll),
                 "--no-progress"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["head"] == "speaker" and row["label"] == rec.predict(long, enroll=enroll)["label"]
    sig = [sf.read(str(f), dtype="float32")[0] for f in enroll]
    for s_torch, s_onnx in zip(rec.speaker_statistics(sig), onnx_rec.speaker_statistics(sig), strict=True):
        np.testing.assert_allclose(s_onnx, s_torch, rtol=1e-4, atol=1e-5)


def test_export_global_head_model_and_errors(tiny_corpus, tmp_path, capsys):  # noqa: F811
    """A filterbank frame-level model with a global head (no speaker inputs); the errors a user can meet."""
    from serkit.errors import SerkitError
    from serkit.inference.onnx import OnnxRecognizer

    capsys.readouterr()
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "not a serkit model folder" in capsys.readouterr().err
    model_dir = train_final(tiny_config(tiny_corpus, train={"epochs": 1}), tmp_path / "m", log=lambda *a: None)
    capsys.readouterr()
    assert main(["export", str(model_dir), "--format", "tflite"]) == 2
    assert capsys.readouterr().err.startswith("serkit export: error: --format 'tflite'")
    with pytest.raises(SerkitError, match="serkit export"):
        OnnxRecognizer.from_folder(model_dir)
    out = tmp_path / "elsewhere.onnx"
    assert main(["export", str(model_dir), "--out", str(out)]) == 0
    onnx_rec = OnnxRecognizer.from_folder(model_dir, path=out, threads=1)
    assert onnx_rec.inputs == ["waveform", "own"] and list(onnx_rec.heads) == ["global"]
    files = sorted((tiny_corpus / "spk4").glob("*.wav"))
    a, b = Recognizer.from_pretrained(model_dir).predict_files(files), onnx_rec.predict_files(files)
    assert max(abs(np.array(list(x["probabilities"].values())) - _probabilities(y)).max()
               for x, y in zip(a, b, strict=True)) <= 1e-3
    with pytest.raises(SerkitError, match="shorter than the exported graph's minimum"):
        onnx_rec.run_window(np.ones(800, dtype=np.float32) * 0.1)


def _encoder_for(features: dict, tmp_path) -> dict:
    """A tiny 2-hidden-state Whisper where the features choose layers (the filterbank has one), else the default."""
    if "layers" not in features:
        return {}
    enc = _tiny_whisper_dir(tmp_path / "tiny-whisper")
    return {"encoder": {"id": str(enc), "layers": "all"}}


@pytest.mark.parametrize("features", [{"level": "pooled", "normalize": "speaker", "layers": "-1"},
                                      {"level": "frames", "normalize": "speaker", "layers": "-1",
                                       "frame_norm": "layer", "pool_frames": 2}])
def test_runner_recognizer_and_graph_apply_one_feature_stage(tiny_corpus, tmp_path, features):  # noqa: F811
    """The training datasets, the Recognizer and the ONNX graph hold the same feature-stage module
    (:class:`serkit.data.feature_transform.FeatureTransform`) and give the same output on the same input."""
    import pandas as pd
    import torch

    from serkit.data.features import FeatureDataset
    from serkit.data.labels import LabelMap
    from serkit.data.normalize import SpeakerNormalizer
    from serkit.export import graph_module
    from serkit.train.feature_stage import FeatureStage

    cfg = tiny_config(tiny_corpus, features={**features, "cache_dir": str(tmp_path / "cache")}, train={"epochs": 1},
                      **_encoder_for(features, tmp_path))
    if features["level"] == "pooled":
        cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    model_dir = train_final(cfg, tmp_path / "m", log=lambda *a: None)
    rec = Recognizer.from_pretrained(model_dir)
    graph = graph_module(rec)
    n_layers = len(rec.encoder_info["layers"])
    dim = rec.encoder.hidden_size
    rng = np.random.default_rng(3)
    stored = (rng.normal(0, 1, (n_layers, 2 * dim)) if features["level"] == "pooled"
              else rng.normal(0, 1, (n_layers, 11, dim))).astype(np.float32 if features["level"] == "pooled"
                                                                  else np.float16)
    mean = rng.normal(0, 0.1, (n_layers, dim)).astype(np.float32)
    std = rng.uniform(0.5, 2, (n_layers, dim)).astype(np.float32)

    class Store:  # one utterance, as a feature store serves it
        root = "mem://one"

        def __init__(self):
            self.layers = list(range(n_layers))

        def pooled(self, uid):
            return stored

        def load(self, uid):
            return stored

    manifest = pd.DataFrame({"id": ["u"], "speaker": ["s"], "emotion": ["high"], "gender": ["f"]})
    stage = FeatureStage({**rec.cfg["features"], "normalize": "none"}, Store(), manifest, ["u"])
    ds = FeatureDataset(Store(), manifest, ["u"], LabelMap.fit(manifest, "classification", []),
                        level=features["level"], layers=stage.indices, frame_norm=stage.frame_norm,
                        pool_frames=stage.pool, normalizer=SpeakerNormalizer({"s": (mean, std)}), preload=False)
    assert ds.transform.describe() == rec.transform.describe() == graph.transform.describe()
    runner = ds[0]["features" if features["level"] == "frames" else "pooled"].astype(np.float32)
    with torch.no_grad():
        args = (torch.from_numpy(stored)[None], torch.from_numpy(mean), torch.from_numpy(std))
        by_rec = rec.transform(*args)[0].float().numpy()
        by_graph = graph.transform(*args)[0].float().numpy()
    np.testing.assert_allclose(by_rec, runner, atol=1e-5)
    np.testing.assert_allclose(by_graph, runner, atol=1e-5)
    # and the whole model, feature stage included, exports within the tolerance (export_onnx checks it)
    from serkit.export import export_onnx

    assert export_onnx(model_dir, log=lambda *a: None).exists()
