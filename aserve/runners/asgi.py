"""ASGI 3 app runner: the http scope, `receive`/`send` with message-order checks; the app's
lifespan (`runners.lifespan`) around the server's life."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import stat
from typing import Any

from aserve.config import LifespanMode
from aserve.errors import AppProtocolError, ClientDisconnected
from aserve.exchange import Cycle, TLSInfo, as_bytes, as_fields
from aserve.protocols.target import decode_path, remember_target, split_target
from aserve.runners.lifespan import ASGI_SPEC_VERSION, ASGI_VERSION, Lifespan
from aserve.runners.websocket import WebSocketCycle
from aserve.types import ASGIApp, Headers, Message, Scope

logger = logging.getLogger("aserve.error")

# A request's task still running once the last connection has closed gets this long to end
# on its own, then this long again after being cancelled to unwind (its `finally` blocks),
# before the lifespan shutdown. An app's work often goes on after its response: Django's
# ASGIHandler closes the response in a thread (request_finished: database connections) and
# then its request body file. uvicorn waits for such tasks; a bound keeps a stuck one from
# holding a reload.
TASK_UNWIND = 1.0

# What http.response.pathsend reads of the file at a time, off the loop: a thread hand-off
# costs tens of microseconds, 256 KiB take about as long to send on loopback.
PATHSEND_CHUNK = 256 * 1024

# Whether the platform has sendfile, and so the zero-copy send extension (not Windows).
HAS_SENDFILE = hasattr(os, "sendfile")

# Raw path, query string and decoded path, by request target (see protocols.target).
TargetMemo = dict[bytes, tuple[bytes, bytes, str]]


def _parse_target(target: bytes) -> tuple[bytes, bytes, str]:
    raw_path, query = split_target(target)
    return raw_path, query, decode_path(raw_path)


def parse_target(target: bytes, memo: TargetMemo) -> tuple[bytes, bytes, str]:
    """Raw path, query string and decoded path of a request target."""
    return remember_target(memo, target, _parse_target)


class _HeadFlusher:
    """Writes, once per loop iteration, the response heads still waiting for body bytes.

    A head is held back so that it goes out in one write with the body the app sends next;
    if the app awaits something else first, the head must not wait for it.
    """

    __slots__ = ("loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[Cycle] = []

    def add(self, cycle: Cycle) -> None:
        if not self.pending:
            self.loop.call_soon(self._flush)
        self.pending.append(cycle)

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for cycle in pending:
            cycle.flush()


class ASGIRunner:
    """Runs each request of an ASGI 3 app as a task in a fresh context."""

    websockets = True

    def __init__(
        self,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop,
        *,
        root_path: str,
        lifespan: LifespanMode,
        debug: bool = False,
    ) -> None:
        self.app = app
        self.loop = loop
        self.root_path = root_path
        # Development: a request whose app raised gets the traceback page (local clients).
        self.debug = debug
        # What the app's lifespan startup stored, copied into each request's scope.
        self.state: dict[str, Any] = {}
        self.lifespan = Lifespan(app, lifespan, self.state)
        self.tasks: set[asyncio.Task[None]] = set()
        self._context = contextvars.copy_context()
        self._flusher = _HeadFlusher(loop)
        self._targets: TargetMemo = {}
        # The ASGI extensions every http scope lists; apps only look keys up in it. One dict
        # shared by the scopes: a new one per request made a hello world's request cost 7%
        # more instructions (one more tracked object to allocate and collect).
        # The scope's `asgi` entry, shared by the scopes as `extensions` is, for the same
        # reason: apps only read it.
        self._asgi = {"version": ASGI_VERSION, "spec_version": ASGI_SPEC_VERSION}
        self._extensions: dict[str, dict[str, object]] = {
            "http.response.pathsend": {},
            "http.response.trailers": {},
            "http.response.early_hint": {},
        }
        if HAS_SENDFILE:
            self._extensions["http.response.zerocopysend"] = {}

    async def startup(self) -> None:
        await self.lifespan.startup()

    def handle(self, cycle: Cycle) -> None:
        request = cycle.request
        info = cycle.info
        raw_path, query, path = parse_target(request.target, self._targets)
        root_path = self.root_path
        scope: Scope = {
            "type": "http",
            "asgi": self._asgi,
            "http_version": request.http_version,
            "server": info.server,
            "client": info.client,
            "scheme": info.scheme,
            "method": request.method.decode("ascii"),
            "root_path": root_path,
            "path": root_path + path if root_path else path,
            "raw_path": root_path.encode("latin-1") + raw_path if root_path else raw_path,
            "query_string": query,
            "headers": request.headers,
            "state": self.state.copy(),
            "extensions": self._extensions,
        }
        if info.tls is not None:
            scope["extensions"] = {**self._extensions, "tls": tls_extension(info.tls)}
        if info.host is not None:
            scope["headers"] = forwarded_host(request.headers, info.host)
        websocket = cycle.websocket
        if websocket is None:
            run = _HTTPCycle(cycle, self._flusher, self.debug).run(self.app, scope)
        else:
            scope["type"] = "websocket"
            scope["scheme"] = "wss" if info.scheme == "https" else "ws"
            scope["subprotocols"] = websocket.subprotocols
            extensions: dict[str, object] = {"websocket.http.response": {}}
            if info.tls is not None:
                extensions["tls"] = tls_extension(info.tls)
            scope["extensions"] = extensions
            del scope["method"]
            run = WebSocketCycle(cycle, websocket, self.debug).run(self.app, scope)
        task = self.loop.create_task(run, context=self._context.copy())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def shutdown(self, timeout: float) -> None:
        """Let the requests still running end, cancel those that do not, then run the
        lifespan shutdown, which may take `timeout` (0: a forced exit, which cancels at once
        and skips the lifespan shutdown)."""
        tasks = list(self.tasks)
        unwind = min(timeout, TASK_UNWIND)
        if tasks and unwind:
            _, pending = await asyncio.wait(tasks, timeout=unwind)
            tasks = list(pending)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=unwind)
        if timeout:
            try:
                await asyncio.wait_for(self.lifespan.shutdown(), timeout)
            except TimeoutError:
                logger.error("ASGI lifespan shutdown did not finish in %.1fs", timeout)


def _zerocopy_file(message: Message) -> tuple[int, int, int | None]:
    """The descriptor, starting offset and count (None: to the end) of a zerocopysend message;
    the app's values are checked here, whatever their types."""
    file: object = message.get("file")
    offset: object = message.get("offset")
    count: object = message.get("count")
    fileno = getattr(file, "fileno", None)
    try:
        fd: object = fileno() if fileno is not None else None
    except (OSError, ValueError) as exc:
        raise AppProtocolError(f"http.response.zerocopysend: {exc}") from exc
    if not isinstance(fd, int):
        raise AppProtocolError("http.response.zerocopysend: no file with a fileno()")
    if offset is None:
        try:
            start = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError as exc:
            raise AppProtocolError(f"http.response.zerocopysend: {exc}") from exc
    elif isinstance(offset, int) and offset >= 0:
        start = offset
    else:
        raise AppProtocolError(f"http.response.zerocopysend: invalid offset {offset!r}")
    if count is not None and not (isinstance(count, int) and count >= 0):
        raise AppProtocolError(f"http.response.zerocopysend: invalid count {count!r}")
    return fd, start, count


def tls_extension(tls: TLSInfo) -> dict[str, object]:
    """The ASGI TLS extension's entry of a scope (asgiref's TLS extension spec)."""
    return {
        "server_cert": tls.server_cert,
        "client_cert_chain": list(tls.client_cert_chain),
        "client_cert_name": tls.client_cert_name,
        "client_cert_error": tls.client_cert_error,
        "tls_version": tls.tls_version,
        "cipher_suite": tls.cipher_suite,
    }


def forwarded_host(headers: Headers, host: str) -> Headers:
    """The request's fields with the Host a trusted proxy forwarded in place of its own."""
    fields = [(name, value) for name, value in headers if name != b"host"]
    fields.insert(0, (b"host", host.encode("latin-1")))
    return fields


class _HTTPCycle:
    __slots__ = (
        "body_done",
        "complete",
        "cycle",
        "debug",
        "disconnect_seen",
        "flusher",
        "started",
        "trailers",
    )

    def __init__(self, cycle: Cycle, flusher: _HeadFlusher, debug: bool) -> None:
        self.cycle = cycle
        self.flusher = flusher
        self.debug = debug
        self.started = False
        self.complete = False
        self.body_done = False
        self.disconnect_seen = False
        # The trailer fields gathered so far, when the app announced trailers (None: it did
        # not); the response ends with the last of them, after `complete` (the body is).
        self.trailers: Headers | None = None

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        cycle = self.cycle
        try:
            await app(scope, self.receive, self.send)
        except ClientDisconnected:
            cycle.fail()
        except asyncio.CancelledError:
            cycle.fail()
            raise
        except Exception as exc:
            if not cycle.disconnected:
                logger.exception("Exception in ASGI application")
            # The page is sent only if nothing of the response was (see ResponseSink).
            cycle.fail(cycle.error_page(exc) if self.debug else None)
        else:
            if not self.complete or not cycle.done:
                if cycle.disconnected or self.disconnect_seen:
                    pass  # the client left (or half-closed) and the app stopped: no app error
                elif not self.started:
                    logger.error("ASGI app returned without starting a response")
                else:
                    logger.error("ASGI app returned without completing its response")
                # Also after a half-close, which leaves the transport open until this.
                cycle.fail()

    async def receive(self) -> Message:
        cycle = self.cycle
        body = cycle.body
        if self.complete or body.disconnected:
            return {"type": "http.disconnect"}
        if self.body_done:
            # The body is over: wait for the client to leave or the response to end.
            await body.wait_disconnect()
            self.disconnect_seen = not self.complete
            return {"type": "http.disconnect"}
        data = body.take(from_thread=False)
        if not data and not body.complete:
            await body.wait()
            # Through the cycle: mypy keeps `body.disconnected` narrowed to False from the
            # check above across the wait, and this module is compiled (ARCHITECTURE.md).
            if cycle.disconnected:
                return {"type": "http.disconnect"}
            data = body.take(from_thread=False)
        more = not body.complete
        if not more:
            self.body_done = True
        return {"type": "http.request", "body": data, "more_body": more}

    async def send(self, message: Message) -> None:
        # The body, the message every response sends at least once, is handled here without
        # a further call; the start and anything else below.
        kind = message["type"]
        if kind != "http.response.body":
            if kind == "http.response.start":
                self._send_start(message)
            elif kind == "http.response.pathsend" or (
                kind == "http.response.zerocopysend" and HAS_SENDFILE
            ):
                await (self._pathsend if kind == "http.response.pathsend" else self._zerocopysend)(
                    message
                )
            else:
                self._send_extension(kind, message)
            return
        cycle = self.cycle
        if not self.started or self.complete:
            raise AppProtocolError(
                "http.response.body sent "
                + ("after the response ended" if self.started else "before http.response.start")
            )
        if cycle.disconnected:
            raise ClientDisconnected("client disconnected")
        data = as_bytes(message.get("body", b""), "http.response.body's body")
        if message.get("more_body", False):
            if cycle.closing:
                # ASGI: send() raises an OSError once the client is gone, so that a producer
                # stops instead of holding the loop (the transport closes on a reset at once,
                # before the loop hears of the loss).
                raise ClientDisconnected("client disconnected")
            cycle.send_body(data)
            if cycle.write_paused:
                await self._drain()
            elif cycle.backlogged:
                # Let the loop run (other connections, the news of a reset) while bytes wait
                # to be written, though not yet enough to pause.
                await asyncio.sleep(0)
        elif self.trailers is not None:
            # The body is complete; the response ends with its trailers (`_send_extension`).
            self.complete = True
            cycle.send_body(data)
        else:
            self.complete = True
            cycle.send_end(data)
            cycle.body.wake()

    def _send_start(self, message: Message) -> None:
        cycle = self.cycle
        if self.started:
            raise AppProtocolError("http.response.start sent twice")
        if cycle.disconnected:
            raise ClientDisconnected("client disconnected")
        try:
            # The fields as the app gave them: `send_start` normalises them (exchange.as_fields).
            cycle.send_start(message["status"], message.get("headers", []))
        except (TypeError, ValueError) as exc:
            raise AppProtocolError(f"invalid http.response.start: {exc}") from exc
        self.started = True
        if message.get("trailers"):
            self.trailers = []
        # Coalesce the head with the body the app sends next; flush it if none comes soon.
        self.flusher.add(cycle)

    def _send_extension(self, kind: str, message: Message) -> None:
        """The messages of the extensions the scope lists, but pathsend (see `_pathsend`)."""
        cycle = self.cycle
        if kind == "http.response.early_hint" and not self.started:
            cycle.send_interim(103, [(b"link", link) for link in message.get("links", [])])
        elif kind == "http.response.trailers" and self.complete and self.trailers is not None:
            trailers = self.trailers
            trailers.extend(as_fields(message.get("headers", [])))
            if not message.get("more_trailers", False):
                cycle.send_end_with(trailers)
                cycle.body.wake()
        else:
            raise AppProtocolError(f"unexpected ASGI message type {kind!r} here")

    async def _pathsend(self, message: Message) -> None:
        """The rest of the body is the file at `path`: read off the loop a piece at a time,
        sent as the socket takes it."""
        if not self.started or self.complete:
            raise AppProtocolError("http.response.pathsend sent outside a response body")
        cycle = self.cycle
        try:
            file = open(message["path"], "rb")  # noqa: SIM115 (closed below, off the loop)
        except (OSError, KeyError, TypeError) as exc:
            raise AppProtocolError(f"http.response.pathsend: {exc}") from exc
        try:
            if await self._sendfile(file.fileno(), 0, None):
                file.close()
                await self.send({"type": "http.response.body"})
                return
            while chunk := await asyncio.to_thread(file.read, PATHSEND_CHUNK):
                if cycle.disconnected or cycle.closing:
                    raise ClientDisconnected("client disconnected")
                cycle.send_body(chunk)
                if cycle.write_paused:
                    await self._drain()
        finally:
            file.close()
        await self.send({"type": "http.response.body"})

    async def _sendfile(self, fd: int, offset: int, count: int | None) -> bool:
        """Send `count` bytes (None: to its end) of the regular file `fd` from `offset` with
        sendfile; False, nothing sent, where the connection cannot or `fd` is no regular file.
        Raises ClientDisconnected when the client left under it."""
        try:
            status = os.fstat(fd)
        except OSError:
            return False
        if not stat.S_ISREG(status.st_mode):
            return False
        size = max(0, status.st_size - offset)
        cycle = self.cycle
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def done(sent: int) -> None:
            if not future.done():
                future.set_result(sent)

        if not cycle.send_file(fd, offset, size if count is None else min(count, size), done):
            return False
        await future
        if cycle.disconnected or cycle.closing:
            raise ClientDisconnected("client disconnected")
        return True

    async def _zerocopysend(self, message: Message) -> None:
        """ASGI's zero-copy send extension: the next body bytes are the file `file`'s (from
        `offset`, `count` of them), by sendfile where the connection can, else read off the
        loop."""
        if not self.started or self.complete:
            raise AppProtocolError("http.response.zerocopysend sent outside a response body")
        fd, start, count = _zerocopy_file(message)
        if not await self._sendfile(fd, start, count):
            await self._send_read(fd, start, count)
        if not message.get("more_body", False):
            await self.send({"type": "http.response.body"})

    async def _send_read(self, fd: int, position: int, count: int | None) -> None:
        """Send the file's bytes read off the loop, a piece at a time, as the socket takes them."""
        cycle = self.cycle
        left = count
        while left is None or left > 0:
            want = PATHSEND_CHUNK if left is None else min(left, PATHSEND_CHUNK)
            chunk = await asyncio.to_thread(os.pread, fd, want, position)
            if not chunk:
                break
            if cycle.disconnected or cycle.closing:
                raise ClientDisconnected("client disconnected")
            position += len(chunk)
            if left is not None:
                left -= len(chunk)
            cycle.send_body(chunk)
            if cycle.write_paused:
                await self._drain()

    async def _drain(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def writable() -> None:
            if not future.done():
                future.set_result(None)

        self.cycle.on_writable(writable)
        await future
        if self.cycle.disconnected:
            raise ClientDisconnected("client disconnected")
