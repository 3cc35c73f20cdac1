"""Nothing on the import path of `aserve --help`, `aserve APP` or `aserve APP --reload` needs a
POSIX-only name unguarded: with `os.fork`, `socket.SOCK_SEQPACKET`, the loop's
`add_signal_handler` and uvloop hidden, as on Windows, aserve still serves, reloads, shows the
error page and stops on signals, through spawned workers, stream IPC, `signal.signal` handlers
and the asyncio loop. Descriptor passing stays SCM_RIGHTS: Linux cannot run socket.share()."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aserve.config import Config
from aserve.process import PORTABLE_ENV, loop_factory
from aserve.reload.spawn import worker_kind
from tests.support.client import connect, http_get, refused_soon
from tests.support.polling import wait_until
from tests.support.procs import ROOT, ServerProcess

# Run by every interpreter of the test's process tree (supervisor, workers) before aserve.
HIDE_POSIX = """\
import asyncio
import os
import socket
import sys
from asyncio import unix_events

del os.fork
del socket.SOCK_SEQPACKET
# What Windows' loops do: BaseEventLoop's signal methods raise NotImplementedError.
del unix_events._UnixSelectorEventLoop.add_signal_handler
del unix_events._UnixSelectorEventLoop.remove_signal_handler
sys.modules["uvloop"] = None  # does not install on Windows
"""

# Reports what the worker runs on: the loop, fork, and every socket it holds.
APP = """\
import asyncio
import json
import os
import socket
import time

VERSION = "v1"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first-", "more_body": True})
        await asyncio.sleep(30)
    kinds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(fd))
        except OSError:
            continue
        kinds.append(int(sock.type))
        sock.detach()
    body = json.dumps({
        "version": VERSION,
        "loop": type(asyncio.get_running_loop()).__module__,
        "fork": hasattr(os, "fork"),
        "socket_types": kinds,
    }).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""
SOCK_SEQPACKET = 5  # Linux's value, the name being hidden
WAIT = 10.0


@pytest.fixture
def hidden(tmp_path: Path) -> dict[str, str]:
    """An environment whose interpreters run HIDE_POSIX first (a sitecustomize module)."""
    site = tmp_path / "hide"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_POSIX)
    env = {k: v for k, v in os.environ.items() if k not in (PORTABLE_ENV, "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "app.py").write_text(APP)
    return root


@pytest.fixture
def server(project: Path, hidden: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(
        "app:app", "--reload", "--port", "0", "--no-access-log", cwd=project, env=hidden
    ) as process:
        yield process


def state(port: int) -> dict[str, object]:
    status, body = http_get(port)
    assert status == 200, body
    loaded: dict[str, object] = json.loads(body)
    return loaded


def version(port: int) -> object:
    """The app's version, or None while the error page answers."""
    status, body = http_get(port)
    return json.loads(body)["version"] if status == 200 else None


def test_the_prelude_hides_what_it_says(hidden: dict[str, str]) -> None:
    check = (
        "import asyncio, os, socket; loop = asyncio.new_event_loop(); "
        "print(hasattr(os, 'fork'), hasattr(socket, 'SOCK_SEQPACKET'), end=' ')\n"
        "try:\n    loop.add_signal_handler(2, print)\n"
        "except NotImplementedError:\n    print('no add_signal_handler')"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], env=hidden, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False False no add_signal_handler"


def test_help_needs_nothing_hidden(hidden: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aserve", "--help"],
        env=hidden,
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert "--reload-worker {auto,fork,spawn}" in result.stdout


def test_serving_stops_on_a_signal_handled_with_signal_signal(
    project: Path, hidden: dict[str, str]
) -> None:
    with ServerProcess("app:app", "--port", "0", cwd=project, env=hidden) as server:
        port = server.wait_listening()
        assert state(port)["loop"] == "asyncio.unix_events"
        with connect(port, timeout=WAIT) as client:
            client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.head().status == 200
            server.send_signal(signal.SIGINT)
            server.wait_for("SIGINT received: finishing in-flight requests")
            # The second-signal rule: the slow request is not waited for.
            server.send_signal(signal.SIGINT)
            assert server.wait(WAIT) == 0, server.stderr
        assert "Second SIGINT: exiting now" in server.stderr
        assert refused_soon(port)


def test_reload_serves_reloads_and_shows_the_error_page_through_the_portable_paths(
    project: Path, server: ServerProcess
) -> None:
    port = int(server.wait_for(r"aserve supervisor on http://127\.0\.0\.1:(\d+),").group(1))
    server.wait_for(r"Worker \d+ ready")
    first = state(port)
    assert first["version"] == "v1"
    assert first["loop"] == "asyncio.unix_events"
    assert first["fork"] is False
    assert SOCK_SEQPACKET not in first["socket_types"]  # type: ignore[operator]

    (project / "app.py").write_text(APP.replace('"v1"', '"v2"'))
    assert wait_until(lambda: version(port) == "v2", WAIT), server.stderr
    (project / "app.py").write_text("def app(:\n")
    server.wait_for(r"ERROR +The application could not be imported: ")
    status, body = http_get(port)
    assert status == 500
    assert b"SyntaxError" in body
    (project / "app.py").write_text(APP.replace('"v1"', '"v3"'))
    assert wait_until(lambda: version(port) == "v3", WAIT), server.stderr

    with connect(port, timeout=WAIT) as client:
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.head().status == 200
        started = time.monotonic()
        server.send_signal(signal.SIGINT)
        server.wait_for("SIGINT received: stopping")
        server.send_signal(signal.SIGINT)
        assert server.wait(WAIT) == 0, server.stderr
    assert time.monotonic() - started < 5.0  # not the 5 s graceful timeout, nor the 30 s sleep
    assert "Traceback" not in server.stderr
    assert refused_soon(port)


def test_the_portable_switch_picks_the_portable_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PORTABLE_ENV, "1")
    assert worker_kind(Config()) == "spawn"
    assert worker_kind(Config(reload_worker="fork")) == "fork"
    loop = loop_factory("auto")()
    loop.close()
    assert type(loop).__module__.startswith("asyncio")
    monkeypatch.delenv(PORTABLE_ENV)
    assert worker_kind(Config()) == ("fork" if sys.platform == "linux" else "spawn")
    assert worker_kind(Config(reload_worker="spawn")) == "spawn"


def test_fork_where_there_is_none_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from aserve.errors import ConfigError

    monkeypatch.delattr(os, "fork")
    with pytest.raises(ConfigError, match="cannot fork; use spawn"):
        worker_kind(Config(reload_worker="fork"))
    assert worker_kind(Config()) == "spawn"
