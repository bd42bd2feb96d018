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
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)

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


def _browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,1040", "--hide-scrollbars", "--force-device-scale-factor=1"):
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
    # the page asks for segments (voice activity detection) when the server offers them, else the whole clip
    want = rec.predict_segments(clip) if hasattr(rec, "predict_segments") else rec.predict(clip)
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
    # the timeline: one cell per segment, else per scored window (or the whole clip), labelled as the server said
    assert cells == ([s["label"] for s in want.get("segments", [])] or [w["label"] for w in want.get("windows", [])]
                     or [want["label"]])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("SERKIT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SERKIT_SCREENSHOT"])
