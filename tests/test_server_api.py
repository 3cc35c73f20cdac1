"""The programmatic API: `Server` on a background thread, `stop()`, configuration, signals."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

import aserve
from aserve import Config, Server
from aserve.errors import ConfigError, LifespanError
from aserve.types import Receive, Scope, Send
from tests.support.apps import asgi_apps, loadable
from tests.support.client import http_get, refused_soon
from tests.support.procs import ServerProcess


def test_start_serves_and_stop_closes_the_port() -> None:
    server = Server(asgi_apps.app, port=0, access_log=False).start()
    try:
        port = server.port
        assert port > 0
        assert server.url == f"http://127.0.0.1:{port}"
        assert http_get(port) == (200, b"hello")
        assert http_get(port, "/sleep/0") == (200, asgi_apps.BODY)
    finally:
        began = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - began
    assert elapsed < 1.0
    assert server._thread is not None
    assert not server._thread.is_alive()
    assert server.exit_code == 0
    assert refused_soon(port)


def test_start_serves_wsgi_by_import_string() -> None:
    server = Server("tests.support.apps.wsgi_apps:app", port=0, access_log=False).start()
    try:
        assert server.loaded is not None
        assert server.loaded.kind == "wsgi"
        port = server.port
        assert http_get(port) == (200, b"hello")
    finally:
        server.stop()
    assert refused_soon(port)


def test_context_manager() -> None:
    with Server(loadable.wsgi_app, port=0, access_log=False) as server:
        port = server.port
        assert http_get(port) == (200, b"ok")
    assert server.exit_code == 0
    assert refused_soon(port)


def test_stop_waits_for_in_flight_request() -> None:
    in_flight = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        in_flight.set()
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"finished"})

    server = Server(app, port=0, access_log=False, timeout_graceful_shutdown=5).start()
    results: list[tuple[int, bytes]] = []
    client = threading.Thread(target=lambda: results.append(http_get(server.port)))
    client.start()
    assert in_flight.wait(5)
    server.stop()
    client.join(5)
    assert results == [(200, b"finished")]


def test_stop_before_start_and_twice_is_harmless() -> None:
    server = Server(loadable.wsgi_app, port=0, access_log=False)
    server.stop()
    server.start()
    server.stop()
    server.stop()
    assert server.exit_code == 0


def test_run_is_exported() -> None:
    assert aserve.run is aserve.server.run
    assert callable(aserve.run)
    assert aserve.Server is Server
    assert aserve.Config is Config


def test_run_serves_until_sigterm() -> None:
    code = "import aserve; raise SystemExit(aserve.run('tests.support.apps.asgi_apps:app', port=0))"
    with ServerProcess("-c", code, command=[sys.executable]) as process:
        port = process.wait_listening()
        assert http_get(port) == (200, b"hello")
        process.send_signal(signal.SIGTERM)
        assert process.wait() == 0
    assert "app: shutdown" in process.stderr


def test_config_plus_overrides() -> None:
    base = Config(threads=3, root_path="/app", port=1234)
    server = Server(loadable.wsgi_app, base, port=0, access_log=False)
    assert server.config == Config(threads=3, root_path="/app", port=0, access_log=False)
    assert base.port == 1234  # the given Config is not changed
    assert Server(loadable.wsgi_app, base).config is base


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match="--threads must be at least 1"):
        Server(loadable.wsgi_app, Config(), threads=0)
    with pytest.raises(TypeError):
        Server(loadable.wsgi_app, no_such_setting=1)


def test_server_with_config_serves() -> None:
    config = Config(port=0, access_log=False, root_path="/mount")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        body = f"{scope['root_path']}|{scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with Server(app, config) as server:
        # Like uvicorn: a proxy strips the prefix, the server adds it back to path.
        assert http_get(server.port, "/x") == (200, b"/mount|/mount/x")


def test_start_raises_on_lifespan_startup_failure() -> None:
    server = Server(asgi_apps.failing_startup, port=0, access_log=False)
    with pytest.raises(LifespanError, match="code 3"):
        server.start()
    assert server.exit_code == 3
    assert server._thread is not None
    server._thread.join(5)
    assert not server._thread.is_alive()
    assert all(sock.fileno() == -1 for sock in server.sockets)


def test_start_raises_on_bad_app() -> None:
    server = Server("tests.support.apps.loadable:no_arguments", port=0)
    with pytest.raises(aserve.errors.AppLoadError, match="neither an ASGI nor a WSGI app"):
        server.start()


def test_several_workers_are_refused_rather_than_served_by_one_process() -> None:
    server = Server(asgi_apps.app, port=0, workers=2)
    with pytest.raises(ConfigError, match="--workers is the aserve command's"):
        server.start()


@pytest.fixture
def custom_sigint() -> Iterator[object]:
    """A SIGINT handler of the test's own, restored afterwards."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("no SIGINT is sent in these tests")

    previous = signal.signal(signal.SIGINT, handler)
    yield handler
    signal.signal(signal.SIGINT, previous)


def test_background_server_leaves_signal_handlers_alone(custom_sigint: object) -> None:
    term_before = signal.getsignal(signal.SIGTERM)
    server = Server(asgi_apps.app, port=0, access_log=False).start()
    try:
        assert signal.getsignal(signal.SIGINT) is custom_sigint
        assert http_get(server.port) == (200, b"hello")
    finally:
        server.stop()
    assert signal.getsignal(signal.SIGINT) is custom_sigint
    assert signal.getsignal(signal.SIGTERM) is term_before


def test_run_on_main_thread_restores_signal_handlers(custom_sigint: object) -> None:
    term_before = signal.getsignal(signal.SIGTERM)
    server = Server(asgi_apps.app, port=0, access_log=False)
    seen: list[tuple[int, bytes]] = []

    def client() -> None:
        if server.started.wait(10):
            seen.append(http_get(server.port))
        server.stop()

    thread = threading.Thread(target=client)
    thread.start()
    assert server.run() == 0
    thread.join(5)
    assert seen == [(200, b"hello")]
    assert signal.getsignal(signal.SIGINT) is custom_sigint
    assert signal.getsignal(signal.SIGTERM) is term_before
