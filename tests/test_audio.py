import numpy as np
import pytest
import soundfile as sf

from serkit.audio import CropPad, content_hash, prepare_signal, read_audio
from serkit.errors import AudioError


def test_read_resamples_and_downmixes(tone):
    p = tone("a.wav", seconds=1.0, sr=44100, channels=2)
    x = read_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 2


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.write_bytes(b"not audio at all"), "unreadable"),
        (lambda p: sf.write(str(p), np.zeros(0, dtype=np.float32), 16000), "empty"),
        (lambda p: sf.write(str(p), np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT"), "non-finite"),
    ],
)
def test_bad_files_raise_with_name(tmp_path, make, problem):
    p = tmp_path / "bad.wav"
    make(p)
    with pytest.raises(AudioError) as err:
        read_audio(p)
    assert "bad.wav" in str(err.value) and problem in str(err.value)


def test_missing_and_silent_and_huge(tmp_path, tone):
    with pytest.raises(AudioError, match="not found"):
        read_audio(tmp_path / "nope.wav")
    p = tmp_path / "silent.wav"
    sf.write(str(p), np.zeros(16000, dtype=np.float32), 16000)
    assert read_audio(p).shape == (16000,)
    with pytest.raises(AudioError, match="silent"):
        read_audio(p, allow_silent=False)
    with pytest.raises(AudioError, match="too long"):
        read_audio(tone("long.wav", seconds=2.0), max_seconds=1.0)


def test_prepare_signal_int_and_channels_first():
    x = (np.ones((2, 800)) * 1000).astype(np.int16)
    y = prepare_signal(x, 8000)
    assert y.shape == (1600,) and np.isclose(np.median(y), 1000 / 32767, atol=1e-3)


def test_croppad_policies():
    x = np.arange(100, dtype=np.float32)
    fixed = CropPad("fixed", seconds=50 / 16000)
    assert np.array_equal(fixed(x), x[25:75])
    pad = CropPad("fixed", seconds=150 / 16000)
    y = pad(x)
    assert len(y) == 150 and y[100:].sum() == 0
    rep = CropPad("fixed", seconds=150 / 16000, pad="repeat")(x)
    assert np.array_equal(rep[100:], x[:50])
    r = CropPad("random", seconds=10 / 16000)
    a = r(x, np.random.default_rng(0))
    assert len(a) == 10 and np.all(np.diff(a) == 1)
    assert CropPad()(x) is x
    with pytest.raises(ValueError, match="seconds"):
        CropPad("fixed")


def test_content_hash_changes_with_content(tone):
    a = tone("a.wav", freq=200)
    h1 = content_hash(a)
    tone("a.wav", freq=300)
    assert content_hash(a) != h1
