"""Voice activity detection with silero-vad (its model ships inside the PyPI wheel; works offline).

:func:`speech_segments` streams a file block by block (:func:`serkit.audio.stream_audio`), runs silero's model on
every 512-sample window (32 ms at 16 kHz) with its state carried across blocks, and turns the speech
probabilities into segments with silero's own post-processing (``get_speech_timestamps_from_probs``: threshold
with hysteresis, shortest speech, shortest silence, padding). Memory: one block of audio plus one float per 32 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serkit.constants import SAMPLE_RATE

#: silero-vad's window at 16 kHz (samples)
VAD_WINDOW = 512

_MODEL = None


@dataclass(frozen=True)
class VadOptions:
    """silero-vad's settings (its defaults, except a longer shortest silence: pauses inside a sentence are not
    boundaries between utterances)."""

    threshold: float = 0.5
    min_speech_seconds: float = 0.25
    min_silence_seconds: float = 0.3
    speech_pad_seconds: float = 0.03
    max_speech_seconds: float = float("inf")


def load_vad():
    """silero-vad's JIT model (cached). Importing silero_vad sets torch to one thread; that is undone here."""
    global _MODEL
    if _MODEL is None:
        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad

        _MODEL = load_silero_vad()
        torch.set_num_threads(threads)
    return _MODEL


@torch.no_grad()
def speech_probabilities(blocks, model=None) -> tuple[np.ndarray, int]:
    """Speech probability of every 512-sample window of the concatenated 16 kHz ``blocks``; returns
    ``(probabilities (windows,), total samples)``. The last partial window is zero-padded, as silero does."""
    model = model or load_vad()
    model.reset_states()
    probs: list[float] = []
    carry = np.zeros(0, dtype=np.float32)
    total = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one 512-sample window at a time: more threads only add overhead (silero's setting)
    try:
        for block in blocks:
            total += len(block)
            x = np.concatenate([carry, np.asarray(block, dtype=np.float32)])
            n = len(x) // VAD_WINDOW * VAD_WINDOW
            for s in range(0, n, VAD_WINDOW):
                probs.append(model(torch.from_numpy(x[s:s + VAD_WINDOW]), SAMPLE_RATE).item())
            carry = x[n:]
        if len(carry):
            probs.append(model(torch.from_numpy(np.pad(carry, (0, VAD_WINDOW - len(carry)))), SAMPLE_RATE).item())
    finally:
        torch.set_num_threads(threads)
    return np.asarray(probs, dtype=np.float32), total


def speech_segments(path: str | Path, options: VadOptions | None = None,
                    block_seconds: float = 30.0) -> tuple[list[tuple[float, float]], float]:
    """Speech segments ``[(start, end), ...]`` in seconds of the audio file ``path``, and its duration (s)."""
    from silero_vad import get_speech_timestamps_from_probs

    from serkit.audio import stream_audio

    o = options or VadOptions()
    probs, total = speech_probabilities(stream_audio(path, block_seconds=block_seconds))
    found = get_speech_timestamps_from_probs(
        probs.tolist(), sampling_rate=SAMPLE_RATE, threshold=o.threshold,
        min_speech_duration_ms=int(o.min_speech_seconds * 1000),
        min_silence_duration_ms=int(o.min_silence_seconds * 1000), speech_pad_ms=int(o.speech_pad_seconds * 1000),
        max_speech_duration_s=o.max_speech_seconds, audio_length_samples=total)
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in found], total / SAMPLE_RATE
