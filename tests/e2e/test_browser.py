"""The clinician page in a real browser: headless Debian Chromium drives the page served by a real
uvicorn server. It enters an API key, uploads a real B-scan, sees the result and its heatmap, sends
feedback, and the API confirms the feedback. A screenshot is left in test-artifacts/.

Needs the Debian packages chromium and chromium-driver (`apt-get install -y chromium chromium-driver`).
Selenium is pointed at them explicitly, so selenium-manager never downloads a browser or driver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from kdoct_testing.server import running_service
from service.db.session import make_engine
from service.db.tables import Feedback

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_START_TIMEOUT_S = 120.0
PAGE_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


def _service_cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"python -m service {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def page_server(e2e_bundles, tmp_path_factory, repo_root) -> Iterator[dict[str, str]]:
    """A real uvicorn server with API keys on and a SQLite record store, and a key for the page."""
    workdir = tmp_path_factory.mktemp("browser-server")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env |= {
        "PYTHONPATH": str(repo_root),
        "KDOCT_STUDENT_BUNDLE": str(e2e_bundles["student"]),
        "KDOCT_TEACHER_BUNDLE": str(e2e_bundles["teacher"]),
        "KDOCT_SECOND_OPINION": "auto",
        "KDOCT_DATABASE_URL": f"sqlite:///{workdir / 'kdoct.db'}",
        "KDOCT_SPOOL_DIR": str(workdir / "spool"),
        "KDOCT_AUTH": "enabled",
        "KDOCT_INFERENCE_THREADS": "1",
        "KDOCT_DECODE_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    _service_cli("db", "upgrade", env=env, cwd=workdir)
    created = _service_cli("apikey", "create", "browser-test", "--scopes", "classify", "read", "feedback",
                           env=env, cwd=workdir)  # fmt: skip
    api_key = next(word for word in created.split() if word.startswith("kdoct_"))
    with running_service(
        env,
        workdir,
        workdir / "server.log",
        ready_timeout_s=SERVER_START_TIMEOUT_S,
        stop_timeout_s=20,
        args=("--host", "127.0.0.1"),
    ) as service:
        yield {"url": service.url, "key": api_key, "database_url": env["KDOCT_DATABASE_URL"]}


@pytest.fixture
def browser() -> Iterator:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("headless Chromium is missing: apt-get install -y chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="kdoct-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--window-size=1366,900", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, what: str):
    try:
        return WebDriverWait(driver, PAGE_TIMEOUT_S).until(condition)
    except TimeoutException:
        errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#errors .error")]
        pytest.fail(f"timed out waiting for {what}; errors shown on the page: {errors}")


def _element(driver, css: str, what: str):
    return _wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, css)), what)


def test_page_classifies_explains_and_takes_feedback(
    page_server, browser, sample_jpegs, artifacts_dir, tmp_path
) -> None:
    scan = sample_jpegs["CNV"][2]
    browser.get(page_server["url"] + "/")
    assert "kdoct" in browser.title

    # The key is typed once and kept for the tab.
    browser.find_element(By.ID, "api-key").send_keys(page_server["key"])
    browser.find_element(By.ID, "key-save").click()
    assert browser.execute_script("return sessionStorage.getItem('kdoct.apiKey')") == page_server["key"]

    # Keyboard: the file chooser is the next stop after the key buttons, and its focus is visible.
    browser.find_element(By.ID, "key-forget").send_keys(Keys.TAB)
    assert browser.execute_script("return document.activeElement.id") == "file-input"
    outline = "return getComputedStyle(document.querySelector('label[for=file-input]')).outlineStyle"
    assert browser.execute_script(outline) == "solid"

    # An API error (problem+json) is shown in plain words, naming the file.
    not_a_scan = tmp_path / "notes.png"
    not_a_scan.write_bytes(b"these are notes, not a B-scan")
    browser.find_element(By.ID, "file-input").send_keys(str(not_a_scan))
    error = _element(browser, "#errors .error", "the error for a file that is no image")
    assert "Could not classify notes.png" in error.text and "Unsupported media type" in error.text

    browser.find_element(By.ID, "file-input").send_keys(str(scan))
    result = _element(browser, "[data-testid=result]", "a result")
    prediction_id = result.get_attribute("data-prediction-id")
    label = result.find_element(By.CSS_SELECTOR, "[data-testid=label]").text.lower()
    assert label in {"normal", "drusen", "cnv"}
    assert len(result.find_elements(By.CSS_SELECTOR, ".bars .bar")) >= 3
    heatmap = _element(browser, "[data-testid=result] [data-testid=heatmap]", "the heatmap")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth"
    width = _wait(browser, lambda driver: driver.execute_script(loaded, heatmap), "the heatmap image to load")
    with Image.open(scan) as original:
        assert width == original.width, "the overlay covers the whole B-scan"

    # The new prediction appears in the table of recent ones; the clinician labels it.
    row_css = f"#recent-table tr[data-prediction-id='{prediction_id}']"
    row = _element(browser, row_css, "the prediction's row in the table")
    clinician_label = "drusen" if label != "drusen" else "cnv"
    row.find_element(By.CSS_SELECTOR, f"button[data-label='{clinician_label}']").click()
    recorded_text = ec.text_to_be_present_in_element(
        (By.CSS_SELECTOR, f"{row_css} .feedback-status"), f"Recorded: {clinician_label}"
    )
    _wait(browser, recorded_text, "the feedback to be recorded")

    browser.set_window_size(1366, browser.execute_script("return document.body.scrollHeight") + 40)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(artifacts_dir / "browser-classify.png"))

    headers = {"Authorization": f"Bearer {page_server['key']}"}
    answer = httpx.get(f"{page_server['url']}/predictions/{prediction_id}", headers=headers, timeout=10.0)
    assert answer.status_code == 200, answer.text
    prediction = answer.json()
    assert prediction["label"] == label
    # The API answers feedback only to its sender (201, shown as "Recorded" above); the table holds it.
    engine = make_engine(page_server["database_url"])
    try:
        with engine.connect() as connection:
            query = select(Feedback.label).where(Feedback.prediction_id == uuid.UUID(prediction_id))
            stored = connection.execute(query).scalars().all()
    finally:
        engine.dispose()
    assert stored == [clinician_label]
    # The 415 above is logged by the browser as a network error; any script error would be a bug.
    log = browser.get_log("browser")
    script_errors = [entry for entry in log if entry["level"] == "SEVERE" and entry["source"] != "network"]
    assert script_errors == [], f"the page's script failed: {script_errors}"


def test_api_docs_render_from_the_service_under_its_policy(page_server, browser, artifacts_dir) -> None:
    """Swagger UI at /docs (issue 23, case 14): served from the service's own files, it renders every
    route under the page's Content-Security-Policy, which would block anything from another origin,
    an inline script or eval, and would say so in the console."""
    browser.get(page_server["url"] + "/docs")
    _wait(
        browser,
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= 5,
        "Swagger UI to list the routes",
    )
    paths = {element.text for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/classify", "/predictions/{prediction_id}"} <= {path.replace("\u200b", "") for path in paths}
    # The "Authorize" button of the bearer scheme: keys can be tried from the page.
    assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(page_server["url"] + "/") for url in loaded), loaded
    browser.save_screenshot(str(artifacts_dir / "browser-docs.png"))
    problems = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert problems == [], f"the docs page logged: {problems}"
