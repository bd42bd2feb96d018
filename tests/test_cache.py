"""The feature store: extraction, resume, stale entries, bad files, several writers and the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from serkit.errors import AudioError
from serkit.features.cli import add_extract_parser
from serkit.features.extraction import extract_to_cache
from serkit.features.store import FeatureStore, StaleStoreError

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


# -- several writers ------------------------------------------------------------------------------------------
#: One process of the race: "extract" (temporaries kept alive 50 ms each, so that they overlap the others) or
#: "create" (FeatureStore.create() over and over while the extractions run, as a third `serkit cv` would).
RACER = """
import json, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
from serkit.features.extraction import extract_to_cache
from serkit.features.store import FeatureStore

role, manifest, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
if role == "extract":
    real_save = np.save
    def slow_save(fh, arr):
        real_save(fh, arr)
        time.sleep(0.05)
    np.save = slow_save
    rep = extract_to_cache(pd.read_csv(manifest), "fbank-40", "all", out, progress=False)
    print(json.dumps({"computed": rep.computed, "reused": rep.reused}))
else:
    deadline = time.time() + 60
    while not (out / "store.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    spec = json.loads((out / "store.json").read_text())
    n = 0
    while not (out.parent / "done").exists() and time.time() < deadline:
        FeatureStore.create(out, spec)
        n += 1
        time.sleep(0.02)
    print(json.dumps({"creates": n}))
"""


def test_two_extractions_and_a_create_racing_on_one_store(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rows = []
    for i in range(12):
        p = tmp_path / "audio" / f"u{i}.wav"
        p.parent.mkdir(exist_ok=True)
        _write(p, 0.3 + 0.05 * i, i)
        rows.append({"id": f"u{i}", "path": str(p)})
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)])}

    def start(role):
        return subprocess.Popen([sys.executable, "-c", RACER, role, str(manifest), str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    creator = start("create")
    extractors = [start("extract"), start("extract")]
    outs = [p.communicate(timeout=240) for p in extractors]
    (tmp_path / "done").touch()
    _, c_err = creator.communicate(timeout=60)
    for p, (o, e) in zip(extractors, outs, strict=True):
        assert p.returncode == 0, e[-3000:]
    assert creator.returncode == 0, c_err[-3000:]
    reports = sorted((json.loads(o.strip().splitlines()[-1]) for o, _ in outs), key=lambda r: -r["computed"])
    assert reports == [{"computed": 12, "reused": 0}, {"computed": 0, "reused": 12}], reports
    lines = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in lines) == sorted(r["id"] for r in rows)  # each id once, all present
    store = FeatureStore(out)
    assert all(store.load(r["id"]).shape[1] > 0 for r in rows)
    assert not list(out.glob("**/.*.tmp"))


def test_torn_index_line_does_not_swallow_the_next_entry(corpus, tmp_path, whisper):
    out = tmp_path / "store"
    extract_to_cache(corpus.iloc[:5], whisper, "-1", out, progress=False)
    index = out / "index.jsonl"
    text = index.read_text()
    index.write_text(text[: text.rindex("{") + 12])  # the last entry cut mid-line (a killed writer, a full disk)
    assert len(FeatureStore(out)) == 4
    rep = extract_to_cache(corpus, whisper, "-1", out, progress=False)
    assert rep.computed + rep.reused == 6
    store = FeatureStore(out)
    assert sorted(store.ids()) == sorted(corpus["id"]) and len(store) == 6
    assert all(json.loads(line) for line in index.read_text().splitlines())


def test_create_removes_only_temporaries_of_dead_writers(corpus, tmp_path, whisper):
    import subprocess
    import sys

    out = tmp_path / "store"
    extract_to_cache(corpus.iloc[:2], whisper, "-1", out, progress=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "feats" / "ab").mkdir(parents=True, exist_ok=True)
        stale = out / "feats" / "ab" / f".x.npy.{int(dead.stdout)}.k2j3.tmp"
        busy = out / "feats" / "ab" / f".y.npy.{live.pid}.q9w8.tmp"
        legacy = out / "feats" / "ab" / ".z.npy.abc123.tmp"  # written by an older serkit: no pid
        for p in (stale, busy, legacy):
            p.write_bytes(b"partial")
        FeatureStore.create(out, json.loads((out / "store.json").read_text()))
        assert busy.exists() and not stale.exists() and not legacy.exists()
    finally:
        live.kill()
        live.wait()


def test_store_lock_is_exclusive_between_processes(tmp_path):
    import subprocess
    import sys
    import time

    from serkit.features.locking import store_lock

    probe = ("import fcntl, sys; fh = open(sys.argv[1], 'a+');\n"
             "try:\n    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")
    with store_lock(tmp_path / "s"):
        with store_lock(tmp_path / "s"):  # re-entrant within the process
            pass
        r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "s" / ".lock")], capture_output=True,
                           text=True, check=True)
        assert r.stdout.strip() == "held"
    t = time.time()
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "s" / ".lock")], capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == "free" and time.time() - t < 30


def test_store_of_an_older_feature_version_is_refilled_not_mixed(tmp_path, monkeypatch):
    """A store written by an older feature version (other numbers for the same audio) is emptied and refilled."""
    from serkit.features import store as store_module

    spec = {"encoder": "e", "mode": "native", "layers": [0], "sample_rate": 16000, "dtype": "float16"}
    monkeypatch.setattr(store_module, "STORE_VERSION", 1)
    old = store_module.FeatureStore.create(tmp_path / "s", spec)
    old.write("a", "h" * 40, np.ones((1, 3, 2), np.float32), 0.06)
    assert old.ids() == ["a"]
    monkeypatch.setattr(store_module, "STORE_VERSION", 2)
    new = store_module.FeatureStore.create(tmp_path / "s", spec)
    assert new.spec["version"] == 2 and new.ids() == []
    with pytest.raises(store_module.StaleStoreError):  # another encoder is still refused, not silently dropped
        store_module.FeatureStore.create(tmp_path / "s", {**spec, "encoder": "other"})


def test_record_failures_keeps_other_runs_ids_and_replaces_this_runs(tmp_path):
    spec = {"encoder": "e", "mode": "native", "layers": [0], "sample_rate": 16000, "dtype": "float16"}
    store = FeatureStore.create(tmp_path / "s", spec)
    store.record_failures([("a", "a.wav", "unreadable"), ("b", "b.wav", "too short")], {"a", "b"})
    store.record_failures([("c", "c.wav", "file not found")], {"a", "c"})  # another manifest: b is not its id
    errors = json.loads((tmp_path / "s" / "errors.json").read_text())
    assert errors == [{"id": "b", "path": "b.wav", "problem": "too short"},
                      {"id": "c", "path": "c.wav", "problem": "file not found"}]
