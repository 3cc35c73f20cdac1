"""The asyncio.Protocol: feeds bytes to `http11`, applies flow control both ways, runs timers.

Each request becomes a `Cycle`, handed to an `AppRunner` (ASGI or WSGI); the runner answers
through the cycle and never touches the transport or the HTTP state itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from aserve.logs import AccessLog
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


class AppRunner(Protocol):
    """Serves one request: answers through `cycle.send_*` (on the loop) and finally `send_end`."""

    def handle(self, cycle: Cycle) -> None: ...


class ServerState:
    """What every connection of one server shares."""

    __slots__ = (
        "access_log",
        "body_timeout",
        "connections",
        "default_headers",
        "field_memo",
        "head_timeout",
        "idle",
        "keep_alive_timeout",
        "limit_buffer",
        "limit_concurrency",
        "limits",
        "lingering",
        "loop",
        "root_path",
        "runner",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        runner: AppRunner,
        *,
        limits: Limits,
        limit_buffer: int,
        keep_alive_timeout: float,
        root_path: str,
        access_log: AccessLog | None,
        head_timeout: float = 10.0,
        body_timeout: float = 30.0,
        limit_concurrency: int = 0,
    ) -> None:
        self.loop = loop
        self.runner = runner
        self.limits = limits
        self.limit_buffer = limit_buffer
        self.keep_alive_timeout = keep_alive_timeout
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.limit_concurrency = limit_concurrency
        self.root_path = root_path
        self.access_log = access_log
        self.connections: set[HttpProtocol] = set()
        # Connections with no request in the app, longest idle first (kept with a limit only).
        self.idle: dict[HttpProtocol, None] = {}
        # Connections in `connections` that only wait to close after a final response (see
        # `HttpProtocol._linger`): shutdown closes them, the connection limit ignores them.
        self.lingering = 0
        # Date and Server lines, refreshed once a second by the server.
        self.default_headers = b"server: aserve\r\n"
        # Response fields its connections have validated (see http11.FieldMemo).
        self.field_memo: FieldMemo = {}

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


class RequestBody:
    """Request body bytes received but not yet read, shared by the loop and one app thread.

    The loop `feed`s; the app `take`s everything buffered, from the loop (ASGI) or from a
    worker thread (WSGI), and waits with `wait()` or `wait_blocking()` when nothing is there.
    """

    __slots__ = (
        "_chunks",
        "_future",
        "_lock",
        "_protocol",
        "_size",
        "_thread_waiter",
        "complete",
        "disconnected",
        "paused",
    )

    def __init__(self, protocol: HttpProtocol) -> None:
        self._protocol = protocol
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._thread_waiter: threading.Lock | None = None
        self._future: asyncio.Future[None] | None = None
        self.complete = False
        self.disconnected = False
        # Reading from the socket is paused until the app takes what is buffered.
        self.paused = False

    # loop side

    def feed(self, data: bytes, limit: int) -> bool:
        """Buffer `data`; True when the buffer is full and reading should pause."""
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            if self._size >= limit:
                self.paused = True
            waiter, self._thread_waiter = self._thread_waiter, None
        self._wake(waiter)
        return self.paused

    def finish(self) -> None:
        with self._lock:
            self.complete = True
            waiter, self._thread_waiter = self._thread_waiter, None
        self._wake(waiter)

    def disconnect(self) -> None:
        with self._lock:
            self.disconnected = True
            waiter, self._thread_waiter = self._thread_waiter, None
        self._wake(waiter)

    def _wake(self, waiter: threading.Lock | None) -> None:
        if waiter is not None:
            waiter.release()
        future = self._future
        if future is not None:
            self._future = None
            if not future.done():
                future.set_result(None)

    # consumer side

    def take(self, *, from_thread: bool) -> bytes:
        """Everything buffered (b"" when nothing is); asks for more from the socket."""
        chunks = self.take_chunks(from_thread=from_thread)
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def take_chunks(self, *, from_thread: bool) -> list[bytes]:
        """Everything buffered, as received (no bytes joined); asks for more from the socket."""
        with self._lock:
            if self._size:
                chunks = list(self._chunks)
                self._chunks.clear()
                self._size = 0
            else:
                chunks = []
            resume = self.paused
            self.paused = False
            more_wanted = not (self.complete or self.disconnected)
        if resume or (not chunks and more_wanted):
            protocol = self._protocol
            if from_thread:
                protocol.state.loop.call_soon_threadsafe(protocol.body_wanted)
            else:
                protocol.body_wanted()
        return chunks

    @property
    def has_data(self) -> bool:
        return self._size != 0

    def wake(self) -> None:
        """Release a loop-side waiter (the response ended, nothing more will come)."""
        self._wake(None)

    async def wait_disconnect(self) -> None:
        """On the loop: wait until the client leaves (or half-closes) or `wake()` is called."""
        if self.disconnected or self._protocol.half_closed:
            return
        future = self._protocol.state.loop.create_future()
        self._future = future
        await future

    @property
    def ready(self) -> bool:
        """`take()` would return data, or the body is over."""
        return bool(self._size) or self.complete or self.disconnected

    async def wait(self) -> None:
        """On the loop: wait until `ready`."""
        if self.ready:
            return
        future = self._protocol.state.loop.create_future()
        self._future = future
        await future

    def wait_blocking(self) -> None:
        """On a worker thread: block until `ready`."""
        with self._lock:
            if self._size or self.complete or self.disconnected:
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._thread_waiter = waiter
        waiter.acquire()


class Cycle:
    """One request and its response, as the app runners see them. Loop-side methods only,
    except `body` which a worker thread may read."""

    __slots__ = (
        "_head",
        "_protocol",
        "body",
        "client",
        "done",
        "request",
        "response_bytes",
        "root_path",
        "scheme",
        "server",
        "started_at",
        "status",
    )

    def __init__(self, protocol: HttpProtocol, request: Request) -> None:
        self._protocol = protocol
        self.request = request
        self.body = RequestBody(protocol)
        self.client = protocol.client
        self.server = protocol.server
        self.scheme = "http"
        self.root_path = protocol.state.root_path
        self.started_at = time.perf_counter()
        self.status = 0
        self.response_bytes = 0
        self.done = False
        self._head = b""

    @property
    def disconnected(self) -> bool:
        return self.body.disconnected

    @property
    def response_started(self) -> bool:
        return self.status != 0

    @property
    def write_paused(self) -> bool:
        return self._protocol.write_paused

    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop once writing may go on (or the client is gone)."""
        self._protocol.add_drain_waiter(callback)

    def send_start(self, status: int, headers: Headers, reason: bytes | None = None) -> None:
        """Begin the response; the head is written with the first body bytes or `flush()`."""
        if self.done:
            return
        self._head = self._protocol.conn.response_head(
            status, headers, self._protocol.state.default_headers, reason
        )
        self.status = status

    def flush(self) -> None:
        """Write a response head that is still waiting for body bytes."""
        if self._head and not self.done:
            head, self._head = self._head, b""
            self._protocol.write(head)

    def send_body(self, data: bytes) -> None:
        if self.done:
            return
        out = self._protocol.conn.body_bytes(data)
        self.response_bytes += len(data)
        if self._head:
            out = self._head + out
            self._head = b""
        if out:
            self._protocol.write(out)

    def send_end(self, data: bytes = b"") -> None:
        """Finish the response (with a last piece of body); the connection then moves on."""
        if self.done:
            return
        conn = self._protocol.conn
        out = conn.body_bytes(data) + conn.end_bytes() if data else conn.end_bytes()
        self.response_bytes += len(data)
        if self._head:
            out = self._head + out
            self._head = b""
        if out:
            self._protocol.write(out)
        self.done = True
        self._protocol.cycle_done(self)

    def fail(self) -> None:
        """The app failed: a 500 if nothing was sent yet, else the connection is closed."""
        if self.done:
            # It broke its protocol after the response: end the connection once idle.
            self._protocol.shutdown()
            return
        self.done = True
        protocol = self._protocol
        if self.status == 0 or self._head:
            self.status = 500
            self._head = b""
            protocol.write(protocol.conn.error_response(500, protocol.state.default_headers))
        protocol.log_access(self)
        protocol.end_after(self)


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.conn = Connection(state.limits, state.field_memo)
        self.transport: asyncio.Transport | None = None
        self.cycle: Cycle | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self._client_text = "-"
        self.write_paused = False
        self._drain_waiters: list[Callable[[], None]] = []
        self._read_paused = False
        self._pipeline_paused = False
        # One lazy timer serves every deadline (see `_deadline`); it fires at `_timer_at`.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._idle_since = 0.0
        # When the request head being received began to count (None: no head under way).
        self._head_since: float | None = None
        # Since when the app has been waiting for request body bytes (None: it is not).
        self._body_wait_since: float | None = None
        self._linger_until = 0.0
        # Whether a request was ever started here; until then shutdown waits for one.
        self._served = False
        self._drain_until = 0.0
        self._lingering = False
        self._closed = False
        self._draining = False
        self.half_closed = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        state = self.state
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Responses are written whole; Nagle would only delay the last segment.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        self._client_text = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        if not state.admit():
            self._reject()
            return
        state.connections.add(self)
        if state.limit_concurrency:
            state.idle[self] = None
        # The first request head counts from the connection: a client that connects and sends
        # nothing is gone after the shorter of the keep-alive and head timeouts.
        now = state.loop.time()
        self._idle_since = self._head_since = now
        self._arm(now + min(state.keep_alive_timeout, state.head_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        state.connections.discard(self)
        state.idle.pop(self, None)
        if self._lingering:
            self._lingering = False
            state.lingering -= 1
        self._cancel_timer()
        self._closed = True
        cycle = self.cycle
        if cycle is not None:
            cycle.body.disconnect()
        self._wake_drain_waiters()

    def eof_received(self) -> bool:
        # A half-closed client may still read the responses to what it sent.
        self.half_closed = True
        if self.cycle is None:
            return False
        if not self.cycle.body.complete:
            # The body can never be completed: the request is truncated (RFC 9112 §8).
            self._protocol_failure(ProtocolFailure(400, "request body incomplete"))
        else:
            # A close and a half-close look alike: a receive() waiting for the client to leave
            # hears of it (a long poll ends), while responses still go out.
            self.cycle.body.wake()
        return True

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # read only so that closing does not reset the connection (see `_linger`)
        conn = self.conn
        conn.receive_data(data)
        self._process_events()
        if (
            self.cycle is None
            and self._head_since is None
            and not self._closed
            and conn.head_in_progress
        ):
            # A request head began: it must be complete in time, however slowly it trickles
            # in; its bytes never restart the keep-alive period.
            self._head_since = now = self.state.loop.time()
            self._arm(now + self.state.head_timeout)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain_waiters()

    # events from http11

    def _process_events(self) -> None:
        conn = self.conn
        while not self._closed:
            event = conn.next_event()
            if event is None:
                break
            if type(event) is Request:
                self._start_cycle(event)
            elif type(event) is Data:
                cycle = self.cycle
                if cycle is not None:
                    self._body_wait_since = None
                    if cycle.body.feed(event.data, self.state.limit_buffer):
                        self._pause_reading()
            elif type(event) is EndOfMessage:
                if self.cycle is not None:
                    self._body_wait_since = None
                    self.cycle.body.finish()
            else:
                self._protocol_failure(cast(ProtocolFailure, event))
                return
        if not self._pipeline_paused and conn.has_queued_request:
            self._pipeline_paused = True
            self._update_reading()

    def _start_cycle(self, request: Request) -> None:
        cycle = Cycle(self, request)
        self.cycle = cycle
        self._served = True
        if self._draining:
            self.conn.keep_alive = False  # the server is stopping: this response ends it
        self._head_since = None
        state = self.state
        if state.limit_concurrency:
            state.idle.pop(self, None)
        state.runner.handle(cycle)

    def _protocol_failure(self, failure: ProtocolFailure) -> None:
        cycle = self.cycle
        if cycle is not None:
            cycle.body.disconnect()
            cycle.done = True
            self.cycle = None
        if failure.respond and (cycle is None or not cycle.response_started):
            self.write(
                self.conn.error_response(failure.status, self.state.default_headers, failure.reason)
            )
            if cycle is not None:
                cycle.status = failure.status
                self.log_access(cycle)
        # The client may still be sending (a body over the limit, more pipelined requests).
        self._linger()

    # called through Cycle

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def cycle_done(self, cycle: Cycle) -> None:
        self.log_access(cycle)
        if self.cycle is not cycle:
            return
        self.cycle = None
        if self._draining or not self.conn.start_next_cycle():
            self.end_after(cycle)
            return
        # Reading paused for this request's body or for the pipeline resumes: unread body is
        # drained (http11 discards it) and queued requests go on.
        if self._read_paused or self._pipeline_paused:
            self._read_paused = False
            self._pipeline_paused = False
            self._update_reading()
        self._process_events()
        if self.cycle is None and not self._closed:
            if self.half_closed:
                self.close()  # the client half-closed and every request it sent is answered
            else:
                self._become_idle()

    def log_access(self, cycle: Cycle) -> None:
        log = self.state.access_log
        if log is None:
            return
        request = cycle.request
        log.write(
            f"{self._client_text} - "
            f'"{request.method.decode("ascii", "replace")} '
            f'{request.target.decode("ascii", "replace")} HTTP/{request.http_version}" '
            f"{cycle.status} {cycle.response_bytes} "
            f"{(time.perf_counter() - cycle.started_at) * 1000.0:.1f}ms"
        )

    def body_wanted(self) -> None:
        """The app wants request body bytes: resume reading, send `100 Continue` once."""
        cycle = self.cycle
        if cycle is None:
            return
        interim = self.conn.continue_bytes()
        if interim:
            self.write(interim)
        body = cycle.body
        if self._read_paused and not body.paused:
            self._read_paused = False
            self._update_reading()
        if (
            self._body_wait_since is None
            and not body.has_data
            and not body.complete
            and not body.disconnected
        ):
            self._body_wait_since = now = self.state.loop.time()
            self._arm(now + self.state.body_timeout)

    def add_drain_waiter(self, callback: Callable[[], None]) -> None:
        if not self.write_paused or self._closed:
            self.state.loop.call_soon(callback)
        else:
            self._drain_waiters.append(callback)

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for callback in waiters:
            callback()

    # reading, timers, closing

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._read_paused or self._pipeline_paused:
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def _become_idle(self) -> None:
        """Between requests: the keep-alive period starts (or the head timeout, when part of
        the next request head came in with the last request)."""
        state = self.state
        now = state.loop.time()
        self._idle_since = now
        self._body_wait_since = None
        if state.limit_concurrency:
            state.idle[self] = None
        if self.conn.head_in_progress:
            self._head_since = now
            self._arm(now + state.head_timeout)
        else:
            self._head_since = None
            self._arm(now + state.keep_alive_timeout)

    def _deadline(self) -> tuple[float, Callable[[], None]] | None:
        """When the connection's current wait runs out, and what to do then."""
        if self._lingering:
            return self._linger_until, self.close
        if self._closed:
            return None
        state = self.state
        cycle = self.cycle
        if cycle is None:
            if self._draining:
                return self._drain_until, self.close
            idle_end = self._idle_since + state.keep_alive_timeout
            head_since = self._head_since
            if head_since is None:
                return idle_end, self.close
            head_end = head_since + state.head_timeout
            if self.conn.head_in_progress:
                return head_end, self._head_timed_out
            return min(idle_end, head_end), self.close
        if self._body_wait_since is not None:
            return self._body_wait_since + state.body_timeout, self._body_timed_out
        return None

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires by `deadline`.

        The timer is lazy: a later deadline only changes what `_deadline` computes, and the
        pending timer re-arms itself for what is left when it fires, so a busy keep-alive
        connection costs no timer handle per request.
        """
        timer = self._timer
        if timer is not None:
            if deadline >= self._timer_at:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.state.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        due = self._deadline()
        if due is None:
            return  # nothing is being waited for; the next wait arms the timer again
        deadline, expire = due
        if deadline > self.state.loop.time():
            self._arm(deadline)
        else:
            expire()

    def _head_timed_out(self) -> None:
        self._protocol_failure(ProtocolFailure(408, "request head not received in time"))

    def _body_timed_out(self) -> None:
        # The app sees the client gone (http.disconnect, ClientDisconnected).
        self._protocol_failure(ProtocolFailure(408, "request body not received in time"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self) -> None:
        """Server shutdown: close now when idle, else after the response in progress.

        A connection that has not sent its first request yet, or is part-way through a head,
        is not idle: its client connected before the shutdown and expects an answer (a reload
        swaps workers under it). It gets `SHUTDOWN_GRACE` for the request to arrive, which is
        then answered with `Connection: close`.
        """
        if self.cycle is None:
            if self._served and not self.conn.head_in_progress:
                self.close()
                return
            self._draining = True
            self._drain_until = self.state.loop.time() + SHUTDOWN_GRACE
            self._arm(self._drain_until)
            return
        self._draining = True
        if not self.cycle.response_started:
            # Tell the client in the response itself that this connection ends with it.
            self.conn.keep_alive = False

    def close(self) -> None:
        self._closed = True
        state = self.state
        if self._lingering:
            self._lingering = False
            state.lingering -= 1
        self._cancel_timer()
        state.idle.pop(self, None)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def end_after(self, cycle: Cycle) -> None:
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
            or self._lingering
            or self.half_closed
            or self._draining
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
        self._closed = True
        self._lingering = True
        state = self.state
        state.lingering += 1
        state.idle.pop(self, None)
        transport.write_eof()
        if not transport.is_reading():
            transport.resume_reading()
        self._linger_until = state.loop.time() + LINGER
        self._arm(self._linger_until)

    def _reject(self) -> None:
        """Over the connection limit with every connection busy: 503, then close."""
        state = self.state
        state.connections.add(self)  # closed at shutdown like the others
        self.write(
            self.conn.error_response(
                503, state.default_headers, "too many connections; try again shortly"
            )
        )
        self._linger()

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (see `ServerState.admit`)."""
        state = self.state
        state.connections.discard(self)  # no longer counted, though closing takes a tick
        if self.conn.head_in_progress:
            self.write(
                self.conn.error_response(
                    503, state.default_headers, "too many connections; try again shortly"
                )
            )
        self.close()

    def abort(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.abort()


def _address(info: object) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
