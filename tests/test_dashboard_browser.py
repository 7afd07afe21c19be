"""The dashboard (web/static/index.html) in a real headless Chromium, driven by Selenium through
Debian's ChromeDriver, against the real web process, engine worker, pulse worker and beat.

`make test` installs the browser (`make browser`: Debian's chromium and chromium-driver)."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from hean.core.system.health_monitor import MODULES, HealthStatus
from hean.processes import PROCESSES
from support import Client, ManagedProcess, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No network here but the loopback: keep Chromium from calling home (refused connections, DNS
# look-ups of Google's hosts at every start).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
WAIT_S = 20
STATUSES = {status.value for status in HealthStatus}


@pytest.fixture(scope="module")
def pulse_processes(system: dict[str, Any], logs_dir: Path) -> Iterator[None]:
    """A pulse worker and celery beat joined to the shared system, so the page gets pulses."""
    specs = {spec.name: spec for spec in PROCESSES}
    started = [
        ManagedProcess(f"{name}-dashboard", specs[name].argv(sys.executable), system["env"], logs_dir)
        for name in ("worker-pulse", "beat")
    ]
    try:
        # process start-up is slow on a busy machine: wait for it here, not in the page's waits
        wait_for(lambda: fresh_pulse(str(system["url"])), 60, "the pulse worker's first pulse")
        yield
    finally:
        for process in started:
            process.stop()


def fresh_pulse(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/system/health/pulse", timeout=5) as response:
            return bool(json.load(response)["age_ms"] < 1000)
    except (urllib.error.URLError, OSError, KeyError, TypeError):
        return False


def settle_engine(system: dict[str, Any]) -> None:
    """Stop the shared engine, and reset it if a kill switch halted it."""
    client = Client(str(system["url"]), str(system["token"]))
    try:
        for command in ("stop", "reset_kill_switch"):  # a halted engine stays HALTED on stop
            request_id = uuid.uuid4().hex
            client.command({"command": command, "params": {}, "request_id": request_id})
            result = client.result_for(request_id)
            if result["success"] and result["result"]["state"] == "STOPPED":
                return
        raise AssertionError(f"the engine did not reach STOPPED: {result}")
    finally:
        client.close()


@pytest.fixture
def stopped_engine(system: dict[str, Any]) -> Iterator[None]:
    """The shared engine STOPPED, whatever earlier tests left; never left HALTED for later ones."""
    settle_engine(system)
    try:
        yield
    finally:
        settle_engine(system)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"{path} is missing: `make browser` (part of `make test`) installs Debian's "
                "chromium and chromium-driver"
            )
    # Debian's driver is given explicitly, so Selenium Manager is skipped; offline all the same.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, f"waiting for {what}")


def text(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def log_lines(driver: WebDriver) -> list[tuple[str, str, dict[str, Any]]]:
    """The page's event log, oldest first: (css class, "ack" | "result", payload)."""
    lines = driver.execute_script(
        "return [...document.querySelectorAll('#log div')].map(d => [d.className, d.textContent])"
    )
    found = []
    for css, line in reversed(lines):
        _, kind, body = line.split(" ", 2)  # "<ISO time> ack {...}"
        found.append((css, kind, json.loads(body)))
    return found


def press(driver: WebDriver, command: str) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
    """Click the command's button; return the (css class, payload) of its ack and of its result."""
    seen = {payload["request_id"] for _, kind, payload in log_lines(driver) if kind == "ack"}
    driver.find_element(By.CSS_SELECTOR, f"button[data-command='{command}']").click()

    def ack_shown(d: WebDriver) -> tuple[str, dict[str, Any]] | None:
        for css, kind, payload in log_lines(d):
            if kind == "ack" and payload["command"] == command and payload["request_id"] not in seen:
                return css, payload
        return None

    ack = wait(driver, ack_shown, f"the ack of {command}")
    request_id = ack[1]["request_id"]

    def result_shown(d: WebDriver) -> tuple[str, dict[str, Any]] | None:
        for css, kind, payload in log_lines(d):
            if kind == "result" and payload["request_id"] == request_id:
                return css, payload
        return None

    return ack, wait(driver, result_shown, f"the result of {command}")


def open_dashboard(driver: WebDriver, system: dict[str, Any], token: str | None) -> None:
    driver.get(str(system["url"]) + "/" + (f"#token={token}" if token is not None else ""))
    assert driver.title == "HEAN dashboard"


def health_view(driver: WebDriver) -> dict[str, Any]:
    """The health line and table, read at once (the page redraws them on every pulse)."""
    return driver.execute_script(
        """return {
             overall: document.getElementById('health').textContent,
             modules: Object.fromEntries([...document.querySelectorAll('#modules tr')].map(
               row => [row.dataset.module, [...row.cells].map(cell => cell.textContent)])),
           }"""
    )


def engine_state(driver: WebDriver) -> str:
    return text(driver, "engine").split(" ")[0]


def test_the_dashboard_drives_the_real_engine_and_shows_the_pulse(
    system: dict[str, Any], stopped_engine: None, pulse_processes: None, browser: WebDriver, tmp_path: Path
) -> None:
    open_dashboard(browser, system, str(system["token"]))
    wait(browser, lambda d: text(d, "conn") == "connected", "the page to connect")
    assert browser.find_element(By.ID, "conn").get_attribute("class") == "good"
    buttons = browser.find_elements(By.CSS_SELECTOR, "button[data-command]")
    assert {b.get_attribute("data-command") for b in buttons} >= {"start", "stop", "kill_switch"}
    assert all(b.is_enabled() for b in buttons)

    # each button: the ack at once, the engine worker's result later, the state view follows
    for command, state in (("start", "RUNNING"), ("stop", "STOPPED"), ("kill_switch", "HALTED")):
        (ack_css, ack), (result_css, result) = press(browser, command)
        assert ack_css == "good" and ack["accepted"] is True and ack["ack_time_ms"] >= 0
        assert result_css == "good" and result["success"] is True, result
        assert result["command"] == command and result["result"]["state"] == state
        wait(browser, lambda d, state=state: engine_state(d) == state, f"the engine view to show {state}")
        assert "equity" in text(browser, "engine")

    # a halted engine refuses to start: the page shows the engine's error, in red
    (ack_css, ack), (result_css, result) = press(browser, "start")
    assert ack_css == "good" and ack["accepted"] is True
    assert result_css == "bad" and result["success"] is False
    assert result["error"]["code"] == "engine_halted"
    assert engine_state(browser) == "HALTED"
    (_, ack), (result_css, result) = press(browser, "reset_kill_switch")
    assert result_css == "good" and result["result"]["state"] == "STOPPED"
    wait(browser, lambda d: engine_state(d) == "STOPPED", "the engine view to show STOPPED")
    assert text(browser, "engine").split(" ")[-1].startswith("v")  # the state's version

    # the health pulse, pushed to the operators room by the pulse worker every 100 ms
    def pulse_shown(d: WebDriver) -> dict[str, Any] | None:
        shown = health_view(d)
        return shown if set(shown["modules"]) == set(MODULES) else None

    first = wait(browser, pulse_shown, "a health pulse with every module")
    assert first["overall"].split(" ")[0] in STATUSES
    for name, cells in first["modules"].items():
        assert cells[0] == name and cells[1] in STATUSES, cells
    wait(browser, lambda d: (pulse_shown(d) or first)["overall"] != first["overall"], "the next pulse")

    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


@pytest.mark.parametrize("token", ["not-the-token", None], ids=["wrong-token", "no-token"])
def test_a_bad_token_shows_an_error_and_does_not_connect(
    system: dict[str, Any], browser: WebDriver, token: str | None
) -> None:
    open_dashboard(browser, system, token)
    wait(browser, lambda d: text(d, "conn").startswith("refused:"), "the page to show the refusal")
    conn = browser.find_element(By.ID, "conn")
    assert conn.is_displayed() and conn.get_attribute("class") == "bad"
    assert conn.text.removeprefix("refused:").strip()  # the server's reason, shown to the person
    if token is None:
        assert "no #token=" in conn.text
    # the page gave up (no retry loop against a wrong token) and closed its socket
    wait(
        browser,
        lambda d: d.execute_script("return ws.readyState === WebSocket.CLOSED && retry === 0"),
        "the page to close its socket",
    )
    buttons = browser.find_elements(By.CSS_SELECTOR, "button[data-command]")
    assert buttons and not any(b.is_enabled() for b in buttons)
    assert text(browser, "engine") == "?" and log_lines(browser) == []
    assert text(browser, "conn").startswith("refused:")
