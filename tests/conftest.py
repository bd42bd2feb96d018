"""Shared test helpers: paths to ../shared, tiny audio writers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERKIT_SHARED", REPO.parent / "shared"))
CORPORA = SHARED / "corpora"
HF_CACHE = SHARED / "hf-cache"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if HF_CACHE.is_dir():
    os.environ.setdefault("HF_HUB_CACHE", str(HF_CACHE))

needs_shared = pytest.mark.skipif(not CORPORA.is_dir(), reason=f"{CORPORA} not present")


def write_tone(path: Path, seconds: float = 0.6, sr: int = 16000, freq: float = 220.0, channels: int = 1,
               amp: float = 0.3, seed: int = 0) -> Path:
    """Write a short tone plus a little noise (so it is neither silent nor trivially periodic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(str(path), x.astype(np.float32), sr)
    return path


@pytest.fixture
def tone(tmp_path):
    return lambda name, **kw: write_tone(tmp_path / name, **kw)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test starts with the thread count the session started with (a test that imports silero, or sets a
    count, must not change the floats of the tests after it)."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
