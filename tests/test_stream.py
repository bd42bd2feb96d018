"""Live emotion (serkit.stream): the incremental VAD gives silero's segments, and a file fed in chunks gives the
segments, labels and summary of ``predict_segments``."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from serkit.vad import VAD_WINDOW, VadOptions
from tests.conftest import CORPORA, needs_shared
from tests.train.conftest import tiny_corpus  # noqa: F401  (session fixture)


def _probabilities(rng, n: int) -> list[float]:
    """Speech-like probabilities: runs of high and low values with noise around the thresholds."""
    out: list[float] = []
    while len(out) < n:
        level = rng.choice([0.05, 0.4, 0.9])
        out += list(np.clip(level + rng.normal(0, 0.2, rng.integers(1, 60)), 0, 1))
    return [float(p) for p in out[:n]]


@pytest.mark.parametrize("seed", range(12))
def test_tracker_gives_silero_segments_window_by_window(seed):
    from silero_vad import get_speech_timestamps_from_probs

    from serkit.stream import SpeechTracker

    rng = np.random.default_rng(seed)
    options = [VadOptions(), VadOptions(min_silence_seconds=0.05, speech_pad_seconds=0.1),
               VadOptions(max_speech_seconds=3.0, min_silence_seconds=0.1)][seed % 3]
    probs = _probabilities(rng, int(rng.integers(200, 1500)))
    total = len(probs) * VAD_WINDOW - int(rng.integers(0, VAD_WINDOW))
    want = get_speech_timestamps_from_probs(
        probs, sampling_rate=16000, threshold=options.threshold,
        min_speech_duration_ms=int(options.min_speech_seconds * 1000),
        min_silence_duration_ms=int(options.min_silence_seconds * 1000),
        speech_pad_ms=int(options.speech_pad_seconds * 1000), max_speech_duration_s=options.max_speech_seconds,
        audio_length_samples=total)
    tracker = SpeechTracker(options)
    got, final_at = [], []
    for i, p in enumerate(probs):
        new = tracker.step(p)
        got += new
        final_at += [(i + 1) * VAD_WINDOW] * len(new)
    got += tracker.finish(total)
    assert got == [(s["start"], s["end"]) for s in want] and len(want) >= 2
    # segments are handed out while the stream goes on, not only at its end
    assert 0 < len(final_at) and len(final_at) >= len(got) - 1
    assert all(t >= e for t, (_, e) in zip(final_at, got, strict=False))


def _speech_with_pauses(tmp_path, pauses=(1.2, 0.8, 1.5)):
    """EmoDB clips of speaker 03 (angry, sad, neutral, happy) with pauses between them, as a 16 kHz WAV."""
    from serkit.audio import read_audio

    wav = CORPORA / "emodb" / "wav"
    clips = [wav / n for n in ("03a01Wa.flac", "03a02Ta.flac", "03a04Nc.flac", "03a05Fc.flac")]
    clips = [c for c in clips if c.exists()]
    if len(clips) < 3:
        pytest.skip(f"EmoDB clips of speaker 03 not present under {wav}")
    parts = [np.zeros(8000, np.float32)]
    for i, c in enumerate(clips):
        parts += [read_audio(c), np.zeros(int(pauses[i % len(pauses)] * 16000), np.float32)]
    path = tmp_path / "talk.wav"
    sf.write(str(path), np.concatenate(parts), 16000, subtype="FLOAT")
    return path


def _chunks(x: np.ndarray, rng) -> list[np.ndarray]:
    cuts = np.cumsum(rng.integers(1, 4000, len(x) // 1000 + 2))
    return [c for c in np.split(x, cuts[cuts < len(x)]) if len(c)]


@needs_shared
def test_streaming_vad_finds_the_segments_of_the_file(tmp_path):
    from serkit.stream import StreamingVad
    from serkit.vad import speech_segments

    path = _speech_with_pauses(tmp_path)
    want, _ = speech_segments(path)
    x, _ = sf.read(str(path), dtype="float32")
    vad, got = StreamingVad(), []
    for chunk in _chunks(x, np.random.default_rng(0)):
        got += vad.push(chunk)
    got += vad.finish()
    assert [(s / 16000, e / 16000) for s, e in got] == want and len(want) >= 3


@pytest.fixture(scope="module")
def recognizer(tiny_corpus, tmp_path_factory):  # noqa: F811
    from serkit.inference import Recognizer
    from serkit.train.final import train_final
    from tests.train.conftest import tiny_config

    cfg = tiny_config(tiny_corpus, train={"epochs": 2}, predict={"window_seconds": 1.0, "hop_seconds": 0.5})
    return Recognizer.from_pretrained(train_final(cfg, tmp_path_factory.mktemp("live") / "model",
                                                  log=lambda *a: None))


@needs_shared
def test_a_file_streamed_in_chunks_gives_the_offline_segments_and_summary(tmp_path, recognizer):
    from serkit.stream import StreamSession

    path = _speech_with_pauses(tmp_path, pauses=(1.2, 0.6, 1.5))
    want = recognizer.predict_segments(path)
    x, _ = sf.read(str(path), dtype="float32")
    session, messages = StreamSession(recognizer, name=str(path)), []
    for chunk in _chunks(x, np.random.default_rng(1)):
        messages += session.push(chunk)
    messages += session.finish()
    timeline: dict[int, dict] = {}
    for m in messages:
        if m["type"] == "segment":
            timeline[m["index"]] = m
    got = [timeline[i] for i in sorted(timeline)]
    assert [(s["start"], s["end"], s["label"]) for s in got] == \
        [(s["start"], s["end"], s["label"]) for s in want["segments"]] and len(got) >= 2
    for g, w in zip(got, want["segments"], strict=True):
        assert g["scores"] == pytest.approx(w["probabilities"], abs=1e-4)
    summary = messages[-1]
    assert summary["type"] == "summary" and summary["speech_share"] == want["speech_share"]
    assert summary["longest"] == want["longest"] and summary["label"] == want["label"]
    # a rolling estimate while speech is open: partial messages inside the speech of the file
    partials = [m for m in messages if m["type"] == "partial"]
    assert partials and all(any(s["start"] - 1e-3 <= p["start"] < p["end"] <= s["end"] + 1.0 for s in got)
                            for p in partials)


def test_frames_are_checked_and_decoded():
    from serkit.errors import SerkitError
    from serkit.stream import check_frame, decode_frame

    x = np.array([0.5, -0.25, 0.0], dtype="<f4")
    assert decode_frame(x.tobytes(), "f32").tolist() == x.tolist()
    assert decode_frame(np.array([32767, -32767], dtype="<i2").tobytes(), "i16").tolist() == [1.0, -1.0]
    with pytest.raises(SerkitError, match="whole number of float32"):
        decode_frame(b"\x00" * 6, "f32")
    with pytest.raises(SerkitError, match="format 'wav'"):
        decode_frame(b"", "wav")
    with pytest.raises(SerkitError, match="at most 32000"):
        check_frame(np.zeros(40000, np.float32))
    with pytest.raises(SerkitError, match="audio frame: "):
        check_frame(np.array([np.nan], np.float32))


def test_starting_a_stream_leaves_torch_threads_as_they_were():
    """Importing silero sets torch to one thread for the whole process; a stream (the first thing a live service
    may load) must not leave every later prediction on one thread."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); from serkit.stream import StreamingVad; StreamingVad(); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "2"
