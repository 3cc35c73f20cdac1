"""Open WebSockets when the process stops: SIGTERM closes them with 1001 and a reload with 1012,
in time, instead of the drain waiting on them (uvicorn #2943)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.procs import ServerProcess

APP = "tests.support.apps.websocket_apps:held"
SUPERVISOR_ON = r"aserve supervisor on http://127\.0\.0\.1:(\d+), watching "


async def _closed_by_server(port: int, server: ServerProcess, stop: object) -> tuple[int, float]:
    """Open a WebSocket, do `stop()`, and wait for the server's close: its code, and how long
    after `stop()` it came."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
        server.wait_for("app: accepted")
        started = time.monotonic()
        stop()  # type: ignore[operator]
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        took = time.monotonic() - started
    assert ws.close_code is not None
    return ws.close_code, took


async def test_sigterm_closes_open_websockets_with_1001() -> None:
    with ServerProcess("--port", "0", "--timeout-graceful-shutdown", "10", APP) as server:
        port = server.wait_listening()
        code, took = await _closed_by_server(
            port, server, lambda: server.send_signal(signal.SIGTERM)
        )
        assert code == 1001
        assert took < 2.0  # not the 10 s the drain would allow
        assert server.wait(10) == 0
        server.wait_for("app: websocket.disconnect 1001")


@contextlib.contextmanager
def _reloading(
    tmp_path: Path, *options: str, app: str = APP
) -> Iterator[tuple[ServerProcess, int, Path]]:
    """A reload supervisor watching a fresh directory, once its first worker is ready: the
    process, its port and the directory."""
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "module.py").write_text("VERSION = 1\n")
    with ServerProcess(
        *options, "--reload-dir", str(watched), "--port", "0", "--no-access-log", app
    ) as server:
        port = int(server.wait_for(SUPERVISOR_ON).group(1))
        server.wait_for(r"Worker \d+ ready")
        yield server, port, watched


async def test_reload_closes_open_websockets_with_1012(tmp_path: Path) -> None:
    with _reloading(tmp_path, "--reload", "--timeout-graceful-shutdown", "10") as (
        server,
        port,
        watched,
    ):
        code, took = await _closed_by_server(
            port, server, lambda: (watched / "module.py").write_text("VERSION = 2\n")
        )
        assert code == 1012
        assert took < 3.0
        server.wait_for("app: websocket.disconnect 1012")
        server.send_signal(signal.SIGTERM)
        server.wait(15)


async def test_stopping_the_reload_supervisor_closes_open_websockets_with_1001(
    tmp_path: Path,
) -> None:
    """The worker is not replaced, the whole server goes: 1001, not 1012."""
    with _reloading(tmp_path, "--reload", "--timeout-graceful-shutdown", "10") as (
        server,
        port,
        _,
    ):
        code, took = await _closed_by_server(
            port, server, lambda: server.send_signal(signal.SIGTERM)
        )
        assert code == 1001
        assert took < 3.0
        server.wait_for("app: websocket.disconnect 1001")
        assert server.wait(15) == 0


async def test_websockets_work_under_reload_browser(tmp_path: Path) -> None:
    """--reload-browser wraps the app's runner; WebSockets still reach the app."""
    echo = "tests.support.apps.websocket_apps:echo"
    with _reloading(tmp_path, "--reload-browser", app=echo) as (server, port, _):
        async with websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
