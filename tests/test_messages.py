"""Messages a person reads: the time a shutdown really waited, an app attribute of the wrong
type in words, and the start-up line of a server that serves no app of the user's."""

from __future__ import annotations

import http.client
import logging
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aserve.loader import LoadedApp
from aserve.reload.errorpage import error_app
from tests.support.apps import asgi_apps
from tests.support.logs import LogRecords
from tests.support.procs import ServerProcess, assert_usage_error
from tests.support.servers import ServeFactory

ASGI_APP = "tests.support.apps.asgi_apps:app"


@contextmanager
def a_request_in_flight(graceful_timeout: str) -> Iterator[ServerProcess]:
    """A server with --timeout-graceful-shutdown `graceful_timeout`, busy with a request that
    takes ten seconds."""
    args = ["--port", "0", "--timeout-graceful-shutdown", graceful_timeout, ASGI_APP]
    with ServerProcess(*args) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.wait_listening(), timeout=10)
        try:
            conn.request("GET", "/sleep/10")
            server.wait_for("app: started /sleep/10")
            yield server
        finally:
            conn.close()


def test_a_second_signal_reports_the_time_really_waited() -> None:
    """Ctrl-C, then Ctrl-C again half a second later: the requests were cancelled after half a
    second, not after --timeout-graceful-shutdown."""
    with a_request_in_flight("5") as server:
        server.send_signal(signal.SIGINT)
        server.wait_for("SIGINT received")
        first = time.monotonic()
        time.sleep(0.5)
        server.send_signal(signal.SIGINT)
        assert server.wait() == 0, server.stderr
        between = time.monotonic() - first
    found = server.matches(r"Cancelling 1 request\(s\) still running after ([0-9.]+)s")
    assert len(found) == 1, server.stderr
    waited = float(found[0].group(1))
    assert 0.4 <= waited <= between + 0.1, (waited, between)


def test_the_deadline_reports_the_timeout() -> None:
    with a_request_in_flight("0.3") as server:
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0, server.stderr
    # The drain polls every 20 ms, so it ends a little after the deadline: that is not news.
    assert re.search(r"Cancelling 1 request\(s\) still running after 0\.3s\n", server.stderr)


# ---------------------------------------------------------------- not an app, in words


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tests.support.apps.loadable:NUMBER"], "loadable:NUMBER is an int, not a callable app"),
        (
            ["tests.support.apps.loadable:holder"],
            "loadable:holder is a Holder, not a callable app",
        ),
        (
            ["--factory", "tests.support.apps.loadable:no_arguments"],
            "app factory tests.support.apps.loadable:no_arguments returned None, "
            "not a callable app",
        ),
    ],
    ids=["int", "object", "factory-returned-none"],
)
def test_what_is_not_an_app_is_said_in_words(args: list[str], expected: str) -> None:
    assert_usage_error(args, expected)


# ---------------------------------------------------------------- a stand-in's server


def test_the_server_of_a_stand_in_announces_nothing(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    """The reloader's error page is served by a Server of its own: its start-up line must not
    tell the user that aserve serves an 'ASGI app error page', nor its stop that aserve
    stopped."""
    page = error_app("The application could not be imported", "boom", "")
    stand_in = LoadedApp(kind="asgi", app=page, name="error page", stand_in=True)
    serve(stand_in, lifespan="off", log_level="debug").stop()
    assert error_log.at(logging.INFO) == []
    debug = error_log.at(logging.DEBUG)
    assert any("serving ASGI app error page" in line for line in debug), debug
    assert "aserve stopped" in debug


def test_the_server_of_the_users_app_announces_it(
    serve: ServeFactory, error_log: LogRecords
) -> None:
    serve(LoadedApp(kind="asgi", app=asgi_apps.plain, name="main:app")).stop()
    info = error_log.at(logging.INFO)
    assert any("serving ASGI app main:app on http://" in line for line in info), info
    assert "aserve stopped" in info


def test_the_error_page_under_reload_is_not_announced_as_an_app(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("raise RuntimeError('boom')\n")
    with ServerProcess("app:app", "--reload", "--port", "0", cwd=tmp_path) as server:
        server.wait_for("The application could not be imported")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0, server.stderr
    assert "error page" not in server.stderr
    assert server.stderr.count("aserve stopped") == 0, server.stderr
