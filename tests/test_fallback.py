"""`--server wsgiref`: the stdlib threaded server behind aserve's CLI, logs and signals."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.apps import wsgi_apps
from tests.support.client import Client, http_get, raw_exchange, refused
from tests.support.procs import ServerProcess, run_cli

WSGI_APP = "tests.support.apps.wsgi_apps:app"


@pytest.fixture
def wsgiref_server() -> Iterator[tuple[ServerProcess, int]]:
    with ServerProcess("--server", "wsgiref", "--port", "0", WSGI_APP) as server:
        yield server, server.wait_listening()


def test_startup_line_names_wsgiref(wsgiref_server: tuple[ServerProcess, int]) -> None:
    server, port = wsgiref_server
    line = server.wait_for(r"serving WSGI app .* with wsgiref on").string
    assert f"{WSGI_APP} with wsgiref on http://127.0.0.1:{port}; quit with CONTROL-C" in line


def test_serves_validated_app(wsgiref_server: tuple[ServerProcess, int]) -> None:
    server, port = wsgiref_server
    assert http_get(port, "/") == (200, b"hello")
    assert http_get(port, "/sleep/0") == (200, wsgi_apps.BODY)
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    # wsgiref.validate found nothing to complain about.
    assert "Traceback" not in server.stderr
    assert "Warning" not in server.stderr


def test_writes_access_log_lines(wsgiref_server: tuple[ServerProcess, int]) -> None:
    server, port = wsgiref_server
    assert http_get(port, "/") == (200, b"hello")
    assert http_get(port, "/missing-is-fine?x=1") == (200, b"hello")
    # wsgiref logs after the response is sent, from the request's thread: in either order.
    server.wait_for(r'INFO +127\.0\.0\.1:\d+ - "GET / HTTP/1\.1" 200 5 \d+\.\dms$')
    server.wait_for(r'"GET /missing-is-fine\?x=1 HTTP/1\.1" 200 5 ')
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    assert sum('"GET ' in line for line in server.lines) == 2


def test_no_access_log() -> None:
    args = ("--server", "wsgiref", "--port", "0", "--no-access-log", WSGI_APP)
    with ServerProcess(*args) as server:
        port = server.wait_listening()
        assert http_get(port, "/") == (200, b"hello")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert '"GET /' not in server.stderr


def test_concurrent_requests_run_in_threads(wsgiref_server: tuple[ServerProcess, int]) -> None:
    # Each /together request waits at a two-party barrier: both succeed only if they overlap.
    _, port = wsgiref_server
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: http_get(port, "/together"), range(2)))
    assert results == [(200, b"together"), (200, b"together")]


def test_drops_headers_with_underscores(wsgiref_server: tuple[ServerProcess, int]) -> None:
    _, port = wsgiref_server
    (response,) = raw_exchange(
        port,
        b"GET /headers HTTP/1.1\r\n"
        b"Host: example.test\r\n"
        b"X-Auth-User: alice\r\n"
        b"X_Auth_User: mallory\r\n"
        b"X_Other: dropped\r\n"
        b"Connection: close\r\n"
        b"\r\n",
        timeout=10,
    )
    assert response.head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert response.body.split(b"\n") == [
        b"HTTP_CONNECTION=close",
        b"HTTP_HOST=example.test",
        b"HTTP_X_AUTH_USER=alice",
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_exits_zero(wsgiref_server: tuple[ServerProcess, int], sig: signal.Signals) -> None:
    server, port = wsgiref_server
    assert http_get(port, "/") == (200, b"hello")
    server.send_signal(sig)
    assert server.wait() == 0
    assert "aserve (wsgiref) stopped" in server.stderr
    assert "Traceback" not in server.stderr
    assert refused(port)


def test_serves_over_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "wsgiref.sock")
    with ServerProcess("--server", "wsgiref", "--uds", path, WSGI_APP) as server:
        server.wait_for(r"with wsgiref on unix:")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            (response,) = Client(sock).until_closed()
        assert response.head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert response.body == b"hello"
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "Traceback" not in server.stderr


def test_asgi_app_is_refused() -> None:
    result = run_cli("--server", "wsgiref", "--port", "0", "tests.support.apps.asgi_apps:app")
    assert result.returncode == 2
    assert result.stderr == (
        "aserve: error: tests.support.apps.asgi_apps:app is an ASGI app; "
        "--server wsgiref serves WSGI apps only\n"
    )


def test_explicit_asgi_interface_is_refused() -> None:
    result = run_cli("--server", "wsgiref", "--interface", "asgi", WSGI_APP)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--server wsgiref serves WSGI apps only" in result.stderr
