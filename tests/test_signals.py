"""SIGTERM and SIGINT on a real `python -m aserve` process: graceful drain, timeouts, forcing."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from aserve.process import PORTABLE_ENV
from aserve.signals import StopSignals
from tests.support.apps import asgi_apps, wsgi_apps
from tests.support.client import Client, refused_soon
from tests.support.procs import ServerProcess

ASGI_APP = "tests.support.apps.asgi_apps:app"
WSGI_APP = "tests.support.apps.wsgi_apps:app"


@pytest.fixture
def connections() -> Iterator[list[http.client.HTTPConnection]]:
    """HTTP connections to close at the end of the test, whatever happened."""
    opened: list[http.client.HTTPConnection] = []
    yield opened
    for conn in opened:
        conn.close()


def start(*args: str, app: str = ASGI_APP) -> tuple[ServerProcess, int]:
    server = ServerProcess("--port", "0", *args, app)
    return server, server.wait_listening()


def connect(port: int, opened: list[http.client.HTTPConnection]) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    opened.append(conn)
    return conn


def line_index(server: ServerProcess, text: str) -> int:
    for index, line in enumerate(server.lines):
        if text in line:
            return index
    raise AssertionError(f"{text!r} not in stderr:\n{server.stderr}")


@pytest.mark.parametrize(
    ("sig", "path"),
    [(signal.SIGTERM, "/sleep/1"), (signal.SIGINT, "/stream/1")],
    ids=["sigterm-before-response", "sigint-mid-body"],
)
def test_signal_drains_in_flight_request(
    sig: signal.Signals, path: str, connections: list[http.client.HTTPConnection]
) -> None:
    server, port = start()
    with server:
        server.wait_for("app: startup")
        conn = connect(port, connections)
        conn.request("GET", path)
        server.wait_for(f"app: started {path}")
        server.send_signal(sig)
        server.wait_for(f"{sig.name} received")
        assert refused_soon(port, 1.0), "the server still accepts connections"

        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == asgi_apps.BODY
        if path.startswith("/sleep/"):
            # The response had not started: it tells the client the connection ends.
            assert response.getheader("connection") == "close"
        assert server.wait() == 0, server.stderr
    order = [
        line_index(server, f"app: started {path}"),
        line_index(server, f"{sig.name} received"),
        line_index(server, "app: shutdown"),
        line_index(server, "aserve stopped"),
    ]
    assert order == sorted(order)
    assert "Traceback" not in server.stderr


def test_wsgi_app_drains_on_sigterm(connections: list[http.client.HTTPConnection]) -> None:
    server, port = start(app=WSGI_APP)
    with server:
        conn = connect(port, connections)
        conn.request("GET", "/sleep/1")
        server.wait_for("app: started /sleep/1")
        server.send_signal(signal.SIGTERM)
        server.wait_for("SIGTERM received")
        assert refused_soon(port, 1.0), "the server still accepts connections"
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == wsgi_apps.BODY
        assert server.wait() == 0, server.stderr
    assert "Traceback" not in server.stderr


def test_graceful_timeout_cancels_slow_request(
    connections: list[http.client.HTTPConnection],
) -> None:
    server, port = start("--timeout-graceful-shutdown", "0.5")
    with server:
        conn = connect(port, connections)
        conn.request("GET", "/sleep/10")
        server.wait_for("app: started /sleep/10")
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=5) == 0, server.stderr
        elapsed = time.monotonic() - signalled
        # The request was cut off: no response, or a reset connection.
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.getresponse()
    assert 0.4 < elapsed < 2.0, elapsed
    assert "Cancelling 1 request(s) still running after 0.5s" in server.stderr
    assert "app: shutdown" in server.stderr


def test_second_sigint_forces_exit(connections: list[http.client.HTTPConnection]) -> None:
    server, port = start("--timeout-graceful-shutdown", "30")
    with server:
        conn = connect(port, connections)
        conn.request("GET", "/sleep/10")
        server.wait_for("app: started /sleep/10")
        server.send_signal(signal.SIGINT)
        server.wait_for("SIGINT received")
        forced = time.monotonic()
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=5)
        elapsed = time.monotonic() - forced
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.getresponse()
    assert code == 0, server.stderr
    assert elapsed < 1.5, elapsed
    assert "Second SIGINT: exiting now" in server.stderr
    # A forced exit does not wait for the app's shutdown handler either.
    assert "app: shutdown" not in server.stderr


def test_idle_keep_alive_connection_closed_at_shutdown(
    connections: list[http.client.HTTPConnection],
) -> None:
    server, port = start("--timeout-keep-alive", "60")
    with server:
        conn = connect(port, connections)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.read() == b"hello"
        assert response.getheader("connection") != "close"
        sock = conn.sock
        assert isinstance(sock, socket.socket)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        sock.settimeout(3.0)
        assert Client(sock).until_closed() == []  # closed by the server, not left to time out
        assert server.wait(timeout=3) == 0, server.stderr
        elapsed = time.monotonic() - signalled
    assert elapsed < 1.5, elapsed
    assert "Cancelling" not in server.stderr


def test_sigterm_when_idle_exits_zero() -> None:
    server, _ = start(app=WSGI_APP)
    with server:
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0, server.stderr
    assert "aserve stopped" in server.stderr


def test_lifespan_startup_failure_exits_3() -> None:
    with ServerProcess("--port", "0", "tests.support.apps.asgi_apps:failing_startup") as server:
        assert server.wait() == 3
    assert "Application startup failed: database unreachable" in server.stderr
    assert "serving" not in server.stderr
    assert "Traceback" not in server.stderr


def test_lifespan_off_skips_startup_and_shutdown() -> None:
    server, _ = start("--lifespan", "off")
    with server:
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "app: startup" not in server.stderr
    assert "app: shutdown" not in server.stderr


def current_wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def test_without_loop_signal_handlers_signals_reach_the_loop_and_all_is_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on Windows (forced by ASERVE_PORTABLE=1): signal.signal handlers hand each signal to
    the loop, which a wakeup socket wakes; the second one forces; afterwards the previous
    handler and wakeup descriptor are back."""
    monkeypatch.setenv(PORTABLE_ENV, "1")
    stops: list[int] = []
    forces: list[int] = []
    previous_handler = signal.getsignal(signal.SIGTERM)
    previous_wakeup = current_wakeup_fd()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        signals = StopSignals(stops.append, forces.append, "testing")
        with signals.installed(loop):
            assert current_wakeup_fd() != previous_wakeup
            os.kill(os.getpid(), signal.SIGTERM)
            assert await wait_for_list(stops)
            os.kill(os.getpid(), signal.SIGTERM)
            assert await wait_for_list(forces)

    async def wait_for_list(items: list[int]) -> bool:
        for _ in range(200):
            if items:
                return True
            await asyncio.sleep(0.01)
        return False

    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(main())
    assert stops == [signal.SIGTERM]
    assert forces == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == previous_handler
    assert current_wakeup_fd() == previous_wakeup
