"""The seam between a connection and an app runner: one request and its response (`Cycle`),
the request body the app reads (`RequestBody`), and what each side offers the other
(`ResponseSink` from the connection, `AppRunner` from the runner). A request that asks to
become a WebSocket carries a `WebSocketOffer`; once accepted, the app reads `Messages` and
answers through a `MessageSink`."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from aserve.errorpage import Page, for_exception, is_local
from aserve.errors import AppProtocolError, ClientDisconnected
from aserve.types import AppHeaders, Headers


class RequestHead(Protocol):
    """A parsed request head, as a runner reads it (header names lower-cased)."""

    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def http_version(self) -> str: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def upgrade(self) -> bytes | None:
        """The protocols a bodiless request asks to switch to (its Upgrade field)."""
        ...


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What TLS carrying a connection tells the app, as the ASGI TLS extension names it:
    PEM certificates, the client's subject (RFC 4514), the TLS version and IANA cipher suite
    numbers."""

    server_cert: str | None
    client_cert_chain: tuple[str, ...]
    client_cert_name: str | None
    client_cert_error: str | None
    tls_version: int | None
    cipher_suite: int | None


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the transport knows of a connection: the addresses (None for a Unix socket peer)
    and the URL scheme, `https` once TLS carries it, with its details in `tls`. Behind a
    trusted proxy, a request's own copy holds what the proxy says of its client instead, and
    `host` the Host it forwarded."""

    client: tuple[str, int] | None
    server: tuple[str, int] | None
    scheme: str = "http"
    tls: TLSInfo | None = None
    host: str | None = None


class ResponseSink(Protocol):
    """What a connection offers the exchange in progress on it: HTTP/1.1 today, an HTTP/2
    stream or another transport later. The runner reaches it only through `Cycle`."""

    @property
    def write_paused(self) -> bool:
        """The peer reads slower than the app writes: wait for `on_writable`."""
        ...

    @property
    def backlogged(self) -> bool:
        """Written bytes wait above the low-water mark: a producer should let the loop run."""
        ...

    @property
    def closing(self) -> bool:
        """The connection is closing or gone: nothing more can be sent."""
        ...

    def start_response(self, status: int, headers: Headers, reason: bytes | None) -> None:
        """Check and hold the response head; it goes out with the first body bytes or on
        `flush_head()`. Raises AppProtocolError (nothing sent) for an invalid head."""
        ...

    def flush_head(self) -> None: ...

    def send_body(self, data: bytes) -> None: ...

    def send_parts(self, parts: list[bytes]) -> None:
        """Send `parts` as the next body bytes, in order, in one write (no bytes joined)."""
        ...

    def send_file(self, fd: int, offset: int, count: int, done: Callable[[int], None]) -> bool:
        """Send up to `count` bytes of the open file `fd` from `offset` as the next body bytes,
        by the kernel (sendfile), at most what the head's Content-Length leaves room for. False,
        and nothing done, where that cannot be (TLS, no sendfile, no Content-Length, a body
        not sent, as to HEAD): the caller sends the bytes itself. Else `done(sent)` is called
        on the loop when it is over; fewer than asked means the file ended or the client left."""
        ...

    def end_response(self, data: bytes, trailers: Headers | None = None) -> None:
        """Send the last body bytes (and `trailers`, where the framing carries them) and end
        the response; raises AppProtocolError (nothing sent) when that breaks the framing its
        head announced."""
        ...

    def send_interim(self, status: int, headers: Headers) -> None:
        """Send an informational (1xx) response now, before the final one; raises
        AppProtocolError (nothing sent) for an invalid one."""
        ...

    def response_done(self, cycle: Cycle) -> None:
        """The exchange is over: the connection logs it and moves on."""
        ...

    def fail_response(self, cycle: Cycle, page: Page | None) -> None:
        """The app failed: a 500 if nothing was sent yet (with `page` as its body, if given),
        else the response is cut short."""
        ...

    def close_after_response(self) -> None:
        """No further exchange on this connection: close it once the one in progress (if
        any) is answered."""
        ...

    def abandon(self, cycle: Cycle) -> None:
        """The client left before the app ran: log it, close, and answer nothing."""
        ...

    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop once writing may go on, or the peer is gone."""
        ...

    def detach(self) -> socket.socket | None:
        """Give the connection up to another owner (another process): the socket returned is
        the caller's, and nothing more is read or written, or logged, here. None when the
        connection is closing, or a response to this request has begun."""
        ...


class RequestBody:
    """Request body bytes received but not yet read, shared by the loop and one app thread.

    The connection `feed`s on the loop; the app `take`s everything buffered, from the loop
    (ASGI) or from a worker thread (WSGI), and waits with `wait()` or `wait_blocking()` when
    nothing is there. Taking calls `on_wanted` on the loop: the connection then resumes
    reading, or sends `100 Continue`.
    """

    __slots__ = (
        "_chunks",
        "_future",
        "_lock",
        "_loop",
        "_notified",
        "_on_wanted",
        "_size",
        "_thread_waiter",
        "_want",
        "complete",
        "disconnected",
        "error",
        "paused",
        "peer_done",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_wanted: Callable[[RequestBody], None]
    ) -> None:
        self._loop = loop
        self._on_wanted = on_wanted
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._thread_waiter: threading.Lock | None = None
        # Bytes the waiting thread wants before it is worth waking (see `wait_blocking`).
        self._want = 1
        # A thread's call of `on_wanted` is queued on the loop and has not run yet.
        self._notified = False
        self._future: asyncio.Future[None] | None = None
        self.complete = False
        self.disconnected = False
        # Why no more body will come, when it is not the client leaving (see `disconnect`).
        self.error: ClientDisconnected | None = None
        # The peer sends nothing more (it half-closed): a wait for it to leave ends.
        self.peer_done = False
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
            waiter = self._thread_waiter
            if waiter is not None and (self.paused or self._size >= self._want):
                self._thread_waiter = None
            else:
                waiter = None
        self._wake(waiter)
        return self.paused

    def finish(self) -> None:
        with self._lock:
            self.complete = True
            waiter, self._thread_waiter = self._thread_waiter, None
        self._wake(waiter)

    def disconnect(self, error: ClientDisconnected | None = None) -> None:
        """No more body: the client left, or `error` ended the body (over the size limit)."""
        with self._lock:
            self.disconnected = True
            self.error = error
            waiter, self._thread_waiter = self._thread_waiter, None
        self._wake(waiter)

    def half_close(self) -> None:
        """The peer half-closed after a complete request: it will send nothing more."""
        self.peer_done = True
        self._wake(None)

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
            notify = resume or (not chunks and not (self.complete or self.disconnected))
            if notify and from_thread:
                # One queued call is enough: it reads the buffer's state when it runs. A
                # reader that empties the buffer right after taking from a full one would
                # otherwise wake the loop twice per buffer.
                if self._notified:
                    notify = False
                else:
                    self._notified = True
        if notify:
            if from_thread:
                self._loop.call_soon_threadsafe(self._wanted_from_thread)
            else:
                self._on_wanted(self)
        return chunks

    def _wanted_from_thread(self) -> None:
        with self._lock:
            self._notified = False
        self._on_wanted(self)

    @property
    def has_data(self) -> bool:
        return self._size != 0

    def wake(self) -> None:
        """Release a loop-side waiter (the response ended, nothing more will come)."""
        self._wake(None)

    async def wait_disconnect(self) -> None:
        """On the loop: wait until the client leaves (or half-closes) or `wake()` is called."""
        if self.disconnected or self.peer_done:
            return
        future = self._loop.create_future()
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
        future = self._loop.create_future()
        self._future = future
        await future

    def wait_blocking(self, want: int = 1) -> None:
        """On a worker thread: block until `ready`, and, while the body goes on and reading is
        not paused for a full buffer, until `want` bytes are there: each wake-up is a hand-off
        between threads, and a reader that needs 64 KiB gains nothing from one per segment."""
        with self._lock:
            if self._size or self.complete or self.disconnected:
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._thread_waiter = waiter
            self._want = want
        waiter.acquire()


def as_bytes(data: object, what: str) -> bytes:
    """Bytes an app gave as bytes, bytearray or memoryview, as `bytes`: compiled code refuses
    anything but `bytes` where that is the declared type, so the app's values are converted
    where they enter. Raises AppProtocolError for anything else."""
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise AppProtocolError(f"{what} must be bytes, not {type(data).__name__}")


def as_fields(fields: AppHeaders) -> Headers:
    """An app's response fields as `Headers`: the same list when it is one of (bytes, bytes)
    tuples already, as servers and most apps build them; else a normalised copy. Raises
    AppProtocolError for a field that is no name-value pair of bytes."""
    if type(fields) is list:
        for field in fields:
            if not (
                type(field) is tuple
                and len(field) == 2
                and type(field[0]) is bytes
                and type(field[1]) is bytes
            ):
                break
        else:
            return cast(Headers, fields)
    normalised: Headers = []
    try:
        for name, value in fields:
            normalised.append((as_bytes(name, "header name"), as_bytes(value, "header value")))
    except (TypeError, ValueError) as exc:  # not iterable, or not a pair
        raise AppProtocolError(f"invalid response header: {exc}") from exc
    return normalised


class Cycle:
    """One request and its response, as an app runner sees them: the request head, the
    connection it came on, its body, and the response sent through the connection's sink.

    Loop-side methods only, except `body`, which a worker thread may read.
    """

    __slots__ = (
        "body",
        "done",
        "info",
        "request",
        "sink",
        "started_at",
        "status",
        "websocket",
    )

    def __init__(
        self, request: RequestHead, info: ConnectionInfo, sink: ResponseSink, body: RequestBody
    ) -> None:
        self.request = request
        self.info = info
        self.sink = sink
        self.body = body
        self.started_at = time.perf_counter()
        self.status = 0
        self.done = False
        # A valid WebSocket opening handshake the app may accept (set by the connection).
        self.websocket: WebSocketOffer | None = None

    @property
    def disconnected(self) -> bool:
        return self.body.disconnected

    @property
    def response_started(self) -> bool:
        return self.status != 0

    @property
    def write_paused(self) -> bool:
        return self.sink.write_paused

    @property
    def backlogged(self) -> bool:
        return self.sink.backlogged

    @property
    def closing(self) -> bool:
        """Nothing more can be sent (on the loop: the transport knows before `disconnected`)."""
        return self.sink.closing

    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop once writing may go on (or the client is gone)."""
        self.sink.on_writable(callback)

    def send_start(self, status: int, headers: AppHeaders, reason: bytes | None = None) -> None:
        """Begin the response; the head is written with the first body bytes or `flush()`."""
        if self.done:
            return
        self.sink.start_response(status, as_fields(headers), reason)
        self.status = status

    def flush(self) -> None:
        """Write a response head that is still waiting for body bytes."""
        if not self.done:
            self.sink.flush_head()

    def send_body(self, data: bytes) -> None:
        if self.done:
            return
        self.sink.send_body(data)

    def send_parts(self, parts: list[bytes]) -> None:
        """Body bytes in pieces, written as one (see `ResponseSink.send_parts`)."""
        if not self.done:
            self.sink.send_parts(parts)

    def send_file(self, fd: int, offset: int, count: int, done: Callable[[int], None]) -> bool:
        """Body bytes from a file by sendfile, when the sink can (see `ResponseSink.send_file`)."""
        if self.done:
            return False
        return self.sink.send_file(fd, offset, count, done)

    def send_interim(self, status: int, headers: AppHeaders) -> None:
        """An informational response (103 Early Hints) before the final one."""
        if not self.done:
            self.sink.send_interim(status, as_fields(headers))

    def send_end(self, data: bytes = b"") -> None:
        """Finish the response (with a last piece of body); the connection then moves on."""
        if self.done:
            return
        self.sink.end_response(data)
        self.done = True
        self.sink.response_done(self)

    def send_end_with(self, trailers: AppHeaders) -> None:
        """Finish the response with trailer fields after its body."""
        if self.done:
            return
        self.sink.end_response(b"", as_fields(trailers))
        self.done = True
        self.sink.response_done(self)

    def fail(self, page: Page | None = None) -> None:
        """The app failed: a 500 if nothing was sent yet (`page` its body, if given), else the
        connection is closed."""
        if self.done:
            # It broke its protocol after the response: the connection cannot be trusted.
            self.sink.close_after_response()
            return
        self.done = True
        self.sink.fail_response(self, page)

    def error_page(self, exc: BaseException) -> Page | None:
        """In development, the traceback page for a request whose app raised `exc`: only for a
        client on this machine (a traceback tells much about the code), else None."""
        if not is_local(self.info.client):
            return None
        request = self.request
        accept = b""
        for name, value in request.headers:
            if name == b"accept":
                accept = value
        line = (
            f"{request.method.decode('ascii', 'replace')} "
            f"{request.target.decode('ascii', 'replace')}"
        )
        return for_exception(exc, line, accept)

    def abandon(self) -> None:
        """The client left while the request waited for the app: it never runs."""
        if not self.done:
            self.done = True
            self.sink.abandon(self)


class MessageSink(Protocol):
    """What an open WebSocket offers its runner: a connection switched from HTTP/1.1 by a
    101 today, an HTTP/2 stream (RFC 8441) later. Loop side only."""

    @property
    def write_paused(self) -> bool:
        """The peer reads slower than the app writes: wait for `on_writable`."""
        ...

    @property
    def closing(self) -> bool:
        """The WebSocket is closing or gone: no message can be sent."""
        ...

    def send_message(self, data: str | bytes) -> None:
        """Send a text (str) or binary (bytes) message."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; raises AppProtocolError for a code an endpoint may
        not send."""
        ...

    def fail(self, code: int, reason: str) -> None:
        """Close at once (the app broke its protocol or raised): nothing more is read."""
        ...

    def on_writable(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop once writing may go on, or the peer is gone."""
        ...


class Messages:
    """Messages the peer sent that the app has not received yet, and how the WebSocket ended.

    The connection `feed`s them and `end`s the WebSocket; the app `take`s one at a time and
    waits with `wait()` when none is there. Taking from a full queue calls `on_wanted`: the
    connection then resumes reading. Loop side only.
    """

    __slots__ = ("_future", "_loop", "_on_wanted", "_queue", "closed", "limit", "paused", "sink")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sink: MessageSink,
        limit: int,
        on_wanted: Callable[[], None],
    ) -> None:
        self._loop = loop
        self.sink = sink
        self.limit = limit
        self._on_wanted = on_wanted
        self._queue: deque[str | bytes] = deque()
        self._future: asyncio.Future[None] | None = None
        # The close code and reason, once the WebSocket is over.
        self.closed: tuple[int, str] | None = None
        # Reading is paused until the app takes a message.
        self.paused = False

    def feed(self, message: str | bytes) -> bool:
        """Queue `message`; True when the queue is full and reading should pause."""
        queue = self._queue
        queue.append(message)
        self._wake()
        if len(queue) >= self.limit:
            self.paused = True
        return self.paused

    def end(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self._wake()

    def _wake(self) -> None:
        future = self._future
        if future is not None:
            self._future = None
            if not future.done():
                future.set_result(None)

    def take(self) -> str | bytes | None:
        """The oldest message not yet received, or None."""
        queue = self._queue
        if not queue:
            return None
        message = queue.popleft()
        if self.paused and len(queue) < self.limit:
            self.paused = False
            self._on_wanted()
        return message

    async def wait(self) -> None:
        """Wait until a message is there or the WebSocket is over."""
        if self._queue or self.closed is not None:
            return
        future = self._loop.create_future()
        self._future = future
        await future


class WebSocketOffer(Protocol):
    """What a connection offers for a request that is a valid WebSocket opening handshake:
    the subprotocols the client offered, and the switch once the app accepts. Denying is an
    ordinary response through the cycle."""

    @property
    def subprotocols(self) -> list[str]: ...

    def accept(self, cycle: Cycle, subprotocol: str | None, headers: Headers) -> Messages:
        """Send the 101 response and hand the connection over to the WebSocket. Raises
        AppProtocolError, nothing sent, for a subprotocol the client did not offer or an
        invalid header."""
        ...


class AppRunner(Protocol):
    """Runs an application: each request arrives as a `Cycle`, answered on the loop through it
    and finally `send_end` (or `fail`)."""

    # Whether its apps take WebSockets: when not, a request asking for one is plain HTTP.
    websockets: bool

    async def startup(self) -> None:
        """Before the first request (ASGI lifespan); raises LifespanError when it failed."""
        ...

    def handle(self, cycle: Cycle) -> None: ...

    async def shutdown(self, timeout: float) -> None:
        """After the last connection closed: stop what still runs, giving it `timeout`."""
        ...
