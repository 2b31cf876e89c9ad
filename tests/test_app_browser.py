"""The web app in a real headless browser: upload the generated sample and dub, run with random
weights, watch the progress bar move, play the result, download the profile, save a screenshot
(docs/images/app.png, shown in the README).

Needs Debian's chromium and chromium-driver, gradio and selenium: `.ci/browser-deps` installs
them; then `python -m pytest -m slow tests/test_app_browser.py`.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("gradio")
from selenium.webdriver.common.by import By  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "run_graph.py", "app", "--port", str(port),
                             "--jobs-dir", str(tmp_path / "jobs")], cwd=ROOT,
                            stdout=open(tmp_path / "app.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            assert proc.poll() is None, open(tmp_path / "app.log").read()
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(30)


@pytest.fixture
def browser(tmp_path):
    if not CHROMEDRIVER:
        pytest.skip("no chromedriver (run .ci/browser-deps)")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2000",
                "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads")})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    yield driver
    driver.quit()


def until(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_in_the_browser(app, browser, tmp_path):
    from lipgraph.tools.sample import make_sample
    video, audio = make_sample(str(tmp_path / "sample"), seconds=1.6, width=320, height=240, extra_s=0.4)
    browser.get(app)
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#video-in input[type=file]"), 60, "the page")
    browser.find_element(By.CSS_SELECTOR, "#video-in input[type=file]").send_keys(video)
    browser.find_element(By.CSS_SELECTOR, "#audio-in input[type=file]").send_keys(audio)
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#video-in video"), 60, "the uploaded video")
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#audio-in audio, #audio-in .waveform-container"),
          60, "the uploaded dub")
    assert browser.find_element(By.CSS_SELECTOR, "#random-weights input").is_selected()
    browser.find_element(By.ID, "run").click()

    def bar():
        el = browser.find_elements(By.ID, "lipgraph-progress")
        return el and (int(float(el[0].get_attribute("value"))), int(float(el[0].get_attribute("max"))))
    seen = set()

    def result_video():
        seen.add(bar())
        return [v for v in browser.find_elements(By.CSS_SELECTOR, "#result-video video")
                if v.get_attribute("src")]
    videos = until(result_video, 300, "the result video")
    done = {v for v, m in seen if v and v < m}
    assert done, f"the progress bar never showed a partial count: {seen}"      # it moved
    assert bar() == (50, 50)
    assert "50/50 frames" in browser.find_element(By.ID, "lipgraph-progress-text").text
    assert "NOT lip-synced" in browser.find_element(By.ID, "summary").text
    # the result plays in the page
    player = videos[0]
    browser.execute_script("arguments[0].muted = true; arguments[0].play();", player)
    until(lambda: browser.execute_script("return arguments[0].currentTime", player) > 0, 30, "playback")
    # the profile downloads
    link = until(lambda: browser.find_elements(By.CSS_SELECTOR, "#downloads a[href$='.profile.json']"),
                 30, "the profile link")
    link[0].click()
    path = tmp_path / "downloads" / "out.mp4.profile.json"
    until(path.exists, 30, "the downloaded profile")
    assert json.load(open(path))["status"] == "ok"
    browser.execute_script("window.scrollTo(0, 0)")
    os.makedirs(os.path.join(ROOT, "docs", "images"), exist_ok=True)
    browser.save_screenshot(os.path.join(ROOT, "docs", "images", "app.png"))
