"""The console as a process beside the test stack's services, a year of aid fed through the
real broker, and headless Chromium (Debian's chromium and chromium-driver) to drive it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from deploy.harness import ServiceProcesses, free_port
from shared.contract import Topic
from shared.private_files import open_private_append
from shared.settings import PROJECT_ROOT
from tests.events import aid_request, budget
from tests.infra import Publisher, TopicWatcher, learn_trainee

SCREENSHOTS = PROJECT_ROOT / "var" / "screenshots"
YEAR = 2025  # no other test of the session stack touches it: the console tests own it
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--lang=fr-FR")


@dataclass
class Console:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@pytest.fixture(scope="session")
def console(stack: ServiceProcesses) -> Iterator[Console]:
    """`python -m console` on a free port, reading the stack's services."""
    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("E2C_KAFKA_") and not name.endswith("_DATABASE_URL")}
    env.update(CONSOLE_PORT=str(port), E2C_DATA_DIR=str(stack.data_dir), PYTHONUNBUFFERED="1")
    for name in ("referrals", "aids", "outcomes"):
        env[f"{name.upper()}_PORT"] = str(stack.services[name].port)
    log_path = stack.data_dir / "console.log"
    with open_private_append(log_path) as log:
        process = subprocess.Popen([sys.executable, "-m", "console"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, process)
        yield Console(url, process, log_path)
    finally:
        process.terminate()
        process.wait(20)


def _wait_health(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the console exited early")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the console did not answer /health in 30 s")


@dataclass
class AidYear:
    year: int
    granted_cents: int  # summed from the decisions the aids service published


@pytest.fixture(scope="session")
async def aid_year(publisher: Publisher, watcher: TopicWatcher) -> AidYear:
    """Grants of three kinds over several months of YEAR, with envelopes, through the broker;
    the expected total is summed from the published decisions, not from the report."""
    for kind, envelope in (("laptop", 200_000), ("meals", 17_500), ("childcare", 90_000)):
        await publisher.send(Topic.BUDGETS_SUBMITTED, budget(kind, envelope, year=YEAR),
                             key=kind)
    requests = []
    for school, month in (("toulouse", 2), ("nimes", 3), ("montpellier-1", 5)):
        trainee = await learn_trainee(publisher, school_id=school, enrolled_on=f"{YEAR}-01-07")
        requests += [
            aid_request(trainee, "laptop", amount_cents=45_000,
                        period_start=f"{YEAR}-0{month}-04", period_end=f"{YEAR}-0{month}-04"),
            aid_request(trainee, "meals", quantity=10 + month,
                        period_start=f"{YEAR}-0{month}-01", period_end=f"{YEAR}-0{month}-20"),
            aid_request(trainee, "childcare", amount_cents=12_000 * month,
                        period_start=f"{YEAR}-0{month + 1}-01",
                        period_end=f"{YEAR}-0{month + 1}-10"),
        ]
    granted = 0
    for request in requests:
        await publisher.send(Topic.AIDS_REQUESTED, request, key=request["trainee_id"])
    for request in requests:
        [decision] = await watcher.wait_for(Topic.AIDS_DECIDED,
                                            request_event_id=request["event_id"], timeout=60)
        if decision["status"] == "granted":
            granted += decision["amount_cents"]
    assert granted > 0
    return AidYear(YEAR, granted)


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, never reaching the network."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("chromium and chromium-driver are missing: run `make system-deps`")
    profile = tempfile.mkdtemp(prefix="e2c-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_window_size(1280, 1000)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def fresh_browser(browser: webdriver.Chrome) -> webdriver.Chrome:
    """The session's browser without cookies (signed out), at laptop size."""
    browser.delete_all_cookies()
    browser.set_window_size(1280, 1000)
    return browser


def screenshot(browser: webdriver.Chrome, name: str) -> Path:
    """The whole page saved as var/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    width = browser.get_window_size()["width"]
    browser.set_window_size(width, max(600, int(height) + 120))
    browser.save_screenshot(str(path))
    return path


# --- signing in and reading pages, shared by the page tests ----------------------------


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, "the form carries a CSRF token"
    return found.group(1)


def signin(console: Console, token: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=console.url, timeout=10)
    form = client.get("/signin")
    answer = client.post("/signin", data={"token": token, "csrf": csrf_of(form)})
    return client, answer


def sign_in(browser: webdriver.Chrome, console: Console, token: str) -> None:
    """Signs in and returns once the answer's page is loaded. `click()` returns as soon as
    the form is sent: a `get` made then races the sign-in's redirects (POST -> / ->
    /finance), and the page left at the end may be the menu's /finance of this year, not the
    page the test asked for."""
    browser.get(f"{console.url}/signin")
    browser.find_element(By.ID, "token").send_keys(token)
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, "form[action='/signin'] button").click()
    wait_for_page_after(browser, page)


def wait_for_page_after(browser: webdriver.Chrome, page: Any, timeout: float = 15) -> None:
    """Until the document holding `page` is replaced (redirects make no document of their
    own: the next one is the last answer's) and the new one is loaded."""
    WebDriverWait(browser, timeout).until(lambda _: _replaced(page))
    WebDriverWait(browser, timeout, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return document.readyState") == "complete")


def _replaced(page: Any) -> bool:
    """Whether `page`'s element left the document. Besides a stale reference, Chromium may
    answer a node of a document being replaced with "Node with given id does not belong to
    the document": gone too."""
    try:
        page.is_enabled()
    except WebDriverException:  # StaleElementReferenceException among them
        return True
    return False


def text_of(element: Any) -> str:
    """The text as written: WebDriver's `.text` turns no-break spaces into spaces."""
    return str(element.get_attribute("textContent")).strip()


def cents_of(browser: webdriver.Chrome, selector: str) -> list[int]:
    return [int(cell.get_attribute("data-cents") or "0")
            for cell in browser.find_elements(By.CSS_SELECTOR, selector)]
