"""ASGI 3 app runner: the http scope, `receive`/`send` with message-order checks, lifespan."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from aserve.config import LifespanMode
from aserve.errors import AppProtocolError, ClientDisconnected, LifespanError
from aserve.net.connection import Cycle
from aserve.types import ASGIApp, Headers, Message, Scope

logger = logging.getLogger("aserve.error")

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
_DISCONNECT: Message = {"type": "http.disconnect"}


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Raw path and query string of a request target (origin-form or absolute-form)."""
    if target[:1] != b"/" and target != b"*":
        # absolute-form (RFC 9112 §3.2.2): keep the path component only.
        scheme_end = target.find(b"://")
        if scheme_end != -1:
            slash = target.find(b"/", scheme_end + 3)
            target = target[slash:] if slash != -1 else b"/"
    # A fragment is never sent by a conforming client (RFC 9112 §3.2); drop a stray one.
    path, _, query = target.partition(b"#")[0].partition(b"?")
    return path, query


def decode_path(raw_path: bytes) -> str:
    text = raw_path.decode("latin-1")
    return unquote(text) if "%" in text else text


# Request targets seen lately, parsed: a development server sees the same few URLs over and
# over. Bounded: emptied when full.
TargetMemo = dict[bytes, tuple[bytes, bytes, str]]
TARGET_MEMO_MAX = 1024
_Parsed = TypeVar("_Parsed")


def remember_target(
    memo: dict[bytes, _Parsed], target: bytes, parse: Callable[[bytes], _Parsed]
) -> _Parsed:
    """`parse(target)`, from `memo` when the target was seen before (ASGI scope, WSGI environ)."""
    parsed = memo.get(target)
    if parsed is None:
        parsed = parse(target)
        if len(memo) >= TARGET_MEMO_MAX:
            memo.clear()
        memo[target] = parsed
    return parsed


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

    def __init__(self, app: ASGIApp, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.state: dict[str, Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._context = contextvars.copy_context()
        self._flusher = _HeadFlusher(loop)
        self._targets: TargetMemo = {}

    def handle(self, cycle: Cycle) -> None:
        request = cycle.request
        raw_path, query, path = parse_target(request.target, self._targets)
        root_path = cycle.root_path
        scope: Scope = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": request.http_version,
            "server": cycle.server,
            "client": cycle.client,
            "scheme": cycle.scheme,
            "method": request.method.decode("ascii"),
            "root_path": root_path,
            "path": root_path + path if root_path else path,
            "raw_path": root_path.encode("latin-1") + raw_path if root_path else raw_path,
            "query_string": query,
            "headers": request.headers,
            "state": self.state.copy(),
        }
        task = self.loop.create_task(
            _HTTPCycle(cycle, self._flusher).run(self.app, scope), context=self._context.copy()
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class _HTTPCycle:
    __slots__ = ("body_done", "complete", "cycle", "disconnect_seen", "flusher", "started")

    def __init__(self, cycle: Cycle, flusher: _HeadFlusher) -> None:
        self.cycle = cycle
        self.flusher = flusher
        self.started = False
        self.complete = False
        self.body_done = False
        self.disconnect_seen = False

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        cycle = self.cycle
        try:
            await app(scope, self.receive, self.send)
        except ClientDisconnected:
            cycle.fail()
        except asyncio.CancelledError:
            cycle.fail()
            raise
        except Exception:
            if not cycle.disconnected:
                logger.exception("Exception in ASGI application")
            cycle.fail()
        else:
            if not self.complete:
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
            return _DISCONNECT
        if self.body_done:
            # The body is over: wait for the client to leave or the response to end.
            await body.wait_disconnect()
            self.disconnect_seen = not self.complete
            return _DISCONNECT
        data = body.take(from_thread=False)
        if not data and not body.complete:
            await body.wait()
            if body.disconnected:
                return _DISCONNECT
            data = body.take(from_thread=False)
        more = not body.complete
        if not more:
            self.body_done = True
        return {"type": "http.request", "body": data, "more_body": more}

    async def send(self, message: Message) -> None:
        cycle = self.cycle
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started:
                raise AppProtocolError("http.response.body sent before http.response.start")
            if self.complete:
                raise AppProtocolError("http.response.body sent after the response ended")
            if cycle.disconnected:
                raise ClientDisconnected("client disconnected")
            data = message.get("body", b"")
            if message.get("more_body", False):
                cycle.send_body(data)
                if cycle.write_paused:
                    await self._drain()
            else:
                self.complete = True
                cycle.send_end(data)
                cycle.body.wake()
        elif kind == "http.response.start":
            if self.started:
                raise AppProtocolError("http.response.start sent twice")
            if cycle.disconnected:
                raise ClientDisconnected("client disconnected")
            headers: Headers = message.get("headers", [])
            try:
                cycle.send_start(message["status"], headers)
            except (TypeError, ValueError) as exc:
                raise AppProtocolError(f"invalid http.response.start: {exc}") from exc
            self.started = True
            # Coalesce the head with the body the app sends next; flush it if none comes soon.
            self.flusher.add(cycle)
        else:
            raise AppProtocolError(f"unexpected ASGI message type {kind!r}")

    async def _drain(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def writable() -> None:
            if not future.done():
                future.set_result(None)

        self.cycle.on_writable(writable)
        await future
        if self.cycle.disconnected:
            raise ClientDisconnected("client disconnected")


class Lifespan:
    """The ASGI lifespan protocol around the server's life; `off` skips it."""

    def __init__(self, app: ASGIApp, mode: LifespanMode, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self._receive: asyncio.Queue[Message] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._failure: str | None = None
        self._unsupported = False
        self._received = False
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run startup; raises LifespanError when the app reports or raises a failure."""
        if self.mode == "off":
            return
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._receive.put({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._failure is not None:
            raise LifespanError(self._failure)

    async def shutdown(self) -> None:
        if self.mode == "off" or self._unsupported or self._task is None:
            return
        await self._receive.put({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._failure is not None:
            logger.error("Lifespan shutdown failed: %s", self._failure)

    async def _main(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive_message, self._send)
        except asyncio.CancelledError:
            # The loop is closing under an app still waiting in receive(): not its failure.
            raise
        except Exception as exc:
            if self._startup_done.is_set() and self._shutdown_done.is_set():
                return
            if self.mode == "auto" and not self._received:
                # Apps without lifespan support raise on the unknown scope type before they
                # ever call receive(); one that raised later supports it and really failed.
                logger.info("ASGI lifespan unsupported by the app (%s); going on without it", exc)
                self._unsupported = True
            else:
                logger.error("Exception in ASGI lifespan", exc_info=exc)
                self._failure = f"{type(exc).__name__}: {exc}"
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive_message(self) -> Message:
        self._received = True
        return await self._receive.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if self._startup_done.is_set():
                raise AppProtocolError(f"{kind} sent after startup ended")
            if kind == "lifespan.startup.failed":
                self._failure = message.get("message", "") or "startup failed"
            self._startup_done.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if kind == "lifespan.shutdown.failed":
                self._failure = message.get("message", "") or "shutdown failed"
            self._shutdown_done.set()
        else:
            raise AppProtocolError(f"unexpected lifespan message type {kind!r}")
