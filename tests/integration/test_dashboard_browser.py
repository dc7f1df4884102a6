"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium through
the system chromedriver, against the running demo stack while ``loadtest`` sends traffic."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import ROOT
from tests.integration.demo_support import ADMIN, BIN, running_demo
from tests.tools import require_tool

pytestmark = pytest.mark.slow

VIEWER_TOKEN = "demo-viewer-TEST-ONLY"  # conf/demo/gateway.toml: a TEST ONLY viewer token
SCREENSHOT = ROOT / "var" / "test-artefacts" / "dashboard.png"
# Collects what the page's CSP refuses, from before the page's own script runs.
CSP_WATCH = (
    "window.__csp = [];"
    "document.addEventListener('securitypolicyviolation',"
    " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium = require_tool("chromium", "chromium")
    driver_path = require_tool("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        # No calls home: this machine reaches nothing but loopback.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_WATCH})
        yield driver
    finally:
        driver.quit()


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def console(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console messages since the last call (Chrome's log, CSP reports included)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def issuer_rows(driver: webdriver.Chrome) -> list[list[str]]:
    """The issuer table's cells, read in one call: the page rebuilds its rows every second."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('#issuers tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.textContent))"
    )
    return rows


def wait(driver: webdriver.Chrome, what: str, condition: Any, timeout: float = 20) -> None:
    """Wait for the page (polled by WebDriver: the browser is another process)."""
    WebDriverWait(driver, timeout).until(lambda d: condition(d), message=what)


def test_dashboard_in_chromium_shows_live_traffic(browser: webdriver.Chrome) -> None:
    with running_demo() as demo:
        browser.get(f"{ADMIN}/dashboard")
        assert browser.title == "payswitch dashboard"

        # The demo has admin tokens: the page asks for one after its first data request.
        wait(browser, "token form", lambda d: d.find_element(By.ID, "auth").is_displayed())
        before_token = console(browser)
        # Chrome reports the refused request itself: the only message allowed, before a token.
        assert before_token, "the 401 that makes the page ask was not seen"
        for entry in before_token:
            assert "/dashboard/data" in entry["message"], entry
            assert "401" in entry["message"], entry
        browser.find_element(By.ID, "token").send_keys(VIEWER_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#auth button").click()

        wait(browser, "ready", lambda d: text(d, "state") == "ready")
        wait(browser, "three issuers", lambda d: len(issuer_rows(d)) == 3)
        assert not browser.find_element(By.ID, "auth").is_displayed()
        rows = issuer_rows(browser)
        assert [r[0] for r in rows] == ["alpha", "beta", "gamma"]
        # No breaker before an issuer's first request: "n/a".
        assert all(r[1] == "signed on" and r[3] in ("n/a", "closed") for r in rows), rows
        assert text(browser, "tps") == "0.0"
        assert text(browser, "appr") == "\u2014"
        assert all(r[4] == "\u2014" for r in rows), "no issuer p99 before any traffic"

        load = subprocess.Popen(
            [
                str(BIN / "loadtest"),
                *("--rate", "150", "--duration", "8", "--warmup", "0", "--mix", "plain"),
                *("--qr-url", "", "--quiet"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait(browser, "TPS under load", lambda d: float(text(d, "tps")) >= 50)
            wait(browser, "approval rate", lambda d: text(d, "appr").endswith(" %"))
            wait(
                browser,
                "issuer p99 of the loaded issuers",
                lambda d: sum(r[4] != "\u2014" for r in issuer_rows(d)) >= 2,
            )
            assert float(text(browser, "appr").removesuffix(" %")) > 90
            assert "approved" in text(browser, "answers")
            # A few seconds of the sparkline in the picture.
            wait(browser, "5 s of window", lambda d: float(text(d, "win")) >= 5)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(SCREENSHOT))
        finally:
            output, _ = load.communicate(timeout=60)
        assert load.returncode == 0, output.decode(errors="replace")[-2000:]

        assert browser.execute_script("return window.__csp") == []
        assert console(browser) == [], "console messages after the token"
        assert "no data" not in text(browser, "updated")
    demo.assert_stopped_cleanly()
