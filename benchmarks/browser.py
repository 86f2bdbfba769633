"""The real browser the HTML report is checked and photographed with: the system's chromium,
driven through the system's chromedriver by selenium. Nothing is downloaded (selenium's driver
manager is switched off). Used by tests/test_report_browser.py and benchmarks/screenshot.py."""

from __future__ import annotations

import os
import shutil
from typing import Any


def find() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why a browser cannot run here."""
    chromium = os.environ.get("PBKIT_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("PBKIT_CHROMEDRIVER") or shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make setup installs it from requirements/dev.lock)"
    if not chromium or not driver:
        return (
            "no system chromium + chromedriver (Debian: apt-get install chromium chromium-driver; "
            "make test does this where it runs as root)"
        )
    return chromium, driver


def start(width: int = 1400, height: int = 1000) -> Any:
    """A headless chromium that keeps its console and network logs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find()
    if isinstance(found, str):
        raise RuntimeError(found)
    os.environ["SE_OFFLINE"] = "true"  # selenium's driver manager must never download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(found[1]), options=opts)
