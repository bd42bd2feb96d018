"""Audio input: read anything soundfile reads, downmix, resample to 16 kHz with soxr, crop or pad.

Every waveform inside serkit is a float32 numpy array of shape ``(samples,)`` at :data:`SAMPLE_RATE` Hz.
Errors are :class:`~serkit.errors.AudioError` and name the file and the problem.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from serkit.constants import SAMPLE_RATE
from serkit.errors import AudioError
from serkit.io import not_a_regular_file

#: Longest file (seconds) that :func:`read_audio` accepts unless told otherwise; guards memory on huge files.
MAX_SECONDS = 3600.0
#: Peak amplitude below which a signal counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4
#: Shortest audio (seconds) serkit extracts, trains on or predicts: less (about a syllable) cannot carry an emotion.
MIN_SECONDS = 0.25
#: Sample rates (Hz) a recording can have; a header outside this range is broken or crafted (1 Hz would make
#: 1000 samples 1000 seconds long).
SAMPLE_RATE_RANGE = (1_000, 768_000)
#: Largest peak amplitude accepted (float audio's full scale is 1.0, so this is +60 dBFS). A louder signal comes
#: from a broken writer or holds integer-scaled samples stored as float; encoders overflow on it (a 1e19 peak gives
#: all-NaN features), so it is refused as "out of range" by check, extract, predict, serve and the Python API.
MAX_AMPLITUDE = 1e3


def signal_problem(signal: np.ndarray) -> str | None:
    """Why the samples of ``signal`` (any shape, float) are not audio at all, or None: ``"non-finite samples: ..."``
    (NaN or inf) or ``"out of range: ..."`` (peak above :data:`MAX_AMPLITUDE`). The one guard every reader shares."""
    finite = np.isfinite(signal)
    if not finite.all():
        return f"non-finite samples (NaN or inf): {int((~finite).sum())} of them"
    peak = float(np.abs(signal).max()) if signal.size else 0.0
    if peak > MAX_AMPLITUDE:
        return (f"out of range: peak amplitude {peak:.1e} > {MAX_AMPLITUDE:.0e} (float audio's full scale is 1.0; "
                f"scale the samples to [-1, 1])")
    return None


def unusable(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str | None:
    """Why mono ``signal`` (``(samples,)``) cannot be used, or None. The one verdict that ``serkit check``
    (fatal problems), extraction (skipped files) and prediction (refused clips) share:

    * ``"silent: ..."``: peak below :data:`SILENCE_PEAK` after the downmix to mono (also stereo whose channels
      cancel, e.g. one channel phase-inverted);
    * ``"too short to use: ..."``: under :data:`MIN_SECONDS`;
    * ``"non-finite samples: ..."`` / ``"out of range: ..."``: see :func:`signal_problem`.
    """
    problem = signal_problem(signal)
    if problem is not None:
        return problem
    seconds = len(signal) / sample_rate
    if seconds < MIN_SECONDS:
        return f"too short to use: {seconds:.3f} s < {MIN_SECONDS} s, too little to carry an emotion"
    peak = float(np.abs(signal).max())
    if peak < SILENCE_PEAK:
        return f"silent: peak amplitude {peak:.1e} < {SILENCE_PEAK:.0e} after the downmix to mono"
    return None


def _wav_declared_frames(path: str | Path) -> int | None:
    """Frames a RIFF/WAVE header's ``data`` chunk declares (None for other formats, or sizes left open)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "<" if head[:4] == b"RIFF" else ">"
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack(order + "I", head[pos + 4:pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack(order + "H", head[pos + 20:pos + 22])[0]
        if cid == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


def _checked_info(path: str | Path):
    """``soundfile.info`` plus the header checks soundfile does not make: an impossible sample rate, and a WAV
    whose data chunk is shorter than its header declares (soundfile reads that as a clean, shorter file); a FIFO
    or device is refused before it is opened (reading one could hang)."""
    _regular(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt input
        raise AudioError(path, f"unreadable: {exc}") from None
    lo, hi = SAMPLE_RATE_RANGE
    if not lo <= info.samplerate <= hi:
        raise AudioError(path, f"bad sample rate: the header declares {info.samplerate} Hz (expected {lo}-{hi} Hz)")
    declared = _wav_declared_frames(path)
    if declared is not None and info.frames < declared:
        raise AudioError(path, f"truncated: the header declares {declared} frames "
                               f"({declared / info.samplerate:.2f} s), the file holds {info.frames}")
    return info


def _regular(path: str | Path) -> None:
    problem = not_a_regular_file(path)
    if problem is not None:
        raise AudioError(path, problem)


def resample(signal: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample ``(samples,)`` from ``orig_sr`` to ``target_sr`` Hz with soxr (HQ)."""
    if orig_sr == target_sr:
        return signal.astype(np.float32, copy=False)
    return soxr.resample(signal.astype(np.float32, copy=False), orig_sr, target_sr, quality="HQ").astype(
        np.float32
    )


def to_mono(signal: np.ndarray) -> np.ndarray:
    """Average channels: ``(samples, channels)`` or ``(samples,)`` -> ``(samples,)``."""
    if signal.ndim == 1:
        return signal
    if signal.ndim == 2:
        return signal.mean(axis=1)
    raise ValueError(f"expected (samples,) or (samples, channels), got shape {signal.shape}")


def prepare_signal(
    signal: np.ndarray,
    sample_rate: int,
    *,
    target_sr: int = SAMPLE_RATE,
    name: str = "<signal>",
    allow_silent: bool = True,
) -> np.ndarray:
    """Turn an in-memory signal into serkit's form: mono float32 at ``target_sr``.

    ``signal`` is ``(samples,)`` or ``(samples, channels)``; raises :class:`AudioError` for empty,
    non-finite, out-of-range (peak above :data:`MAX_AMPLITUDE`) or (unless ``allow_silent``) silent input.
    """
    signal = np.asarray(signal)
    if signal.ndim == 2 and signal.shape[0] < signal.shape[1] and signal.shape[0] <= 8:
        signal = signal.T  # (channels, samples) -> (samples, channels)
    if signal.size == 0:
        raise AudioError(name, "empty: no samples")
    if np.issubdtype(signal.dtype, np.integer):
        signal = signal.astype(np.float32) / float(np.iinfo(signal.dtype).max)
    problem = signal_problem(signal)  # before the downmix: channels of 1e38 would sum to inf
    if problem is not None:
        raise AudioError(name, problem)
    signal = to_mono(signal.astype(np.float32, copy=False))
    if sample_rate <= 0:
        raise AudioError(name, f"invalid sample rate {sample_rate}")
    signal = resample(signal, sample_rate, target_sr)
    if not allow_silent and float(np.abs(signal).max()) < SILENCE_PEAK:
        raise AudioError(name, f"silent: peak amplitude {float(np.abs(signal).max()):.2e} < {SILENCE_PEAK}")
    return signal


def read_audio(
    path: str | Path,
    *,
    target_sr: int = SAMPLE_RATE,
    max_seconds: float | None = MAX_SECONDS,
    allow_silent: bool = True,
    start: float = 0.0,
    stop: float | None = None,
) -> np.ndarray:
    """Read ``path`` (any format soundfile reads) as mono float32 ``(samples,)`` at ``target_sr`` Hz.

    ``start`` / ``stop`` (seconds) read a segment. Raises :class:`AudioError` naming the file when it is missing,
    unreadable, empty, longer than ``max_seconds``, non-finite, out of range, or silent (when ``allow_silent`` is
    False). Multichannel audio is averaged to mono and other rates are resampled with soxr.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    info = _checked_info(path)
    if info.frames == 0:
        raise AudioError(path, "empty: no samples")
    seconds = info.frames / info.samplerate
    if max_seconds is not None and seconds > max_seconds and stop is None:
        raise AudioError(path, f"too long: {seconds:.1f} s > limit {max_seconds:.0f} s (raise max_seconds)")
    try:
        first = int(round(start * info.samplerate))
        last = None if stop is None else int(round(stop * info.samplerate))
        data, sr = sf.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(path, f"unreadable: {exc}") from None
    return prepare_signal(data, sr, target_sr=target_sr, name=str(path), allow_silent=allow_silent)


def stream_audio(path: str | Path, *, block_seconds: float = 30.0, target_sr: int = SAMPLE_RATE):
    """Read ``path`` in blocks: yields mono float32 ``(samples,)`` pieces at ``target_sr`` Hz whose concatenation is
    the whole file (resampled with a streaming soxr resampler), holding about ``block_seconds`` of audio at a time,
    so hour-long recordings take bounded memory. Raises :class:`AudioError` for a missing or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    _regular(path)
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError) as exc:  # soundfile's errors for corrupt input
        raise AudioError(path, f"unreadable: {exc}") from None
    if info.frames == 0:
        raise AudioError(path, "empty: no samples")
    stream = None if info.samplerate == target_sr else soxr.ResampleStream(
        info.samplerate, target_sr, 1, dtype="float32", quality="HQ")
    block = max(1, int(block_seconds * info.samplerate))
    try:
        for data in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
            problem = signal_problem(data)
            if problem is not None:
                raise AudioError(path, problem)
            mono = to_mono(data)
            out = mono if stream is None else stream.resample_chunk(mono)
            if len(out):
                yield out
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                yield tail
    except AudioError:
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        raise AudioError(path, f"unreadable: {exc}") from None


def audio_info(path: str | Path) -> dict:
    """Header facts without decoding: ``{"duration": s, "sample_rate": Hz, "channels": n, "frames": n}``.

    Raises :class:`AudioError` for an unreadable file, an impossible sample rate or a truncated WAV."""
    info = _checked_info(path)
    return {
        "duration": info.frames / info.samplerate if info.samplerate else 0.0,
        "sample_rate": info.samplerate,
        "channels": info.channels,
        "frames": info.frames,
    }


def content_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-1 of the file's bytes (hex, 16 chars): identifies audio content for caches. Raises :class:`AudioError`
    for a FIFO or device (never opened)."""
    _regular(path)
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def signal_hash(signal: np.ndarray) -> str:
    """SHA-1 of a float32 signal's samples (hex, 16 chars)."""
    return hashlib.sha1(np.ascontiguousarray(signal, dtype=np.float32).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class CropPad:
    """Crop or pad policy for waveforms of shape ``(samples,)``.

    mode: ``"none"`` leaves the signal as it is; ``"fixed"`` crops the centre / pads the end to ``seconds``
    (HCLD uses 7.5 s); ``"random"`` takes a random window of ``seconds`` (training) and pads shorter input.
    pad: ``"zero"`` or ``"repeat"`` (tile the signal).
    """

    mode: Literal["none", "fixed", "random"] = "none"
    seconds: float | None = None
    pad: Literal["zero", "repeat"] = "zero"

    def __post_init__(self):
        if self.mode not in ("none", "fixed", "random"):
            raise ValueError(f"CropPad.mode must be none, fixed or random, got {self.mode!r}")
        if self.mode != "none" and (self.seconds is None or self.seconds <= 0):
            raise ValueError(f"CropPad mode {self.mode!r} needs seconds > 0, got {self.seconds!r}")
        if self.pad not in ("zero", "repeat"):
            raise ValueError(f"CropPad.pad must be zero or repeat, got {self.pad!r}")

    def num_samples(self, sample_rate: int = SAMPLE_RATE) -> int | None:
        return None if self.seconds is None else int(round(self.seconds * sample_rate))

    def __call__(
        self, signal: np.ndarray, rng: np.random.Generator | None = None, sample_rate: int = SAMPLE_RATE
    ) -> np.ndarray:
        if self.mode == "none":
            return signal
        n = self.num_samples(sample_rate)
        if len(signal) > n:
            if self.mode == "random":
                rng = rng or np.random.default_rng()
                start = int(rng.integers(0, len(signal) - n + 1))
            else:
                start = (len(signal) - n) // 2
            return signal[start : start + n]
        if len(signal) < n:
            if self.pad == "repeat" and len(signal) > 0:
                reps = int(np.ceil(n / len(signal)))
                return np.tile(signal, reps)[:n]
            return np.pad(signal, (0, n - len(signal)))
        return signal
