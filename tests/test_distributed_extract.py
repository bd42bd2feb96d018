"""``serkit extract`` under ``torchrun --nproc_per_node=2`` (gloo on CPU) builds the store one process builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from serkit.features.store import INDEX_FILE, FeatureStore

from .encoders.tiny import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A tiny random Whisper saved as a local model folder, so that separate processes load the same weights."""
    import transformers

    out = tmp_path_factory.mktemp("tiny-whisper")
    torch.manual_seed(0)
    transformers.WhisperForAudioClassification(tiny_config("whisper")).save_pretrained(out)
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return out


def _manifest(tmp_path, n=7):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        sec = 0.5 + 0.2 * i
        p = tmp_path / "audio" / f"u{i}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, (0.1 * rng.standard_normal(int(sec * 16000))).astype(np.float32), 16000, subtype="PCM_16")
        rows.append({"id": f"u{i}", "path": str(p), "duration": sec})
    rows.append({"id": "missing", "path": str(tmp_path / "audio" / "nope.wav"), "duration": 1.0})
    for r in rows:
        r.update(emotion="neutral", speaker="s0", gender="female")
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _serkit(args, nproc=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "serkit.cli", *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "serkit.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False, **kw)


def test_two_rank_torchrun_store_equals_one_process(tmp_path, whisper_dir):
    from serkit.features.extraction import extract_to_cache

    manifest = _manifest(tmp_path)
    two = _serkit(["extract", str(manifest), "--encoder", str(whisper_dir), "--layers", "all", "--precision", "fp32",
                   "--out", str(tmp_path / "two")], nproc=2)
    # one file is missing: reported by rank 0 (exit 1), the run goes on
    assert two.returncode == 1 and "7 computed" in two.stdout and "(2 processes)" in two.stdout, two.stderr[-3000:]
    one = extract_to_cache(str(manifest), str(whisper_dir), "all", tmp_path / "one", precision="fp32", progress=False)
    assert one.computed == 7

    a, b = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    assert sorted(a.ids()) == sorted(b.ids()) == [f"u{i}" for i in range(7)]
    assert not list((tmp_path / "two").glob("index.rank*.jsonl"))  # the ranks' shards were merged
    assert len((tmp_path / "two" / INDEX_FILE).read_text().splitlines()) == 7
    errors = json.loads((tmp_path / "two" / "errors.json").read_text())
    assert [e["id"] for e in errors] == ["missing"]
    for i in a.ids():
        x, y = a.load(i), b.load(i)
        assert x.shape == y.shape
        np.testing.assert_allclose(y.astype(np.float32), x.astype(np.float32), atol=1e-2, rtol=1e-3)  # fp16
        np.testing.assert_allclose(b.pooled(i), a.pooled(i), atol=1e-4, rtol=1e-4)
    # the merged store resumes like any other: nothing left to compute
    again = extract_to_cache(str(manifest), str(whisper_dir), "all", tmp_path / "two", precision="fp32",
                             progress=False)
    assert (again.computed, again.reused) == (0, 7)


def test_store_reads_unmerged_shards(tmp_path):
    """A multi-process run killed before its merge: the ranks' shards are read with index.jsonl, and merged."""
    from serkit.features.store import FeatureStore

    spec = {"encoder": "e", "revision": "r", "mode": "native", "layers": [0], "sample_rate": 16000,
            "dtype": "float16", "chunk_seconds": 30.0, "overlap_seconds": 1.0, "precision": "fp32"}
    store = FeatureStore.create(tmp_path, spec)
    feats = torch.randn(1, 5, 4)
    store.write("a", "00aa", feats, 0.1)
    for rank, (uid, h) in enumerate([("b", "11bb"), ("c", "22cc")]):
        shard = FeatureStore.create(tmp_path, spec, clean=False)
        shard.write_to_shard(rank)
        shard.write(uid, h, feats, 0.1)
    (tmp_path / "index.rank1.jsonl").open("a").write('{"id": "torn"')  # a line cut by the kill
    reopened = FeatureStore(tmp_path)
    assert sorted(reopened.ids()) == ["a", "b", "c"]
    assert reopened.merge_shards() == 2
    assert sorted(FeatureStore(tmp_path).ids()) == ["a", "b", "c"]
    assert not list(tmp_path.glob("index.rank*.jsonl"))
