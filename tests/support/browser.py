"""Headless Chromium from Debian's packages, driven by Selenium through Debian's chromedriver:
why a machine cannot run it, and a browser that always quits."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

# Debian's packages `chromium` and `chromium-driver`, built from one source, so the driver
# always speaks the browser's version. Both paths are given to Selenium: with them it never
# starts Selenium Manager, which would try to download a driver or a browser (nothing but the
# package registries is reachable here).
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

FLAGS = (
    "--headless",
    # Chromium's sandbox refuses to run as root, and CI runs as root.
    "--no-sandbox",
    # No GPU and no screen here.
    "--disable-gpu",
    # Without these, Chromium reaches out to Google's services (component updates, sync, QUIC,
    # the first-run pages); with no network beyond the package registries, those connections
    # only fail, many at a time.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def unavailable() -> str | None:
    """Why this machine cannot run the browser, or None when it can."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if not missing:
        return None
    return (
        f"missing {', '.join(missing)}: apt-get install chromium chromium-driver and "
        "pip install -e '.[test]' (CI's .ci/run installs them)"
    )


@contextmanager
def headless_chromium(scratch: Path) -> Iterator[WebDriver]:
    """Chromium with a new, empty profile under `scratch` (a profile of its own, so nothing of
    a developer's browser leaks in); it quits on the way out, also when the test fails.
    chromedriver's log goes to `scratch/chromedriver.log`."""
    # Imported here so that a machine without selenium can still collect the module and skip.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = scratch / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(str(CHROMEDRIVER), log_output=str(scratch / "chromedriver.log"))
    # On a failure in here Selenium stops chromedriver itself.
    driver = webdriver.Chrome(service=service, options=options)
    try:
        # A page that never finishes loading fails the test instead of hanging it for the
        # default five minutes.
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
