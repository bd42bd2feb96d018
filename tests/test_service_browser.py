"""End to end: the web page of ``serkit serve`` in headless Chromium (selenium + Debian's chromedriver).

A uvicorn server runs in a thread on 127.0.0.1 (a free port); the browser uploads a real corpus clip, the test
reads the label and the probability bars off the page, checks them against the Recognizer, and saves a
screenshot (``tmp_path/serve.png``; also to ``$SERKIT_SCREENSHOT`` when set). ``$SERKIT_SERVE_MODEL`` and
``$SERKIT_SERVE_CLIP`` replace the tiny test model and the clip (how docs/serve.png is made: docs/export-and-serve.md).
Skips, saying why, only where chromium, chromedriver or selenium is missing (scripts/setup.sh installs them).
"""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from serkit.inference import Recognizer
from serkit.train.final import train_final
from tests.conftest import CORPORA, needs_shared
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401  (session fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (scripts/setup.sh installs Debian's chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver not found (Debian package chromium-driver)"),
    needs_shared,
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (the [dev] extra)")
pytest.importorskip("uvicorn")


class Server:
    """uvicorn in a daemon thread on 127.0.0.1, port chosen by the OS; ``stop`` ends it within seconds."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 20 s")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _browser(fake_audio: Path | None = None):
    """Headless Chromium; ``fake_audio``: a WAV file the fake microphone plays in a loop (permission granted)."""
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,1040", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    if fake_audio is not None:
        for arg in ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={fake_audio}", "--autoplay-policy=no-user-gesture-required"):
            opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_upload_a_clip_and_read_the_result_off_the_page(tiny_corpus, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from serkit.service import create_app

    model = os.environ.get("SERKIT_SERVE_MODEL") or train_final(
        tiny_config(tiny_corpus, train={"epochs": 2}), tmp_path / "model", log=lambda *a: None)
    clip = Path(os.environ.get("SERKIT_SERVE_CLIP") or CORPORA / "emodb" / "wav" / "03a01Wa.flac")
    rec = Recognizer.from_pretrained(model)
    # the page's defaults are the CLI's: the whole clip, segments only when ticked
    want = rec.predict(clip)
    driver = _browser()
    try:
        with Server(create_app(rec, model_name=Path(model).name)) as url:
            driver.get(url + "/")
            WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "model").text.startswith("model "))
            driver.find_element(By.ID, "file").send_keys(str(clip))
            driver.find_element(By.ID, "analyse").click()
            WebDriverWait(driver, 180).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            status = driver.find_element(By.ID, "status").text
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
            label = driver.find_element(By.ID, "label").text
            rows = driver.find_elements(By.CSS_SELECTOR, "#probs .row")
            shown = {r.get_attribute("data-class"): float(r.get_attribute("data-p")) for r in rows}
            cells = [c.get_attribute("data-label") for c in driver.find_elements(By.CSS_SELECTOR, "#timeline .seg")]
            shot = tmp_path / "serve.png"
            driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert label.lower() == want["label"].lower()
    assert shown == pytest.approx(want["probabilities"], abs=1e-4)
    # the timeline: one cell per scored window (or the whole clip), labelled as the server said
    assert cells == ([w["label"] for w in want.get("windows", [])] or [want["label"]])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("SERKIT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SERKIT_SCREENSHOT"])


def _talk_wav(path: Path, lead: float = 1.5, tail: float = 2.0) -> Path:
    """EmoDB clips of speaker 03 with pauses between them (lead and tail silence: the looped file's passes do not
    merge), as 16 kHz 16-bit WAV: Chromium's fake microphone plays it in a loop."""
    import numpy as np
    import soundfile as sf

    from serkit.audio import read_audio

    wav = CORPORA / "emodb" / "wav"
    clips = [wav / n for n in ("03a01Wa.flac", "03a02Ta.flac", "03a04Nc.flac")]
    if not all(c.exists() for c in clips):
        pytest.skip(f"EmoDB clips of speaker 03 not present under {wav}")
    parts = [np.zeros(int(lead * 16000), np.float32)]
    for c in clips:
        parts += [read_audio(c), np.zeros(int(1.2 * 16000), np.float32)]
    parts.append(np.zeros(int(tail * 16000), np.float32))
    sf.write(str(path), np.concatenate(parts), 16000, subtype="PCM_16")
    return path


def _align(got: list[dict], want: list[dict], duration: float, tol: float) -> tuple[float, list]:
    """The stream-to-file offset that matches most segments (the page starts streaming a little after the fake
    microphone starts), and per offline segment the live one that lands on it (None: none within ``tol`` s)."""
    best = (-1, 0.0, [])
    for first in want:
        shift = first["start"] - got[0]["start"]
        pairs = []
        for w in want:
            near = [g for g in got if abs((g["start"] + shift) % duration - w["start"]) <= tol
                    and abs((g["end"] + shift) % duration - w["end"]) <= tol]
            pairs.append(near[0] if near else None)
        found = sum(p is not None for p in pairs)
        if found > best[0]:
            best = (found, shift, pairs)
    return best[1], best[2]


def test_live_microphone_gives_the_offline_segments(tiny_corpus, tmp_path, capsys):  # noqa: F811
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from serkit.service import create_app

    model = os.environ.get("SERKIT_SERVE_MODEL") or train_final(
        tiny_config(tiny_corpus, train={"epochs": 2}), tmp_path / "model", log=lambda *a: None)
    talk = _talk_wav(tmp_path / "talk.wav")
    rec = Recognizer.from_pretrained(model)
    want = rec.predict_segments(talk)
    duration = want["duration"]
    driver = _browser(fake_audio=talk)
    try:
        with Server(create_app(rec, model_name=Path(model).name)) as url:
            driver.get(url + "/")
            WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "live").is_displayed())
            driver.find_element(By.ID, "live").click()
            # one whole pass of the looped file, plus time for its last segment to close
            WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.serkitLive.sent") / 16000
                                            > duration + 2.5)
            state = driver.execute_script("const l = window.serkitLive; return {segments: l.segments.filter(Boolean),"
                                          " latencies: l.latencies, error: document.getElementById('status')"
                                          ".textContent, cells: [...document.querySelectorAll('#timeline .seg')]"
                                          ".map((c) => c.dataset.label)};")
            driver.find_element(By.ID, "live").click()
            WebDriverWait(driver, 30).until(lambda d: d.execute_script("return !!window.serkitLive.summary"))
            shown = driver.execute_script("return [...document.querySelectorAll('#summary .row')]"
                                          ".map((r) => r.dataset.class)")
    finally:
        driver.quit()
    got = state["segments"]
    assert got, state["error"]
    shift, pairs = _align(got, want["segments"], duration, tol=0.25)
    assert all(p is not None for p in pairs), (shift, got, want["segments"])
    for g, w in zip(pairs, want["segments"], strict=True):
        assert g["label"] == w["label"], (g, w)
    assert [c for c in state["cells"] if c] and shown  # drawn on the timeline; the summary after Stop
    latency = np.array(state["latencies"])
    with capsys.disabled():
        print(f"\nlive segments: {len(got)} (offline {len(want['segments'])}), stream-to-file offset {shift:.2f} s; "
              f"latency from segment end to label (stream time): median {np.median(latency):.2f} s, "
              f"max {latency.max():.2f} s")
    assert np.median(latency) < 2.0
