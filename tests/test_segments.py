"""Long recordings: block reading, silero-vad segments, per-segment emotion, merging, timeline files."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serkit.audio import read_audio, stream_audio
from serkit.timeline import merge_segments
from tests.conftest import CORPORA, needs_shared


def test_stream_audio_is_read_audio_in_blocks(tmp_path):
    x = np.random.default_rng(0).standard_normal(44100 * 5).astype(np.float32) * 0.1
    sf.write(str(tmp_path / "x.flac"), np.stack([x, x], 1), 44100)
    blocks = list(stream_audio(tmp_path / "x.flac", block_seconds=0.7))
    assert len(blocks) >= 7 and max(len(b) for b in blocks) <= 0.8 * 16000
    whole = read_audio(tmp_path / "x.flac")
    joined = np.concatenate(blocks)
    assert len(joined) == len(whole) and np.abs(joined - whole).max() < 1e-5


def test_merge_segments_joins_neighbours_of_one_label_only_across_short_gaps():
    p = {"a": np.array([0.9, 0.1]), "b": np.array([0.2, 0.8])}
    pieces = [(0, 2, p["a"]), (2.5, 4, p["a"]), (6, 7, p["a"]), (7.2, 9, p["b"]), (9.1, 10, p["b"])]
    out = merge_segments(pieces, ["a", "b"], gap=1.0)
    assert [(s["start"], s["end"], s["label"], s["pieces"]) for s in out] == [
        (0, 4, "a", 2), (6, 7, "a", 1), (7.2, 10, "b", 2)]


def _speech_part(x: np.ndarray, frame: int = 160) -> np.ndarray:
    """``x`` without its leading and trailing pauses (10 ms frames below 5% of the loudest frame's RMS)."""
    rms = np.sqrt((x[: len(x) // frame * frame].reshape(-1, frame) ** 2).mean(1))
    on = np.flatnonzero(rms > 0.05 * rms.max())
    return x[on[0] * frame : (on[-1] + 1) * frame]


@needs_shared
def test_segments_of_a_long_recording_fall_on_the_joins(tmp_path):
    """EmoDB: a quick angry / sad model (fbank features, speakers other than 03), then a 60 s recording of
    speaker 03's angry clips followed by their sad clips (pauses trimmed) with silence between: where the label
    changes, the segment boundaries lie within 0.5 s of a join, and the angry -> sad join is found."""
    from serkit.cli import main
    from serkit.inference import Recognizer
    from serkit.train.final import train_final

    wav = CORPORA / "emodb" / "wav"
    emotions = {"W": "angry", "T": "sad"}
    rows = [{"path": str(p), "emotion": emotions[p.name[5]], "speaker": p.name[:2], "gender": "unknown", "id": p.stem}
            for p in sorted(wav.glob("*.flac")) if p.name[5] in emotions and p.name[:2] != "03"]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    cfg = {"name": "angry-sad", "corpus": "csv", "root": str(tmp_path / "train.csv"),
           "protocol": {"name": "speaker_kfold", "k": 3, "val_speakers": 2},
           "encoder": {"id": "fbank-40", "layers": "all"},
           "features": {"cache_dir": str(tmp_path / "cache"), "level": "pooled", "layers": "all"},
           "model": {"name": "pooled_mlp", "hidden": [], "dropout": 0.0, "input_norm": "batchnorm"},
           "train": {"epochs": 6, "batch_size": 16, "lr": 0.01, "patience": 8, "progress": False},
           "predict": {"window_seconds": 3.0, "hop_seconds": 1.5}}
    model = train_final(cfg, tmp_path / "model", refit=False, log=lambda *a: None)

    clips = ([("angry", p) for p in sorted(wav.glob("03*W*.flac"))]
             + [("sad", p) for p in sorted(wav.glob("03*T*.flac"))])
    gap = np.zeros(int(0.9 * 16000), np.float32)
    parts, edges, t = [np.zeros(8000, np.float32)], [], 0.5
    for emo, p in clips:
        x = _speech_part(read_audio(p))
        parts += [x, gap]
        edges.append((t, t + len(x) / 16000, emo))
        t += (len(x) + len(gap)) / 16000
    audio = np.concatenate(parts)
    audio = np.pad(audio, (0, max(0, 60 * 16000 - len(audio))))
    long = tmp_path / "long.flac"
    sf.write(str(long), audio, 16000)
    assert len(audio) >= 60 * 16000 and len(edges) >= 20

    r = Recognizer.from_pretrained(model, device="cpu").predict_segments(long)
    segs = r["segments"]
    clip_edges = np.array([e for s, e_, _ in edges for e in (s, e_)])
    for a, b in itertools.pairwise(segs):  # where the label changes, both sides lie on a join
        if a["label"] != b["label"]:
            assert np.abs(clip_edges - a["end"]).min() <= 0.5 and np.abs(clip_edges - b["start"]).min() <= 0.5, segs
    # the emotion changes at the join between the last angry and the first sad clip
    last_angry = max(e for _, e, emo in edges if emo == "angry")
    first_sad = min(s for s, _, emo in edges if emo == "sad")
    assert any(s["label"] == "angry" and abs(s["end"] - last_angry) <= 0.5 for s in segs), segs
    assert any(s["label"] == "sad" and abs(s["start"] - first_sad) <= 0.5 for s in segs), segs
    speech = sum(s["end"] - s["start"] for s in segs)
    right = sum(s["end"] - s["start"] for s in segs
                if s["label"] == ("angry" if s["end"] <= last_angry + 0.5 else "sad"))
    assert right / speech >= 0.8, segs
    assert len(segs) < len(clips)  # neighbours of one label were merged

    # the command: segments CSV and the timeline figure
    out = tmp_path / "seg.csv"
    assert main(["predict", str(model), str(long), "--segments", "--timeline", str(tmp_path / "tl"),
                 "--out", str(out), "--device", "cpu"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:4]) == ["file", "start", "end", "label"] and len(table) == len(segs)
    assert (tmp_path / "tl" / "long.segments.csv").exists()
    png = (tmp_path / "tl" / "long.timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_speech_gives_no_segments(tmp_path):
    from serkit.vad import speech_segments

    sf.write(str(tmp_path / "quiet.wav"), 1e-4 * np.random.default_rng(1).standard_normal(16000 * 3), 16000)
    segs, duration = speech_segments(tmp_path / "quiet.wav")
    assert segs == [] and duration == pytest.approx(3.0)


def test_speech_time_summary_tells_a_recording_of_several_emotions_by_time():
    from serkit.timeline import speech_time_summary

    segs = [{"start": 0.0, "end": 30.0, "label": "sad"}, {"start": 31.0, "end": 41.0, "label": "angry"},
            {"start": 42.0, "end": 62.0, "label": "sad"}, {"start": 63.0, "end": 83.0, "label": "happy"}]
    out = speech_time_summary(segs, ["angry", "happy", "sad", "neutral"])
    assert out["speech_share"] == {"angry": 0.125, "happy": 0.25, "sad": 0.625, "neutral": 0.0}
    assert out["longest"]["sad"] == {"start": 0.0, "end": 30.0, "seconds": 30.0} and "neutral" not in out["longest"]
