"""Headless Chromium for the dashboard's tests, screenshots and benchmark (Debian's `chromium` and
`chromium-driver`, driven by Selenium: a real browser, not a mocked DOM).

Owns starting a browser the same careful way everywhere: no sandbox (root in containers), no GPU,
no background networking, component updates, sync or first-run pages, a fresh profile directory,
and optionally no network at all (the report-from-file:// check). Must not be imported by the
server or the page's code paths (selenium is a dev dependency).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class BrowserMissing(RuntimeError):
    """Chromium, its driver or selenium is not installed (the message says how to install it)."""


def start(width: int = 1400, height: int = 900, offline: bool = False) -> Any:
    """A headless Chromium WebDriver; `quit(driver)` ends it and removes its profile."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            raise BrowserMissing(f"{path} is missing: install Debian's {package} (apt-get install -y chromium "
                                 "chromium-driver; scripts/test.sh does it as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserMissing("selenium is missing: pip install -e '.[dev]'") from exc
    profile = tempfile.mkdtemp(prefix="p2pfl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--disable-default-apps", "--mute-audio",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    if offline:
        # No proxy can be reached and no name resolves: any request for anything but the file fails.
        options.add_argument("--proxy-server=http://127.0.0.1:9")
        options.add_argument("--proxy-bypass-list=<-loopback>")
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.p2pfl_profile = profile
    if offline:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                               {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    return driver


def quit(driver: Any) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "p2pfl_profile", ""), ignore_errors=True)


def errors(driver: Any) -> list[str]:
    """The page's console errors so far (a CSP violation, an exception)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
