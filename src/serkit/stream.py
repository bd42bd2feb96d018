"""Live emotion: voice activity detection and per-segment prediction on audio that arrives in pieces.

:class:`SpeechTracker` is silero-vad's ``get_speech_timestamps_from_probs`` (threshold with hysteresis, shortest
speech, shortest silence, longest speech, padding) run one 512-sample window at a time: a segment is handed out
as soon as no later window can change it. :class:`StreamingVad` adds the silero model (its state carried from
frame to frame, the last partial window zero-padded at the end, as :func:`serkit.vad.speech_probabilities` does).
:class:`StreamSession` holds the audio, scores each closed segment with the :class:`~serkit.Recognizer` (the
pieces, loading and scoring of :meth:`~serkit.Recognizer.predict_segments`) and answers messages:

- ``{"type": "partial", "start", "end", "label", "scores"}``: the speech still open, scored about every
  ``partial_seconds`` of audio (its last ``predict.window_seconds`` at most);
- ``{"type": "segment", "index", "start", "end", "label", "scores"}``: a segment of the timeline, as
  ``predict_segments`` merges them (a later segment of the same label within ``merge_gap`` s replaces the one
  at the same ``index``);
- ``{"type": "summary", ...}``: at the end, the ``predict_segments`` dict of everything streamed (speech share
  per label, longest stretches).

Times are seconds of stream time (samples received / 16000). Fed the samples of a 16 kHz file in chunks of any
size, the segments, labels and summary are those of ``predict_segments`` on the file. Memory: the audio from
the start of the earliest segment not yet scored (plus padding), and one float per scored piece.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from serkit.constants import SAMPLE_RATE
from serkit.errors import SerkitError
from serkit.vad import VAD_WINDOW, VadOptions

#: Longest frame (samples) a client may send in one message: 2 s at 16 kHz.
MAX_FRAME_SAMPLES = 2 * SAMPLE_RATE


class SpeechTracker:
    """silero's speech-timestamp rules on probabilities that arrive one window at a time.

    :meth:`step` takes the next window's speech probability; :meth:`finish` ends the stream at ``total`` samples.
    Both return the segments ``[(start, end), ...]`` (samples, padded) that became final; their concatenation
    equals ``get_speech_timestamps_from_probs`` on all the probabilities with the same options.
    """

    def __init__(self, options: VadOptions | None = None):
        o = options or VadOptions()
        sr = SAMPLE_RATE
        self.threshold = o.threshold
        self.neg_threshold = max(o.threshold - 0.15, 0.01)
        self.min_speech = sr * int(o.min_speech_seconds * 1000) / 1000
        self.pad = sr * int(o.speech_pad_seconds * 1000) / 1000
        self.max_speech = sr * o.max_speech_seconds - VAD_WINDOW - 2 * self.pad
        self.min_silence = sr * int(o.min_silence_seconds * 1000) / 1000
        self.min_silence_at_max = sr * 98 / 1000
        self.index = 0  # windows seen
        self.triggered = False
        self.current: dict = {}
        self.temp_end = self.prev_end = self.next_start = 0
        self.possible_ends: list[tuple[int, int]] = []
        self.closed: list[dict] = []  # raw segments not yet handed out (the last one's end waits for its successor)
        self.previous_end: int | None = None  # raw end of the last segment handed out

    @property
    def open_start(self) -> int | None:
        """Raw start (samples) of the speech now open, None in silence."""
        return self.current.get("start") if self.triggered else None

    def step(self, prob: float) -> list[tuple[int, int]]:
        """The next window's probability; returns the segments that became final."""
        self._advance(float(prob))
        self.index += 1
        return self._ready(lower_bound=self.current.get("start", self.index * VAD_WINDOW) if self.triggered
                           else self.index * VAD_WINDOW)

    def finish(self, total: int) -> list[tuple[int, int]]:
        """End of the stream at ``total`` samples: the open speech closes there; every segment is final."""
        if self.current and (total - self.current["start"]) > self.min_speech:
            self.closed.append({"start": self.current["start"], "end": total})
        self.current, self.triggered = {}, False
        out = self._ready(lower_bound=None, total=total)
        return out

    def _ready(self, lower_bound: int | None, total: int | None = None) -> list[tuple[int, int]]:
        """Hand out closed segments whose padding is known: a successor exists, or no later segment can start
        within two paddings of the end (``lower_bound``: earliest start still possible; None: the stream ended)."""
        out = []
        while self.closed:
            seg = self.closed[0]
            if len(self.closed) > 1:
                gap = self.closed[1]["start"] - seg["end"]
                end = seg["end"] + int(gap // 2) if gap < 2 * self.pad else int(seg["end"] + self.pad)
            elif lower_bound is None:
                end = int(min(total, seg["end"] + self.pad))
            elif lower_bound - seg["end"] >= 2 * self.pad:
                end = int(seg["end"] + self.pad)
            else:
                break
            out.append((self._padded_start(seg), end))
            self.previous_end = seg["end"]
            self.closed.pop(0)
        return out

    def _padded_start(self, seg: dict) -> int:
        if self.previous_end is None:
            return int(max(0, seg["start"] - self.pad))
        gap = seg["start"] - self.previous_end
        return int(max(0, seg["start"] - gap // 2)) if gap < 2 * self.pad else int(max(0, seg["start"] - self.pad))

    def _advance(self, p: float) -> None:  # silero's loop body (get_speech_timestamps_from_probs), one window
        cur = VAD_WINDOW * self.index
        if p >= self.threshold and self.temp_end:
            silence = cur - self.temp_end
            if silence > self.min_silence_at_max:
                self.possible_ends.append((self.temp_end, silence))
            self.temp_end = 0
            if self.next_start < self.prev_end:
                self.next_start = cur
        if p >= self.threshold and not self.triggered:
            self.triggered = True
            self.current["start"] = cur
            return
        if self.triggered and cur - self.current["start"] > self.max_speech and self._cut_at_max(cur):
            return
        if p < self.neg_threshold and self.triggered:
            if not self.temp_end:
                self.temp_end = cur
            if cur - self.temp_end < self.min_silence:
                return
            self.current["end"] = self.temp_end
            if self.current["end"] - self.current["start"] > self.min_speech:
                self.closed.append(self.current)
            self._reset(triggered=False)

    def _cut_at_max(self, cur: int) -> bool:
        """Speech longer than the longest allowed: cut at its longest silence (silero's default rule), else at
        ``cur``. Returns True when the window needs no further processing."""
        if self.possible_ends:
            self.prev_end, dur = max(self.possible_ends, key=lambda x: x[1])
            self.current["end"] = self.prev_end
            self.closed.append(self.current)
            self.current = {}
            self.next_start = self.prev_end + dur
            if self.next_start < self.prev_end + cur:
                self.current["start"] = self.next_start
            else:
                self.triggered = False
            self.prev_end = self.next_start = self.temp_end = 0
            self.possible_ends = []
            return False
        self.current["end"] = cur
        self.closed.append(self.current)
        self._reset(triggered=False)
        return True

    def _reset(self, triggered: bool) -> None:
        self.current = {}
        self.prev_end = self.next_start = self.temp_end = 0
        self.triggered = triggered
        self.possible_ends = []


class StreamingVad:
    """silero-vad on 16 kHz audio that arrives in frames of any length: :meth:`push` / :meth:`finish` return
    final segments ``[(start, end), ...]`` in samples, as :func:`serkit.vad.speech_segments` finds them."""

    def __init__(self, options: VadOptions | None = None, model=None):
        if model is None:
            from serkit.vad import load_vad

            load_vad()  # the first import of silero sets torch's threads; load_vad undoes that
            threads = torch.get_num_threads()
            from silero_vad import load_silero_vad

            model = load_silero_vad()  # a model per stream: its recurrent state is the stream's
            torch.set_num_threads(threads)
        self.model = model
        self.model.reset_states()
        self.tracker = SpeechTracker(options)
        self.carry = np.zeros(0, dtype=np.float32)
        self.total = 0

    @torch.no_grad()
    def _probability(self, window: np.ndarray) -> float:
        return self.model(torch.from_numpy(window), SAMPLE_RATE).item()

    def push(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """16 kHz float32 ``(samples,)``; returns the segments that became final."""
        self.total += len(samples)
        x = np.concatenate([self.carry, np.asarray(samples, dtype=np.float32)])
        n = len(x) // VAD_WINDOW * VAD_WINDOW
        out = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one 512-sample window at a time (silero's setting)
        try:
            for s in range(0, n, VAD_WINDOW):
                out += self.tracker.step(self._probability(x[s:s + VAD_WINDOW]))
        finally:
            torch.set_num_threads(threads)
        self.carry = x[n:]
        return out

    def finish(self) -> list[tuple[int, int]]:
        """End of the stream: the last partial window (zero-padded), then every remaining segment."""
        out = []
        if len(self.carry):
            out += self.tracker.step(self._probability(np.pad(self.carry, (0, VAD_WINDOW - len(self.carry)))))
            self.carry = np.zeros(0, dtype=np.float32)
        return out + self.tracker.finish(self.total)


class StreamSession:
    """One live stream scored by ``recognizer``: :meth:`push` 16 kHz float32 frames, :meth:`finish` at the end;
    both return the messages to send (see the module docstring). ``run(fn)`` runs each model call (default: in
    place; the server passes one that holds its lock)."""

    def __init__(self, recognizer, name: str = "live", vad: VadOptions | None = None, merge_gap: float = 1.0,
                 partial_seconds: float = 1.0, run: Callable | None = None, vad_model=None):
        self.rec, self.name, self.merge_gap = recognizer, name, float(merge_gap)
        self.head = None  # the recognizer's head for audio without enrolment
        recognizer.score_pieces([], self._load, name)  # a model with no such head fails here, before any audio
        self.vad = StreamingVad(vad, vad_model)
        self.run = run or (lambda fn: fn())
        self.partial_samples = int(partial_seconds * SAMPLE_RATE)
        self.audio = np.zeros(0, dtype=np.float32)
        self.offset = 0  # stream sample of self.audio[0]
        self.pieces: list[tuple[float, float]] = []
        self.per_piece: list = []
        self.speech = 0.0
        self.sent: list[dict] = []
        self.next_partial = self.partial_samples

    def push(self, samples: np.ndarray) -> list[dict]:
        """A frame of 16 kHz mono float32 ``(samples,)``; returns the messages it gave rise to."""
        samples = check_frame(samples)
        self.audio = np.concatenate([self.audio, samples])
        messages = self._score_segments(self.vad.push(samples))
        messages += self._partial()
        self._trim()
        return messages

    def finish(self) -> list[dict]:
        """End of the stream: the segments still open, then ``{"type": "summary", ...}``."""
        messages = self._score_segments(self.vad.finish())
        result = self.rec.segments_result(self.name, self.vad.total / SAMPLE_RATE, self.speech,
                                          self.head, self.pieces, self.per_piece, self.merge_gap)
        return messages + [{"type": "summary", **result}]

    def _load(self, start: float, end: float) -> np.ndarray:
        """As ``read_audio(path, start=start, stop=end)`` reads a 16 kHz file: samples round(start * 16000) on."""
        from serkit.audio import prepare_signal

        a, b = round(start * SAMPLE_RATE) - self.offset, round(end * SAMPLE_RATE) - self.offset
        return prepare_signal(self.audio[max(0, a):max(0, b)], SAMPLE_RATE, name=f"{self.name}@{start:.2f}")

    def _score_segments(self, spans: list[tuple[int, int]]) -> list[dict]:
        if not spans:
            return []
        from serkit.inference.windows import speech_pieces

        pieces = speech_pieces([(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in spans], self.rec.window)
        per_piece, speech = self.run(lambda: self.rec.score_pieces(pieces, self._load, self.name, None, self.head))
        self.pieces += pieces
        self.per_piece += per_piece
        self.speech += speech
        result = self.rec.segments_result(self.name, self.vad.total / SAMPLE_RATE, self.speech, self.head,
                                          self.pieces, self.per_piece, self.merge_gap)
        segments = result.get("segments", [])
        messages = [segment_message(i, seg) for i, seg in enumerate(segments)
                    if i >= len(self.sent) or self.sent[i] != seg]
        self.sent = segments
        self.next_partial = self.vad.total + self.partial_samples
        return messages

    def _partial(self) -> list[dict]:
        """The open speech scored, when ``partial_seconds`` of audio passed since the last partial or segment."""
        start = self.vad.tracker.open_start
        if start is None or self.vad.total < self.next_partial:
            return []
        self.next_partial = self.vad.total + self.partial_samples
        if self.vad.total - start < self.vad.tracker.min_speech:
            return []
        begin = max(start, self.vad.total - int(self.rec.window * SAMPLE_RATE))
        piece = [(begin / SAMPLE_RATE, self.vad.total / SAMPLE_RATE)]
        scores, speech = self.run(lambda: self.rec.score_pieces(piece, self._load, self.name, None, self.head))
        if scores[0] is None:
            return []
        result = self.rec.segments_result(self.name, speech, speech, self.head, piece, scores)
        return [{"type": "partial", "start": round(piece[0][0], 3), "end": round(piece[0][1], 3),
                 **_label_scores(result)}]

    def _trim(self) -> None:
        """Drop audio no segment can still need: before the earliest possible (padded) start."""
        t = self.vad.tracker
        keep = min([s["start"] for s in t.closed] + ([t.open_start] if t.open_start is not None else [])
                   + [self.vad.total - len(self.vad.carry)]) - int(2 * t.pad) - VAD_WINDOW
        if keep - self.offset > SAMPLE_RATE:
            self.audio = self.audio[keep - self.offset:]
            self.offset = keep


def _label_scores(described: dict) -> dict:
    """``{"label", "scores"}`` from a Recognizer's ``{"label", "probabilities"}`` or ``{"values"}``."""
    if "probabilities" in described:
        return {"label": described["label"], "scores": described["probabilities"]}
    return {"label": None, "scores": described["values"]}


def segment_message(index: int, seg: dict) -> dict:
    """The ``segment`` message of timeline segment ``index``."""
    return {"type": "segment", "index": index, "start": seg["start"], "end": seg["end"],
            **_label_scores({k: v for k, v in seg.items() if k in ("label", "probabilities", "values")})}


def check_frame(samples) -> np.ndarray:
    """A client's frame as float32 ``(samples,)``; raises :class:`SerkitError` (one line) for an empty, too long,
    non-finite or out-of-range frame."""
    from serkit.audio import signal_problem

    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if len(x) == 0:
        raise SerkitError("audio frame: no samples")
    if len(x) > MAX_FRAME_SAMPLES:
        raise SerkitError(f"audio frame: {len(x)} samples (at most {MAX_FRAME_SAMPLES}, 2 s at 16 kHz, per message)")
    problem = signal_problem(x)
    if problem is not None:
        raise SerkitError(f"audio frame: {problem}")
    return x


def decode_frame(data: bytes, sample_format: str) -> np.ndarray:
    """PCM bytes -> float32 ``(samples,)``: ``f32`` little-endian float32, ``i16`` little-endian int16 (/ 32767)."""
    if sample_format == "f32":
        if len(data) % 4:
            raise SerkitError(f"audio frame: {len(data)} bytes is not a whole number of float32 samples")
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if sample_format == "i16":
        if len(data) % 2:
            raise SerkitError(f"audio frame: {len(data)} bytes is not a whole number of int16 samples")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    raise SerkitError(f"format {sample_format!r}: expected 'f32' or 'i16'")
