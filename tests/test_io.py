"""Atomic writes: files get the mode the umask gives, temporaries carry their writer's pid."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from serkit.io import atomic_path, atomic_write_json, atomic_write_text, file_mode, temporary_owner


@pytest.fixture
def umask():
    old = os.umask(0o022)

    def set_mask(mask):
        os.umask(mask)

    yield set_mask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert file_mode() == mode
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    assert _mode(tmp_path / "a.txt") == mode and _mode(tmp_path / "b.json") == mode


def test_store_and_manifest_files_are_readable_by_the_group(tmp_path, umask):
    from serkit.features.store import FeatureStore
    from serkit.manifest import write_manifest

    umask(0o002)
    store = FeatureStore.create(tmp_path / "store", {"encoder": "x", "layers": [0], "frame_rate": 50.0,
                                                     "hidden_size": 4, "mode": "native"})
    store.write("u1", "abcdef0123456789", np.ones((1, 3, 4), np.float32), 0.06)
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(files) >= 3 and all(_mode(p) == 0o664 for p in files), \
        {p.name: oct(_mode(p)) for p in files}
    df = pd.DataFrame({"id": ["a"], "path": ["a.wav"], "emotion": ["x"], "speaker": ["s"], "gender": ["female"],
                       "duration": [1.0]})
    write_manifest(df, tmp_path / "m.csv")
    assert _mode(tmp_path / "m.csv") == 0o664


def test_temporaries_carry_the_writer_pid_and_vanish_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        assert temporary_owner(tmp) == os.getpid()
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert not list(tmp_path.iterdir())
