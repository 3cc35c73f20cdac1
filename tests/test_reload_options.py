"""The `--reload-*` options: refused without `--reload` instead of silently ignored;
`--reload-poll` (and watchfiles' WATCHFILES_FORCE_POLLING) polls instead of waiting for file
system events."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import textwrap
import time
import typing
from pathlib import Path

import pytest

from aserve.arguments import option_names
from aserve.cli import without_reload
from aserve.config import Config
from tests.support.client import http_get
from tests.support.polling import wait_until
from tests.support.procs import ServerProcess, assert_usage_error

APP = "tests.support.apps.wsgi_apps:app"
HINTS = typing.get_type_hints(Config)
# --reload-browser is a reload mode of its own: it implies --reload (see test_reload_browser).
RELOAD_OPTIONS = [
    f.name
    for f in dataclasses.fields(Config)
    if f.name.startswith("reload_") and f.name != "reload_browser"
]


def changed(setting: str) -> object:
    """A value of `setting` other than its default."""
    hint = HINTS[setting]
    if hint is bool:
        return True
    if typing.get_origin(hint) is list:
        return ["src"]
    if typing.get_origin(hint) is typing.Literal:
        return next(
            choice for choice in typing.get_args(hint) if choice != getattr(Config(), setting)
        )
    return getattr(Config(), setting) * 2


def arguments(setting: str) -> list[str]:
    """The command-line arguments that set `setting` to `changed(setting)`."""
    flag, value = option_names()[setting], changed(setting)
    if value is True:
        return [flag]
    if isinstance(value, list):
        return [flag, *value]
    return [flag, str(value)]


@pytest.mark.parametrize("setting", RELOAD_OPTIONS)
def test_a_reload_option_without_reload_is_a_usage_error(setting: str) -> None:
    line = assert_usage_error([*arguments(setting), APP])
    assert line == f"aserve: error: {option_names()[setting]} does nothing without --reload"


def test_every_reload_option_given_is_named() -> None:
    line = assert_usage_error(["--reload-dir", "src", "--reload-exclude", "static", APP])
    assert line == "aserve: error: --reload-dir, --reload-exclude do nothing without --reload"


@pytest.mark.parametrize("setting", RELOAD_OPTIONS)
def test_with_reload_the_options_are_taken(setting: str) -> None:
    assert without_reload(Config(reload=True).replace(**{setting: changed(setting)})) == []


def test_their_defaults_are_not_refused() -> None:
    assert without_reload(Config()) == []
    # A default given on the command line changes nothing: there is nothing to refuse.
    assert without_reload(Config(reload_delay=Config().reload_delay)) == []


# ---------------------------------------------------------------- polling


def app_source(body: str) -> str:
    return textwrap.dedent(
        f"""\
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [{body.encode()!r}]
        """
    )


def inotify_instances(pid: int) -> int:
    """How many inotify instances process `pid` holds: watchfiles makes one for file system
    events and none when it polls."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        # A descriptor closed since the listing (the supervisor starts templates meanwhile).
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


def reloading(project: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WATCHFILES_")}
    return ServerProcess(
        "app:app", "--reload", "--port", "0", *args, cwd=project, env={**environ, **(env or {})}
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(app_source("one"))
    return tmp_path


def test_reload_poll_reloads_on_an_edit_by_polling(project: Path) -> None:
    with reloading(project, "--reload-poll", "--no-access-log") as server:
        line = server.wait_for(r"aserve supervisor on http://127\.0\.0\.1:(\d+), watching ")
        assert line.string.rstrip().endswith(f"watching {project.resolve()} by polling")
        port = int(line.group(1))
        server.wait_for(r"Worker \d+ ready")
        assert http_get(port) == (200, b"one")
        assert inotify_instances(server.proc.pid) == 0
        # watchfiles' poller (1.3) compares modification times in whole seconds: an edit in
        # the second the file was written is not seen.
        written = int((project / "app.py").stat().st_mtime)
        assert wait_until(lambda: int(time.time()) > written, 2.0)
        (project / "app.py").write_text(app_source("two"))
        # watchfiles polls every 300 ms.
        assert wait_until(lambda: http_get(port) == (200, b"two"), 5.0), server.stderr
        server.wait_for(r"Reloaded in \d+ ms \(files: app\.py; worker \d+\)")


def test_without_it_file_system_events_are_used(project: Path) -> None:
    with reloading(project) as server:
        line = server.wait_for(r"aserve supervisor on .*, watching (.*)")
        assert not line.group(1).endswith("by polling")
        server.wait_for(r"Worker \d+ ready")
        assert inotify_instances(server.proc.pid) == 1


def test_watchfiles_force_polling_in_the_environment_still_works(project: Path) -> None:
    """--reload-poll off passes watchfiles None, not False, which would override the variable."""
    with reloading(project, env={"WATCHFILES_FORCE_POLLING": "1"}) as server:
        server.wait_for(r"Worker \d+ ready")
        assert inotify_instances(server.proc.pid) == 0
