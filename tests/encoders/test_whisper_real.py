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


def _relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.float(), ref.float()
    return float((x - ref).norm() / ref.norm())


def test_whisper_tiny_en_bf16_matches_stock_autocast(offline_hub):
    """serkit's fused inference block with bf16 weights (float32 residual stream) against the stock encoder under
    ``torch.autocast("cpu", bfloat16)``, both against the stock fp32 encoder.

    Tolerance: per hidden state, serkit-bf16 within 3% (relative Frobenius error) of stock-autocast, and its error
    against fp32 at most twice stock-autocast's own plus 0.002 (bf16 keeps 8 mantissa bits: ~0.4% per rounding);
    the utterance-mean vectors (what pooled features keep) with cosine >= 0.9995 to fp32 and a cosine distance at
    most twice stock-autocast's (measured: relative errors 0.003-0.029 against stock's 0.002-0.025, cosine
    >= 0.99982 against stock's >= 0.99987).
    """
    from transformers import WhisperFeatureExtractor

    from serkit.encoders import load_encoder

    rng = np.random.default_rng(1)
    t = np.arange(int(1.7 * 16000)) / 16000
    a = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(len(t)))
    a = a.astype(np.float32)
    fp32 = load_encoder("whisper-tiny.en", mode="padded")
    bf16 = load_encoder("whisper-tiny.en", mode="padded", dtype=torch.bfloat16)
    assert bf16.encoder.layers[0].fc1.weight.dtype == torch.bfloat16
    assert bf16.logmel.mel_filters.dtype == torch.float32  # the front end stays fp32
    mel = WhisperFeatureExtractor.from_pretrained("openai/whisper-tiny.en")(
        a, sampling_rate=16000, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        ref = fp32.encoder(mel, output_hidden_states=True).hidden_states
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stock = fp32.encoder(mel, output_hidden_states=True).hidden_states
        ours = bf16(torch.from_numpy(a)[None])
    n = int(ours.frame_mask.sum())
    assert n == 85
    for i, (r, s, o) in enumerate(zip(ref, stock, ours.hidden_states, strict=True)):
        r, s, o = r[0, :n], s[0, :n], o[0, :n]
        stock_err = _relative_error(s, r)
        assert _relative_error(o, s) < 0.03, i
        assert _relative_error(o, r) <= 2 * stock_err + 0.002, (i, _relative_error(o, r), stock_err)
        cos = torch.nn.functional.cosine_similarity(o.float().mean(0), r.mean(0), dim=0)
        stock_cos = torch.nn.functional.cosine_similarity(s.float().mean(0), r.mean(0), dim=0)
        assert float(cos) >= 0.9995 and 1 - float(cos) <= 2 * (1 - float(stock_cos)) + 1e-5, i
