"""Listening sockets from the command line: a Unix socket path in use is refused like a port in
use, a path or descriptor that cannot serve is one line and exit code 2, and the socket file
goes away with the server."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aserve.config import Config
from aserve.errors import ConfigError
from aserve.sockets import bind_socket
from tests.support.client import UnixHTTPConnection
from tests.support.procs import ServerProcess, assert_usage_error

WSGI_APP = "tests.support.apps.wsgi_apps:app"


def get(path: str) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextmanager
def serving_on(path: str, *args: str) -> Iterator[ServerProcess]:
    with ServerProcess("--uds", path, *args, WSGI_APP) as server:
        server.wait_for(rf"on unix:{re.escape(path)}")
        yield server


def stop(server: ServerProcess) -> None:
    server.send_signal(signal.SIGTERM)
    assert server.wait() == 0, server.stderr


@pytest.mark.parametrize("mode", [[], ["--reload"]], ids=["plain", "reload"])
def test_a_second_server_on_a_live_socket_path_is_refused(tmp_path: Path, mode: list[str]) -> None:
    path = str(tmp_path / "aserve.sock")
    with serving_on(path, *mode) as first:
        line = assert_usage_error(["--uds", path, WSGI_APP], f"unix:{path}")
        assert line.endswith("a server is already listening there")
        # The first server still owns its path and serves.
        assert get(path) == (200, b"hello")
        stop(first)


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "aserve.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)  # left behind by a server that died: nobody listens
    with serving_on(path) as server:
        assert get(path) == (200, b"hello")
        stop(server)


@pytest.mark.parametrize(
    "mode", [[], ["--reload"], ["--server", "wsgiref"]], ids=["plain", "reload", "wsgiref"]
)
def test_the_socket_file_is_removed_on_exit(tmp_path: Path, mode: list[str]) -> None:
    path = str(tmp_path / "aserve.sock")
    with serving_on(path, *mode) as server:
        assert os.path.exists(path)
        stop(server)
    assert not os.path.exists(path)


def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("precious")
    assert_usage_error(["--uds", str(path), WSGI_APP], "it exists and is not a socket")
    assert path.read_text() == "precious"


def test_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "aserve.sock"
    assert_usage_error(["--uds", str(path), WSGI_APP], f"unix:{path}", "No such file")


def test_a_bad_descriptor_is_a_usage_error() -> None:
    assert_usage_error(["--fd", "99", WSGI_APP], "--fd 99", "Bad file descriptor")


def test_a_descriptor_that_is_not_a_socket_is_a_usage_error(tmp_path: Path) -> None:
    with open(tmp_path / "file", "w") as file:
        fd = file.fileno()
        args = ["--fd", str(fd), WSGI_APP]
        with ServerProcess(*args, pass_fds=[fd]) as server:
            assert server.wait() == 2
        (line,) = server.stderr.splitlines()
        assert line.startswith(f"aserve: error: --fd {fd}: ")
        assert "socket" in line.lower()


def test_uds_without_unix_sockets_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Windows' Python has no AF_UNIX."""
    monkeypatch.delattr(socket, "AF_UNIX")
    with pytest.raises(ConfigError, match="no Unix domain sockets"):
        bind_socket(Config(uds=str(tmp_path / "s.sock")))
