"""The apps every server in the benchmark runs: WSGI and ASGI hello worlds, a streamed
download and an upload sink, a WebSocket echo, and an a2wsgi factory. No Django here (see
`django_app`)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator
from typing import cast
from urllib.parse import parse_qs

from aserve.types import ASGIApp, Environ, Message, Receive, Scope, Send, StartResponse

BODY = b"Hello, world!"
CHUNK = 64 * 1024
STREAM_DEFAULT = 1024 * 1024
# The environment variable naming the WSGI app that `a2wsgi_factory` wraps.
A2WSGI_TARGET = "ASERVE_BENCH_A2WSGI_TARGET"

_HELLO_WSGI_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
_HELLO_ASGI_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))]
_BLOCK = b"x" * CHUNK


def hello_wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", list(_HELLO_WSGI_HEADERS))
    return [BODY]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Complete the lifespan protocol, so that no server logs a fallback at startup."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    start: Message = {"type": "http.response.start", "status": 200, "headers": _HELLO_ASGI_HEADERS}
    await send(start)
    await send({"type": "http.response.body", "body": BODY})


async def ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Every WebSocket message sent back as it came (the Autobahn suite's echo server and
    the `ws-echo` scenario's app); HTTP gets the hello world, for the harness's check."""
    if scope["type"] != "websocket":
        await hello_asgi(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def _stream(size: int) -> Iterator[bytes]:
    whole, rest = divmod(size, CHUNK)
    for _ in range(whole):
        yield _BLOCK
    if rest:
        yield _BLOCK[:rest]


def transfer_wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """GET streams `?size=N` bytes (1 MiB by default) in 64 KiB chunks, with a Content-Length;
    POST reads the body through `wsgi.input` 64 KiB at a time and answers its length."""
    if environ["REQUEST_METHOD"] == "POST":
        stream = environ["wsgi.input"]
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
        received = 0
        while remaining > 0:
            chunk = stream.read(min(CHUNK, remaining))
            if not chunk:
                break
            received += len(chunk)
            remaining -= len(chunk)
        answer = b"%d" % received
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))]
        )
        return [answer]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    size = int(query.get("size", [str(STREAM_DEFAULT)])[0])
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
    )
    return _stream(size)


def a2wsgi_factory() -> ASGIApp:
    """The WSGI app named by $ASERVE_BENCH_A2WSGI_TARGET behind a2wsgi's WSGIMiddleware, for
    `uvicorn --factory`.

    Imported by name at call time: a2wsgi is a benchmark-only dependency, and this module must
    load (and type-check) without it.
    """
    from aserve.loader import import_from_string

    app = import_from_string(os.environ.get(A2WSGI_TARGET, f"{__name__}:hello_wsgi"))
    middleware = importlib.import_module("a2wsgi").WSGIMiddleware
    return cast(ASGIApp, middleware(app))
