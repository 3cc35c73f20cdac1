"""End to end in a real browser: headless Chromium logs in to the example site's admin through
`manage.py runserver` on aserve, and the admin's stylesheet and the site's own both apply."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.browser import headless_chromium, unavailable
from tests.support.djangoproject import Runserver, environment, manage, migrated_copy
from tests.support.procs import LISTENING, ServerProcess

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

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


# ---------------------------------------------------------------- --reload-browser

PAGE_APP = """\
def app(environ, start_response):
    body = b"<!doctype html><html><body><h1 id='text'>{text}</h1></body></html>"
    start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_page_refreshes_itself_after_an_edit(tmp_path: Path) -> None:
    """Open a page served with --reload-browser, save its source: the page shows the new text
    with no action from the test (the script reloads it on the supervisor's event)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "app.py").write_text(PAGE_APP.format(text="before the edit"))
    with (
        ServerProcess(
            "app:app", "--reload-browser", "--port", "0", "--log-level", "debug", cwd=site
        ) as server,
        headless_chromium(tmp_path) as browser,
    ):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.wait import WebDriverWait

        port = int(server.wait_for(LISTENING).group(1))
        browser.get(f"http://127.0.0.1:{port}/")
        assert text_of(browser, "text") == "before the edit"
        # The page has its event stream open (through the shared worker) before the save.
        wait_for_listener(server)
        (site / "app.py").write_text(PAGE_APP.format(text="after the edit"))
        try:
            WebDriverWait(browser, 10).until(
                lambda driver: text_of(driver, "text") == "after the edit"
            )
        except TimeoutException:
            pytest.fail(f"the page did not refresh itself; the server's log:\n{server.stderr}")


def test_django_template_and_stylesheet_edits_reach_the_open_page(tmp_path: Path) -> None:
    """`manage.py runserver --reload-browser`: a template edit (Django takes it in without a
    restart) reloads the page; a stylesheet edit swaps the style in the page as it is."""
    project = migrated_copy(tmp_path / "site")
    template = project / "notes" / "templates" / "notes" / "note_list.html"
    stylesheet = project / "notes" / "static" / "notes" / "style.css"
    with (
        Runserver(project, "127.0.0.1:0", "--reload-browser", "--log-level", "debug") as runserver,
        headless_chromium(tmp_path) as browser,
    ):
        from selenium.webdriver.support.wait import WebDriverWait

        browser.get(f"http://127.0.0.1:{runserver.wait_started()}/")
        assert browser.execute_script("return document.querySelector('h1').textContent") == "Notes"
        wait_for_listener(runserver)
        template.write_text(template.read_text().replace("<h1>Notes</h1>", "<h1>My notes</h1>"))
        WebDriverWait(browser, 10).until(
            lambda driver: (
                driver.execute_script("return document.querySelector('h1').textContent")
                == "My notes"
            ),
            "the page did not reload after the template edit",
        )
        runserver.wait_for(r"note_list\.html; the app took it in without a restart")
        # No reload this time: a mark left in the page survives the stylesheet's swap.
        browser.execute_script("window.asserveMark = 'still here'")
        stylesheet.write_text(stylesheet.read_text().replace("#0b6e4f", "#aa0000"))
        WebDriverWait(browser, 10).until(
            lambda driver: (
                driver.execute_script("return getComputedStyle(document.querySelector('h1')).color")
                == "rgb(170, 0, 0)"
            ),
            "the new stylesheet did not apply",
        )
        assert browser.execute_script("return window.asserveMark") == "still here"


def text_of(browser: WebDriver, element_id: str) -> str:
    text: str = browser.execute_script(
        "return document.getElementById(arguments[0]).textContent", element_id
    )
    return text


def wait_for_listener(server: ServerProcess) -> None:
    """Until the page's event stream reached the supervisor (a save before would be missed);
    the supervisor says so at debug level."""
    server.wait_for(r"DEBUG +A browser listens for reload events", timeout=10)
