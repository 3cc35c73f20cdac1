"""End to end in a real browser: headless Chromium logs in to the example site's admin through
`manage.py runserver` on aserve, and the admin's stylesheet and the site's own both apply."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.browser import headless_chromium, unavailable
from tests.support.djangoproject import Runserver, environment, manage, migrated_copy

UNAVAILABLE = unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

USERNAME = "browser-admin"
PASSWORD = "a-browser-test-password"
# `#header { background: var(--header-bg) }`, and --header-bg is --secondary, #417690, in
# django/contrib/admin/static/admin/css/base.css; the admin's dark_mode.css keeps both, so the
# colour scheme of the machine does not matter. Without base.css the header has no background:
# rgba(0, 0, 0, 0).
ADMIN_HEADER_BACKGROUND = "rgb(65, 118, 144)"
# The example's notes/static/notes/style.css alone sets the list page's h1 to #0b6e4f.
EXAMPLE_H1_COLOUR = "rgb(11, 110, 79)"


def served(path: str, status: int) -> str:
    """The access line runserver prints for a GET of `path` answered with `status`."""
    return rf'"GET {re.escape(path)} HTTP/1\.1" {status} '


def test_admin_login_and_stylesheets(tmp_path: Path) -> None:
    project = migrated_copy(tmp_path / "site")
    created = manage(
        project,
        "createsuperuser",
        "--noinput",
        env=environment(
            DJANGO_SUPERUSER_USERNAME=USERNAME,
            DJANGO_SUPERUSER_PASSWORD=PASSWORD,
            DJANGO_SUPERUSER_EMAIL="browser-admin@example.com",
        ),
    )
    assert created.returncode == 0, created.stderr

    # Inner to outer: the browser quits, then the server stops, whatever fails in between.
    with Runserver(project) as runserver, headless_chromium(tmp_path) as browser:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.wait import WebDriverWait

        site = f"http://127.0.0.1:{runserver.wait_started()}"

        browser.get(f"{site}/admin/")
        assert browser.current_url == f"{site}/admin/login/?next=/admin/"
        browser.find_element(By.ID, "id_username").send_keys(USERNAME)
        browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
        # The dashboard greets the user by name (only a logged-in page has #user-tools) and
        # lists the example's model, which only a staff user with permissions sees.
        WebDriverWait(browser, 10).until(
            expected_conditions.url_to_be(f"{site}/admin/"), "the login did not reach /admin/"
        )
        greeting = browser.find_element(By.CSS_SELECTOR, "#user-tools strong")
        assert greeting.get_attribute("textContent") == USERNAME
        browser.find_element(By.CSS_SELECTOR, '#content-main a[href="/admin/notes/note/"]')

        header = browser.execute_script(
            "return getComputedStyle(document.getElementById('header')).backgroundColor"
        )
        assert header == ADMIN_HEADER_BACKGROUND
        # The browser got that stylesheet from aserve, not from anywhere else; the login went
        # through it too.
        runserver.wait_for(served("/static/admin/css/base.css", 200), timeout=5)
        runserver.wait_for(r'"POST /admin/login/\?next=/admin/ HTTP/1\.1" 302 ', timeout=5)

        browser.get(f"{site}/")
        colour = browser.execute_script(
            "return getComputedStyle(document.querySelector('h1')).color"
        )
        assert colour == EXAMPLE_H1_COLOUR
        runserver.wait_for(served("/static/notes/style.css", 200), timeout=5)
