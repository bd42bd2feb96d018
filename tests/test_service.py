"""The REST API of ``serkit serve`` through FastAPI's TestClient (no socket)."""

import io

import numpy as np
import pytest
import soundfile as sf

from serkit.inference import Recognizer
from serkit.train.final import train_final
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401  (session fixture)

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def recognizer(tiny_corpus, tmp_path_factory):  # noqa: F811
    model = train_final(tiny_config(tiny_corpus, train={"epochs": 2}), tmp_path_factory.mktemp("served") / "model",
                        log=lambda *a: None)
    return Recognizer.from_pretrained(model)


@pytest.fixture(scope="module")
def client(recognizer):
    from fastapi.testclient import TestClient

    from serkit.service import create_app

    return TestClient(create_app(recognizer, max_bytes=200_000, model_name="tiny"))


def _wav(signal, sr=16000, fmt="WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, signal, sr, format=fmt)
    return buf.getvalue()


def test_health_and_page(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny" and h["classes"] == ["high", "low", "mid"]
    assert h["max_bytes"] == 200_000
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="probs"' in page.text and "MediaRecorder" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_predict_multipart_and_raw_body_match_the_recognizer(client, recognizer, tiny_corpus):  # noqa: F811
    path = tiny_corpus / "spk2" / "low_3.wav"
    want = recognizer.predict(path)
    r = client.post("/predict", files={"file": ("low_3.wav", path.read_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["file"] == "low_3.wav" and got["label"] == want["label"]
    assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)
    # raw body, another format and sample rate: decoded and resampled like a file
    x, _ = sf.read(str(path))
    raw = _wav(np.repeat(x, 3), 48000, "FLAC")
    r = client.post("/predict", content=raw, headers={"content-type": "audio/flac", "x-filename": "low.flac"})
    assert r.status_code == 200 and r.json()["file"] == "low.flac" and r.json()["label"] == want["label"]


def test_predict_errors_are_clear_4xx(client):
    def detail(r, status):
        assert r.status_code == status, (r.status_code, r.text)
        d = r.json()["detail"]
        assert isinstance(d, str) and "\n" not in d and "Traceback" not in d
        return d

    assert "no audio" in detail(client.post("/predict"), 400)
    assert "empty" in detail(client.post("/predict", content=b"", headers={"content-type": "audio/wav"}), 400)
    assert "field 'file'" in detail(client.post("/predict", data={"x": "1"}, files={"other": ("a", b"1")}), 400)
    assert "Content-Type 'application/json'" in detail(client.post("/predict", json={"audio": 1}), 415)
    bad = detail(client.post("/predict", files={"file": ("clip.wav", b"RIFF not really", "audio/wav")}), 415)
    assert bad.startswith("clip.wav: not an audio format")
    silent = _wav(np.zeros(8000, dtype=np.float32))
    assert "silent" in detail(client.post("/predict", files={"file": ("quiet.wav", silent, "audio/wav")}), 422)
    # over the limit: refused on Content-Length before reading, and while reading a chunked body
    big = _wav(np.random.default_rng(0).normal(0, 0.1, 120_000).astype(np.float32))
    assert len(big) > 200_000
    assert "over the limit of 200000 bytes" in detail(
        client.post("/predict", files={"file": ("big.wav", big, "audio/wav")}), 413)
    chunks = (big[i : i + 50_000] for i in range(0, len(big), 50_000))  # no Content-Length: chunked
    assert "over the limit" in detail(
        client.post("/predict", content=chunks, headers={"content-type": "audio/wav"}), 413)
    # the service still answers after the refusals
    assert client.get("/health").status_code == 200


def test_serve_cli_errors(tmp_path, capsys):
    from serkit.cli import main

    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert "not a serkit model folder" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--backend", "onnx"]) == 2
    assert "not a serkit model folder" in capsys.readouterr().err


def test_predict_segments_on_request(client, recognizer):
    from tests.conftest import CORPORA

    clip = CORPORA / "emodb" / "wav" / "03a01Wa.flac"
    if not clip.exists():
        pytest.skip(f"{clip} not present")
    assert client.get("/health").json()["segments"] is True
    r = client.post("/predict?segments=true", files={"file": ("03a01Wa.flac", clip.read_bytes(), "audio/flac")})
    assert r.status_code == 200, r.text
    got, want = r.json(), recognizer.predict_segments(clip)
    assert got["file"] == "03a01Wa.flac" and got["label"] == want["label"]
    assert [(s["start"], s["end"], s["label"]) for s in got["segments"]] == \
        [(s["start"], s["end"], s["label"]) for s in want["segments"]] and got["segments"]


def test_health_gives_one_colour_per_class_and_the_page_defaults_follow_the_cli(client, recognizer):
    import re

    from serkit.timeline import label_colours

    h = client.get("/health").json()
    assert h["colours"] == label_colours(recognizer.labels.classes) and len(set(h["colours"].values())) == 3
    assert h["stream"] is True
    page = client.get("/").text
    box = re.search(r'<input type="checkbox" id="segments"[^>]*>', page).group(0)
    assert "checked" not in box  # `serkit predict` scores the whole file unless --segments is given
    assert "PALETTE" not in page and 'id="live"' in page  # colours come from the server only


def _stream(client, x: np.ndarray, fmt: str = "f32", chunk: int = 1600) -> list[dict]:
    messages = []
    with client.websocket_connect(f"/stream?format={fmt}") as ws:
        for i in range(0, len(x), chunk):
            part = x[i:i + chunk]
            ws.send_bytes(part.astype("<f4").tobytes() if fmt == "f32"
                          else np.round(part * 32767).astype("<i2").tobytes())
        ws.send_text('{"type": "end"}')
        while not messages or messages[-1]["type"] not in ("summary", "error"):
            messages.append(ws.receive_json())
    return messages


def test_stream_socket_gives_the_segments_of_predict_segments(client, recognizer):
    from tests.conftest import CORPORA

    clip = CORPORA / "emodb" / "wav" / "03a01Wa.flac"
    if not clip.exists():
        pytest.skip(f"{clip} not present")
    x, sr = sf.read(str(clip), dtype="float32")
    assert sr == 16000
    want = recognizer.predict_segments(clip)
    messages = _stream(client, np.concatenate([x, np.zeros(8000, np.float32)]))
    segments = {m["index"]: m for m in messages if m["type"] == "segment"}
    got = [segments[i] for i in sorted(segments)]
    assert [(s["label"], s["start"]) for s in got] == [(s["label"], s["start"]) for s in want["segments"]]
    assert messages[-1]["type"] == "summary" and messages[-1]["speech_share"] == want["speech_share"]
    # int16 frames: the same segments up to the 16-bit rounding of the samples
    again = [m for m in _stream(client, x, "i16") if m["type"] == "segment"]
    assert [m["label"] for m in again] == [s["label"] for s in got]
    assert [m["start"] for m in again] == pytest.approx([s["start"] for s in got], abs=0.1)


def test_stream_socket_refuses_bad_input_with_one_line(client):
    from starlette.websockets import WebSocketDisconnect

    with client.websocket_connect("/stream?format=wav") as ws:
        m = ws.receive_json()
        assert m == {"type": "error", "detail": "format 'wav': expected 'f32' or 'i16'"}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
    with client.websocket_connect("/stream") as ws:
        ws.send_bytes(b"\x00" * 6)
        assert ws.receive_json()["detail"] == "audio frame: 6 bytes is not a whole number of float32 samples"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1007
    with client.websocket_connect("/stream") as ws:
        ws.send_bytes(np.full(100, np.nan, dtype="<f4").tobytes())  # not audio
        assert ws.receive_json()["detail"].startswith("audio frame: ")
    assert client.get("/health").status_code == 200
