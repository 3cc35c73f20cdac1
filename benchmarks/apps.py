"""Hello-world apps that every server in the benchmark serves: one WSGI, one ASGI, same bytes.

Each answers 200 with a 13-byte body and a Content-Length, so no server has to chunk.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import cast

from aserve.types import ASGIApp, Environ, Message, Receive, Scope, Send, StartResponse

BODY = b"Hello, world!"
assert len(BODY) == 13

_WSGI_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
_ASGI_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))]


def wsgi_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", list(_WSGI_HEADERS))
    return [BODY]


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        # Answer the lifespan protocol so no server logs a fallback at startup.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    start: Message = {"type": "http.response.start", "status": 200, "headers": _ASGI_HEADERS}
    await send(start)
    await send({"type": "http.response.body", "body": BODY})


def a2wsgi_app() -> ASGIApp:
    """`wsgi_app` behind a2wsgi's WSGIMiddleware, for `uvicorn --factory`.

    Imported by name at call time: a2wsgi is a benchmark-only dependency, and this module must
    load (and type-check) without it.
    """
    middleware = importlib.import_module("a2wsgi").WSGIMiddleware
    return cast(ASGIApp, middleware(wsgi_app))
