"""The studio page of `pixgen serve` in a real headless Chromium (Selenium + chromedriver), against the real server.

One test drives the page like a user: submit a run and watch its previews arrive, see the final image and its
recipe, cancel and resume a second run, filter the gallery, pick a card with the keyboard, and submit a prompt
that is HTML to check it stays text. ``PIXGEN_SCREENSHOT=docs/images/studio.png`` also saves a screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium chromium-driver; "
                                                ".ci/run does it)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver not installed (apt-get install -y chromium-driver; "
                                                    ".ci/run does it)"),
]

FIRST = "a red circle on a blue background"
SECOND = "a yellow triangle on a purple background"
INJECTION = "<img src=x onerror=alert(1)>"
FIRST_STEPS = 60    # ~3 s of optimisation on an idle 2-core CPU: several previews (one every 0.5 s)
SECOND_STEPS = 150  # long enough to press Cancel while it runs, short enough to resume to the end
SLOW = 120          # seconds a job may take at most (a busy machine)
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def api(base: str, path: str):
    with NO_PROXY.open(base + "/api/v1" + path, timeout=5) as response:
        return json.loads(response.read())


SERVER_LOG: list[Path] = []  # the running server's stderr, quoted when a wait times out


def wait_for(condition, timeout: float, what, interval: float = 0.2):
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            log = tail(SERVER_LOG[-1]) if SERVER_LOG else ""
            what = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\nserver's stderr:\n{log}")
        time.sleep(interval)


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C the server (it shuts its workers down), then kill its whole process group if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # workers left behind, if any
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def studio(tmp_path):
    """The real ``pixgen serve`` on a free port; yields its base URL."""
    port = free_port()
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pixgen", "serve", "--port", str(port), "--dir", str(tmp_path / "studio")],
            env=os.environ.copy(), cwd=tmp_path, stdout=stdout, stderr=stderr, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    SERVER_LOG.append(err)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"pixgen serve exited with status {process.returncode}:\n{tail(err)}")
            try:
                api(base, "/info")
                break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"pixgen serve did not answer GET /api/v1/info within 60 s:\n{tail(err)}")
            time.sleep(0.25)
        yield base
    finally:
        SERVER_LOG.remove(err)
        stop(process)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                     "--no-proxy-server", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--hide-scrollbars",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def by_id(driver, element_id: str):
    return driver.find_element(By.ID, element_id)


def text_of(driver, element_id: str) -> str:
    return (by_id(driver, element_id).get_attribute("textContent") or "").strip()


def fill(driver, element_id: str, value) -> None:
    field = by_id(driver, element_id)
    field.clear()
    if value is not None:
        field.send_keys(str(value))


def submit(driver, prompt: str, steps: int, seed: int, with_keyboard: bool = False) -> str:
    """Fill the form for a small draft run, submit it, and return the new job's id (from the address bar)."""
    before = driver.execute_script("return location.hash")
    Select(by_id(driver, "preset")).select_by_value("draft")
    fill(driver, "size-w", 64)
    fill(driver, "size-h", 64)
    fill(driver, "steps", steps)
    fill(driver, "seed", seed)
    fill(driver, "prompt", prompt)
    if with_keyboard:
        by_id(driver, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)
    else:
        by_id(driver, "submit").click()
    wait_for(lambda: driver.execute_script("return location.hash") != before or text_of(driver, "error"), 15,
             f"the job for {prompt!r} to be submitted")
    assert not text_of(driver, "error"), text_of(driver, "error")
    assert text_of(driver, "live-prompt") == prompt
    return unquote(driver.execute_script("return location.hash").removeprefix("#job="))


def wait_status(driver, base: str, job_id: str, wanted: str, timeout: float, watch=None) -> None:
    def reached():
        if watch:
            watch()
        status = text_of(driver, "status")
        if status == "failed":
            pytest.fail(f"the job failed: {text_of(driver, 'job-error')}")
        return status == wanted
    wait_for(reached, timeout, lambda: f"status {wanted!r}: the page shows {text_of(driver, 'status')!r}, "
                                       f"the API says {api(base, f'/jobs/{job_id}')!r}")


def final_image_loaded(driver, job_id: str) -> bool:
    """#preview shows the job's final image (a file of the job, not a data: preview) and it has loaded."""
    return driver.execute_script(
        "const i = document.getElementById('preview');"
        "return i.complete && i.naturalWidth > 0 && i.src.indexOf('/api/v1/jobs/' + arguments[0] + '/files/') >= 0;",
        job_id)


def recipe(driver) -> dict:
    return driver.execute_script(
        "const out = {};"
        "for (const row of document.querySelectorAll('#recipe dl dt')) out[row.textContent] ="
        " row.nextElementSibling ? row.nextElementSibling.textContent : '';"
        "return out;")


def shown_cards(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#gallery .card'))"
        ".filter(c => c.offsetParent !== null).map(c => c.getAttribute('data-job'));")


def emulate(driver, width: int, height: int, mobile: bool = False) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def screenshot(driver, path: Path) -> None:
    """The whole page, 1200 pixels wide, once every gallery thumbnail has loaded."""
    wait_for(lambda: driver.execute_script(
        "return Array.from(document.querySelectorAll('#gallery img')).every(i => i.complete && i.naturalWidth)"),
        10, "the gallery thumbnails")
    emulate(driver, 1200, 900)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    emulate(driver, 1200, min(max(height, 900), 1600))
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
    time.sleep(0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_studio_page_runs_previews_cancels_resumes_filters_and_escapes(studio, browser):
    driver = browser
    driver.get(studio + "/")
    wait_for(lambda: "draft" in [o.get_attribute("value") for o in Select(by_id(driver, "preset")).options], 15,
             "the preset picker to list the draft preset")

    # 1. A run: its previews stream into #preview, then the final image and the recipe.
    first = submit(driver, FIRST, FIRST_STEPS, seed=7)
    previews: set[str] = set()

    def watch_preview():  # a digest of #preview's src: its length and tail (data: URLs are long)
        src = driver.execute_script("const s = document.getElementById('preview').getAttribute('src') || '';"
                                    "return s.length + ':' + s.slice(0, 11) + s.slice(-48);")
        if ":data:image/" in src:
            previews.add(src)

    wait_status(driver, studio, first, "done", SLOW, watch_preview)
    assert len(previews) >= 2, f"#preview changed {len(previews)} time(s) while the run ran"
    wait_for(lambda: final_image_loaded(driver, first), 10, "the final image in #preview")
    job = api(studio, f"/jobs/{first}")
    assert by_id(driver, "preview").get_attribute("src").endswith(job["files"]["image"])
    shown = recipe(driver)
    assert FIRST in by_id(driver, "recipe").text and shown.get("seed") == "7", shown
    png = by_id(driver, "download-png")
    assert png.is_displayed() and png.get_attribute("href").endswith(job["files"]["image"] + "?download=1")
    assert not by_id(driver, "download-mp4").is_displayed()

    # 2. A longer run, submitted with Ctrl+Enter: Cancel while it runs, then Resume to the end.
    second = submit(driver, SECOND, SECOND_STEPS, seed=3, with_keyboard=True)
    wait_status(driver, studio, second, "running", SLOW)
    wait_for(lambda: f"/ {SECOND_STEPS}" in text_of(driver, "progress-text"), 60, "progress of the second run")
    by_id(driver, "cancel").click()
    wait_status(driver, studio, second, "cancelled", 30)
    resume = by_id(driver, "resume")
    assert resume.is_displayed() and not by_id(driver, "cancel").is_displayed()
    resume.click()
    wait_status(driver, studio, second, "done", SLOW)
    wait_for(lambda: final_image_loaded(driver, second), 10, "the resumed run's final image")
    assert api(studio, f"/jobs/{second}")["status"] == "done"
    wait_for(lambda: shown_cards(driver) == [second, first], 10, "both jobs in the gallery, newest first")
    if os.environ.get("PIXGEN_SCREENSHOT"):
        screenshot(driver, Path(os.environ["PIXGEN_SCREENSHOT"]))

    # 3. The filter asks the server (?q=) and shows only the matching card; cleared, both again.
    fill(driver, "filter", "red circle")
    wait_for(lambda: shown_cards(driver) == [first], 10, "the filter to leave only the first job")
    by_id(driver, "filter").send_keys(Keys.CONTROL, "a", Keys.DELETE)
    wait_for(lambda: shown_cards(driver) == [second, first], 10, "the cleared filter to show both jobs")

    # 4. Keyboard: focus the first job's card and press Enter; the live and recipe panels show it.
    card = driver.find_element(By.CSS_SELECTOR, f'#gallery .card[data-job="{first}"] button')
    card.send_keys(Keys.ENTER)
    wait_for(lambda: text_of(driver, "live-prompt") == FIRST and final_image_loaded(driver, first), 10,
             "the selected card in the live panel")
    assert recipe(driver).get("seed") == "7"

    # 5. A prompt that is HTML stays text everywhere.
    injected = submit(driver, INJECTION, 6, seed=1)
    wait_for(lambda: injected in shown_cards(driver), 10, "the HTML prompt's card")
    card_text = driver.find_element(By.CSS_SELECTOR, f'#gallery .card[data-job="{injected}"] .card-prompt')
    assert card_text.get_attribute("textContent") == INJECTION
    assert text_of(driver, "live-prompt") == INJECTION
    assert driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    wait_for(lambda: text_of(driver, "status") in ("done", "failed"), SLOW, "the HTML prompt's job to end")
    assert driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []

    # At phone width (a window cannot be made that narrow: emulate the screen): one column, no horizontal scroll.
    emulate(driver, 360, 740, mobile=True)
    wait_for(lambda: driver.execute_script("return innerWidth") == 360, 5, "the phone-sized page")
    assert driver.execute_script("return document.documentElement.scrollWidth <= innerWidth"), "horizontal scroll"
    left = {driver.execute_script(f"return document.getElementById('{panel}').getBoundingClientRect().left")
            for panel in ("compose", "live", "recipe", "gallery-panel")}
    assert len(left) == 1, f"the panels are not in one column: {left}"

    # The page keeps to the server's Content-Security-Policy (no inline script or style was refused).
    refused = [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]
    assert not refused, refused
