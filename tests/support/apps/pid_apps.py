"""Apps that answer with the pid of the process serving them, for the tests of several worker
processes (`--workers`, gunicorn's AserveWorker): /slow takes a second, /block holds the event
loop (ASGI) for the seconds given in the query string, /raise (WSGI) fails, /where (ASGI)
answers the scope's scheme and client address instead."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from aserve.types import Receive, Scope, Send


def note(text: str) -> None:
    """Markers on stderr that the tests wait for."""
    print(f"app: {text} {os.getpid()}", file=sys.stderr, flush=True)


def _pid() -> bytes:
    return str(os.getpid()).encode()


def _wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/raise":
        raise RuntimeError("a bug in the view")
    if environ["PATH_INFO"] == "/slow":
        note("slow started")
        time.sleep(1.0)
    body = _pid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


wsgi = validator(_wsgi)


async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/slow":
        note("slow started")
        await asyncio.sleep(1.0)
    elif scope["path"] == "/block":
        note("blocking the loop")
        # Not awaited: nothing else runs in this process meanwhile, heartbeats included.
        time.sleep(float(scope["query_string"] or b"5"))
    body = _pid()
    if scope["path"] == "/where":
        body = f"{scope['scheme']} {scope['client'][0]}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
