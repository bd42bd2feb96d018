"""``serkit serve MODEL``: a REST API (FastAPI, run by uvicorn) and a web page over one :class:`serkit.Recognizer`.

Routes:
    ``GET /``          the web page (``serkit/web/index.html``: plain HTML + JS, nothing fetched from elsewhere):
                       upload a file or record from the microphone; label, probability bars, timeline.
    ``GET /health``    ``{"status": "ok", "model", "backend", "task", "classes" | "targets", "max_bytes"}``.
    ``POST /predict``  audio as a multipart upload (field ``file``) or as the raw body (``audio/*`` or
                       ``application/octet-stream``); ``?segments=true`` adds the segment timeline. Answers the
                       Recognizer's result dict (``label``, ``probabilities``, ``windows`` ...) as JSON.

Errors are JSON ``{"detail": "one line"}``: 400 (no audio in the request), 413 (body over ``max_bytes``, checked
on ``Content-Length`` and while reading), 415 (not a media type or audio format serkit reads), 422 (audio that
cannot be scored: silent, non-finite, too short, too little audio for a speaker-normalised model).
"""

# no ``from __future__ import annotations``: FastAPI reads the route signatures' annotations at run time, and
# the FastAPI names are imported inside create_app (serve is an optional extra)
import io
import threading
from importlib import resources
from pathlib import Path

from serkit.errors import AudioError, SerkitError

#: Default request size limit (bytes): about 10 minutes of 16 kHz 16-bit mono WAV.
DEFAULT_MAX_BYTES = 20 * 2**20
#: Media types accepted as a raw body besides ``audio/*``.
RAW_TYPES = ("application/octet-stream",)


class RequestTooLarge(Exception):
    """Raised while reading a body that grows past the limit."""


class BodySizeLimit:
    """ASGI middleware: 413 for a request whose ``Content-Length`` exceeds ``max_bytes``, and for one whose body
    (chunked, or lying about its length) grows past it while being read."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
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


async def _too_large(max_bytes: int, send) -> None:
    import json

    body = json.dumps({"detail": f"request body over the limit of {max_bytes} bytes "
                                 f"({max_bytes / 2**20:.1f} MiB; serkit serve --max-mb)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def decode_audio(data: bytes, name: str):
    """16 kHz mono float32 ``(samples,)`` from the bytes of an audio file (any format soundfile reads).

    Raises :class:`AudioError`: ``problem`` starts with "not an audio format" when soundfile cannot read it (415),
    otherwise the audio is unusable (422).
    """
    import soundfile as sf

    from serkit.audio import prepare_signal

    if not data:
        raise AudioError(name, "empty: no bytes")
    try:
        signal, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as exc:  # noqa: BLE001 (soundfile raises several types for unknown or corrupt input)
        raise AudioError(name, f"not an audio format serkit reads (WAV, FLAC, OGG, MP3): {exc}") from None
    return prepare_signal(signal, sr, name=name, allow_silent=False)


def create_app(recognizer, *, max_bytes: int = DEFAULT_MAX_BYTES, model_name: str = "model"):
    """The FastAPI application over ``recognizer`` (predictions run one at a time, in a worker thread)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    from serkit import __version__
    from serkit.constants import SAMPLE_RATE

    app = FastAPI(title="serkit", description="speech emotion recognition", version=__version__)
    lock = threading.Lock()
    page = resources.files("serkit").joinpath("web/index.html").read_text(encoding="utf-8")
    labels = recognizer.labels
    info = {"status": "ok", "model": model_name, "backend": getattr(recognizer, "backend", "torch"),
            "task": labels.task, "max_bytes": int(max_bytes),
            "segments": hasattr(recognizer, "predict_segments")}
    info.update({"classes": list(labels.classes)} if labels.task == "classification"
                else {"targets": list(labels.targets)})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict:
        return info

    @app.post("/predict")
    async def predict(request: Request, segments: bool = False, abstain: bool = False) -> JSONResponse:
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

        def run() -> dict:
            signal = decode_audio(data, name)
            with lock:
                if segments and info["segments"]:
                    return _segments(recognizer, signal, name)
                return recognizer.predict(signal, SAMPLE_RATE, name=name, abstain=abstain)

        try:
            result = await run_in_threadpool(run)
        except AudioError as exc:
            status = 415 if exc.problem.startswith("not an audio format") else 422
            raise HTTPException(status, _one_line(exc)) from None
        except SerkitError as exc:
            raise HTTPException(422, _one_line(exc)) from None
        return JSONResponse(result)

    app.add_middleware(BodySizeLimit, max_bytes=max_bytes)
    return app


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
        raise SerkitError(f"serve needs FastAPI and uvicorn ({exc.name} is missing): pip install 'serkit[serve]'") from None
    from serkit.inference import Recognizer

    if args.max_mb <= 0:
        raise SerkitError(f"--max-mb {args.max_mb:g}: must be positive")
    rec = Recognizer.from_pretrained(args.model, device=args.device, backend=args.backend)
    name = Path(args.model).name if args.model else "serkit default model"
    app = create_app(rec, max_bytes=int(args.max_mb * 2**20), model_name=name)
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
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_serve)
