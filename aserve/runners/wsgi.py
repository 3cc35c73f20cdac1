"""WSGI (PEP 3333) app runner: a bounded thread pool, a streaming `wsgi.input`, and responses
handed to the loop in batches with backpressure, never blocking the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from queue import SimpleQueue
from typing import IO, Final, Protocol, cast

from aserve import __version__
from aserve.errors import AppProtocolError, ClientDisconnected
from aserve.exchange import Cycle, as_bytes
from aserve.process import no_wakeup_preemption
from aserve.protocols.target import decode_path_latin1, remember_target, split_target
from aserve.types import Environ, ExcInfo, Headers, WSGIApp

logger = logging.getLogger("aserve.error")

# Once the last connection has closed, how long the pool's threads may take to finish what
# they run; they are daemon threads, so one stuck in the app does not keep the process.
THREAD_JOIN_WAIT = 1.0

# The most distinct header names whose environ keys are remembered.
_KEY_CACHE_SIZE = 512

# Response fields encoded, by the app's name then value: apps send the same few over and over
# (Content-Type, Vary...), and the same bytes objects each time spare the encoding here and
# let http11's FieldMemo find them by their cached hashes. Nothing here is validated (http11
# checks every field it has not remembered). Bounded as http11's memo is; Content-Length,
# whose value differs per response, is never kept. The pairs are typed as objects: compiled
# code would check and unpack a tuple[bytes, bytes] read from the dict, then build a new
# tuple to put it in the list.
_FieldMemo = dict[str, dict[str, object]]
FIELD_MEMO_NAMES = 64
FIELD_MEMO_VALUES = 64
FIELD_MEMO_VALUE_MAX: Final = 256
_LENGTH_NAMES: Final = frozenset(("Content-Length", "content-length", "Content-length"))

# The environ keys of every request (REMOTE_* but for a Unix socket's), in the runner's base.
_REQUEST_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "wsgi.url_scheme",
    "wsgi.input",
    "REMOTE_ADDR",
    "REMOTE_PORT",
)

# The status lines apps send, as their code and no reason of their own (None: the standard
# phrase): one lookup instead of splitting, parsing and encoding it, and http11 then takes its
# prebuilt status line.
_STATUSES: dict[str, tuple[int, bytes | None]] = {
    f"{status.value} {status.phrase}": (status.value, None) for status in HTTPStatus
}

# A thread's response bytes handed to the loop at once, in flow-control buffers: an app that
# yields 64 KiB blocks cost a hand-off (two context switches) per block at 1; at 4 one
# writev carries four, and a response still holds at most this many buffers in memory.
BATCH_BUFFERS = 4

# What `_Response.send_file` answers when the loop could not take the file (the caller reads
# and sends it itself) or when the response ended meanwhile (nothing more to send).
_NO_SENDFILE = -1
_ENDED = -2


class FileWrapper:
    """`wsgi.file_wrapper`: iterate a file in blocks; `close()` closes it (PEP 3333)."""

    def __init__(self, filelike: IO[bytes], block_size: int = 65536) -> None:
        self.filelike = filelike
        self.block_size = block_size
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while data := read(self.block_size):
            yield data


class BodySource(Protocol):
    """What `wsgi.input` reads from: `exchange.RequestBody`, seen from a worker thread."""

    @property
    def complete(self) -> bool: ...
    @property
    def disconnected(self) -> bool: ...
    @property
    def error(self) -> ClientDisconnected | None: ...
    def take_chunks(self, *, from_thread: bool) -> list[bytes]: ...
    def wait_blocking(self, want: int = 1) -> None: ...


class InputStream:
    """`wsgi.input`: reads the request body from the socket as the app asks for it.

    At most the flow-control buffer is held in memory: the loop stops reading the socket
    until the app has taken what is buffered. Bytes are kept as received (a list of chunks
    and an offset into the first), so a read copies each byte once: a read that matches a
    chunk returns it as it is, and no buffer is grown or shifted.
    """

    def __init__(self, body: BodySource) -> None:
        self._body = body
        self._chunks: list[bytes] = []
        self._offset = 0  # into self._chunks[0]
        self._size = 0  # bytes buffered, from the offset on
        self._eof = False

    def _fill(self, want: int = 1) -> bool:
        """Buffer more of the body, waking for no less than `want` bytes unless the body ends
        or the flow-control buffer is full first; False at the end of the body."""
        if self._eof:
            return False
        body = self._body
        while True:
            # Read before the take: the loop may feed the last bytes and finish between the
            # two, and only a body complete before the take has nothing more to come after it.
            complete = body.complete
            chunks = body.take_chunks(from_thread=True)
            if chunks:
                self._chunks += chunks
                self._size += sum(map(len, chunks))
                return True
            if complete:
                self._eof = True
                return False
            if body.disconnected:
                raise body.error or ClientDisconnected(
                    "client disconnected while sending the request body"
                )
            body.wait_blocking(want)

    def _pop(self, size: int) -> bytes:
        """The next `size` buffered bytes (all of them if fewer are buffered)."""
        chunks = self._chunks
        if not chunks or size <= 0:
            return b""
        offset = self._offset
        first = chunks[0]
        available = len(first) - offset
        if size < available:
            self._offset = offset + size
            self._size -= size
            return first[offset : offset + size]
        if size == available or len(chunks) == 1:
            del chunks[0]
            self._offset = 0
            self._size -= available
            return first[offset:] if offset else first
        pieces = [first[offset:] if offset else first]
        taken = available
        index = 1
        while index < len(chunks) and taken + len(chunks[index]) <= size:
            pieces.append(chunks[index])
            taken += len(chunks[index])
            index += 1
        self._offset = 0
        if taken < size and index < len(chunks):
            part = size - taken
            pieces.append(chunks[index][:part])
            self._offset = part
            taken = size
        del chunks[:index]
        self._size -= taken
        return b"".join(pieces)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill(1 << 62):
                pass
            return self._pop(self._size)
        while self._size < size and self._fill(size - self._size):
            pass
        return self._pop(size)

    def readinto(self, buffer: object) -> int:
        """Fill `buffer` (any writable bytes-like object) with the next body bytes, copied
        once from what the socket gave; fewer than its length only at the end of the body."""
        view = memoryview(buffer).cast("B")  # type: ignore[arg-type]
        size = len(view)
        while self._size < size and self._fill(size - self._size):
            pass
        chunks = self._chunks
        filled = 0
        offset = self._offset
        while chunks and filled < size:
            first = chunks[0]
            take = min(len(first) - offset, size - filled)
            view[filled : filled + take] = memoryview(first)[offset : offset + take]
            filled += take
            if offset + take == len(first):
                del chunks[0]
                offset = 0
            else:
                offset += take
        self._offset = offset
        self._size -= filled
        return filled

    def _find_newline(self, start: int) -> int:
        """Position of the first LF at or after `start` in the buffered bytes, or -1."""
        skip = start
        position = 0
        offset = self._offset
        for chunk in self._chunks:
            length = len(chunk) - offset
            if skip < length:
                found = chunk.find(b"\n", offset + skip)
                if found != -1:
                    return position + found - offset
                skip = 0
            else:
                skip -= length
            position += length
            offset = 0
        return -1

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        start = 0
        while True:
            end = self._find_newline(start)
            if end != -1:
                end += 1
                break
            start = self._size
            if 0 <= limit <= start or not self._fill():
                end = self._size
                break
        if 0 <= limit < end:
            end = limit
        return self._pop(end)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class _Response:
    """The thread side of one response: `start_response`, `write()`, batching to the loop."""

    __slots__ = (
        "_blocked",
        "_end",
        "_flush_scheduled",
        "_limit",
        "_lock",
        "_pending",
        "_pending_size",
        "_waiter",
        "cycle",
        "headers",
        "headers_sent",
        "loop",
        "memo",
        "reason",
        "status",
    )

    def __init__(
        self, cycle: Cycle, loop: asyncio.AbstractEventLoop, limit: int, memo: _FieldMemo
    ) -> None:
        self.cycle = cycle
        self.loop = loop
        self.memo = memo
        self.status = 0
        self.reason: bytes | None = None
        self.headers: Headers = []
        self.headers_sent = False
        self._limit = limit * BATCH_BUFFERS
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._end = False
        self._flush_scheduled = False
        self._blocked = False
        self._waiter: threading.Lock | None = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and exc_info[1] is not None:
            try:
                if self.headers_sent:
                    # PEP 3333: too late to change the response; re-raise the app's error.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status:
            raise AppProtocolError("start_response() called twice without exc_info")
        known = _STATUSES.get(status)
        if known is not None:
            code, reason = known
        else:
            text, _, phrase = status.partition(" ")
            if len(text) != 3 or not text.isdigit():
                raise AppProtocolError(f"invalid WSGI status {status!r}")
            code = int(text)
            try:
                reason = phrase.encode("latin-1")
            except UnicodeEncodeError as exc:
                raise AppProtocolError(f"invalid WSGI status {status!r}") from exc
        try:
            self.headers = _encode_fields(headers, self.memo)
        except (UnicodeEncodeError, AttributeError, ValueError, TypeError) as exc:
            raise AppProtocolError(f"invalid WSGI response headers: {exc}") from exc
        self.reason = reason
        self.status = code
        return self.write

    def write(self, data: object) -> None:
        """The legacy `write()` callable, and how iterated chunks go out. `data` is typed as
        loosely as apps give it (a bytearray, say), so that compiled code does not refuse what
        the pure build takes; it is checked here."""
        if not self.status:
            raise AppProtocolError("write() or response body before start_response()")
        if type(data) is not bytes:
            data = as_bytes(data, "a WSGI response body chunk")
        if data:
            self._emit(data, end=False)

    def finish(self, data: bytes = b"") -> None:
        """End the response, with a last piece of body."""
        if not self.status:
            raise AppProtocolError("WSGI app returned without calling start_response()")
        if not self.headers_sent:
            # The whole response in one hand-off (most apps): nothing was handed to the loop
            # before, so nothing is shared with it yet, and the end never waits: no lock.
            self.headers_sent = True
            self.loop.call_soon_threadsafe(self._send_whole, data)
            return
        self._emit(data, end=True)

    def _send_whole(self, data: bytes) -> None:
        """On the loop: the response `finish` handed over at once (see `_flush`)."""
        cycle = self.cycle
        if cycle.done:
            return
        try:
            if not cycle.response_started:
                cycle.send_start(self.status, self.headers, self.reason)
            cycle.send_end(data)
        except AppProtocolError as exc:
            logger.error("Invalid WSGI response: %s", exc)
            cycle.fail()

    def _emit(self, data: bytes, end: bool) -> None:
        with self._lock:
            if data:
                self._pending.append(data)
                self._pending_size += len(data)
            self._end = end
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
            waiter = None
            if not end and (self._blocked or self._pending_size >= self._limit):
                waiter = threading.Lock()
                waiter.acquire()
                self._waiter = waiter
        self.headers_sent = True
        if schedule:
            self.loop.call_soon_threadsafe(self._flush)
        if waiter is not None:
            # Backpressure: wait until the loop has written the batch and the socket drains.
            waiter.acquire()

    def _flush(self) -> None:
        """On the loop: write everything the thread produced since the last flush."""
        with self._lock:
            chunks = self._pending
            self._pending = []
            self._pending_size = 0
            end = self._end
            self._flush_scheduled = False
        cycle = self.cycle
        if cycle.done:
            self._unblock()
            return
        try:
            if not cycle.response_started:
                cycle.send_start(self.status, self.headers, self.reason)
            if len(chunks) > 1:
                cycle.send_parts(chunks)
                if end:
                    cycle.send_end()
            elif end:
                cycle.send_end(chunks[0] if chunks else b"")
            else:
                cycle.send_body(chunks[0] if chunks else b"")
        except AppProtocolError as exc:
            logger.error("Invalid WSGI response: %s", exc)
            cycle.fail()
        if cycle.write_paused and not cycle.done:
            self._blocked = True
            cycle.on_writable(self._unblock)
        else:
            self._unblock()

    def send_file(self, fd: int, offset: int, count: int) -> int:
        """On the thread: have the loop send `count` bytes of the file `fd` from `offset` with
        sendfile, and wait until it has; the bytes sent, or `_NO_SENDFILE` (nothing sent: the
        caller sends the file itself) or `_ENDED` (the response is over)."""
        waiter = threading.Lock()
        waiter.acquire()
        result = [_NO_SENDFILE]

        def done(sent: int) -> None:
            result[0] = sent
            waiter.release()

        def start() -> None:
            cycle = self.cycle
            if cycle.done:
                done(_ENDED)
                return
            try:
                if not cycle.response_started:
                    cycle.send_start(self.status, self.headers, self.reason)
            except AppProtocolError as exc:
                logger.error("Invalid WSGI response: %s", exc)
                cycle.fail()
                done(_ENDED)
                return
            if not cycle.send_file(fd, offset, count, done):
                done(_NO_SENDFILE)

        self.headers_sent = True
        self.loop.call_soon_threadsafe(start)
        waiter.acquire()
        return result[0]

    def _unblock(self) -> None:
        with self._lock:
            self._blocked = False
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.release()


class WSGIRunner:
    """Runs a WSGI app on a bounded pool of threads; requests queue when all are busy."""

    # PEP 3333 has no WebSockets: a request asking for one is plain HTTP (RFC 9110 §7.8).
    websockets = False

    def __init__(
        self,
        app: WSGIApp,
        loop: asyncio.AbstractEventLoop,
        *,
        threads: int,
        limit_buffer: int,
        root_path: str,
        debug: bool = False,
        errors: IO[str] | None = None,
    ) -> None:
        self.app = app
        self.loop = loop
        # Development: a request whose app raised gets the traceback page (local clients).
        self.debug = debug
        self.limit_buffer = limit_buffer
        self.root_path = root_path
        # Each request, and whether it had to wait for a busy pool.
        self._queue: SimpleQueue[tuple[Cycle, bool] | None] = SimpleQueue()
        # One item per thread waiting for a request: a list's append and pop are atomic, so
        # its length counts them without a lock (two per request before).
        self._idle: list[None] = []
        self._context = contextvars.copy_context()
        self._keys: dict[bytes, str | None] = {}
        # The app's response fields encoded (see _FieldMemo), shared by the pool's threads.
        self._fields: _FieldMemo = {}
        # PATH_INFO and QUERY_STRING by request target (see protocols.target).
        self._targets: dict[bytes, tuple[str, str]] = {}
        self._base: Environ = {
            "wsgi.version": (1, 0),
            "wsgi.errors": errors if errors is not None else sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": f"aserve/{__version__}",
            # Every request sets these: present in the copy already, each is a replaced value
            # rather than an insertion, and the copy never grows its table for them.
            **dict.fromkeys(_REQUEST_KEYS, ""),
        }
        self._threads = [
            threading.Thread(target=self._work, name=f"aserve-wsgi-{i}", daemon=True)
            for i in range(threads)
        ]

    async def startup(self) -> None:
        for thread in self._threads:
            thread.start()

    def handle(self, cycle: Cycle) -> None:
        self._queue.put((cycle, not self._idle))

    async def shutdown(self, timeout: float) -> None:
        """Stop the threads once queued requests are done; stop waiting after `timeout` (at
        most `THREAD_JOIN_WAIT`)."""
        await asyncio.to_thread(self._join, min(timeout, THREAD_JOIN_WAIT))

    def _join(self, timeout: float) -> None:
        started = [thread for thread in self._threads if thread.ident is not None]
        for _ in started:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in started:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        no_wakeup_preemption()
        get = self._queue.get
        idle = self._idle
        serve = self._serve
        while True:
            idle.append(None)
            item = get()
            idle.pop()
            if item is None:
                return
            cycle, waited = item
            if cycle.done:
                continue
            if cycle.disconnected or (waited and cycle.body.peer_done):
                # The client left while its request waited for a busy pool: a client that
                # closes before its answer has given up (nginx logs 499), and the app never
                # runs for nobody. A request taken at once may come from a client that only
                # half-closed after sending it, and is served.
                self.loop.call_soon_threadsafe(cycle.abandon)
                continue
            self._context.copy().run(serve, cycle)

    def environ(self, cycle: Cycle) -> Environ:
        request = cycle.request
        # The memo asked here first: remember_target is not compiled, and a call costs more
        # than the lookup.
        target = self._targets.get(request.target)
        if target is None:
            target = remember_target(self._targets, request.target, _environ_target)
        info = cycle.info
        server = info.server or ("localhost", 0)
        environ = self._base.copy()
        environ["REQUEST_METHOD"] = request.method.decode("ascii")
        environ["SCRIPT_NAME"] = self.root_path
        environ["PATH_INFO"], environ["QUERY_STRING"] = target
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1])
        environ["SERVER_PROTOCOL"] = "HTTP/" + request.http_version
        scheme = environ["wsgi.url_scheme"] = info.scheme
        if scheme == "https":
            environ["HTTPS"] = "on"  # the CGI variable some frameworks read instead
        environ["wsgi.input"] = InputStream(cycle.body)
        client = info.client
        if client is not None:
            environ["REMOTE_ADDR"] = client[0]
            environ["REMOTE_PORT"] = str(client[1])
        else:
            del environ["REMOTE_ADDR"], environ["REMOTE_PORT"]
        keys = self._keys
        for name, value in request.headers:
            key = keys.get(name, "")
            if key == "":
                key = _environ_key(name)
                if len(keys) < _KEY_CACHE_SIZE:
                    keys[name] = key
            if key is None:
                continue
            text = value.decode("latin-1")
            if key in environ:
                # RFC 9110 §5.3: repeated fields combine into one comma-separated value.
                environ[key] += "," + text
            else:
                environ[key] = text
        if info.host is not None:
            # What a trusted proxy says the client asked for (PEP 3333's URL reconstruction
            # takes HTTP_HOST first; SERVER_NAME and SERVER_PORT stay the socket's).
            environ["HTTP_HOST"] = info.host
        return environ

    def _serve(self, cycle: Cycle) -> None:
        response = _Response(cycle, self.loop, self.limit_buffer, self._fields)
        try:
            result = self.app(self.environ(cycle), response.start_response)
            try:
                if type(result) in (list, tuple) or getattr(result, "streaming", None) is False:
                    # The whole body exists already (a list, or a non-streaming Django
                    # response): one hand-off to the loop and one write, not one per chunk.
                    response.finish(b"".join(result))
                elif type(result) is FileWrapper and self._send_file(cycle, response, result):
                    pass
                else:
                    self._stream(cycle, response, result)
            finally:
                _close(result)
        except Exception as exc:
            page = None
            if not cycle.disconnected and not isinstance(exc, ClientDisconnected):
                logger.exception("Exception in WSGI application")
                if self.debug:  # sent only if nothing of the response was
                    page = cycle.error_page(exc)
            # A client that left is logged as such; the app is blamed only for its own errors.
            self.loop.call_soon_threadsafe(cycle.fail, page)

    def _send_file(self, cycle: Cycle, response: _Response, wrapper: FileWrapper) -> bool:
        """Send a `wsgi.file_wrapper` over a regular file with sendfile: no byte of it passes
        through Python. False, nothing sent, where the connection cannot (TLS, chunked, HEAD)
        or the file is no regular file: the caller iterates the wrapper instead."""
        if not response.status or response.headers_sent:
            return False
        where = _regular_file(wrapper.filelike)
        if where is None:
            return False
        fd, offset, size = where
        sent = response.send_file(fd, offset, size)
        if sent == _NO_SENDFILE:
            response.headers_sent = False
            return False
        if sent == _ENDED:
            return True
        if cycle.disconnected or cycle.closing:
            self.loop.call_soon_threadsafe(cycle.fail)  # logged with the bytes that went out
        else:
            response.finish()
        return True

    def _stream(self, cycle: Cycle, response: _Response, result: Iterable[object]) -> None:
        head = cycle.request.method == b"HEAD"
        for chunk in result:
            if cycle.disconnected:
                break
            response.write(chunk)
            if head and response.headers_sent:
                # A HEAD response carries no body: the rest of a generator (2 GB, say) is
                # never produced. PEP 3333 lets a server stop iterating and close().
                break
        if cycle.disconnected:
            self.loop.call_soon_threadsafe(cycle.fail)  # logged with the bytes that went out
        else:
            response.finish()


def _regular_file(filelike: object) -> tuple[int, int, int] | None:
    """The descriptor, position and bytes left of a file object over a regular file, or None
    (a pipe, a socket, an in-memory file, anything without a usable fileno)."""
    try:
        fd = filelike.fileno()  # type: ignore[attr-defined]
        if not isinstance(fd, int):
            return None
        tell = getattr(filelike, "tell", None)
        position = tell() if tell is not None else 0
        status = os.fstat(fd)
    except (AttributeError, OSError, ValueError, TypeError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(status.st_mode) or not isinstance(position, int):
        return None
    return fd, position, max(0, status.st_size - position)


def _close(result: Iterable[bytes]) -> None:
    if type(result) is list or type(result) is tuple:
        # Neither has a close(); looking it up raises and catches an AttributeError inside,
        # a twentieth of a hello-world request's instructions.
        return
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _encode_fields(headers: list[tuple[str, str]], memo: _FieldMemo) -> Headers:
    """The app's response fields as latin-1 bytes (raises UnicodeEncodeError, AttributeError
    or TypeError for what is no pair of latin-1 strings)."""
    fields: list[object] = []
    for name, value in headers:
        values = memo.get(name)
        field = values.get(value) if values is not None else None
        if field is None:
            field = (name.encode("latin-1"), value.encode("latin-1"))
            if len(value) <= FIELD_MEMO_VALUE_MAX and name not in _LENGTH_NAMES:
                if values is None:
                    if len(memo) < FIELD_MEMO_NAMES:
                        memo[name] = {value: field}
                elif len(values) < FIELD_MEMO_VALUES:
                    values[value] = field
        fields.append(field)
    return cast(Headers, fields)


def _environ_key(name: bytes) -> str | None:
    """The CGI environ key of a request header; None drops it.

    A name with an underscore would collide with its dashed twin (X_User vs X-User), which a
    proxy may have set deliberately; like Django's runserver and nginx, aserve drops it.
    """
    if b"_" in name:
        return None
    if name == b"content-type":
        return "CONTENT_TYPE"
    if name == b"content-length":
        return "CONTENT_LENGTH"
    return "HTTP_" + name.decode("latin-1").upper().replace("-", "_")


def _environ_target(target: bytes) -> tuple[str, str]:
    """PATH_INFO and QUERY_STRING of a request target."""
    raw_path, query = split_target(target)
    # PEP 3333: PATH_INFO is the percent-decoded bytes, as latin-1.
    # The asterisk-form (OPTIONS *) and authority-form (CONNECT) have no path.
    path = decode_path_latin1(raw_path) if raw_path[:1] == b"/" else ""
    return path, query.decode("latin-1")
