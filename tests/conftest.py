"""Shared fixtures: a real aserve server on 127.0.0.1, port 0, in a background thread."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from aserve import Server

ServeFactory = Callable[..., Server]


@contextmanager
def running(app: object, **settings: Any) -> Iterator[Server]:
    """Serve `app` on a free port for the duration of the block."""
    settings.setdefault("port", 0)
    settings.setdefault("access_log", False)
    settings.setdefault("timeout_graceful_shutdown", 2.0)
    server = Server(app, **settings).start()
    try:
        yield server
    finally:
        server.stop(timeout=10)


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """`serve(app, **settings)` starts a server that stops at the end of the test."""
    servers: list[Server] = []

    def start(app: object, **settings: Any) -> Server:
        settings.setdefault("port", 0)
        settings.setdefault("access_log", False)
        settings.setdefault("timeout_graceful_shutdown", 2.0)
        server = Server(app, **settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=10)


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data`, half-close, and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
