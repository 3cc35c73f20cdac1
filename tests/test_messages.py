"""Messages a person reads: the time a shutdown really waited, an app attribute of the wrong
type in words, and the start-up line of a server that serves no app of the user's."""

from __future__ import annotations

import http.client
import re
import signal
import time
from collections.abc import Iterator

import pytest

from tests.support.procs import ServerProcess

ASGI_APP = "tests.support.apps.asgi_apps:app"


@pytest.fixture
def connection() -> Iterator[list[http.client.HTTPConnection]]:
    opened: list[http.client.HTTPConnection] = []
    yield opened
    for conn in opened:
        conn.close()


def test_a_second_signal_reports_the_time_really_waited(
    connection: list[http.client.HTTPConnection],
) -> None:
    """Ctrl-C, then Ctrl-C again half a second later: the requests were cancelled after half a
    second, not after --timeout-graceful-shutdown."""
    with ServerProcess("--port", "0", "--timeout-graceful-shutdown", "5", ASGI_APP) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.wait_listening(), timeout=10)
        connection.append(conn)
        conn.request("GET", "/sleep/10")
        server.wait_for("app: started /sleep/10")
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


def test_the_deadline_reports_the_timeout(connection: list[http.client.HTTPConnection]) -> None:
    with ServerProcess("--port", "0", "--timeout-graceful-shutdown", "0.3", ASGI_APP) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.wait_listening(), timeout=10)
        connection.append(conn)
        conn.request("GET", "/sleep/10")
        server.wait_for("app: started /sleep/10")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0, server.stderr
    # The drain polls every 20 ms, so it ends a little after the deadline: that is not news.
    assert re.search(r"Cancelling 1 request\(s\) still running after 0\.3s\n", server.stderr)
