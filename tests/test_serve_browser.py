"""moshi-mac's page in a real browser: Debian's chromium, headless, driven by Selenium
through Debian's chromedriver, with Chromium's fake microphone playing espeak-ng French
speech. The page must connect, fill its text panel and play the model's audio (it
exposes window.moshiMac.playedSamples); a screenshot is saved (docs/serve.png when
MOSHI_MAC_SCREENSHOT names it, else in the test's temp folder).

Without chromium and chromium-driver these tests fail when CI=true and are skipped
otherwise (apt install chromium chromium-driver; pip install selenium)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.test_serve import ServerProcess, espeak_wav

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SPEECH = ("Bonjour, je voudrais un café et un croissant, s'il vous plaît. "
          "Merci beaucoup, bonne journée.")


def _missing() -> str | None:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is needed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    wav = espeak_wav(tmp_path_factory.mktemp("mic") / "speech.wav", SPEECH)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1000,760"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(make_model):
    srv = ServerProcess(make_model("hibiki-1b"), "--max-tail", "2")
    yield srv
    srv.stop()


def _wait(driver, script: str, what: str, timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    state = driver.execute_script("return JSON.stringify(window.moshiMac)")
    raise AssertionError(f"timed out waiting for {what}; page state: {state}")


def test_page_talks_to_the_model(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server.url)
    assert browser.title == "moshi-mac"
    browser.find_element(By.ID, "start").click()
    _wait(browser, "return window.moshiMac.handshake", "the handshake")
    _wait(browser, "return window.moshiMac.sentSamples > 24000", "the microphone's audio sent")
    _wait(browser, "return window.moshiMac.textChars > 20", "text in the panel")
    _wait(browser, "return window.moshiMac.playedSamples > 24000", "a second of audio played")
    page = browser.execute_script("return window.moshiMac")
    assert page["hibiki"] is True and page["state"] == "streaming"
    assert page["receivedSamples"] >= page["playedSamples"]
    assert not page["errors"], page["errors"]
    text = browser.find_element(By.ID, "text").text
    assert len(text.strip()) > 10 and "translating" in text
    assert browser.find_element(By.ID, "steps").text not in ("", "–")
    assert int(browser.find_element(By.ID, "played").text) > 0
    level = browser.find_element(By.ID, "level").value_of_css_property("width")
    assert level != "0px", "the input level meter moves"
    shot = Path(os.environ.get("MOSHI_MAC_SCREENSHOT") or tmp_path / "serve.png")
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # Stop: the end of input; Hibiki finishes its translation and the server closes.
    browser.find_element(By.ID, "stop").click()
    _wait(browser, "return window.moshiMac.state === 'closed'", "the end of the conversation", 60)
    assert "translating" not in browser.find_element(By.ID, "text").text
    server.wait_log(r"the client ended its input; flushing the translation")
    server.wait_log(r"conversation \d+ ended")
