"""Encoders on tiny random configs: hidden states, frames, masks, batching, gradients, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serkit.encoders import encode_signals, load_encoder
from serkit.encoders.runner import plan_chunks, stitch

from .tiny import FAMILIES, tiny_config, tiny_encoder

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")

SR = 16_000


@pytest.fixture(scope="module")
def encoders():
    return {f: tiny_encoder(f) for f in FAMILIES}


def _signals(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def _single(enc, x: np.ndarray):
    with torch.no_grad():
        return enc(torch.from_numpy(x)[None], torch.tensor([len(x)]))


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_and_frames(encoders, family):
    enc = encoders[family]
    cfg = tiny_config(family)
    n_blocks = cfg.encoder_layers if family == "whisper" else cfg.num_hidden_layers
    assert enc.num_layers == n_blocks + 1
    assert enc.hidden_size == 32 and enc.frame_rate == 50.0 and enc.revision == "random"
    out = _single(enc, _signals([SR])[0])
    assert len(out.hidden_states) == enc.num_layers
    frames = 50 if family == "whisper" else 49  # 1 s: whisper ceil(100/2); CNN front end (16000-400)//320+1
    assert all(h.shape == (1, frames, 32) for h in out.hidden_states)
    assert out.frame_mask.shape == (1, frames) and bool(out.frame_mask.all())
    assert int(enc.num_frames(torch.tensor([SR]))[0]) == frames
    assert out.frame_rate == 50.0


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_matches_single_files(encoders, family):
    enc = encoders[family]
    sigs = _signals([SR + 517, 9000, 12345])
    if not enc.padding_invariant:  # group norm: padding changes outputs, only equal lengths batch
        assert family in ("hubert", "data2vec")
        sigs = _signals([9000, 9000, 9000])
    waves = torch.zeros(len(sigs), max(map(len, sigs)))
    for i, s in enumerate(sigs):
        waves[i, : len(s)] = torch.from_numpy(s)
    with torch.no_grad():
        batch = enc(waves, torch.tensor([len(s) for s in sigs]))
    for i, s in enumerate(sigs):
        one = _single(enc, s)
        n = one.hidden_states[0].shape[1]
        assert int(batch.frame_mask[i].sum()) == n
        for a, b in zip(one.hidden_states, batch.hidden_states, strict=True):
            torch.testing.assert_close(b[i, :n], a[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["hubert", "wavlm", "data2vec", "whisper"])
def test_runner_buckets_and_matches_single_files(encoders, family):
    enc = encoders[family]
    sigs = _signals([8000, 12000, 8000, 20000, 12000])
    got = dict(encode_signals(enc, enumerate(sigs), [0, enc.num_layers - 1], batch_seconds=10))
    assert sorted(got) == list(range(5))
    for i, s in enumerate(sigs):
        one = _single(enc, s)
        torch.testing.assert_close(got[i][1], one.hidden_states[-1][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[i][0], one.hidden_states[0][0], atol=1e-4, rtol=1e-4)


def test_whisper_features_do_not_depend_on_batch_neighbours(encoders):
    """Bit for bit: a clip's cached features are what it gives alone, whatever else a run extracts with it (a
    resumed or partly cached extraction batches it with other neighbours)."""
    enc = encoders["whisper"]
    sigs = _signals([8000, 12000, 9100, 20000, 12000, 15500], seed=3)
    layers = list(range(enc.num_layers))
    alone = dict(encode_signals(enc, enumerate(sigs), layers, batch_seconds=1e-3))
    together = dict(encode_signals(enc, enumerate(sigs), layers, batch_seconds=100))
    others = dict(encode_signals(enc, [(i, sigs[i]) for i in (0, 2, 5)], layers, batch_seconds=100))
    for i in range(len(sigs)):
        assert torch.equal(together[i], alone[i])
        if i in others:
            assert torch.equal(others[i], alone[i])


def test_gradients_flow_and_time_masking():
    for family in ("hubert-layer", "whisper"):
        enc = tiny_encoder(family, seed=1).train()
        assert enc.supports_time_mask
        waves = torch.randn(2, SR) * 0.1
        mask = torch.zeros(2, int(enc.num_frames(torch.tensor([SR]))[0]), dtype=torch.bool)
        mask[:, 5:15] = True
        out = enc(waves, torch.tensor([SR, SR]))
        out.hidden_states[-1].sum().backward()
        grads = [p.grad for p in enc.parameters() if p.requires_grad and p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads)
        enc.eval()
        with torch.no_grad():
            plain = enc(waves).hidden_states[-1]
            masked = enc(waves, mask_time_indices=mask).hidden_states[-1]
        assert not torch.allclose(plain, masked)


def test_whisper_padded_mode_masks_beyond_real_length():
    enc = tiny_encoder("whisper", mode="padded")
    assert enc.mode == "padded" and enc.input_samples(SR) == 30 * SR
    with torch.no_grad():
        out = enc(torch.randn(1, 2 * SR) * 0.1)
    assert out.hidden_states[-1].shape == (1, 1500, 32)
    assert int(out.frame_mask.sum()) == 100


def test_whisper_native_rejects_over_30s_and_runner_chunks():
    enc = tiny_encoder("whisper")
    with pytest.raises(ValueError, match="exceeds"):
        enc(torch.zeros(1, 30 * SR + 320))
    sig = _signals([5 * SR + 1000])[0]
    ((_key, feats),) = encode_signals(
        enc, [("a", sig)], [enc.num_layers - 1], chunk_seconds=2.0, overlap_seconds=0.5
    )
    whole = _single(enc, sig).hidden_states[-1][0]
    assert feats.shape == (1, whole.shape[0], 32)


def test_fbank_chunked_equals_unchunked():
    enc = load_encoder("fbank-80")
    assert enc.num_layers == 1 and enc.hidden_size == 80 and enc.frame_rate == 100.0
    sig = _signals([4 * SR + 77])[0]
    whole = _single(enc, sig).hidden_states[0][0]
    assert whole.shape == (len(sig) // 160 + 1, 80)
    ((_, feats),) = encode_signals(enc, [("a", sig)], [0], chunk_seconds=1.0, overlap_seconds=0.2)
    torch.testing.assert_close(feats[0], whole, atol=1e-4, rtol=1e-4)


def test_plan_chunks_and_stitch():
    spans = plan_chunks(10_000, 4_000, 1_000, 320)
    assert spans[0] == (0, 4000) and all(s % 320 == 0 for s, _ in spans)
    assert spans[-1][0] + spans[-1][1] == 10_000
    assert plan_chunks(3000, 4000, 1000, 320) == [(0, 3000)]
    full = torch.arange(20.0).reshape(1, 20, 1)
    parts = [full[:, 0:8], full[:, 6:14], full[:, 12:20]]
    torch.testing.assert_close(stitch(parts, [0, 6, 12]), full)


def test_unknown_encoder_and_bad_mode():
    from serkit.errors import ConfigError

    with pytest.raises(ConfigError, match="mode"):
        load_encoder("fbank", mode="cropped")
    with pytest.raises(ConfigError, match="fbank-80"):
        load_encoder("fbank-x")


@pytest.mark.parametrize("head", ["WhisperForConditionalGeneration", "WhisperForAudioClassification"])
def test_loading_pretrained_weights_leaves_the_global_rng_alone(tmp_path, head):
    """A model built after seeding gets the same initial weights whether its encoder was loaded just before or not
    (an encoder from a full Whisper checkpoint, as on the hub, was built from freshly initialised modules)."""
    import transformers

    getattr(transformers, head)(tiny_config("whisper")).save_pretrained(str(tmp_path / "w"))
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    load_encoder(str(tmp_path / "w"))
    assert torch.equal(torch.rand(4), expected)
