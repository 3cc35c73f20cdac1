"""runserver's reloading on aserve over a real copy of the example Django project: a template
edit taken in by Django without a restart, a view edit served by a new worker, errors in a
view module or in settings shown until fixed, and what Django's autoreload receivers ask
for (watch_dir, a file_changed receiver that deals with a change itself)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aserve.config import Config
from aserve.reload.spawn import worker_kind
from tests.support.client import http_get
from tests.support.djangoproject import (
    RESTARTING,
    TAKEN_IN,
    WORKER_READY,
    Runserver,
    fetch,
    served_pid,
    wait_for_another_pid,
)
from tests.support.polling import wait_until

TEMPLATE = Path("notes/templates/notes/note_list.html")
VIEWS = Path("notes/views.py")
SETTINGS = Path("mysite/settings.py")
COULD_NOT_IMPORT = r"The application could not be imported: "
# What a browser sends, for the error page's HTML form.
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_template_edit_is_taken_in_without_a_restart(django_project: Path) -> None:
    """Django's template receiver resets its cached loaders on file_changed: the same worker
    serves the edited page."""
    template = django_project / TEMPLATE
    with Runserver(django_project) as server:
        port = server.wait_started()
        before = served_pid(port)
        # Loaded once, so that only a reset of the cached loaders shows the edit.
        assert b"<h1>Notes</h1>" in fetch(port, "/").body
        template.write_text(template.read_text().replace("<h1>Notes</h1>", "<h1>Edited</h1>"))
        assert str(TEMPLATE) in server.wait_for(TAKEN_IN).group(1)
        assert b"<h1>Edited</h1>" in fetch(port, "/").body
        assert served_pid(port) == before
        assert not server.matches(RESTARTING)
        assert len(server.matches(WORKER_READY)) == 1


def test_view_edit_is_served_by_a_new_worker(django_project: Path) -> None:
    views = django_project / VIEWS
    source = views.read_text()
    old = '_text(os.environ.get("RUN_MAIN", ""))'
    assert old in source
    with Runserver(django_project) as server:
        port = server.wait_started()
        before = served_pid(port)
        views.write_text(source.replace(old, '_text("edited " + os.environ.get("RUN_MAIN", ""))'))
        assert server.wait_for(RESTARTING).group(1) == str(VIEWS)
        after = wait_for_another_pid(port, before)
        assert after == int(server.wait_for(WORKER_READY, count=2).group(1))
        assert wait_until(lambda: http_get(port, "/run-main/") == (200, b"edited true"))


def test_syntax_error_in_a_view_module_is_shown_until_fixed(django_project: Path) -> None:
    """notes/views.py is imported by the URLconf: the worker imports it before serving, so
    the error shows at once, as an HTML page for a browser and as text otherwise."""
    views = django_project / VIEWS
    source = views.read_text()
    broken = source + "\n\ndef broken(:\n    pass\n"
    line = broken.splitlines().index("def broken(:") + 1
    with Runserver(django_project) as server:
        port = server.wait_started()
        before = served_pid(port)
        views.write_text(broken)
        server.wait_for(COULD_NOT_IMPORT + ".*SyntaxError")
        where = re.escape(f"{VIEWS}, line {line}")
        named = re.compile(rf"SyntaxError at \S*{where}: invalid syntax")

        text = fetch(port, "/pid/")
        assert text.status == 500
        assert text.header(b"content-type") == b"text/plain; charset=utf-8"
        assert named.search(text.body.decode())

        html = fetch(port, "/pid/", headers={"Accept": BROWSER})
        assert html.status == 500
        assert html.header(b"content-type") == b"text/html; charset=utf-8"
        assert html.body.startswith(b"<!DOCTYPE html>")
        assert named.search(html.body.decode())

        views.write_text(source)
        wait_for_another_pid(port, before)
        assert server.proc.poll() is None


def test_error_in_settings_is_shown_until_fixed(django_project: Path) -> None:
    settings = django_project / SETTINGS
    source = settings.read_text()
    with Runserver(django_project, "127.0.0.1:0", "--log-level", "debug") as server:
        port = server.wait_started()
        before = served_pid(port)
        wait_for_the_second_template(server)
        settings.write_text(source + "\nTIME_ZONE = undefined_name_in_settings\n")
        # The restart's outcome: a second worker ready, or the error.
        outcome = server.wait_for(f"{WORKER_READY}|{COULD_NOT_IMPORT}", count=2)
        assert re.search(COULD_NOT_IMPORT, outcome.string), outcome.string
        assert outcome.string.rstrip().endswith(f"(files: {SETTINGS})"), outcome.string
        page = fetch(port, "/pid/")
        assert page.status == 500
        assert b"NameError" in page.body
        assert b"undefined_name_in_settings" in page.body

        settings.write_text(source)
        wait_for_another_pid(port, before)
        assert server.proc.poll() is None


def wait_for_the_second_template(server: Runserver) -> None:
    """Once the first worker serves, the supervisor replaces its template with one that
    preloads what the project imports (Django's admin, its migrations); a user's edit comes
    long after that. The supervisor says so at debug level. Spawned workers have none."""
    if worker_kind(Config()) == "spawn":
        return
    server.wait_for(r"A new template preloads \d+ modules more: .*\bdjango\.contrib\.admin\b")


# ---------------------------------------------------------------- Django's autoreload receivers


WATCHING_APP = '''
"""The notes app, with receivers of Django's autoreload signals as a project or a package
such as django-browser-reload connects them."""

from pathlib import Path

from django.apps import AppConfig
from django.utils.autoreload import autoreload_started, file_changed

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def watch_assets(sender, **kwargs):
    sender.watch_dir(ASSETS, "*.custom")


def deal_with_kept(sender, file_path, **kwargs):
    return file_path.name == "kept.custom"


class NotesConfig(AppConfig):
    name = "notes"

    def ready(self):
        autoreload_started.connect(watch_assets)
        file_changed.connect(deal_with_kept)
'''


@pytest.fixture
def watching_project(django_project: Path) -> Path:
    """The project, its notes app watching assets/*.custom (a suffix aserve does not watch by
    default) and dealing with changes to kept.custom itself."""
    (django_project / "notes" / "apps.py").write_text(WATCHING_APP)
    assets = django_project / "assets"
    assets.mkdir()
    (assets / "restart.custom").write_text("one\n")
    (assets / "kept.custom").write_text("one\n")
    return django_project


def test_watch_dir_of_a_receiver_restarts_the_worker(watching_project: Path) -> None:
    with Runserver(watching_project) as server:
        port = server.wait_started()
        before = served_pid(port)
        (watching_project / "assets" / "restart.custom").write_text("two\n")
        assert server.wait_for(RESTARTING).group(1) == "assets/restart.custom"
        wait_for_another_pid(port, before)


def test_file_changed_receiver_that_deals_with_it_keeps_the_worker(
    watching_project: Path,
) -> None:
    with Runserver(watching_project) as server:
        port = server.wait_started()
        before = served_pid(port)
        (watching_project / "assets" / "kept.custom").write_text("two\n")
        assert server.wait_for(TAKEN_IN).group(1) == "assets/kept.custom"
        assert served_pid(port) == before
        assert not server.matches(RESTARTING)
