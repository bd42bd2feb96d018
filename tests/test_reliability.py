"""Hostile inputs and misuse: nothing poisons a store or a model, nothing hangs, nothing overwrites (issue 28).

Each test names the guarantee it holds; docs/reliability.md lists them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serkit.audio import MAX_AMPLITUDE, prepare_signal, read_audio
from serkit.errors import AudioError, SerkitError
from tests.train.conftest import model_dir, tiny_config, tiny_corpus  # noqa: F401  (fixtures)

SR = 16_000


def _loud(path, amplitude=1e19):
    """The issue's reproduction: a finite float32 WAV at about ``amplitude`` peak."""
    sf.write(str(path), (amplitude * np.sin(np.arange(32000) / 5)).astype("float32"), SR, subtype="FLOAT")
    return path


def _tone(path, seconds=1.0, amp=0.3):
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (amp * np.sin(2 * np.pi * 220 * t)).astype("float32"), SR)
    return path


# --- 1. non-finite and absurd signals -------------------------------------------------------------------------
def test_loud_float_wav_is_a_named_error_when_read(tmp_path):
    with pytest.raises(AudioError, match="out of range: peak amplitude 1.0e\\+19"):
        read_audio(_loud(tmp_path / "loud.wav"))
    with pytest.raises(AudioError, match="out of range"):
        prepare_signal(np.full(8000, 2 * MAX_AMPLITUDE, dtype=np.float32), SR, name="array")
    with pytest.raises(AudioError, match="non-finite"):  # two channels of 3e38 sum to inf: refused per channel
        prepare_signal(np.full((8000, 2), np.inf, dtype=np.float32), SR, name="array")
    loud_but_sane = 0.9 * MAX_AMPLITUDE * np.sin(np.arange(8000) / 5)
    assert np.isfinite(prepare_signal(loud_but_sane, SR)).all()


def test_check_reports_a_loud_file_as_an_error_not_notes(tmp_path):
    from serkit.check import check_file, fatal

    rep = check_file("loud", str(_loud(tmp_path / "loud.wav")))
    assert "out of range" in rep.problems and fatal(";".join(rep.problems)) == ["out of range"]
    assert "mostly silent" not in rep.problems
    ok = check_file("ok", str(_tone(tmp_path / "ok.wav")))
    assert not fatal(";".join(ok.problems))


def test_check_cli_strict_fails_on_a_loud_file(tmp_path, capsys):
    from serkit.cli import main

    table = tmp_path / "m.csv"
    pd.DataFrame({"id": ["a", "b"], "path": [str(_tone(tmp_path / "a.wav")), str(_loud(tmp_path / "b.wav"))],
                  "emotion": ["x", "y"], "duration": [1.0, 2.0], "speaker": ["s", "s"], "gender": ["female"] * 2}
                 ).to_csv(table, index=False)
    assert main(["check", str(table), "--strict"]) == 1
    assert "out of range" in capsys.readouterr().out


def test_feature_store_refuses_non_finite_features(tmp_path):
    from serkit.features.store import FeatureStore, NonFiniteFeatures

    store = FeatureStore.create(tmp_path / "store", {"encoder": "x", "layers": [0], "mode": "native",
                                                     "hidden_size": 4, "frame_rate": 50.0})
    feats = np.zeros((1, 5, 4), dtype=np.float32)
    feats[0, 2, 1] = np.nan
    with pytest.raises(NonFiniteFeatures, match="u1: non-finite features"):
        store.write("u1", "h1", feats, 0.1)
    big = np.full((1, 5, 4), 1e6, dtype=np.float32)  # finite in float32, inf in the float16 frames
    with pytest.raises(NonFiniteFeatures):
        store.write("u2", "h2", big, 0.1)
    assert len(FeatureStore(tmp_path / "store")) == 0 and not store.has_hash("h1") and not store.has_hash("h2")
    store.write("u3", "h3", np.ones((1, 5, 4), dtype=np.float32), 0.1)
    assert FeatureStore(tmp_path / "store").ids() == ["u3"]


def test_extract_skips_a_loud_file_with_its_reason(tmp_path):
    from serkit.features.extraction import extract_to_cache
    from serkit.features.store import FeatureStore

    df = pd.DataFrame({"id": ["ok", "loud"], "path": [str(_tone(tmp_path / "ok.wav")),
                                                       str(_loud(tmp_path / "loud.wav"))]})
    rep = extract_to_cache(df, "fbank-40", "all", tmp_path / "store", progress=False)
    assert rep.computed == 1 and [f[0] for f in rep.failures] == ["loud"]
    errors = json.loads((tmp_path / "store" / "errors.json").read_text())
    assert errors[0]["id"] == "loud" and errors[0]["problem"].startswith("out of range")
    store = FeatureStore(tmp_path / "store")
    assert store.ids() == ["ok"] and np.isfinite(store.load("ok")).all()


def test_extract_records_non_finite_encoder_output_as_a_failure(tmp_path, monkeypatch):
    from serkit.encoders import runner
    from serkit.features.extraction import extract_to_cache
    from serkit.features.store import FeatureStore

    real = runner.encode_signals

    def poisoned(*args, **kwargs):
        for utt_id, feats in real(*args, **kwargs):
            yield utt_id, (feats * np.nan if utt_id == "b" else feats)

    monkeypatch.setattr(runner, "encode_signals", poisoned)
    df = pd.DataFrame({"id": ["a", "b"], "path": [str(_tone(tmp_path / "a.wav")), str(_tone(tmp_path / "b.wav",
                                                                                            amp=0.2))]})
    rep = extract_to_cache(df, "fbank-40", "all", tmp_path / "store", progress=False)
    assert [f[0] for f in rep.failures] == ["b"] and "non-finite features" in rep.failures[0][2]
    assert FeatureStore(tmp_path / "store").ids() == ["a"]


def test_predict_refuses_loud_audio_and_never_emits_nan(model_dir, tmp_path, monkeypatch):  # noqa: F811
    from serkit.inference import Recognizer

    rec = Recognizer.from_pretrained(model_dir, device="cpu")
    with pytest.raises(SerkitError, match="out of range"):
        rec.predict(_loud(tmp_path / "loud.wav"))
    with pytest.raises(SerkitError, match="out of range"):  # the Python API with an array
        rec.predict(1e20 * np.sin(np.arange(16000) / 5), SR)
    ok = _tone(tmp_path / "ok.wav")
    assert np.isfinite(list(rec.predict(ok)["probabilities"].values())).all()
    monkeypatch.setattr(Recognizer, "_score", lambda self, head, inputs, stats: np.full(
        (len(inputs), 3), np.nan, dtype=np.float32))
    with pytest.raises(SerkitError, match="non-finite model output"):
        rec.predict(ok)
    (res,) = rec.predict_files([ok])
    assert "probabilities" not in res and "non-finite model output" in res["error"]


# --- 2. the REST service --------------------------------------------------------------------------------------
XSS = ['<img src=x onerror="window.pwned=1">', "<script>window.pwned=2</script>", "<b onmouseover=alert(1)>b</b>"]


def _wav_bytes(signal, sr=SR, subtype="PCM_16") -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, signal, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.fixture
def xss_model(model_dir):  # noqa: F811
    """The tiny model folder with class names that are HTML."""
    labels = json.loads((model_dir / "labels.json").read_text())
    labels["classes"] = XSS
    (model_dir / "labels.json").write_text(json.dumps(labels))
    meta = json.loads((model_dir / "meta.json").read_text())
    meta["spec"]["class_names"] = XSS
    (model_dir / "meta.json").write_text(json.dumps(meta))
    return model_dir


def _client(model, **kw):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from serkit.inference import Recognizer
    from serkit.service import create_app

    return TestClient(create_app(Recognizer.from_pretrained(model, device="cpu"), model_name="m", **kw))


def test_service_decodes_with_the_cli_limits(model_dir, tmp_path):  # noqa: F811
    client = _client(model_dir, max_seconds=2.0)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32)

    def post(data, name="x.wav"):
        r = client.post("/predict", files={"file": (name, data, "audio/wav")})
        return r.status_code, r.json()["detail"] if r.status_code != 200 else r.json()

    assert post(_wav_bytes(tone))[0] == 200
    one_hz = bytearray(_wav_bytes(tone[:2000]))  # the crafted header: 1 Hz, 2000 samples = 2000 s
    one_hz[24:28] = (1).to_bytes(4, "little")
    one_hz[28:32] = (2).to_bytes(4, "little")
    status, detail = post(bytes(one_hz))
    assert status == 422 and "bad sample rate: the header declares 1 Hz" in detail
    status, detail = post(_wav_bytes(np.tile(tone, 3)))  # 3 s > max_seconds 2
    assert status == 422 and "too long: the header declares 3.0 s" in detail
    status, detail = post(_wav_bytes(np.zeros((100, 16), dtype=np.float32)))
    assert status == 422 and "too many channels" in detail
    status, detail = post(_loud(tmp_path / "loud.wav").read_bytes())
    assert status == 422 and "out of range" in detail


def test_service_bounds_concurrent_decodes(model_dir, monkeypatch):  # noqa: F811
    import threading

    from serkit import service

    client = _client(model_dir, max_decodes=1, queue_seconds=0.2)
    entered, release = threading.Event(), threading.Event()
    real = service.decode_audio

    def slow_decode(*args, **kwargs):
        entered.set()
        release.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "decode_audio", slow_decode)
    clip = _wav_bytes((0.3 * np.sin(np.arange(SR) / 7)).astype(np.float32))
    first: dict = {}
    worker = threading.Thread(target=lambda: first.setdefault("r", client.post(
        "/predict", files={"file": ("a.wav", clip, "audio/wav")})))
    with client:
        worker.start()
        assert entered.wait(20)
        busy = client.post("/predict", files={"file": ("b.wav", clip, "audio/wav")})
        release.set()
        worker.join(30)
    assert busy.status_code == 503 and busy.json()["detail"].startswith("busy: 1 upload(s)")
    assert first["r"].status_code == 200


def test_service_times_out_a_stalled_body():
    import asyncio

    from serkit.service import BodySizeLimit

    sent = []

    async def app(scope, receive, send):  # reads the whole body, like a route does
        while (await receive()).get("more_body"):
            pass

    async def stalled_receive():
        await asyncio.sleep(60)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-type", b"audio/wav")]}
    asyncio.run(asyncio.wait_for(BodySizeLimit(app, 1000, read_timeout=0.2)(scope, stalled_receive, send), 10))
    assert sent[0]["status"] == 408 and b"no data for 0.2 s" in sent[1]["body"]


@pytest.mark.parametrize("option, message", [(["--port", "99999"], "--port 99999: must be in 0-65535"),
                                             (["--max-seconds", "0"], "--max-seconds 0: must be in"),
                                             (["--max-mb", "nan"], "--max-mb nan: must be positive")])
def test_serve_options_out_of_range_are_one_line(option, message, model_dir, capsys):  # noqa: F811
    pytest.importorskip("uvicorn")
    from serkit.cli import main

    assert main(["serve", str(model_dir), *option]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0], err


def test_page_inserts_model_text_as_text_under_a_csp(xss_model):
    import base64
    import hashlib
    import re

    client = _client(xss_model)
    page = client.get("/")
    assert "innerHTML" not in page.text and "insertAdjacentHTML" not in page.text and "outerHTML" not in page.text
    csp = page.headers["content-security-policy"]
    script = re.search(r"<script>(.*?)</script>", page.text, flags=re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert client.get("/health").json()["classes"] == XSS  # served as JSON data; the page shows it as text


def test_page_shows_html_class_names_as_text_in_a_browser(xss_model, tmp_path):
    """Headless Chromium: the page runs under its CSP, shows the HTML class names literally and runs none."""
    try:
        from tests.test_service_browser import Server, _browser
    except pytest.skip.Exception as exc:
        pytest.skip(str(exc))
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from serkit.inference import Recognizer
    from serkit.service import create_app

    clip = _tone(tmp_path / "clip.wav")
    driver = _browser()
    try:
        with Server(create_app(Recognizer.from_pretrained(xss_model, device="cpu"), model_name="m")) as url:
            driver.get(url + "/")
            WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "model").text.startswith("model "))
            assert not driver.find_element(By.ID, "segments").is_selected()  # the whole clip, as the CLI scores it
            driver.find_element(By.ID, "file").send_keys(str(clip))
            driver.find_element(By.ID, "analyse").click()
            WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            state = driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")
            names = [r.find_element(By.CLASS_NAME, "name").get_attribute("textContent")
                     for r in driver.find_elements(By.CSS_SELECTOR, "#probs .row")]
            legend = driver.find_element(By.ID, "legend").get_attribute("textContent")
            injected = driver.execute_script(
                "return [window.pwned || null, document.querySelectorAll('#result img, #result script, #result b')"
                ".length]")
    finally:
        driver.quit()
    assert state == "done"
    assert sorted(names) == sorted(XSS) and legend in XSS
    assert injected == [None, 0]


# --- 3. one writer per run folder; train replaces a model folder in one step ----------------------------------
def _config_file(tiny_corpus, tmp_path, **over):  # noqa: F811
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_corpus, train={"epochs": 1}, **over)))
    return path


def _hold_lock(lock_file):
    """A child process holding ``lock_file`` as serkit does; returns it once it holds the lock."""
    import subprocess
    import sys
    import time

    code = ("import sys, time; from serkit.run_lock import run_lock\n"
            "with run_lock(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    assert child.stdout.readline().strip() == "held" and time.monotonic() < deadline
    return child


@pytest.mark.parametrize("command", ["cv", "ablate"])
def test_a_run_folder_in_use_is_refused_naming_the_holder(command, tiny_corpus, tmp_path, capsys):  # noqa: F811
    from serkit.cli import main
    from serkit.run_lock import LOCK_NAME

    out = tmp_path / "run"
    args = [command, str(_config_file(tiny_corpus, tmp_path)), "--out", str(out), "--folds", "0"]
    if command == "ablate":
        import yaml

        (tmp_path / "rows.yaml").write_text(yaml.safe_dump({"rows": {"plain": {"set": []}}}))
        args += ["--rows-file", str(tmp_path / "rows.yaml")]
    child = _hold_lock(out / LOCK_NAME)
    try:
        rc = main(args)
        err = capsys.readouterr().err
    finally:
        child.kill()
        child.wait(10)
    assert rc == 2 and f"{out}: in use by pid {child.pid}" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    # the holder died (SIGKILL): the kernel dropped its lock, the folder is usable
    assert main(args) == 0


def test_ranks_of_one_distributed_run_share_rank_0s_lock(tmp_path, monkeypatch):
    """Lightning's DDP launcher re-runs the command for rank 1 (``LOCAL_RANK=1``); torchrun sets ``RANK``: those
    ranks belong to rank 0's run (tests/train/test_ddp.py runs the real thing). Rank 0 of another run is refused."""
    from serkit.run_lock import LOCK_NAME, RunFolderBusy, folder_lock

    child = _hold_lock(tmp_path / LOCK_NAME)
    try:
        for env in ({"LOCAL_RANK": "1"}, {"RANK": "3", "LOCAL_RANK": "0"}, {"NODE_RANK": "1"}):
            with monkeypatch.context() as m:
                for k, v in env.items():
                    m.setenv(k, v)
                with folder_lock(tmp_path):
                    pass
        with monkeypatch.context() as m:
            m.setenv("RANK", "0")
            with pytest.raises(RunFolderBusy), folder_lock(tmp_path):
                pass
    finally:
        child.kill()
        child.wait(10)


def test_train_refuses_an_existing_model_folder_unless_overwrite(tiny_corpus, tmp_path, capsys):  # noqa: F811
    from serkit.cli import main
    from serkit.run_lock import model_lock_path

    out = tmp_path / "model"
    cfg = _config_file(tiny_corpus, tmp_path)
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(out), "--set", "train.seed=7"]) == 2
    err = capsys.readouterr().err
    assert "the folder exists and is not empty; give --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "model.safetensors").read_bytes() == before
    child = _hold_lock(model_lock_path(out))
    try:
        assert main(["train", str(cfg), "--out", str(out), "--overwrite"]) == 2
        assert f"in use by pid {child.pid}" in capsys.readouterr().err
    finally:
        child.kill()
        child.wait(10)
    assert main(["train", str(cfg), "--out", str(out), "--overwrite", "--set", "train.seed=7"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert not (tmp_path / ".model.partial").exists() and "seed: 7" in (out / "config.yaml").read_text()


def test_replacing_a_model_folder_never_shows_a_missing_or_mixed_folder(tmp_path):
    import threading

    from serkit.run_lock import replace_folder

    target = tmp_path / "model"
    target.mkdir()
    for name in ("config.yaml", "meta.json"):
        (target / name).write_text("0")
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append({(target / n).read_text() for n in ("config.yaml", "meta.json")})
            except OSError as exc:
                seen.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 300):
            new = tmp_path / ".model.partial"
            new.mkdir()
            for name in ("config.yaml", "meta.json"):
                (new / name).write_text(str(version))
            replace_folder(new, target)
    finally:
        stop.set()
        thread.join(10)
    assert (target / "meta.json").read_text() == "299" and not (tmp_path / ".model.partial").exists()
    errors = [s for s in seen if isinstance(s, Exception)]
    assert not errors and len(seen) > 100


# --- 4. settings validated for range before any work ----------------------------------------------------------
@pytest.mark.parametrize("setting, message", [
    ("train.lr=.nan", "train.lr must be a finite number > 0"),
    ("train.lr=.inf", "train.lr must be a finite number > 0"),
    ("train.epochs=0", "train.epochs must be a positive integer"),
    ("train.weight_decay=-1", "train.weight_decay must be a finite number >= 0"),
    ("train.lr_decay=.nan", "train.lr_decay must be a finite number"),
    ("model.dropout=2", "model.dropout must be a rate in [0, 1)"),
    ("model.dropout=1.0", "model.dropout must be a rate in [0, 1)"),
    ("protocol.val_speakers=-1", "protocol.val_speakers must be an integer >= 0"),
    ("protocol.k=1", "protocol.k must be an integer >= 2"),
    ("protocol.val_fraction=1.5", "protocol.val_fraction must be a fraction in [0, 1)"),
    ("class_set={}", "class_set {} is empty"),
    ("predict.hop_seconds=0", "predict.hop_seconds must be > 0"),
])
def test_out_of_range_settings_are_one_line_errors_before_any_work(setting, message, tiny_corpus, tmp_path,  # noqa: F811
                                                                   capsys):
    from serkit.cli import main

    out = tmp_path / "run"
    assert main(["cv", str(_config_file(tiny_corpus, tmp_path)), "--out", str(out), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (out / "folds.json").exists() and not list(out.glob("fold*"))


@pytest.mark.parametrize("folds, message", [
    ("abc", "--folds 'abc': expected fold numbers"), ("1.5", "--folds '1.5': expected fold numbers"),
    ("-1", "--folds '-1': expected fold numbers"), ("0,7", "--folds 7: no such fold; the protocol gives 3 fold(s)"),
])
def test_bad_folds_are_one_line_errors_before_any_work(folds, message, tiny_corpus, tmp_path, capsys):  # noqa: F811
    from serkit.cli import main

    out = tmp_path / "run"
    assert main(["cv", str(_config_file(tiny_corpus, tmp_path)), "--out", str(out), f"--folds={folds}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (out / "folds.json").exists() and not list(out.glob("fold*"))


def test_an_extends_cycle_is_named(tmp_path):
    from serkit.config import load_config
    from serkit.errors import ConfigError

    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"'extends' loops: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    with pytest.raises(ConfigError, match="'extends' loops"):
        load_config(tmp_path / "self.yaml")


# --- 5. errors on writing: one line naming the path; files a resume reads written whole ----------------------
def _manifest(tmp_path):
    path = tmp_path / "m.csv"
    ids = ["a", "b", "c", "d", "e", "f"]
    pd.DataFrame({"id": ids, "path": [str(_tone(tmp_path / f"{i}.wav", amp=0.1 + 0.05 * k)) for k, i in enumerate(ids)],
                  "emotion": ["x", "y"] * 3, "duration": [1.0] * 6, "speaker": ["s1", "s2", "s3"] * 2,
                  "gender": ["female"] * 6}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("command", ["check", "folds", "extract", "predict", "cv", "train", "ablate"])
def test_an_unwritable_out_is_one_line_naming_the_path(command, model_dir, tiny_corpus, tmp_path,  # noqa: F811
                                                        capsys):
    """``--out`` below a plain file cannot be created, whoever runs the test (root ignores permission bits)."""
    from serkit.cli import main

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    manifest, config = str(_manifest(tmp_path)), str(_config_file(tiny_corpus, tmp_path))
    args = {
        "check": ["check", manifest, "--report", str(blocker / "report.csv")],
        "folds": ["folds", manifest, "--protocol", "{name: speaker_kfold, k: 3, val_speakers: 1}",
                  "--out", str(blocker / "f.json")],
        "extract": ["extract", manifest, "--encoder", "fbank-40", "--out", str(blocker / "store")],
        "predict": ["predict", str(model_dir), str(tmp_path / "a.wav"), "--out", str(blocker / "p.csv"),
                    "--no-progress"],
        "cv": ["cv", config, "--out", str(blocker / "run")],
        "train": ["train", config, "--out", str(blocker / "model")],
        "ablate": ["ablate", config, "--out", str(blocker / "abl")],
    }[command]
    assert main(args) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and str(blocker) in err[0] and ("Not a directory" in err[0] or "File exists" in err[0]), err


def _error_lines(stderr: str) -> list[str]:
    """The ``serkit X: error:`` lines of stderr (progress bars aside); none may be a traceback."""
    assert "Traceback" not in stderr
    return [ln[ln.index("serkit "):] for ln in stderr.splitlines() if "serkit " in ln and ": error: " in ln]


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    import errno

    from serkit.io import atomic_write, atomic_write_text

    target = tmp_path / "results.json"
    atomic_write_text(target, "old")

    def full(fh):
        fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, full)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_full_disk_during_extract_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from serkit import io
    from serkit.cli import main

    real = io.atomic_write

    def full(path, write, **kw):
        if str(path).endswith(".npy"):
            raise io.naming(OSError(errno.ENOSPC, "No space left on device"), path)
        return real(path, write, **kw)

    monkeypatch.setattr("serkit.features.store.atomic_write", full)
    assert main(["extract", str(_manifest(tmp_path)), "--encoder", "fbank-40", "--out", str(tmp_path / "s")]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "No space left on device" in err[0] and ".npy" in err[0], err


def test_test_embeddings_are_written_whole(tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    """A process killed while writing ``foldK/test_embeddings.npy`` leaves no truncated file (a rerun rewrites it)."""
    from serkit.train.cv import run_cv
    from tests.train.test_runner import recipe_config

    real_save = np.save

    def killed_save(file, arr, *args, **kwargs):
        if "test_embeddings" in str(getattr(file, "name", file)):  # part of the bytes reach the disk, then death
            if getattr(file, "write", None) is not None:
                file.write(b"\x93NUMPY torn")
            else:
                with open(file, "wb") as fh:
                    fh.write(b"\x93NUMPY torn")
            raise KeyboardInterrupt("killed")
        return real_save(file, arr, *args, **kwargs)

    cfg = recipe_config("mll", tiny_corpus, tmp_path)
    monkeypatch.setattr(np, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    assert not (tmp_path / "run" / "fold0" / "test_embeddings.npy").exists()
    assert not list((tmp_path / "run" / "fold0").glob(".test_embeddings*"))


def test_every_file_of_a_gmp_atl_run_honours_the_umask(tiny_corpus, tmp_path):  # noqa: F811
    """Stage states (``state.safetensors``, written by safetensors as 0600) and every other file of a run get
    ``0o666 & ~umask``, so a team's shared run folders stay readable."""
    import os
    import stat

    from serkit.train.cv import run_cv
    from tests.train.test_runner import recipe_config

    cfg = recipe_config("gmp_atl", tiny_corpus, tmp_path)
    cfg["recipe_options"]["stage_root"] = str(tmp_path / "stages")
    old = os.umask(0o022)
    try:
        run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    finally:
        os.umask(old)
    files = [p for root in (tmp_path / "run", tmp_path / "stages") for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "state.safetensors" for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert {k: v for k, v in modes.items() if v != oct(0o644)} == {}


# --- 6. FIFOs, devices and endless files; one-speaker folds ---------------------------------------------------
def _bounded(fn, seconds=30.0, fifo=None):
    """``fn()`` in a thread that must end within ``seconds`` (a hang fails the test instead of blocking the suite;
    a reader stuck opening ``fifo`` is released by opening its write end)."""
    import os
    import threading

    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    hung = thread.is_alive()
    if hung and fifo is not None:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    assert not hung, f"still running after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_a_fifo_as_audio_is_refused_without_reading(model_dir, tmp_path):  # noqa: F811
    import os

    from serkit.check import check_file, fatal
    from serkit.features.extraction import extract_to_cache
    from serkit.inference import Recognizer

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioError, match="not a regular file: a FIFO"):
        _bounded(lambda: read_audio(fifo), fifo=fifo)
    rep = _bounded(lambda: check_file("p", str(fifo)), fifo=fifo)
    assert fatal(";".join(rep.problems)) == ["not a regular file"]
    df = pd.DataFrame({"id": ["ok", "pipe"], "path": [str(_tone(tmp_path / "ok.wav")), str(fifo)]})
    rep = _bounded(lambda: extract_to_cache(df, "fbank-40", "all", tmp_path / "store", progress=False), fifo=fifo)
    assert rep.computed == 1
    assert rep.failures == [("pipe", str(fifo), "not a regular file: a FIFO, refused before reading")]
    rec = Recognizer.from_pretrained(model_dir, device="cpu")
    (res,) = _bounded(lambda: rec.predict_files([fifo]), fifo=fifo)
    assert "not a regular file" in res["error"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_device_as_the_manifest_is_one_line(kind, model_dir, tmp_path, capsys):  # noqa: F811
    import os

    from serkit.cli import main

    table = tmp_path / "m.csv"
    if kind == "fifo":
        os.mkfifo(table)
    else:
        table.symlink_to("/dev/zero")
    fifo = table if kind == "fifo" else None
    for args in (["check", str(table)], ["extract", str(table), "--encoder", "fbank-40", "--out",
                                         str(tmp_path / "s")]):
        assert _bounded(lambda args=args: main(args), fifo=fifo) == 2
        err = _error_lines(capsys.readouterr().err)
        assert len(err) == 1 and f"{table}: not a regular file" in err[0], err
    # predict: the input is one failed file, the others are still answered
    ok = _tone(tmp_path / "ok.wav")
    assert _bounded(lambda: main(["predict", str(model_dir), str(table), str(ok), "--no-progress"]), fifo=fifo) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [("error" in r) for r in results] == [True, False] and "not a regular file" in results[0]["error"]


def test_an_endless_table_is_refused_by_size(tmp_path):
    from serkit.errors import ManifestError
    from serkit.inputs import read_table
    from serkit.io import MAX_TABLE_BYTES
    from serkit.manifest import read_manifest

    big = tmp_path / "big.csv"
    with open(big, "wb") as fh:  # sparse: no disk used
        fh.truncate(MAX_TABLE_BYTES + 1)
    for read in (read_manifest, read_table):
        with pytest.raises(ManifestError, match=f"too large: {MAX_TABLE_BYTES + 1} bytes"):
            _bounded(lambda read=read: read(big))


def test_speaker_eer_on_a_one_speaker_test_part_is_null_with_a_note():
    from types import SimpleNamespace

    from serkit.data.labels import LabelMap
    from serkit.recipes.catalog import get_recipe
    from serkit.report import format_table

    rng = np.random.default_rng(0)
    outputs = {"speaker_features": rng.normal(size=(6, 4)).astype(np.float32)}
    fold = SimpleNamespace(speaker_independent=True, warnings=[], index=0)
    rows = pd.DataFrame({"speaker": ["s1"] * 6})
    labels = LabelMap.from_dict({"task": "classification", "classes": ["a", "b"], "targets": [], "speakers": ["s1"]})
    metrics = get_recipe("hcld").extra_test_metrics(outputs, rows, labels, fold)
    assert metrics["speaker_eer"] is None and "speaker_eer: no value" in fold.warnings[0]
    two = get_recipe("hcld").extra_test_metrics(outputs, pd.DataFrame({"speaker": ["s1", "s2"] * 3}), labels,
                                                SimpleNamespace(speaker_independent=True, warnings=[], index=1))
    assert 0 <= two["speaker_eer"] <= 1
    summary = {"task": "classification", "mean": {"wa": 0.5, "ua": 0.5, "macro_f1": 0.5, "speaker_eer": 0.2},
               "std": {}, "folds": [{"fold": 0, "test_speakers": ["s1"], "n_test": 6,
                                     "metrics": {"wa": 0.5, "ua": 0.5, "macro_f1": 0.5, **metrics}}]}
    assert "| 0 | s1 | 6 | 0.5000 | 0.5000 | 0.5000 | - |" in format_table(summary)
    assert json.dumps(metrics) == '{"speaker_eer": null}'


# --- model folders from elsewhere -----------------------------------------------------------------------------
def test_a_head_file_outside_the_model_folder_is_refused(model_dir, tmp_path):  # noqa: F811
    import shutil

    from serkit.inference import Recognizer

    outside = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(model_dir / "model.safetensors", outside)
    meta = json.loads((model_dir / "meta.json").read_text())
    for name in ("../elsewhere.safetensors", str(outside)):
        (model_dir / "meta.json").write_text(json.dumps({**meta, "heads": {"global": name}}))
        with pytest.raises(SerkitError, match="head file .* is not inside the model folder"):
            Recognizer.from_pretrained(model_dir, device="cpu")
    (model_dir / "meta.json").write_text(json.dumps({**meta, "heads": {"global": "model.safetensors"}}))
    assert Recognizer.from_pretrained(model_dir, device="cpu").labels.classes == ["high", "low", "mid"]


def test_labels_that_do_not_fit_the_head_are_refused(model_dir):  # noqa: F811
    from serkit.inference import Recognizer

    labels = json.loads((model_dir / "labels.json").read_text())
    (model_dir / "labels.json").write_text(json.dumps({**labels, "classes": ["a", "b"]}))
    with pytest.raises(SerkitError, match="labels.json: 2 classes but meta.json's head has 3 outputs"):
        Recognizer.from_pretrained(model_dir, device="cpu")


@pytest.mark.parametrize("record", [{"encoder": 5, "mode": "native", "layers": [0]},
                                    {"encoder": "fbank-40", "mode": "native", "layers": "zero"},
                                    {"encoder": "fbank-40", "mode": "sideways", "layers": [0]}, ["fbank-40"]])
def test_encoder_json_of_wrong_types_is_one_line(record, model_dir):  # noqa: F811
    from serkit.inference import Recognizer

    (model_dir / "encoder.json").write_text(json.dumps(record))
    with pytest.raises(SerkitError, match="encoder.json: not a usable serkit model file") as info:
        Recognizer.from_pretrained(model_dir, device="cpu")
    assert "\n" not in str(info.value)


def test_replacing_a_linked_model_folder_keeps_what_the_link_pointed_to(tmp_path):
    from serkit.run_lock import replace_folder

    real = tmp_path / "v1"
    real.mkdir()
    (real / "meta.json").write_text("1")
    (tmp_path / "model").symlink_to(real)
    new = tmp_path / ".model.partial"
    new.mkdir()
    (new / "meta.json").write_text("2")
    replace_folder(new, tmp_path / "model")
    assert (tmp_path / "model" / "meta.json").read_text() == "2" and not (tmp_path / "model").is_symlink()
    assert (real / "meta.json").read_text() == "1" and not new.exists() and not new.is_symlink()


def test_an_encoder_of_another_width_is_one_line(model_dir, tiny_corpus):  # noqa: F811
    """encoder.json naming an encoder whose features have another width than the heads read: a one-line error,
    not a matrix-shape traceback."""
    from serkit.inference import Recognizer

    (model_dir / "encoder.json").write_text(json.dumps({"encoder": "fbank-80", "mode": "native", "layers": [0]}))
    rec = Recognizer.from_pretrained(model_dir, device="cpu")
    with pytest.raises(SerkitError, match="gives 80-dim features, but this model's heads read 40-dim") as e:
        rec.predict(tiny_corpus / "spk0" / "high_0.wav")
    assert "\n" not in str(e.value)
