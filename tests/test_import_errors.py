"""An app that cannot be imported, without --reload: one line naming the user's file and line
(not the library's where the exception was raised), and at --log-level debug the traceback
after it."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from tests.support.djangoproject import EXAMPLE, environment
from tests.support.procs import ServerProcess

SERVERS = [[], ["--server", "wsgiref"]]
SERVER_IDS = ["aserve", "wsgiref"]


def failed_start(cwd: Path, *args: str) -> list[str]:
    """`python -m aserve ARGS` in `cwd`, which must fail to start with exit code 2: its
    stderr lines."""
    with ServerProcess(*args, cwd=cwd, env=environment()) as server:
        assert server.wait() == 2, server.stderr
        return server.stderr.splitlines()


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A module whose import fails inside the standard library, called from line 4."""
    (tmp_path / "broken.py").write_text(
        textwrap.dedent(
            """\
            import json

            # The library raises; this line is the one to fix.
            SETTINGS = json.loads("not json")
            app = None
            """
        )
    )
    return tmp_path


@pytest.mark.parametrize("server", SERVERS, ids=SERVER_IDS)
def test_the_line_names_the_users_frame_not_the_librarys(broken: Path, server: list[str]) -> None:
    lines = failed_start(broken, "broken:app", *server)
    assert lines == [
        "aserve: error: cannot import 'broken': JSONDecodeError: Expecting value: line 1 "
        f"column 1 (char 0) ({broken / 'broken.py'}, line 4)"
    ]


@pytest.mark.parametrize("server", SERVERS, ids=SERVER_IDS)
def test_debug_level_prints_the_traceback_after_the_line(broken: Path, server: list[str]) -> None:
    lines = failed_start(broken, "broken:app", "--log-level", "debug", *server)
    assert lines[0].startswith("aserve: error: cannot import 'broken': JSONDecodeError")
    assert lines[0].endswith(f"({broken / 'broken.py'}, line 4)")
    assert lines[1] == "Traceback (most recent call last):"
    assert f'  File "{broken / "broken.py"}", line 4, in <module>' in lines
    assert '    SETTINGS = json.loads("not json")' in lines
    assert lines[-1].startswith("json.decoder.JSONDecodeError: Expecting value")
    # aserve's own frames and importlib's say nothing about the user's code.
    assert not [line for line in lines if "aserve/" in line or "importlib" in line]


def test_info_level_prints_no_traceback(broken: Path) -> None:
    lines = failed_start(broken, "broken:app", "--log-level", "info")
    assert len(lines) == 1
    assert "Traceback" not in lines[0]


# ---------------------------------------------------------------- a Django project


@pytest.fixture
def django_site(tmp_path: Path) -> Path:
    """A copy of the example project; its settings are broken by each test."""
    site = tmp_path / "site"
    shutil.copytree(EXAMPLE, site, ignore=shutil.ignore_patterns("db.sqlite3*", "__pycache__"))
    return site


def edit_settings(site: Path, old: str, new: str) -> Path:
    settings = site / "mysite" / "settings.py"
    text = settings.read_text()
    assert old in text
    settings.write_text(text.replace(old, new, 1))
    return settings


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_an_unknown_installed_app_names_the_projects_file_not_djangos(django_site: Path) -> None:
    edit_settings(django_site, "INSTALLED_APPS = [", 'INSTALLED_APPS = [\n    "nonexistent_app",')
    wsgi = django_site / "mysite" / "wsgi.py"
    (line,) = failed_start(django_site, "mysite.wsgi:application")
    # Django raises in django/apps/config.py; the project's line that set it going is in wsgi.py.
    assert line == (
        "aserve: error: cannot import 'mysite.wsgi': ModuleNotFoundError: No module named "
        f"'nonexistent_app' ({wsgi}, line {line_of(wsgi, 'get_wsgi_application()')})"
    )


def test_an_error_in_settings_names_settings_py(django_site: Path) -> None:
    settings = edit_settings(
        django_site, "DEBUG = True", 'DEBUG = os.environ["ASERVE_TEST_UNSET_VARIABLE"] == "1"'
    )
    (line,) = failed_start(django_site, "mysite.wsgi:application")
    # os.environ raises the KeyError in os.py; the line to fix is in settings.py.
    assert line.startswith("aserve: error: cannot import 'mysite.wsgi': KeyError: ")
    assert line.endswith(f"({settings}, line {line_of(settings, 'ASERVE_TEST_UNSET_VARIABLE')})")
