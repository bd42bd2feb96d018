"""Precision: run-time detection, resolution, config keys, the store's identity and what results record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from serkit import precision as P
from serkit.config import load_config
from serkit.errors import ConfigError
from serkit.features.extraction import extract_to_cache
from serkit.features.store import FeatureStore, StaleStoreError, store_key

from .encoders.tiny import tiny_encoder

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


def _no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(P, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)


def test_auto_follows_the_cpu_flags(monkeypatch):
    _no_bf16_cpu(monkeypatch)
    assert not P.bf16_supported("cpu")
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert P.lightning_precision("auto", "cpu") == "32-true"
    for flag in P.CPU_BF16_FLAGS:
        monkeypatch.setattr(P, "_cpu_flags", lambda f=flag: frozenset({"avx2", f}))
        assert P.bf16_supported("cpu") and P.resolve_precision("auto", "cpu") == "bf16"
        assert P.lightning_precision("auto", "cpu") == "bf16-mixed"
    # explicit values mean the same on every device
    assert P.resolve_precision("fp32", "cpu") == "fp32" and P.resolve_precision("bf16", "cpu") == "bf16"
    assert P.lightning_precision("fp32") == "32-true" and P.lightning_precision("bf16") == "bf16-mixed"
    assert P.lightning_precision("16-mixed") == "16-mixed"  # Lightning's own strings pass through
    with pytest.raises(ConfigError, match="fp16"):
        P.resolve_precision("fp16")


def test_config_keys_and_the_deprecated_dtype():
    base = {"corpus": "ravdess"}
    assert load_config(base)["encoder"]["precision"] in P.PRECISIONS
    cfg = load_config(base, ["encoder.precision=bf16", "train.precision=fp32"])
    assert cfg["encoder"]["precision"] == "bf16" and cfg["train"]["precision"] == "fp32"
    with pytest.warns(DeprecationWarning, match="encoder.dtype"):
        cfg = load_config({**base, "encoder": {"dtype": "bf16"}})
    assert cfg["encoder"]["precision"] == "bf16" and "dtype" not in cfg["encoder"]
    with pytest.raises(ConfigError, match="encoder.precision='fp16'"):
        load_config(base, ["encoder.precision=fp16"])
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(base, ["train.precision=half"])
    assert load_config(base)["train"]["num_nodes"] == 1


def test_store_identity_keeps_fp32_keys_and_separates_bf16(tmp_path):
    spec = {"encoder": "e", "revision": "r", "mode": "native", "layers": [0], "sample_rate": 16000,
            "dtype": "float16", "chunk_seconds": 30.0, "overlap_seconds": 1.0, "version": 1}
    assert store_key({**spec, "precision": "fp32"}) == store_key(spec)  # stores made before precisions
    assert store_key({**spec, "precision": "bf16"}) != store_key(spec)
    FeatureStore.create(tmp_path / "s", {**spec, "precision": "fp32"})
    with pytest.raises(StaleStoreError, match="precision"):
        FeatureStore.create(tmp_path / "s", {**spec, "precision": "bf16"})
    assert FeatureStore(tmp_path / "s").precision == "fp32"


def test_store_dir_suffix(monkeypatch, tmp_path):
    from serkit.train.features import store_dir

    manifest = pd.DataFrame({"id": ["a"], "corpus": ["emodb"]})
    cfg = load_config({"corpus": "emodb", "features": {"cache_dir": str(tmp_path)}})
    fp32 = store_dir(cfg, manifest, {**cfg["encoder"], "precision": "fp32", "device": "cpu"})
    bf16 = store_dir(cfg, manifest, {**cfg["encoder"], "precision": "bf16", "device": "cpu"})
    assert fp32.name == "openai_whisper-base-native-all" and bf16.name == fp32.name + "-bf16"
    _no_bf16_cpu(monkeypatch)
    assert store_dir(cfg, manifest, {**cfg["encoder"], "precision": "auto", "device": "cpu"}) == fp32


def test_bf16_extraction_is_recorded_and_close_to_fp32(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, sec in enumerate([0.7, 1.3, 0.9]):
        p = tmp_path / f"u{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(int(sec * 16000))).astype(np.float32), 16000, subtype="PCM_16")
        rows.append({"id": f"u{i}", "path": str(p), "duration": sec})
    df = pd.DataFrame(rows)
    enc = tiny_encoder("whisper")
    extract_to_cache(df, enc, "all", tmp_path / "fp32", progress=False)  # an object keeps its own precision
    extract_to_cache(df, enc, "all", tmp_path / "bf16", precision="bf16", progress=False)
    assert P.precision_of(enc) == "fp32"  # the caller's encoder is not cast in place
    a, b = FeatureStore(tmp_path / "fp32"), FeatureStore(tmp_path / "bf16")
    assert (a.precision, b.precision) == ("fp32", "bf16")
    assert json.loads((tmp_path / "bf16" / "store.json").read_text())["precision"] == "bf16"
    for i in df["id"]:
        x, y = a.load(i).astype(np.float32), b.load(i).astype(np.float32)
        assert x.shape == y.shape
        rel = np.linalg.norm(y - x) / np.linalg.norm(x)
        assert 0 < rel < 0.03, rel  # bf16 rounding, not another computation
