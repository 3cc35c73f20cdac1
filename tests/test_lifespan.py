"""ASGI lifespan through a real Server: on, auto and off modes, startup and shutdown failures."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import httpx
import pytest

from aserve import Server
from aserve.errors import LifespanError
from aserve.server import EXIT_LIFESPAN_FAILED
from aserve.types import Receive, Scope, Send
from tests.support.client import refused_soon
from tests.support.logs import LogRecords
from tests.support.servers import running


async def ok(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def run_in_thread(server: Server) -> int:
    """`Server.run()` off the main thread (no signal handlers), with a bound on its time."""
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(server.run()))
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "Server.run() did not return"
    return codes[0]


def test_startup_and_shutdown_run_once_in_order() -> None:
    events: list[str] = []
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            scopes.append(scope)
            while True:
                message = await receive()
                events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["db"] = "connected"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:
            events.append(f"request {scope['path']} db={scope['state'].get('db')}")
            await ok(send)

    with running(app, lifespan="on") as server:
        assert events == ["lifespan.startup"]
        assert httpx.get(f"{server.url}/a").text == "ok"
        assert httpx.get(f"{server.url}/b").text == "ok"
    assert events == [
        "lifespan.startup",
        "request /a db=connected",
        "request /b db=connected",
        "lifespan.shutdown",
    ]
    assert len(scopes) == 1
    assert scopes[0]["type"] == "lifespan"
    assert scopes[0]["asgi"]["version"] == "3.0"


def test_shutdown_waits_for_the_request_in_progress() -> None:
    events: list[str] = []
    in_request = threading.Event()
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                kind = message["type"].rsplit(".", 1)[1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        else:
            in_request.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
            events.append("response")
            await ok(send)

    server = Server(app, port=0, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server.start()
    port, url = server.port, server.url
    results: list[httpx.Response | Exception] = []

    def fetch() -> None:
        try:
            results.append(httpx.get(url, timeout=5))
        except Exception as exc:
            results.append(exc)

    client = threading.Thread(target=fetch)
    client.start()
    try:
        assert in_request.wait(5)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        # The listening socket closes as graceful shutdown begins.
        assert refused_soon(port), "the server kept accepting after stop()"
    finally:
        release.set()
    stopper.join(10)
    client.join(10)
    assert events == ["lifespan.startup", "response", "lifespan.shutdown"]
    response = results[0]
    assert isinstance(response, httpx.Response)
    assert response.text == "ok"


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_startup_failed_exits_with_code_3(mode: str, error_log: LogRecords) -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})

    server = Server(app, port=0, access_log=False, lifespan=mode)
    assert run_in_thread(server) == EXIT_LIFESPAN_FAILED == 3
    assert server.exit_code == 3
    # The port was bound (a port in use is a usage error) but never served, and is closed.
    assert all(sock.fileno() == -1 for sock in server.sockets)
    assert calls == ["lifespan"]
    assert error_log.at(logging.ERROR) == ["Application startup failed: no database"]


def test_start_raises_when_startup_fails() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            raise RuntimeError("cannot connect")

    server = Server(app, port=0, access_log=False, lifespan="auto")
    with pytest.raises(LifespanError, match="code 3"):
        server.start()
    server.stop(timeout=5)
    assert server.exit_code == 3


async def no_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that knows only http: it raises on any other scope before reading anything."""
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope type {scope['type']}")
    await ok(send)


def test_on_mode_requires_lifespan_support(error_log: LogRecords) -> None:
    server = Server(no_lifespan, port=0, access_log=False, lifespan="on")
    assert run_in_thread(server) == 3
    errors = error_log.at(logging.ERROR)
    assert "Exception in ASGI lifespan" in errors
    assert errors[-1] == "Application startup failed: ValueError: unsupported scope type lifespan"


def test_auto_mode_serves_an_app_without_lifespan_support(error_log: LogRecords) -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])
        await no_lifespan(scope, receive, send)

    with running(app, lifespan="auto") as server:
        assert httpx.get(server.url).text == "ok"
    assert server.exit_code == 0
    # Called once with the lifespan scope at startup, never again for shutdown.
    assert calls == ["lifespan", "http"]
    assert error_log.at(logging.ERROR) == []
    assert any("lifespan unsupported" in m for m in error_log.at(logging.INFO))


def test_auto_mode_app_that_received_then_raised_is_a_startup_failure(
    error_log: LogRecords,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            raise ConnectionRefusedError("database down")
        await ok(send)

    server = Server(app, port=0, access_log=False, lifespan="auto")
    assert run_in_thread(server) == 3
    errors = error_log.at(logging.ERROR)
    assert errors == [
        "Exception in ASGI lifespan",
        "Application startup failed: ConnectionRefusedError: database down",
    ]
    failure = next(r for r in error_log.records if r.getMessage() == "Exception in ASGI lifespan")
    assert failure.exc_info is not None


def test_off_mode_never_sends_a_lifespan_scope() -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])
        if scope["type"] == "lifespan":
            raise AssertionError("lifespan scope in off mode")
        await ok(send)

    with running(app, lifespan="off") as server:
        assert httpx.get(server.url).text == "ok"
        assert httpx.get(server.url).text == "ok"
    assert server.exit_code == 0
    assert calls == ["http", "http"]


def lifespan_app(on_shutdown: str) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await ok(send)
            return
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        if on_shutdown == "failed":
            await send({"type": "lifespan.shutdown.failed", "message": "flush failed"})
        else:
            raise OSError("disk gone")

    return app


def test_shutdown_lets_a_request_finish_its_work_after_its_response() -> None:
    """Django's ASGIHandler, for one, closes the response in a thread after sending it, then
    closes the request's body file: cancelled there, it would leave both undone."""
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[1]
                events.append(kind)
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await ok(send)
        try:
            await asyncio.sleep(0.3)
            events.append("after the response")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    with running(app, lifespan="on") as server:
        assert httpx.get(server.url, timeout=5).text == "ok"
    assert events == ["startup", "after the response", "shutdown"]


def test_shutdown_cancels_a_request_that_does_not_end_in_time() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        await ok(send)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    with running(app, timeout_graceful_shutdown=0.2) as server:
        assert httpx.get(server.url, timeout=5).text == "ok"
    assert events == ["cancelled"]


def test_shutdown_failed_message_is_logged(error_log: LogRecords) -> None:
    with running(lifespan_app("failed")) as server:
        assert httpx.get(server.url).text == "ok"
    assert server.exit_code == 0
    assert error_log.at(logging.ERROR) == ["Lifespan shutdown failed: flush failed"]


def test_exception_during_shutdown_is_logged(error_log: LogRecords) -> None:
    with running(lifespan_app("raise")) as server:
        assert httpx.get(server.url).text == "ok"
    errors = error_log.at(logging.ERROR)
    assert errors == [
        "Exception in ASGI lifespan",
        "Lifespan shutdown failed: OSError: disk gone",
    ]
