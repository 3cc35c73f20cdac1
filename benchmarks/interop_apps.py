"""The apps `benchmarks/interop.py` serves, one WSGI and one ASGI with the same routes, and the
record of how each streamed download ended, which the client reads back at /stream-state."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qs
from wsgiref.validate import validator

from aserve.bench.apps import answer_lifespan
from aserve.types import ASGIApp, Environ, Message, Receive, Scope, Send, StartResponse, WSGIApp

HELLO = b"Hello, world!\n"
IGNORED = b"ignored\n"
CHUNK = 64 * 1024
BIG_SIZE = 4 * 1024 * 1024
# /stream has no end a client would wait for (256 MiB): it stops early only if the server
# tells the app that the client is gone, which is what the aborted-download check looks at.
STREAM_CHUNKS = 4096
HEAD_CHUNKS = (b"first chunk\n", b"second chunk\n", b"third chunk\n")
_BLOCK = b"x" * CHUNK


class StreamLog:
    """How each /stream?id=... ended: "running", "stopped: <why>" or "completed", and the
    chunks handed to the server. WSGI streams end on pool threads, ASGI ones on the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, dict[str, object]] = {}

    def update(self, stream: str, chunks: int, outcome: str) -> None:
        with self._lock:
            self._streams[stream] = {"chunks": chunks, "outcome": outcome}

    def report(self, stream: str) -> bytes:
        with self._lock:
            state = self._streams.get(stream, {"chunks": 0, "outcome": "unknown"})
            return json.dumps(state).encode()


def _query(query_string: str | bytes, name: str) -> str:
    text = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    return parse_qs(text).get(name, [""])[0]


# -- WSGI ------------------------------------------------------------------------------------


def _read_body(environ: Environ) -> bytes:
    """The body as PEP 3333 allows reading it: CONTENT_LENGTH bytes, or up to EOF where the
    server says the stream ends there (`wsgi.input_terminated`, for chunked uploads); without
    either the body is empty, so a server that passes chunked bodies on undecoded shows up as
    an echo that does not match."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH", "")
    if length:
        remaining = int(length)
        parts: list[bytes] = []
        while remaining > 0 and (part := stream.read(min(remaining, CHUNK))):
            parts.append(part)
            remaining -= len(part)
        return b"".join(parts)
    if environ.get("wsgi.input_terminated"):
        return b"".join(iter(lambda: stream.read(CHUNK), b""))
    return b""


def _wsgi_stream(log: StreamLog, stream: str) -> Iterator[bytes]:
    sent = 0
    log.update(stream, sent, "running")
    try:
        for _ in range(STREAM_CHUNKS):
            yield _BLOCK
            sent += 1
            log.update(stream, sent, "running")
    except GeneratorExit:
        log.update(stream, sent, "stopped: close() called")
        raise
    log.update(stream, sent, "completed")


def _wsgi_chunks(parts: Iterable[bytes]) -> Iterator[bytes]:
    yield from parts


def wsgi_app() -> WSGIApp:
    """The WSGI app, wrapped in wsgiref's validator (a factory: serve it with `--factory`)."""
    log = StreamLog()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        plain = ("Content-Type", "text/plain")
        if path == "/":
            start_response("200 OK", [plain, ("Content-Length", str(len(HELLO)))])
            return [HELLO]
        if path == "/echo":
            body = _read_body(environ)
            octets = ("Content-Type", "application/octet-stream")
            start_response("200 OK", [octets, ("Content-Length", str(len(body)))])
            return [body]
        if path == "/ignore":
            start_response("200 OK", [plain, ("Content-Length", str(len(IGNORED)))])
            return [IGNORED]
        if path == "/big":
            start_response("200 OK", [plain, ("Content-Length", str(BIG_SIZE))])
            return _wsgi_chunks(_BLOCK for _ in range(BIG_SIZE // CHUNK))
        if path == "/stream":
            start_response("200 OK", [plain])
            return _wsgi_stream(log, _query(environ.get("QUERY_STRING", ""), "id"))
        if path == "/stream-state":
            state = log.report(_query(environ.get("QUERY_STRING", ""), "id"))
            start_response("200 OK", [("Content-Type", "application/json"), _length(state)])
            return [state]
        if path == "/head":
            # A generator and no Content-Length: the server chunks a GET, and must send none
            # of these bytes for a HEAD.
            start_response("200 OK", [plain])
            return _wsgi_chunks(HEAD_CHUNKS)
        if path == "/status/204":
            start_response("204 No Content", [])
            return []
        start_response("404 Not Found", [plain, ("Content-Length", "0")])
        return []

    return validator(app)


def _length(body: bytes) -> tuple[str, str]:
    return ("Content-Length", str(len(body)))


# -- ASGI ------------------------------------------------------------------------------------


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    message: Message = {"type": "http.response.start", "status": status, "headers": headers}
    await send(message)


_PLAIN = (b"content-type", b"text/plain")
_FIXED = {"/": HELLO, "/ignore": IGNORED}


async def _respond(send: Send, status: int, body: bytes) -> None:
    await _start(send, status, [_PLAIN, (b"content-length", b"%d" % len(body))])
    await send({"type": "http.response.body", "body": body})


async def _receive_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client left first."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _asgi_stream(log: StreamLog, stream: str, send: Send) -> None:
    sent = 0
    log.update(stream, sent, "running")
    await _start(send, 200, [(b"content-type", b"text/plain")])
    try:
        for _ in range(STREAM_CHUNKS):
            await send({"type": "http.response.body", "body": _BLOCK, "more_body": True})
            sent += 1
            log.update(stream, sent, "running")
        await send({"type": "http.response.body", "body": b""})
    except BaseException as exc:
        # ASGI 2.4: send() on a closed connection raises an OSError subclass.
        log.update(stream, sent, f"stopped: send() raised {type(exc).__name__}")
        raise
    log.update(stream, sent, "completed")


def asgi_app() -> ASGIApp:
    """The ASGI app (a factory: serve it with `--factory`)."""
    log = StreamLog()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/echo":
            body = await _receive_body(receive)
            if body is not None:
                await _respond(send, 200, body)
        elif path == "/big":
            await _start(send, 200, [_PLAIN, (b"content-length", b"%d" % BIG_SIZE)])
            for _ in range(BIG_SIZE // CHUNK - 1):
                await send({"type": "http.response.body", "body": _BLOCK, "more_body": True})
            await send({"type": "http.response.body", "body": _BLOCK})
        elif path == "/stream":
            await _asgi_stream(log, _query(scope["query_string"], "id"), send)
        elif path == "/stream-state":
            await _respond(send, 200, log.report(_query(scope["query_string"], "id")))
        elif path == "/head":
            # The app sends the body for a HEAD too, as frameworks do: the server drops it.
            await _start(send, 200, [_PLAIN])
            for part in HEAD_CHUNKS:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/status/204":
            await _start(send, 204, [])
            await send({"type": "http.response.body", "body": b""})
        elif path in _FIXED:
            await _respond(send, 200, _FIXED[path])
        else:
            await _respond(send, 404, b"")

    return app
