"""The feature store: extraction, resume, stale entries, bad files, dataset and CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from serkit.cache import (
    CachedFeatureDataset,
    FeatureStore,
    StaleStoreError,
    add_extract_parser,
    collate_features,
    extract_to_cache,
)
from serkit.errors import AudioError

from .encoders.tiny import tiny_encoder

SR = 16_000
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


def _write(path, seconds, seed):
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR, subtype="PCM_16")


@pytest.fixture
def corpus(tmp_path):
    rows = []
    emotions = ["angry", "happy", "neutral", "sad"]
    for i, sec in enumerate([0.6, 1.2, 0.8, 1.5, 0.6, 1.0]):
        p = tmp_path / "audio" / f"u{i}.wav"
        p.parent.mkdir(exist_ok=True)
        _write(p, sec, i)
        rows.append(
            {
                "id": f"u{i}",
                "path": str(p),
                "duration": sec,
                "emotion": emotions[i % 4],
                "speaker": f"s{i % 2}",
                "gender": "female",
                "valence": 0.1 * i,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def whisper():
    return tiny_encoder("whisper")


def test_extract_and_read(corpus, tmp_path, whisper):
    out = tmp_path / "store"
    rep = extract_to_cache(corpus, whisper, "0,-1", out, progress=False)
    assert (rep.computed, rep.reused, rep.failures) == (6, 0, [])
    assert rep.disk_bytes > 0 and rep.audio_seconds == pytest.approx(5.7, abs=0.01)
    store = FeatureStore(out)
    spec = json.loads((out / "store.json").read_text())
    assert spec["mode"] == "native" and spec["layers"] == [0, 2] and spec["revision"] == "random"
    assert spec["sample_rate"] == SR and spec["encoder"] == whisper.name
    assert sorted(store.ids()) == sorted(corpus["id"])
    x = store.load("u1")
    assert isinstance(x, np.memmap) and x.dtype == np.float16 and x.shape == (2, 60, 32)
    pooled = store.pooled("u1")
    assert pooled.dtype == np.float32 and pooled.shape == (2, 64)
    with torch.no_grad():
        ref = whisper(torch.from_numpy(sf.read(corpus.path[1], dtype="float32")[0])[None]).hidden_states[-1][
            0
        ]
    np.testing.assert_allclose(x[1].astype(np.float32), ref.numpy(), atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(pooled[1, :32], ref.numpy().mean(0), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(pooled[1, 32:], ref.numpy().std(0), atol=1e-4, rtol=1e-4)


def test_resume_after_kill_does_not_recompute(corpus, tmp_path, whisper, monkeypatch):
    out = tmp_path / "store"
    real_write = FeatureStore.write
    calls = []

    def dying_write(self, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(args[0])
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        extract_to_cache(corpus, whisper, "-1", out, progress=False, batch_seconds=2)
    monkeypatch.setattr(FeatureStore, "write", real_write)
    assert len(FeatureStore(out)) == 3
    computed = []
    monkeypatch.setattr(
        FeatureStore, "write", lambda self, *a, **k: (computed.append(a[0]), real_write(self, *a, **k))
    )
    rep = extract_to_cache(corpus, whisper, "-1", out, progress=False)
    assert rep.reused == 3 and rep.computed == 3
    assert not set(computed) & set(calls)
    assert len(FeatureStore(out)) == 6


def test_changed_audio_recomputes_only_that_entry(corpus, tmp_path, whisper):
    out = tmp_path / "store"
    extract_to_cache(corpus, whisper, "-1", out, progress=False)
    before = FeatureStore(out).load("u2").copy()
    _write(corpus.path[2], 0.8, seed=99)
    assert FeatureStore(out).verify(corpus) == ["u2"]
    rep = extract_to_cache(corpus, whisper, "-1", out, progress=False)
    assert (rep.computed, rep.reused) == (1, 5)
    assert not np.allclose(FeatureStore(out).load("u2"), before)


def test_other_encoder_layers_or_mode_refused(corpus, tmp_path, whisper):
    out = tmp_path / "store"
    extract_to_cache(corpus.iloc[:2], whisper, "-1", out, progress=False)
    with pytest.raises(StaleStoreError, match="layers"):
        extract_to_cache(corpus.iloc[:2], whisper, "0", out, progress=False)
    with pytest.raises(StaleStoreError, match="encoder"):
        extract_to_cache(corpus.iloc[:2], "fbank-80", "all", out, progress=False)
    with pytest.raises(StaleStoreError, match="mode"):
        extract_to_cache(corpus.iloc[:2], tiny_encoder("whisper", mode="padded"), "-1", out, progress=False)
    rep = extract_to_cache(corpus.iloc[:2], "fbank-80", "all", out, progress=False, overwrite=True)
    assert rep.computed == 2 and FeatureStore(out).spec["encoder"] == "fbank-80"


def test_bad_files_reported_and_skipped(corpus, tmp_path, whisper):
    bad = tmp_path / "audio" / "bad.wav"
    bad.write_bytes(b"RIFF this is not audio")
    extra = pd.DataFrame(
        [
            dict(corpus.iloc[0], id="bad", path=str(bad)),
            dict(corpus.iloc[0], id="gone", path=str(tmp_path / "missing.wav")),
        ]
    )
    df = pd.concat([corpus, extra], ignore_index=True)
    out = tmp_path / "store"
    rep = extract_to_cache(df, whisper, "-1", out, progress=False)
    assert rep.computed == 6 and sorted(f[0] for f in rep.failures) == ["bad", "gone"]
    errors = json.loads((out / "errors.json").read_text())
    assert {e["id"] for e in errors} == {"bad", "gone"} and any("unreadable" in e["problem"] for e in errors)
    with pytest.raises(AudioError, match=r"(bad|missing)\.wav"):
        extract_to_cache(df, whisper, "-1", tmp_path / "strict", progress=False, strict=True)


def test_long_file_chunked_in_cache(tmp_path):
    p = tmp_path / "long.wav"
    _write(p, 3.3, 0)
    df = pd.DataFrame([{"id": "long", "path": str(p)}])
    rep = extract_to_cache(
        df, "fbank-80", "all", tmp_path / "s", chunk_seconds=1.0, overlap_seconds=0.2, progress=False
    )
    assert rep.computed == 1
    assert FeatureStore(tmp_path / "s").load("long").shape == (1, int(3.3 * SR) // 160 + 1, 80)


def test_dataset_and_collate(corpus, tmp_path, whisper):
    out = tmp_path / "store"
    extract_to_cache(corpus, whisper, "all", out, progress=False)
    ds = CachedFeatureDataset(out, corpus, label_columns=("emotion", "valence"))
    assert len(ds) == 6 and ds.classes["emotion"] == ["angry", "happy", "neutral", "sad"]
    batch = collate_features([ds[0], ds[1], ds[3]])
    assert batch["features"].shape == (3, 3, 75, 32) and batch["features"].dtype == torch.float32
    assert batch["frame_mask"].sum(1).tolist() == [30, 60, 75]
    assert batch["emotion"].dtype == torch.long and batch["emotion"].tolist() == [0, 1, 3]
    assert batch["valence"].dtype == torch.float32
    assert float(batch["features"][0, :, 30:].abs().sum()) == 0.0
    with pytest.raises(KeyError, match="no features"):
        CachedFeatureDataset(out, pd.concat([corpus, corpus.assign(id="zz")]), label_columns=("emotion",))


def test_cli_parser_and_main(corpus, tmp_path):
    manifest = tmp_path / "m.csv"
    corpus.to_csv(manifest, index=False)
    parser = argparse.ArgumentParser(prog="serkit")
    add_extract_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["extract", str(manifest), "--encoder", "fbank-80", "--out", str(tmp_path / "f"), "--quiet"]
    )
    assert args.layers == "all" and args.mode == "native" and args.device == "cpu"
    assert args.func(args) == 0
    assert len(FeatureStore(tmp_path / "f")) == 6
