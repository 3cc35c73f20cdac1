"""Accepting connections on a listening socket, with a pause instead of a failure loop when the
process runs out of file descriptors."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

logger = logging.getLogger("aserve.error")

# accept() failing for want of a descriptor or memory would fail again at once: accepting
# pauses instead, 50 ms at first, doubling up to asyncio's own 1 s (ACCEPT_RETRY_DELAY).
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Errors of one waiting connection, not of the listening socket: accept(2) says to retry.
_CONNECTION_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENETUNREACH",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENONET",
        "ENOPROTOOPT",
        "EOPNOTSUPP",
    )
    if hasattr(errno, name)
)
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
# Connections accepted per readiness event before other callbacks get a turn.
_ACCEPT_BATCH = 64
# On close, how long TLS handshakes under way may take to finish before they are abandoned.
_HANDSHAKE_WAIT = 1.0


class Acceptor:
    """Accepts connections on one listening socket; backs off when out of file descriptors.

    `loop.create_server` would hide running out: under uvloop, libuv accepts the waiting
    connections and drops them; asyncio logs a traceback every second. Here accepting pauses
    (the connections wait in the listen backlog), the first failure is logged once, and
    serving resumes by itself when descriptors are free again.
    """

    # Connections accepted per readiness event: one when processes share the socket (see
    # aserve.server).
    batch = _ACCEPT_BATCH

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self._fd = sock.fileno()
        self._connecting: set[asyncio.Task[None]] = set()
        self._backoff = 0.0
        self._failures = 0
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        loop.add_reader(self._fd, self._accept)

    def _accept(self) -> None:
        accept = self.sock.accept
        for _ in range(self.batch):
            try:
                conn, _ = accept()
            except (BlockingIOError, InterruptedError):
                if self._failures:
                    logger.info(
                        "Accepting connections again (%d attempt(s) had failed)", self._failures
                    )
                    self._failures = 0
                    self._backoff = 0.0
                return
            except OSError as exc:
                if exc.errno in _CONNECTION_ERRORS:
                    continue  # e.g. the client gave up while waiting in the backlog
                self._pause(exc)
                return
            conn.setblocking(False)
            task = self.loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        tls = self.tls
        if tls is None:
            try:
                await self.loop.connect_accepted_socket(self.factory, conn)
            except OSError:
                conn.close()  # the client left before its transport was made
            return
        try:
            peer = conn.getpeername()
        except OSError:
            peer = None
        try:
            # With TLS this returns once the handshake is done; asyncio and uvloop close the
            # transport of one that fails or times out and raise here (an ssl.SSLError, or
            # ConnectionAbortedError for ssl_handshake_timeout), logging nothing themselves
            # unless the loop runs in debug mode.
            await self.loop.connect_accepted_socket(
                self.factory, conn, ssl=tls, ssl_handshake_timeout=self.handshake_timeout
            )
        except OSError as exc:
            conn.close()
            logger.debug("TLS handshake with %s failed: %s", _peer_text(peer), _reason(exc))

    def _pause(self, exc: OSError) -> None:
        self.loop.remove_reader(self._fd)
        if not self._failures:
            hint = (
                "; raise the limit (ulimit -n) or lower --limit-concurrency"
                if exc.errno in _OUT_OF_RESOURCES
                else ""
            )
            logger.error(
                "Cannot accept connections: %s. Pausing and retrying%s.", exc.strerror or exc, hint
            )
        self._failures += 1
        self._backoff = min(max(self._backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
        self._retry = self.loop.call_later(self._backoff, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self.loop.add_reader(self._fd, self._accept)

    async def close(self) -> None:
        """Stop accepting and close the socket; connections being set up are then served."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        else:
            self.loop.remove_reader(self._fd)
        self.sock.close()
        if self._connecting:
            # A plain connection is made at once; a TLS handshake a client leaves hanging is
            # not waited for (it would hold the shutdown up to the head timeout).
            _, pending = await asyncio.wait(list(self._connecting), timeout=_HANDSHAKE_WAIT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)


def _peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "a Unix socket peer" if peer is not None else "a client that left"


def _reason(exc: OSError) -> str:
    """OpenSSL's reason (`HTTP_REQUEST`: plain HTTP sent to the TLS port) or the error."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        if exc.reason == "HTTP_REQUEST":
            return "plain HTTP sent to the HTTPS port"
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__
