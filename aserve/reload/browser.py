"""The supervisor's side of `--reload-browser`: the browsers' event streams, handed over by the
workers (or by the supervisor's own error page) and kept open across restarts, and the events
sent down them."""

from __future__ import annotations

import asyncio
import logging
import socket

from aserve.refresh import EVENTS_HEAD, event

logger = logging.getLogger("aserve.error")


class BrowserHub:
    """Every browser page listening for reload events."""

    def __init__(self) -> None:
        self._clients: set[_Listener] = set()
        self._adding: set[asyncio.Task[object]] = set()

    def __len__(self) -> int:
        return len(self._clients)

    def add(self, sock: socket.socket) -> None:
        """Take over a connection that asked for the event stream (its request is read)."""
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        task: asyncio.Task[object] = loop.create_task(
            loop.connect_accepted_socket(lambda: _Listener(self._clients), sock)
        )
        self._adding.add(task)
        task.add_done_callback(self._adding.discard)

    def add_fd(self, fd: int) -> None:
        """`add`, for a descriptor passed by a worker (now the hub's)."""
        self.add(socket.socket(fileno=fd))

    def send(self, kind: str) -> None:
        """Tell every page: `reload`, or `css` (new stylesheets, no reload needed)."""
        if self._clients:
            logger.debug("Telling %d browser page(s): %s", len(self._clients), kind)
        data = event(kind)
        for client in list(self._clients):
            client.write(data)

    def close(self) -> None:
        for task in self._adding:
            task.cancel()
        for client in list(self._clients):
            client.close()


class _Listener(asyncio.Protocol):
    """One page's event stream: the response head at once, then an event per change."""

    def __init__(self, clients: set[_Listener]) -> None:
        self._clients = clients
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._clients.add(self)
        self.write(EVENTS_HEAD)
        logger.debug("A browser listens for reload events (%d open)", len(self._clients))

    def data_received(self, data: bytes) -> None:
        pass  # a browser sends nothing more on an event stream

    def connection_lost(self, exc: Exception | None) -> None:
        self._clients.discard(self)
        self._transport = None

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
