"""The Python API: predict on lists, rec(inputs, batch_size, top_k), rec.embed, Recognizer in dir(serkit)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import serkit
from serkit.audio import read_audio
from serkit.errors import SerkitError
from serkit.inference import Recognizer


@pytest.fixture(scope="module")
def rec(spk_model):
    return Recognizer.from_pretrained(spk_model, device="cpu")


@pytest.fixture(scope="module")
def clips(tiny_corpus):
    return [tiny_corpus / "spk2" / "high_3.wav", tiny_corpus / "spk4" / "low_1.wav"]


def test_predict_takes_a_list_of_paths_or_arrays(rec, clips):
    alone = [rec.predict(c) for c in clips]
    listed = rec.predict(clips)  # a list of paths: no sample_rate needed
    assert [r["file"] for r in listed] == [str(c) for c in clips]
    for a, b in zip(alone, listed, strict=True):
        assert a["label"] == b["label"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=2e-4)
    signals = [read_audio(c) for c in clips]
    arrays = rec.predict(signals, sample_rate=16000)
    assert [r["label"] for r in arrays] == [r["label"] for r in alone]
    pairs = rec.predict([(signals[0], 16000), str(clips[1])])  # (array, rate) pairs mix with paths
    assert [r["label"] for r in pairs] == [r["label"] for r in alone]
    with pytest.raises(SerkitError, match="sample_rate"):
        rec.predict(signals)
    with pytest.raises(SerkitError, match="missing.wav"):
        rec.predict([clips[0], clips[0].with_name("missing.wav")])


def test_call_batches_and_ranks_the_top_labels(rec, clips):
    results = rec(clips, batch_size=2, top_k=2)
    assert rec.batch_size == 16  # the call's batch size does not stick
    assert len(results) == 2
    for r in results:
        top = r["top_k"]
        assert len(top) == 2 and set(top[0]) == {"label", "score"}
        assert top[0]["label"] == r["label"] and top[0]["score"] >= top[1]["score"]
        assert top[1]["score"] == max(v for k, v in r["probabilities"].items() if k != r["label"])
    one = rec(str(clips[0]), top_k=1)
    assert len(one) == 1 and len(one[0]["top_k"]) == 1
    assert "top_k" not in rec(clips)[0]
    with pytest.raises(SerkitError, match="top_k"):
        rec(clips, top_k=0)


def test_embed_is_what_the_global_head_receives(rec, clips):
    layers, dim = len(rec.encoder_info["layers"]), None
    emb = rec.embed(clips[0])
    assert emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[0] == layers and emb.shape[1] % 2 == 0
    dim = emb.shape[1] // 2
    assert np.all(emb[:, dim:] >= 0)  # second half: standard deviations
    with torch.no_grad():
        logits = rec.heads["global"]({"pooled": torch.from_numpy(emb)[None]})["logits"]
    probs = torch.softmax(logits.float() / rec.temperature("global"), -1)[0].numpy()  # its calibrated probabilities
    expected = rec.predict(clips[0])
    assert expected["head"] == "global"
    assert probs == pytest.approx([expected["probabilities"][c] for c in rec.labels.classes], abs=2e-4)
    both = rec.embed([str(c) for c in clips])
    assert both.shape == (2, *emb.shape) and np.allclose(both[0], emb, atol=1e-5)
    assert not np.allclose(both[0], both[1])


def test_recognizer_is_listed_and_import_stays_light():
    assert "Recognizer" in dir(serkit) and serkit.Recognizer is Recognizer
    code = "import sys, serkit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
