"""Benchmark: latency of live emotion (``serkit serve``'s ``WS /stream``) from the end of a speech segment to its
label arriving at a Python client.

A uvicorn server runs in this process (a thread, 127.0.0.1) over the model; the client (websocket-client, a
dependency of the [dev] extra's selenium) sends a recording as 16 kHz float32 frames of ``--frame`` samples,
paced in real time (each frame leaves when the audio it ends with would have been spoken; ``--fast``: as fast
as the socket takes them), and records when each ``segment`` message arrives. Latency of a segment: wall time
from sending the frame that holds the segment's end to the first message carrying that end. It includes the
voice activity detection's wait for the closing silence (``VadOptions.min_silence_seconds``, 0.3 s) and the
model call on the segment. Prints the median and 90th percentile over all segments.

    python bench/stream_latency.py                         # the shipped model, EmoDB speaker-03 clips with pauses
    python bench/stream_latency.py MODEL --audio talk.wav --repeat 3 --fast
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CLIPS = ("03a01Wa.flac", "03a02Ta.flac", "03a04Nc.flac", "03a05Fc.flac")


def _env() -> None:
    if "HF_HUB_CACHE" not in os.environ and (SHARED / "hf-cache").is_dir():
        os.environ["HF_HUB_CACHE"] = str(SHARED / "hf-cache")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _recording(audio: str | None) -> np.ndarray:
    """16 kHz float32 ``(samples,)``: ``audio``, or EmoDB clips of speaker 03 with 1.2 s pauses between them."""
    from serkit.audio import read_audio

    if audio:
        return read_audio(audio, max_seconds=None)
    wav = Path(os.environ.get("SERKIT_DATA", SHARED)) / "corpora" / "emodb" / "wav"
    missing = [c for c in CLIPS if not (wav / c).exists()]
    if missing:
        sys.exit(f"stream_latency: {wav / missing[0]} not found; give --audio FILE")
    pause = np.zeros(int(1.2 * 16000), np.float32)
    return np.concatenate([pause] + [x for c in CLIPS for x in (read_audio(wav / c), pause)])


def _serve(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sys.exit("stream_latency: uvicorn did not start")
        time.sleep(0.05)
    return server, server.servers[0].sockets[0].getsockname()[1]


def measure(port: int, x: np.ndarray, frame: int, fast: bool) -> tuple[list[float], dict]:
    """Stream ``x`` to ``ws://127.0.0.1:port/stream``; returns (latency per segment in s, the summary message)."""
    import websocket

    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/stream?format=f32", timeout=600)
    arrivals: list[tuple[float, dict]] = []

    def receive():
        while True:
            message = json.loads(ws.recv())
            arrivals.append((time.perf_counter(), message))
            if message["type"] in ("summary", "error"):
                return

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    sent_at = []  # (wall time, stream samples sent so far)
    t0 = time.perf_counter()
    for i in range(0, len(x), frame):
        part = x[i:i + frame]
        if not fast:
            time.sleep(max(0.0, t0 + (i + len(part)) / 16000 - time.perf_counter()))
        ws.send_binary(part.astype("<f4").tobytes())
        sent_at.append((time.perf_counter(), i + len(part)))
    ws.send(json.dumps({"type": "end"}))
    reader.join(timeout=600)
    ws.close()
    sent_samples = np.array([n for _, n in sent_at])
    latencies, seen = [], set()
    for arrived, m in arrivals:
        if m["type"] != "segment" or (m["index"], m["end"]) in seen:
            continue
        seen.add((m["index"], m["end"]))
        k = int(np.searchsorted(sent_samples, round(m["end"] * 16000)))
        if k < len(sent_at):  # a segment closed by the end of the stream has no frame holding its end
            latencies.append(arrived - sent_at[k][0])
    return latencies, arrivals[-1][1] if arrivals else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None, help="model folder (default: the model that ships with serkit)")
    ap.add_argument("--audio", help="recording to stream (default: EmoDB clips of speaker 03 with pauses)")
    ap.add_argument("--repeat", type=int, default=2, help="stream the recording this many times, one after another")
    ap.add_argument("--frame", type=int, default=1024, help="samples per message (the page sends 1024)")
    ap.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    _env()
    from serkit.inference import Recognizer
    from serkit.service import create_app

    rec = Recognizer.from_pretrained(args.model, device=args.device)
    x = np.tile(_recording(args.audio), max(1, args.repeat))
    rec.predict(x[:16000 * 2], 16000)  # warm-up: the encoder loads on first use
    server, port = _serve(create_app(rec, model_name=str(args.model or "shipped model")))
    try:
        latencies, summary = measure(port, x, args.frame, args.fast)
    finally:
        server.should_exit = True
    if not latencies:
        print(f"no segments: {summary.get('note') or summary.get('detail') or summary}")
        return 1
    lat = np.array(latencies)
    pace = "as fast as possible" if args.fast else "real-time paced"
    print(f"{len(lat)} segments in {len(x) / 16000:.1f} s of audio ({pace}, {args.frame}-sample frames, "
          f"model {args.model or 'shipped'}, {args.device}, torch threads {__import__('torch').get_num_threads()})")
    print(f"latency from segment end to label: median {np.median(lat):.3f} s, p90 {np.percentile(lat, 90):.3f} s, "
          f"max {lat.max():.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
