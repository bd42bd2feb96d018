"""``serkit serve MODEL``: a REST API (FastAPI, run by uvicorn) and a web page over one :class:`serkit.Recognizer`.

Routes:
    ``GET /``          the web page (``serkit/web/index.html``: plain HTML + JS, nothing fetched from elsewhere):
                       upload a file or record from the microphone; label, probability bars, timeline.
    ``GET /health``    ``{"status": "ok", "model", "backend", "task", "classes" | "targets", "max_bytes",
                       "segments", "stream", "colours"}`` (``colours``: one per class, those of the PNG timeline).
    ``POST /predict``  audio as a multipart upload (field ``file``) or as the raw body (``audio/*`` or
                       ``application/octet-stream``); ``?segments=true`` adds the segment timeline. Answers the
                       Recognizer's result dict (``label``, ``probabilities``, ``windows`` ...) as JSON.
    ``WS /stream``     live emotion: 16 kHz PCM frames in, ``partial`` / ``segment`` / ``summary`` JSON out
                       (:mod:`serkit.stream`; the protocol is in ``_add_stream_route``).

Errors are JSON ``{"detail": "one line"}``: 400 (no audio in the request), 408 (a body chunk slower than
``read_timeout`` seconds), 413 (body over ``max_bytes``, checked on ``Content-Length`` and while reading), 415 (not a
media type or audio format serkit reads), 422 (audio that cannot be scored: a sample rate outside
``audio.SAMPLE_RATE_RANGE``, longer than ``max_seconds`` or more samples than that allows (both read from the header
before decoding), silent, non-finite, out of range, too short, too little audio for a speaker-normalised model),
503 (``max_decodes`` uploads already decoding and none finished within ``queue_seconds``).

The page is served with a Content-Security-Policy that allows only its own inline script and style (by hash),
requests to this server and blob: media; text from the model folder (class names) is inserted as text.
"""

# no ``from __future__ import annotations``: FastAPI reads the route signatures' annotations at run time, and
# the FastAPI names are imported inside create_app (serve is an optional extra)
import asyncio
import base64
import hashlib
import io
import re
import threading
from importlib import resources
from pathlib import Path

from serkit.errors import AudioError, SerkitError

#: Default request size limit (bytes): about 10 minutes of 16 kHz 16-bit mono WAV.
DEFAULT_MAX_BYTES = 20 * 2**20
#: Default longest upload (seconds of audio, from the header): compressed formats hold far more audio per byte.
DEFAULT_MAX_SECONDS = 600.0
#: Most channels an upload may declare (the decoded array holds frames x channels float32 values).
MAX_CHANNELS = 8
#: Default number of uploads decoded and scored at once; more wait up to ``queue_seconds`` and then get 503.
DEFAULT_MAX_DECODES = 2
#: Default seconds one body chunk may take to arrive (408 after it: a slow sender holds no worker forever).
DEFAULT_READ_TIMEOUT = 30.0
#: Media types accepted as a raw body besides ``audio/*``.
RAW_TYPES = ("application/octet-stream",)


class RequestTooLarge(Exception):
    """Raised while reading a body that grows past the limit."""


class ServerBusy(Exception):
    """Raised when no decode slot frees up within the queue time."""


class RequestTimedOut(Exception):
    """Raised while reading a body whose next chunk does not arrive in time."""


class BodySizeLimit:
    """ASGI middleware: 413 for a request whose ``Content-Length`` exceeds ``max_bytes``, and for one whose body
    (chunked, or lying about its length) grows past it while being read."""

    def __init__(self, app, max_bytes: int, read_timeout: float = DEFAULT_READ_TIMEOUT):
        self.app, self.max_bytes, self.read_timeout = app, int(max_bytes), float(read_timeout)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes, send)
        seen = 0
        started = body_done = False

        async def limited_receive():
            nonlocal seen, body_done
            if body_done:  # later receives wait for a disconnect: no time limit there
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                raise RequestTimedOut from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except RequestTooLarge:
            if not started:
                await _too_large(self.max_bytes, send)
        except RequestTimedOut:
            if not started:
                await _refuse(408, f"request body: no data for {self.read_timeout:g} s", send)


async def _too_large(max_bytes: int, send) -> None:
    await _refuse(413, f"request body over the limit of {max_bytes} bytes "
                       f"({max_bytes / 2**20:.1f} MiB; serkit serve --max-mb)", send)


async def _refuse(status: int, detail: str, send) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def decode_audio(data: bytes, name: str, max_seconds: float = DEFAULT_MAX_SECONDS):
    """16 kHz mono float32 ``(samples,)`` from the bytes of an audio file (any format soundfile reads).

    The header is checked before anything is decoded, with the CLI's limits: the sample rate within
    ``audio.SAMPLE_RATE_RANGE``, at most ``max_seconds`` of audio and :data:`MAX_CHANNELS` channels, so the decoded
    array holds at most ``max_seconds * rate * channels`` values (the declared frame count bounds the read).
    Raises :class:`AudioError`: ``problem`` starts with "not an audio format" when soundfile cannot read it (415),
    otherwise the audio is unusable (422).
    """
    import soundfile as sf

    from serkit.audio import SAMPLE_RATE_RANGE, prepare_signal

    if not data:
        raise AudioError(name, "empty: no bytes")
    try:
        with sf.SoundFile(io.BytesIO(data)) as fh:
            rate, channels, frames = fh.samplerate, fh.channels, fh.frames
            lo, hi = SAMPLE_RATE_RANGE
            if not lo <= rate <= hi:
                raise AudioError(name, f"bad sample rate: the header declares {rate} Hz (expected {lo}-{hi} Hz)")
            if channels > MAX_CHANNELS:
                raise AudioError(name, f"too many channels: the header declares {channels} (at most {MAX_CHANNELS})")
            if frames / rate > max_seconds:
                raise AudioError(name, f"too long: the header declares {frames / rate:.1f} s "
                                       f"(this server takes at most {max_seconds:g} s)")
            signal = fh.read(frames=min(frames, int(max_seconds * rate)), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 (soundfile raises several types for unknown or corrupt input)
        raise AudioError(name, f"not an audio format serkit reads (WAV, FLAC, OGG, MP3): {exc}") from None
    return prepare_signal(signal, rate, name=name, allow_silent=False)


def content_security_policy(page: str) -> str:
    """The page's Content-Security-Policy: its inline ``<script>`` and ``<style>`` blocks by SHA-256 hash, requests
    to this server only, blob: media (the player), no plugins, frames or base URL changes."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            f"connect-src 'self'; media-src blob:; img-src 'self'; object-src 'none'; base-uri 'none'; "
            f"form-action 'none'; frame-ancestors 'none'")


def create_app(recognizer, *, max_bytes: int = DEFAULT_MAX_BYTES, model_name: str = "model",
               max_seconds: float = DEFAULT_MAX_SECONDS, max_decodes: int = DEFAULT_MAX_DECODES,
               queue_seconds: float = 30.0, read_timeout: float = DEFAULT_READ_TIMEOUT):
    """The FastAPI application over ``recognizer`` (predictions run one at a time, in a worker thread).

    At most ``max_decodes`` uploads are decoded and scored at once; a request that finds no free slot within
    ``queue_seconds`` gets 503. Uploads over ``max_seconds`` of audio are refused from their header (422)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    from serkit.version import __version__

    app = FastAPI(title="serkit", description="speech emotion recognition", version=__version__)
    lock = threading.Lock()
    page = resources.files("serkit").joinpath("web/index.html").read_text(encoding="utf-8")
    page_headers = {"Content-Security-Policy": content_security_policy(page), "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer"}
    info = model_info(recognizer, model_name, max_bytes)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/health")
    def health() -> dict:
        return info

    _add_predict_route(app, recognizer, info, lock, max_seconds=max_seconds, max_decodes=max_decodes,
                       queue_seconds=queue_seconds)
    if info["stream"]:
        _add_stream_route(app, recognizer, lock)
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes, read_timeout=read_timeout)
    return app


def model_info(recognizer, model_name: str, max_bytes: int) -> dict:
    """The ``/health`` answer: the model, its classes (with their timeline colours) or targets, what it offers."""
    from serkit.timeline import label_colours

    labels = recognizer.labels
    segments = hasattr(recognizer, "predict_segments")
    info = {"status": "ok", "model": model_name, "backend": getattr(recognizer, "backend", "torch"),
            "task": labels.task, "max_bytes": int(max_bytes), "segments": segments,
            "stream": segments and hasattr(recognizer, "score_pieces")}
    if labels.task == "classification":
        info.update({"classes": list(labels.classes), "colours": label_colours(labels.classes)})
    else:
        info["targets"] = list(labels.targets)
    return info


async def _read_upload(request) -> tuple[bytes, str]:
    """The audio bytes and a name from a multipart upload (field ``file``) or a raw ``audio/*`` body."""
    from fastapi import HTTPException

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "no audio in the request: send the file in the multipart field 'file'")
        data, name = await upload.read(), upload.filename or "upload"
    elif ctype.startswith("audio/") or ctype in RAW_TYPES:
        data, name = await request.body(), request.headers.get("x-filename", "body")
    elif not ctype:
        raise HTTPException(400, "no audio in the request: send a multipart upload (field 'file') or the audio "
                                 "bytes with Content-Type audio/* or application/octet-stream")
    else:
        raise HTTPException(415, f"Content-Type {ctype!r}: send multipart/form-data (field 'file'), audio/* "
                                 f"or application/octet-stream")
    if not data:
        raise HTTPException(400, f"{name}: empty upload, no audio bytes")
    return data, name


def _add_predict_route(app, recognizer, info: dict, lock, *, max_seconds: float, max_decodes: int,
                       queue_seconds: float) -> None:
    """``POST /predict``: decode an upload (at most ``max_decodes`` at once) and score it under ``lock``."""
    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from serkit.constants import SAMPLE_RATE

    decodes = threading.BoundedSemaphore(max(1, int(max_decodes)))

    @app.post("/predict")
    async def predict(request: Request, segments: bool = False, abstain: bool = False) -> JSONResponse:
        data, name = await _read_upload(request)

        def run() -> dict:
            if not decodes.acquire(timeout=queue_seconds):
                raise ServerBusy
            try:
                signal = decode_audio(data, name, max_seconds=max_seconds)
                with lock:
                    if segments and info["segments"]:
                        return _segments(recognizer, signal, name)
                    return recognizer.predict(signal, SAMPLE_RATE, name=name, abstain=abstain)
            finally:
                decodes.release()

        try:
            result = await run_in_threadpool(run)
        except ServerBusy:
            raise HTTPException(503, f"busy: {max_decodes} upload(s) already being analysed; try again shortly",
                                headers={"Retry-After": "5"}) from None
        except AudioError as exc:
            status = 415 if exc.problem.startswith("not an audio format") else 422
            raise HTTPException(status, _one_line(exc)) from None
        except SerkitError as exc:
            raise HTTPException(422, _one_line(exc)) from None
        return JSONResponse(result)


def _add_stream_route(app, recognizer, lock) -> None:
    """``WebSocket /stream?format=f32|i16``: live emotion (:mod:`serkit.stream`). The client sends binary frames of
    16 kHz mono PCM (little-endian float32, or int16) and the text ``{"type": "end"}`` when it stops; the server
    answers JSON ``partial`` / ``segment`` messages as they come and a ``summary`` after ``end``. A bad frame gets
    ``{"type": "error", "detail"}`` and the socket closes (code 1007; 1008 for a bad ``format``)."""
    from fastapi import WebSocket, WebSocketDisconnect
    from starlette.concurrency import run_in_threadpool

    from serkit.stream import StreamSession, decode_frame

    def locked(fn):
        with lock:
            return fn()

    @app.websocket("/stream")
    async def stream(ws: WebSocket, format: str = "f32") -> None:
        await ws.accept()
        if format not in ("f32", "i16"):
            await ws.send_json({"type": "error", "detail": f"format {format!r}: expected 'f32' or 'i16'"})
            return await ws.close(code=1008)
        try:
            session = await run_in_threadpool(StreamSession, recognizer, "live", run=locked)
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    frame = decode_frame(message["bytes"], format)
                    replies = await run_in_threadpool(session.push, frame)
                elif _is_end(message.get("text")):
                    for reply in await run_in_threadpool(session.finish):
                        await ws.send_json(reply)
                    return await ws.close()
                else:
                    raise SerkitError('text message: the only one is {"type": "end"}; audio goes in binary frames')
                for reply in replies:
                    await ws.send_json(reply)
        except WebSocketDisconnect:
            return
        except SerkitError as exc:
            await ws.send_json({"type": "error", "detail": _one_line(exc)})
            await ws.close(code=1007)


def _is_end(text: str | None) -> bool:
    import json

    try:
        return isinstance(text, str) and json.loads(text).get("type") == "end"
    except (ValueError, AttributeError):
        return False


def _segments(recognizer, signal, name: str) -> dict:
    """:meth:`Recognizer.predict_segments` (voice activity detection, a label per speech segment) on a decoded
    upload: it reads a file in blocks, so the signal goes through a temporary float WAV."""
    import tempfile

    import soundfile as sf

    from serkit.constants import SAMPLE_RATE

    with tempfile.TemporaryDirectory(prefix="serkit-serve-") as tmp:
        path = Path(tmp) / "upload.wav"
        sf.write(str(path), signal, SAMPLE_RATE, subtype="FLOAT")
        result = recognizer.predict_segments(path)
    return {**result, "file": name}


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise SerkitError(f"serve needs FastAPI and uvicorn ({exc.name} is missing): "
                          "pip install 'serkit[serve]'") from None
    from serkit.audio import MAX_SECONDS
    from serkit.inference import Recognizer

    if not args.max_mb > 0:
        raise SerkitError(f"--max-mb {args.max_mb:g}: must be positive")
    if not 0 < args.max_seconds <= MAX_SECONDS:
        raise SerkitError(f"--max-seconds {args.max_seconds:g}: must be in (0, {MAX_SECONDS:g}]")
    if not 0 <= args.port <= 65535:
        raise SerkitError(f"--port {args.port}: must be in 0-65535")
    rec = Recognizer.from_pretrained(args.model, device=args.device, backend=args.backend)
    name = Path(args.model).name if args.model else "serkit default model"
    app = create_app(rec, max_bytes=int(args.max_mb * 2**20), model_name=name, max_seconds=args.max_seconds)
    print(f"serving {args.model or name} ({args.backend}) on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="REST API and web page for a trained model (FastAPI + uvicorn)")
    p.add_argument("model", nargs="?", default=None,
                   help="model folder from `serkit train` or a hub id (default: the model that ships with serkit)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="onnx: the graph of `serkit export MODEL --format onnx`, run by onnxruntime")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20,
                   help="request size limit in MiB (413 above it; default %(default)g)")
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help="longest upload in seconds of audio, read from its header before decoding "
                        "(default %(default)g)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_serve)
