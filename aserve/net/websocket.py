"""WebSocket connections: the handshake offered for each request that asks for one, the handover
of the transport from HTTP/1.1 once the app accepts, and the asyncio.Protocol of the open
WebSocket (`protocols.websocket` underneath): flow control both ways, pings, the close."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from aserve.exchange import Cycle, Messages
from aserve.net.connection import HttpProtocol, LazyTimer, ServerState
from aserve.protocols.websocket import Closed, Handshake, Session, Settings
from aserve.types import Headers

# How long the peer gets to answer our close frame, and then to close the TCP connection
# (RFC 6455 §7.1.1: the server closes first). websockets' own close_timeout is 10 s; a
# development server's clients are near, and shutdown must not wait for one that is gone.
CLOSE_TIMEOUT = 3.0
# How long the peer gets after our last byte before the connection is aborted, when the
# closing handshake is done and the server has half-closed (see `_half_close`).
EOF_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """The `ws_*` settings, as the connections use them (0: no pings)."""

    protocol: Settings
    max_queue: int
    ping_interval: float
    ping_timeout: float


class Upgrades:
    """The server's WebSocket side: checks each request asking to become a WebSocket and,
    for a valid handshake, offers the app the switch."""

    def __init__(self, state: ServerState, settings: WebSocketSettings) -> None:
        self.state = state
        self.settings = settings

    def prepare(self, connection: HttpProtocol, cycle: Cycle) -> bool:
        request = cycle.request
        if b"websocket" not in (request.upgrade or b""):
            return True  # another protocol: plain HTTP (RFC 9110 §7.8)
        handshake = Handshake(
            request.method,
            request.target,
            request.http_version,
            request.headers,
            self.settings.protocol,
        )
        refusal = handshake.refusal
        if refusal is not None:
            status, headers, body = refusal
            cycle.send_start(status, headers)
            cycle.send_end(body)
            return False
        cycle.websocket = _Offer(self, connection, handshake)
        return True


class _Offer:
    """One valid handshake waiting for the app's answer."""

    __slots__ = ("_connection", "_handshake", "_upgrades")

    def __init__(self, upgrades: Upgrades, connection: HttpProtocol, handshake: Handshake) -> None:
        self._upgrades = upgrades
        self._connection = connection
        self._handshake = handshake

    @property
    def subprotocols(self) -> list[str]:
        return self._handshake.subprotocols

    def accept(self, cycle: Cycle, subprotocol: str | None, headers: Headers) -> Messages:
        head, session = self._handshake.accept(subprotocol, headers)
        connection = self._connection
        transport, held = connection.hand_over(cycle)
        request = cycle.request
        websocket = WebSocketConnection(
            self._upgrades.state,
            self._upgrades.settings,
            transport,
            session,
            _Line(
                connection.client_text,
                f"{request.method.decode('ascii', 'replace')} "
                f"{request.target.decode('ascii', 'replace')} HTTP/{request.http_version}",
                cycle.started_at,
            ),
        )
        transport.write(head)
        transport.set_protocol(websocket)
        websocket.start(held, write_paused=connection.write_paused)
        return websocket.messages


@dataclass(frozen=True, slots=True)
class _Line:
    """What the access line of a WebSocket says besides how it ended."""

    client: str
    request_line: str
    started_at: float


class _Phase(enum.IntEnum):
    OPEN = 0  # messages flow; a ping after `ping_interval` without a byte from the peer
    PINGING = 1  # a ping is out: the peer must send something within `ping_timeout`
    CLOSING = 2  # our close frame is out: the peer must answer and close in time
    CLOSED = 3


_OPEN, _PINGING, _CLOSING, _CLOSED = _Phase.OPEN, _Phase.PINGING, _Phase.CLOSING, _Phase.CLOSED


class WebSocketConnection(asyncio.Protocol):
    """An open WebSocket on a transport taken over from HTTP/1.1, and the `MessageSink` of
    its app."""

    def __init__(
        self,
        state: ServerState,
        settings: WebSocketSettings,
        transport: asyncio.Transport,
        session: Session,
        line: _Line,
    ) -> None:
        self.state = state
        self.settings = settings
        self.transport = transport
        self.session = session
        self.line = line
        self.messages = Messages(state.loop, self, settings.max_queue, self._wanted)
        self.write_paused = False
        self.phase = _OPEN
        self._deadline = 0.0
        self._timer = LazyTimer(state.loop, self._on_timer)
        self._last_read = 0.0
        self._sent = 0
        self._drain_waiters: list[Callable[[], None]] = []

    def start(self, held: bytes, *, write_paused: bool) -> None:
        """Serve from now on: counted among the connections, reading, with what the HTTP/1.1
        side had received after the request."""
        state = self.state
        state.connections.add(self)
        self.write_paused = write_paused
        self._last_read = state.loop.time()
        self._arm_ping()
        self._update_reading()
        if held:
            self.data_received(held)
        if state.going_away and self.phase < _CLOSING:
            self.shutdown()  # the server began to stop while the app was accepting

    # asyncio callbacks

    def data_received(self, data: bytes) -> None:
        if self.phase is _CLOSED:
            return
        self._last_read = self.state.loop.time()
        if self.phase is _PINGING:
            self.phase = _OPEN
            self._arm_ping()
        messages = self.messages
        for event in self.session.receive_data(data):
            if type(event) is Closed:
                messages.end(event.code, event.reason)
            elif messages.feed(event):  # type: ignore[arg-type]
                self._update_reading()
        self._flush()

    def eof_received(self) -> bool:
        for event in self.session.receive_eof():
            if type(event) is Closed:
                self.messages.end(event.code, event.reason)
        self._flush()
        return False  # the transport closes: nothing more can be said

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        state.connections.discard(self)
        self.phase = _CLOSED
        self._timer.cancel()
        if self.messages.closed is None:
            self.messages.end(1006, "")
        self._wake_drain_waiters()
        log = state.access_log
        if log is not None:
            line = self.line
            code, reason = self.messages.closed or (1006, "")
            log.log(
                line.client,
                line.request_line,
                101,
                self._sent,
                (time.perf_counter() - line.started_at) * 1000.0,
                f"WebSocket closed {code}" + (f" {reason}" if reason else ""),
            )

    def pause_writing(self) -> None:
        self.write_paused = True
        # A peer that does not read gets nothing more read from it either: else its pings
        # would queue pongs without bound.
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()
        self._wake_drain_waiters()

    # the MessageSink of the app

    @property
    def closing(self) -> bool:
        return self.phase >= _CLOSING or self.transport.is_closing()

    def send_message(self, data: str | bytes) -> None:
        if self.closing:
            return
        self._sent += len(data)
        frame = self.session.frame(data)
        if frame is not None:
            self.transport.write(frame)
            return
        if type(data) is str:
            self.session.send_text(data)
        else:
            self.session.send_bytes(data)  # type: ignore[arg-type]
        self._flush()

    def close(self, code: int, reason: str) -> None:
        if self.phase >= _CLOSING:
            return
        self.session.close(code, reason)
        self._closing()
        self._flush()

    def fail(self, code: int, reason: str) -> None:
        if self.phase >= _CLOSING:
            return
        self.session.fail(code, reason)
        closed = self.session.closed
        if closed is not None:
            self.messages.end(closed.code, closed.reason)
        self._closing()
        self._flush()

    def on_writable(self, callback: Callable[[], None]) -> None:
        if not self.write_paused or self.phase is _CLOSED:
            self.state.loop.call_soon(callback)
        else:
            self._drain_waiters.append(callback)

    # the server's side

    in_grace = False  # a WebSocket has had its request

    def shutdown(self, grace: float = 0.0) -> None:
        """The server stops: close with 1001 or 1012; the app hears it as a disconnect."""
        if self.phase < _CLOSING:
            self.close(self.state.going_away or 1001, "server shutting down")

    def abort(self) -> None:
        self.phase = _CLOSED
        self._timer.cancel()
        self.transport.abort()

    # writing, reading, timers

    def _flush(self) -> None:
        transport = self.transport
        for data in self.session.data_to_send():
            if data:
                transport.write(data)
            else:
                self._half_close()

    def _half_close(self) -> None:
        """The closing handshake is over (or the connection failed): the server closes the
        TCP connection first (RFC 6455 §7.1.1). Half-closing keeps a reset from destroying the
        close frame while the peer still sends; the peer's own close, or a timeout, ends it."""
        transport = self.transport
        self._closing(EOF_TIMEOUT)
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
            if not transport.is_reading():
                transport.resume_reading()
        else:
            transport.close()

    def _closing(self, timeout: float = CLOSE_TIMEOUT) -> None:
        self.phase = _CLOSING
        self._deadline = self.state.loop.time() + timeout
        self._timer.arm(self._deadline)

    def _wanted(self) -> None:
        """The app took a message from a full queue."""
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if (self.messages.paused or self.write_paused) and self.phase < _CLOSING:
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def _arm_ping(self) -> None:
        interval = self.settings.ping_interval
        if interval:
            self._deadline = self._last_read + interval
            self._timer.arm(self._deadline)
        else:
            self._deadline = 0.0

    def _on_timer(self) -> None:
        deadline = self._deadline
        if not deadline:
            return
        now = self.state.loop.time()
        phase = self.phase
        if phase is _OPEN:
            deadline = self._last_read + self.settings.ping_interval
        if deadline > now:
            self._deadline = deadline
            self._timer.arm(deadline)
            return
        if phase is _OPEN:
            if not self.transport.is_reading():
                # Reading is paused (the app or the peer is slow): the peer's answer could not
                # be read, and a slow peer is not a dead one.
                self._last_read = now
                self._arm_ping()
                return
            self.session.ping(b"aserve")
            self._flush()
            self.phase = _PINGING
            self._deadline = now + self.settings.ping_timeout
            self._timer.arm(self._deadline)
        elif phase is _PINGING:
            self.fail(1011, "keepalive ping timeout")
            self.abort()
        elif phase is _CLOSING:
            self.abort()

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for callback in waiters:
            callback()
