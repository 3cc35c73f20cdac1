"""The HTTP/1.1 connection: an asyncio.Protocol that feeds bytes to `protocols.http11`, hands
each request to the app runner as an `exchange.Cycle`, and is the cycle's `ResponseSink`.
Flow control both ways; one timer for the deadline of the connection's phase."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Protocol, cast

from aserve.errorpage import Page
from aserve.errors import ClientDisconnected, RequestBodyTooLarge
from aserve.exchange import AppRunner, ConnectionInfo, Cycle, RequestBody
from aserve.logs import AccessLog, RunserverAccessLog
from aserve.net.tls import TLSFacts
from aserve.protocols.forwarded import Trusted, forwarded
from aserve.protocols.http11 import (
    Connection,
    Data,
    EndOfMessage,
    FieldMemo,
    Limits,
    ProtocolFailure,
    Request,
)
from aserve.types import Headers

logger = logging.getLogger("aserve.error")

# After an error response to a client that may still be sending, how long to keep reading and
# discarding before closing (RFC 9112 §9.6): 2 s is Apache's SECONDS_TO_LINGER.
LINGER = 2.0

# How long a connection that had sent no complete request when shutdown began may take to
# send it: a client connects and sends at once, so a second is ample; an idle pre-connection
# (browsers open spare ones) then delays the exit by at most this much.
SHUTDOWN_GRACE = 1.0

_TOO_MANY = "too many connections; try again shortly"
# What an access line adds when a response did not go out as the app meant it.
_CLIENT_GONE = "client went away"
_CUT_SHORT = "response cut short"
# nginx's status for a request whose client closed before it was answered: the line says
# what happened, though no status went out.
_CLIENT_CLOSED_REQUEST = 499

# The most one sendfile call may send before the loop runs its other callbacks: on loopback
# the socket takes megabytes at once, and a 1 GiB file must not hold the loop for its length.
SENDFILE_TURN = 1 << 20
# Where the platform has sendfile (not Windows); the transport's socket must be plain TCP or
# a Unix socket, never TLS (the kernel would send the file's bytes unencrypted).
HAS_SENDFILE = hasattr(os, "sendfile")


class Phase(enum.IntEnum):
    """Where a connection is; each phase has at most one deadline, and what happens at it."""

    IDLE = 0  # no request under way: closed after the keep-alive timeout
    HEAD = 1  # part of a request head received: 408 after the head timeout
    BUSY = 2  # a request is with the app: no deadline
    BODY_WAIT = 3  # the app waits for request body bytes: 408 after the body timeout
    GRACE = 4  # shutdown began before this connection's request came: closed after the grace
    LINGER = 5  # a final response is out; reading and discarding until the peer closes
    CLOSED = 6


# The phases as plain names: an enum member's attribute lookup costs more than the test, and
# these are tested several times per request.
_IDLE, _HEAD, _BUSY, _BODY_WAIT = Phase.IDLE, Phase.HEAD, Phase.BUSY, Phase.BODY_WAIT
_GRACE, _LINGER, _CLOSED = Phase.GRACE, Phase.LINGER, Phase.CLOSED


class Served(Protocol):
    """A connection the server closes when it stops: HTTP/1.1, or the WebSocket one became."""

    def shutdown(self, grace: float) -> None:
        """Close when idle; `grace`: seconds for a request from a client that connected but
        has not sent one yet."""
        ...

    @property
    def in_grace(self) -> bool:
        """Waiting for a first request after `shutdown`."""
        ...

    def abort(self) -> None: ...


class Upgrades(Protocol):
    """The switch of protocols a server offers (`net.websocket`)."""

    def prepare(self, connection: HttpProtocol, cycle: Cycle) -> bool:
        """Offer the switch the request of `cycle` asks for; False when the request is
        answered already (its handshake is invalid) and must not reach the app."""
        ...


class ServerState:
    """What every connection of one server shares."""

    __slots__ = (
        "access_log",
        "body_timeout",
        "connections",
        "default_headers",
        "field_memo",
        "going_away",
        "head_timeout",
        "idle",
        "keep_alive_timeout",
        "limit_body_buffer",
        "limit_concurrency",
        "limits",
        "lingering",
        "loop",
        "proxies",
        "runner",
        "tls",
        "upgrades",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        runner: AppRunner,
        *,
        limits: Limits,
        limit_body_buffer: int,
        limit_concurrency: int,
        keep_alive_timeout: float,
        head_timeout: float,
        body_timeout: float,
        access_log: AccessLog | RunserverAccessLog | None,
    ) -> None:
        self.loop = loop
        self.runner = runner
        self.limits = limits
        self.limit_body_buffer = limit_body_buffer
        self.limit_concurrency = limit_concurrency
        self.keep_alive_timeout = keep_alive_timeout
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.access_log = access_log
        self.connections: set[Served] = set()
        # Connections with no request in the app, longest idle first (kept with a limit only).
        self.idle: dict[HttpProtocol, None] = {}
        # Connections in `connections` that only wait to close after a final response (see
        # `HttpProtocol._linger`): shutdown closes them, the connection limit ignores them.
        self.lingering = 0
        # Date and Server lines, refreshed once a second by the server.
        self.default_headers = b"server: aserve\r\n"
        # Response fields its connections have validated (see http11.FieldMemo).
        self.field_memo: FieldMemo = {}
        # WebSockets, when the runner takes them and they are on.
        self.upgrades: Upgrades | None = None
        # The server's TLS side, when TLS carries its connections.
        self.tls: TLSFacts | None = None
        # The peers whose proxy headers count, under --proxy-headers.
        self.proxies: Trusted | None = None
        # 0 while serving; once the server stops, the close code its WebSockets get: 1001
        # (going away), or 1012 (service restart) for a reload (RFC 6455 §7.4.1, IANA).
        self.going_away = 0

    def admit(self) -> bool:
        """Whether a new connection may be served under `limit_concurrency`.

        Idle connections count less than busy ones: at the limit, the connection idle longest
        (between requests, or still sending a request head) is closed to make room; only when
        every connection has a request in the app is the new one refused.
        """
        limit = self.limit_concurrency
        if not limit or len(self.connections) - self.lingering < limit:
            return True
        oldest = next(iter(self.idle), None)
        if oldest is None:
            return False
        oldest.evict()
        return True


class LazyTimer:
    """One timer handle for a deadline that keeps moving later.

    Moving the deadline later costs nothing: the handle fires at the earlier time and the
    owner's callback re-arms it for what is left, so a busy keep-alive connection creates no
    timer handle per request.
    """

    __slots__ = ("_at", "_callback", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def arm(self, deadline: float) -> None:
        """Make sure the callback runs by `deadline`."""
        handle = self._handle
        if handle is not None:
            if deadline >= self._at:
                return
            handle.cancel()
        self._at = deadline
        self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._callback()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class HttpProtocol(asyncio.Protocol):
    """One client connection, and the `ResponseSink` of the request it is answering."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.conn = Connection(state.limits, state.field_memo)
        self.transport: asyncio.Transport | None = None
        self.info = ConnectionInfo(None, None)
        self.cycle: Cycle | None = None
        self.phase = _IDLE
        # When the current phase's wait runs out (0: it has none).
        self._deadline = 0.0
        self._timer = LazyTimer(state.loop, self._on_timer)
        # The loop makes the protocol when it accepts the connection, before a TLS handshake:
        # the first head's deadline counts from here, so the handshake's time is within it.
        self._connected_at = state.loop.time()
        # When the request head under way began (for the log of one refused).
        self._head_began = 0.0
        # Whether a request was ever started here; until then shutdown waits for one.
        self._served = False
        # The server is shutting down: the response in progress is the last.
        self._stopping = False
        self.half_closed = False
        self._client_text = "-"
        # A response head held back to go out in one write with the first body bytes.
        self._head = b""
        self.write_paused = False
        # Above this many bytes waiting in the transport, a producing app is made to yield.
        self._low_water = 0
        self._drain_waiters: list[Callable[[], None]] = []
        # The trusted proxies, when this connection comes from one.
        self._proxies: Trusted | None = None
        # Reading paused for one of two reasons: the app's body buffer is full, or a
        # pipelined request waits for the response in progress.
        self._body_full = False
        self._pipeline_full = False
        # The socket's descriptor when a file may be sent with sendfile (plain TCP or Unix,
        # not TLS), else -1; and the sendfile under way, if any.
        self._sendfile_fd = -1
        self._sending: _FileSend | None = None

    @property
    def client_text(self) -> str:
        """The client's address as the access log writes it."""
        return self._client_text

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._low_water = self.transport.get_write_buffer_limits()[0]
        state = self.state
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Responses are written whole; Nagle would only delay the last segment.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if HAS_SENDFILE and sock is not None and state.tls is None:
            self._sendfile_fd = sock.fileno()
        client = _address(transport.get_extra_info("peername"))
        server = _address(transport.get_extra_info("sockname"))
        tls = state.tls
        if tls is None:
            self.info = ConnectionInfo(client, server)
        else:
            ssl_object = transport.get_extra_info("ssl_object")
            self.info = ConnectionInfo(client, server, "https", tls.describe(ssl_object))
        self._client_text = _client_text(client)
        proxies = state.proxies
        if proxies is not None and proxies.trusts(client):
            self._proxies = proxies
        if not state.admit():
            self._reject()
            return
        state.connections.add(self)
        # The first request head counts from the connection: a client that connects and sends
        # nothing is gone after the shorter of the keep-alive and head timeouts.
        now = self._connected_at
        self._enter(_IDLE, now + min(state.keep_alive_timeout, state.head_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self._leave()
        cycle = self.cycle
        if cycle is not None:
            cycle.body.disconnect()
        sending = self._sending
        if sending is not None:
            sending.finish(gone=True)
        self._wake_drain_waiters()

    def eof_received(self) -> bool:
        # A half-closed client may still read the responses to what it sent.
        self.half_closed = True
        cycle = self.cycle
        if cycle is None:
            return False
        if not cycle.body.complete:
            # The body can never be completed: the request is truncated (RFC 9112 §8).
            self._protocol_failure(ProtocolFailure(400, "request body incomplete"))
        else:
            # A close and a half-close look alike: a receive() waiting for the client to leave
            # hears of it (a long poll ends), while responses still go out.
            cycle.body.half_close()
        return True

    def data_received(self, data: bytes) -> None:
        if self.phase >= _LINGER:
            return  # read only so that closing does not reset the connection (see `_linger`)
        conn = self.conn
        conn.receive_data(data)
        self._process_events()
        if self.phase is _IDLE and conn.head_in_progress:
            # A request head began: it must be complete in time, however slowly it trickles
            # in; its bytes never restart the keep-alive period.
            since = self.state.loop.time() if self._served else self._connected_at
            self._head_began = since
            self._enter(_HEAD, since + self.state.head_timeout)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain_waiters()

    # events from http11

    def _process_events(self) -> None:
        conn = self.conn
        while self.phase < _LINGER:
            event = conn.next_event()
            if event is None:
                break
            if type(event) is Request:
                self._start_cycle(event)
            elif type(event) is Data:
                cycle = self.cycle
                if cycle is not None:
                    if self.phase is _BODY_WAIT:
                        self._enter(_BUSY)
                    if cycle.body.feed(event.data, self.state.limit_body_buffer):
                        self._body_full = True
                        self._update_reading()
            elif type(event) is EndOfMessage:
                cycle = self.cycle
                if cycle is not None:
                    if self.phase is _BODY_WAIT:
                        self._enter(_BUSY)
                    cycle.body.finish()
            else:
                self._protocol_failure(cast(ProtocolFailure, event))
                return
        if not self._pipeline_full and conn.has_queued_request:
            self._pipeline_full = True
            self._update_reading()

    def _start_cycle(self, request: Request) -> None:
        body = RequestBody(self.state.loop, self._body_wanted)
        if self.half_closed:
            body.half_close()
        info = self.info
        if request.forwarded and self._proxies is not None:
            info = _forwarded_info(info, request.headers, self._proxies)
        cycle = Cycle(request, info, self, body)
        self.cycle = cycle
        self._served = True
        if self._stopping:
            self.conn.keep_alive = False  # the server is stopping: this response ends it
        self._enter(_BUSY)
        if request.upgrade is not None:
            upgrades = self.state.upgrades
            if upgrades is not None and not self._stopping and not upgrades.prepare(self, cycle):
                return
        self.state.runner.handle(cycle)

    def hand_over(self, cycle: Cycle) -> tuple[asyncio.Transport, bytes]:
        """The app accepted the switch `cycle`'s request asked for, and its 101 is to go out:
        this connection leaves the server's books and its timer. The transport, and the bytes
        received after the request, which are the new protocol's."""
        transport = self.transport
        if self.cycle is not cycle or transport is None or transport.is_closing():
            raise ClientDisconnected("client disconnected")
        held = self.conn.switch_protocols()
        cycle.status = 101
        cycle.done = True
        self.cycle = None
        self.state.connections.discard(self)
        self._leave()
        self.transport = None
        return transport, held

    def _body_wanted(self, body: RequestBody) -> None:
        """The app wants request body bytes: resume reading, send `100 Continue` once."""
        cycle = self.cycle
        if cycle is None or cycle.body is not body:
            return
        interim = self.conn.continue_bytes()
        if interim:
            self._write(interim)
        if self._body_full and not body.paused:
            self._body_full = False
            self._update_reading()
        if (
            self.phase is _BUSY
            and not body.has_data
            and not body.complete
            and not body.disconnected
        ):
            self._enter(_BODY_WAIT, self.state.loop.time() + self.state.body_timeout)

    def _protocol_failure(self, failure: ProtocolFailure) -> None:
        cycle = self.cycle
        if cycle is not None:
            error = None
            if failure.status == 413:
                # The app reading the body learns why it ends, and its log can say so.
                limit = self.state.limits.request_body
                error = RequestBodyTooLarge(
                    f"request body larger than --limit-request-body ({limit} bytes); 413 sent"
                )
            cycle.body.disconnect(error)
            cycle.done = True
            self.cycle = None
        if failure.respond and (cycle is None or not cycle.response_started or self._head):
            self._head = b""
            self._write(
                self.conn.error_response(failure.status, self.state.default_headers, failure.reason)
            )
            if cycle is not None:
                cycle.status = failure.status
                self._log(cycle)
            else:
                self._log_refused(failure)
        # The client may still be sending (a body over the limit, more pipelined requests).
        self._linger()

    # the ResponseSink of the cycle in progress

    def start_response(self, status: int, headers: Headers, reason: bytes | None) -> None:
        self._head = self.conn.response_head(status, headers, self.state.default_headers, reason)

    def flush_head(self) -> None:
        head = self._head
        if head:
            self._head = b""
            self._write(head)

    def send_body(self, data: bytes) -> None:
        if self.closing:
            return  # the runner hears of it from `closing`; nothing is counted as sent
        out = self.conn.body_bytes(data)
        head = self._head
        if head:
            out = head + out
            self._head = b""
        if out:
            self._write(out)

    def send_parts(self, parts: list[bytes]) -> None:
        if self.closing:
            return
        out = self.conn.body_parts(parts)
        head = self._head
        if head:
            out = [head, *out]
            self._head = b""
        transport = self.transport
        if out and transport is not None:
            transport.writelines(out)

    def send_file(self, fd: int, offset: int, count: int, done: Callable[[int], None]) -> bool:
        fileno = self._sendfile_fd
        if fileno < 0 or self._sending is not None or self.closing:
            return False
        left = self.conn.body_left
        if left is None:
            return False  # chunked, close-delimited, or no body at all (HEAD, 304)
        transport = self.transport
        if transport is None:
            return False
        try:
            # A descriptor of its own: if the transport closes its one under a sendfile (the
            # client reset), this number cannot meanwhile name another client's socket.
            own = os.dup(fileno)
        except OSError:
            return False
        self.flush_head()
        sending = _FileSend(self, transport, own, fd, offset, min(count, left), done)
        self._sending = sending
        sending.step()
        return True

    def end_response(self, data: bytes, trailers: Headers | None = None) -> None:
        conn = self.conn
        out = conn.body_bytes(data) + conn.end_bytes(trailers) if data else conn.end_bytes(trailers)
        head = self._head
        if head:
            out = head + out
            self._head = b""
        if out:
            self._write(out)

    def send_interim(self, status: int, headers: Headers) -> None:
        interim = self.conn.interim_response(status, headers)
        if interim:
            self._write(interim)

    def response_done(self, cycle: Cycle) -> None:
        """The response is out: go on to the next request, or end the connection."""
        missing = self.conn.body_missing
        if missing:
            # The client waits for bytes that never come, until the close (RFC 9112 §6.3).
            logger.error(
                "Response body %d bytes short of its Content-Length: closing the connection",
                missing,
            )
        self._log(cycle, _CUT_SHORT if missing else "")
        if self.cycle is not cycle:
            return
        self.cycle = None
        if self.phase >= _LINGER:
            return  # the connection ended under the response
        if self._stopping or not self.conn.start_next_cycle():
            self._end_after(cycle)
            return
        # Reading paused for this request's body or for the pipeline resumes: unread body is
        # drained (http11 discards it) and queued requests go on.
        if self._body_full or self._pipeline_full:
            self._body_full = self._pipeline_full = False
            self._update_reading()
        self._become_idle()
        self._process_events()
        if self.half_closed and self.phase <= _HEAD:
            self.close()  # the client half-closed and every request it sent is answered

    def fail_response(self, cycle: Cycle, page: Page | None) -> None:
        if self.cycle is not cycle:
            return  # the connection already ended the exchange (see _protocol_failure)
        gone = cycle.body.disconnected or self.closing
        note = _CLIENT_GONE if gone else ""
        if cycle.status == 0 or self._head:
            cycle.status = 500
            self._head = b""
            if page is None:
                self._write(self.conn.error_response(500, self.state.default_headers))
            else:
                self._write(
                    self.conn.error_response(
                        500,
                        self.state.default_headers,
                        body=page.body,
                        content_type=page.content_type,
                    )
                )
        elif not gone:
            note = _CUT_SHORT
        self._log(cycle, note)
        self._end_after(cycle)

    def close_after_response(self) -> None:
        if self.phase < _LINGER:
            self.shutdown()

    def abandon(self, cycle: Cycle) -> None:
        if self.cycle is not cycle:
            return
        cycle.status = _CLIENT_CLOSED_REQUEST
        self._log(cycle, "client went away before the app ran")
        self.close()

    @property
    def backlogged(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_write_buffer_size() > self._low_water

    @property
    def closing(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing()

    def on_writable(self, callback: Callable[[], None]) -> None:
        if not self.write_paused or self.phase >= _LINGER:
            self.state.loop.call_soon(callback)
        else:
            self._drain_waiters.append(callback)

    def detach(self) -> socket.socket | None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._head or self.conn.response_started:
            return None
        raw = transport.get_extra_info("socket")
        if raw is None:
            return None
        # A duplicate keeps the connection open once the transport closes its descriptor;
        # abort() closes without a shutdown, which would end the connection for both.
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        self.cycle = None
        self._enter(_CLOSED)
        transport.abort()
        return sock

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _log(self, cycle: Cycle, note: str = "") -> None:
        log = self.state.access_log
        if log is None:
            return
        request = cycle.request
        info = cycle.info
        log.log(
            # The client a trusted proxy named, as the app saw it (uvicorn logs it too).
            self._client_text if info is self.info else _client_text(info.client),
            f"{request.method.decode('ascii', 'replace')} "
            f"{request.target.decode('ascii', 'replace')} HTTP/{request.http_version}",
            cycle.status,
            self.conn.body_sent,
            (time.perf_counter() - cycle.started_at) * 1000.0,
            note,
        )

    def _log_refused(self, failure: ProtocolFailure) -> None:
        """A request refused before any app saw it (a 400, 413, 414, 431 or 408)."""
        log = self.state.access_log
        if log is not None:
            began = self._head_began
            log.log(
                self._client_text,
                failure.request_line,
                failure.status,
                self.conn.body_sent,
                (self.state.loop.time() - began) * 1000.0 if began else 0.0,
                failure.reason,
            )

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for callback in waiters:
            callback()

    # reading, phases, closing

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._body_full or self._pipeline_full:
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def _become_idle(self) -> None:
        """Between requests: the keep-alive period starts (or the head timeout, when part of
        the next request head came in with the last request)."""
        state = self.state
        now = state.loop.time()
        if self.conn.head_in_progress:
            self._head_began = now
            self._enter(_HEAD, now + state.head_timeout)
        else:
            self._enter(_IDLE, now + state.keep_alive_timeout)

    def _enter(self, phase: Phase, deadline: float = 0.0) -> None:
        self.phase = phase
        self._deadline = deadline
        if deadline:
            self._timer.arm(deadline)
        if self.state.limit_concurrency:
            idle = self.state.idle
            if phase <= _HEAD:
                if self not in idle:
                    idle[self] = None
            else:
                idle.pop(self, None)

    def _leave(self) -> None:
        """The connection is closed: it leaves the server's books and keeps no timer."""
        state = self.state
        if self.phase is _LINGER:
            state.lingering -= 1
        self.phase = _CLOSED
        self._deadline = 0.0
        self._timer.cancel()
        state.idle.pop(self, None)

    def _on_timer(self) -> None:
        deadline = self._deadline
        if not deadline:
            return  # nothing is being waited for; the next wait arms the timer again
        if deadline > self.state.loop.time():
            self._timer.arm(deadline)
            return
        phase = self.phase
        if phase is _HEAD:
            self._protocol_failure(ProtocolFailure(408, "request head not received in time"))
        elif phase is _BODY_WAIT:
            # The app sees the client gone (http.disconnect, ClientDisconnected).
            self._protocol_failure(ProtocolFailure(408, "request body not received in time"))
        else:
            self.close()

    @property
    def in_grace(self) -> bool:
        return self.phase is _GRACE

    def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Server shutdown: close now when idle, else after the response in progress.

        A connection that has not sent its first request yet, or is part-way through a head,
        is not idle: its client connected before the shutdown and expects an answer (a reload
        swaps workers under it). It gets `grace` seconds for the request to arrive, which is
        then answered with `Connection: close`.
        """
        phase = self.phase
        if phase is _LINGER:
            self.close()
            return
        if phase >= _GRACE:
            return
        self._stopping = True
        cycle = self.cycle
        if cycle is None:
            if self._served and not self.conn.head_in_progress:
                self.close()
            else:
                self._enter(_GRACE, self.state.loop.time() + grace)
            return
        if not cycle.response_started:
            # Tell the client in the response itself that this connection ends with it.
            self.conn.keep_alive = False

    def close(self) -> None:
        self._leave()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _end_after(self, cycle: Cycle) -> None:
        """Close after the response to `cycle`; linger if the client may still be sending the
        body the app left unread."""
        body = cycle.body
        if body.complete or body.disconnected:
            self.close()
        else:
            self._linger()

    def _linger(self) -> None:
        """Close after a final response without a reset destroying it (RFC 9112 §9.6).

        Closing with unread bytes in the kernel's receive buffer sends a TCP reset, which can
        discard the response before the client reads it. So only the writing side is shut;
        what the client still sends is read and dropped until it closes too, or `LINGER` runs
        out. Not when the client has half-closed already, nor during shutdown.
        """
        transport = self.transport
        if (
            transport is None
            or transport.is_closing()
            or self.phase >= _LINGER
            or self.half_closed
            or self._stopping
        ):
            self.close()
            return
        try:
            half_close = transport.can_write_eof()
        except NotImplementedError:  # a transport that predates write_eof
            half_close = False
        if not half_close:
            self.close()
            return
        self._enter(_LINGER, self.state.loop.time() + LINGER)
        self.state.lingering += 1
        transport.write_eof()
        if not transport.is_reading():
            transport.resume_reading()

    def _reject(self) -> None:
        """Over the connection limit with every connection busy: 503, then close."""
        state = self.state
        state.connections.add(self)  # closed at shutdown like the others
        self._write(self.conn.error_response(503, state.default_headers, _TOO_MANY))
        self._linger()

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (see `ServerState.admit`)."""
        state = self.state
        state.connections.discard(self)  # no longer counted, though closing takes a tick
        if self.conn.head_in_progress:
            self._write(self.conn.error_response(503, state.default_headers, _TOO_MANY))
        self.close()

    def abort(self) -> None:
        self._leave()
        if self.transport is not None:
            self.transport.abort()


class _FileSend:
    """A file going out with sendfile as a response's body bytes, on the loop.

    The transport's own writes must be done first (the head): its write-buffer limits go to
    zero so that `resume_writing` says when. Then each writable turn sends what the socket
    takes, at most `SENDFILE_TURN`; `done` hears how many bytes went out.
    """

    __slots__ = (
        "_done",
        "_limits",
        "_watching",
        "connection",
        "count",
        "file",
        "offset",
        "own",
        "sent",
        "transport",
    )

    def __init__(
        self,
        connection: HttpProtocol,
        transport: asyncio.Transport,
        own: int,
        file: int,
        offset: int,
        count: int,
        done: Callable[[int], None],
    ) -> None:
        self.connection = connection
        self.transport = transport
        self.own = own
        self.file = file
        self.offset = offset
        self.count = count
        self.sent = 0
        self._done: Callable[[int], None] | None = done
        self._watching = False
        self._limits = transport.get_write_buffer_limits()

    def step(self) -> None:
        if self._done is None:
            return
        connection = self.connection
        if connection.closing:
            self.finish(gone=True)
            return
        transport = self.transport
        if transport.get_write_buffer_size():
            # The head, or what the transport held before, goes first: with zero limits,
            # `resume_writing` comes once its buffer is empty.
            transport.set_write_buffer_limits(high=0, low=0)
            connection.on_writable(self.step)
            return
        turn = 0
        while self.sent < self.count and turn < SENDFILE_TURN:
            want = min(self.count - self.sent, SENDFILE_TURN - turn)
            try:
                sent = os.sendfile(self.own, self.file, self.offset, want)
            except BlockingIOError:
                self._watch()
                return
            except OSError as exc:
                logger.debug("sendfile stopped: %s", exc)
                self.finish(gone=True)
                return
            if not sent:
                break  # the file ends before `count`: the response is cut short
            connection.conn.count_body(sent)
            self.offset += sent
            self.sent += sent
            turn += sent
        if self.sent < self.count and turn >= SENDFILE_TURN:
            connection.state.loop.call_soon(self.step)
            return
        self.finish(gone=False)

    def _watch(self) -> None:
        if not self._watching:
            self._watching = True
            self.connection.state.loop.add_writer(self.own, self._writable)

    def _writable(self) -> None:
        self._unwatch()
        self.step()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self.connection.state.loop.remove_writer(self.own)

    def finish(self, *, gone: bool) -> None:
        done = self._done
        if done is None:
            return
        self._done = None
        self._unwatch()
        os.close(self.own)
        connection = self.connection
        connection._sending = None
        transport = self.transport
        if not transport.is_closing():
            low, high = self._limits  # (asyncio gives them in that order)
            transport.set_write_buffer_limits(high=high, low=low)
            if gone:
                # The socket failed under sendfile; the transport may not know yet.
                transport.abort()
        logger.debug(
            "sendfile: %d of %d bytes sent%s", self.sent, self.count, " (gone)" if gone else ""
        )
        connection.state.loop.call_soon(done, self.sent)


def _forwarded_info(info: ConnectionInfo, headers: Headers, proxies: Trusted) -> ConnectionInfo:
    """The request's view of its connection once a trusted proxy's fields are taken in."""
    said = forwarded(headers, proxies)
    if said.client is None and said.scheme is None and said.host is None:
        return info
    return ConnectionInfo(
        said.client or info.client,
        info.server,
        said.scheme or info.scheme,
        info.tls,
        said.host,
    )


def _client_text(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"


def _address(info: object) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
