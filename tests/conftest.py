"""Shared fixtures: a real aserve server on 127.0.0.1, port 0, in a background thread; what
aserve logs; small HTTP helpers."""

from __future__ import annotations

import http.client
import logging
import socket
import time
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


def http_get(port: int, path: str = "/") -> tuple[int, bytes]:
    """Status and body of one GET over a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class LogRecords(logging.Handler):
    """What aserve logs on 'aserve.error'.

    aserve's logging set-up stops propagation at the 'aserve' logger, so pytest's caplog (a
    handler on the root logger) would miss it: this handler listens on 'aserve.error' itself.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def errors(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= logging.ERROR]

    def messages(self) -> list[str]:
        """The messages logged at ERROR or above."""
        return [r.getMessage() for r in self.errors]

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    def wait_for_error(self, timeout: float = 5.0) -> logging.LogRecord:
        """The first ERROR record; an app thread may log it after the client has its reply."""
        deadline = time.monotonic() + timeout
        while not self.errors:
            assert time.monotonic() < deadline, "nothing logged at ERROR"
            time.sleep(0.01)
        return self.errors[0]


@pytest.fixture
def error_log() -> Iterator[LogRecords]:
    logger = logging.getLogger("aserve.error")
    handler = LogRecords()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
