"""openai/whisper-tiny.en from the shared offline hub cache against the stock transformers pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch


def _hf_cache() -> Path | None:
    env = os.environ.get("HF_HUB_CACHE")
    candidates = ([Path(env)] if env else []) + [
        Path(__file__).resolve().parents[2].parent / "shared" / "hf-cache"
    ]
    for c in candidates:
        if (c / "models--openai--whisper-tiny.en").is_dir():
            return c
    return None


CACHE = _hf_cache()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CACHE is None, reason="no ../shared/hf-cache with openai/whisper-tiny.en (set HF_HUB_CACHE)"
    ),
]


@pytest.fixture(scope="module")
def offline_hub():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(CACHE))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


def test_whisper_tiny_en_native_and_padded(offline_hub):
    from transformers import WhisperFeatureExtractor

    from serkit.encoders import load_encoder

    rng = np.random.default_rng(0)
    t = np.arange(int(2.3 * 16000)) / 16000
    a = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    b = a[: 16000 + 480].copy()

    padded = load_encoder("whisper-tiny.en", mode="padded")
    assert padded.name == "openai/whisper-tiny.en" and len(padded.revision) == 40
    assert padded.num_layers == 5 and padded.hidden_size == 384
    fe = WhisperFeatureExtractor.from_pretrained("openai/whisper-tiny.en")
    with torch.no_grad():
        stock = padded.encoder(
            fe(a, sampling_rate=16000, return_tensors="pt").input_features, output_hidden_states=True
        )
        ours = padded(torch.from_numpy(a)[None])
    assert len(stock.hidden_states) == len(ours.hidden_states) == 5
    for s, o in zip(stock.hidden_states, ours.hidden_states, strict=True):
        torch.testing.assert_close(o, s, atol=1e-4, rtol=1e-4)
    assert int(ours.frame_mask.sum()) == 115  # 2.3 s at 50 Hz

    native = load_encoder("whisper-tiny.en")
    with torch.no_grad():
        single = [native(torch.from_numpy(x)[None]) for x in (a, b)]
        waves = torch.zeros(2, len(a))
        waves[0], waves[1, : len(b)] = torch.from_numpy(a), torch.from_numpy(b)
        batch = native(waves, torch.tensor([len(a), len(b)]))
    assert single[0].hidden_states[-1].shape == (1, 115, 384)
    for i, one in enumerate(single):
        n = one.hidden_states[0].shape[1]
        for s, o in zip(one.hidden_states, batch.hidden_states, strict=True):
            torch.testing.assert_close(o[i, :n], s[0], atol=2e-4, rtol=1e-4)
    # the input layer (conv + positions) is the same in both modes up to the edge frame, where the convs see
    # padding; deeper layers differ (no 30 s context)
    torch.testing.assert_close(
        single[0].hidden_states[0][0, :114], ours.hidden_states[0][0, :114], atol=1e-4, rtol=1e-4
    )
