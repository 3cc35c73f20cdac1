"""ASGI apps served by the subprocess tests: lifespan reporting, slow responses, failures."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aserve.types import Receive, Scope, Send

# 64 KiB of a recognisable pattern: large enough that a truncated body shows.
BODY = b"0123456789abcdef" * 4096


def note(text: str) -> None:
    """Markers on stderr that the tests wait for."""
    print(f"app: {text}", file=sys.stderr, flush=True)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            note("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            note("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


def _start(length: int) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(length).encode())],
    }


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """/sleep/N waits N seconds before answering; /stream/N sends half, waits, sends the rest."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path: str = scope["path"]
    kind, _, seconds = path.strip("/").partition("/")
    if kind == "sleep":
        note(f"started {path}")
        await asyncio.sleep(float(seconds))
        await send(_start(len(BODY)))
        await send({"type": "http.response.body", "body": BODY})
    elif kind == "stream":
        half = len(BODY) // 2
        await send(_start(len(BODY)))
        await send({"type": "http.response.body", "body": BODY[:half], "more_body": True})
        note(f"started {path}")
        await asyncio.sleep(float(seconds))
        await send({"type": "http.response.body", "body": BODY[half:]})
    else:
        await send(_start(len(b"hello")))
        await send({"type": "http.response.body", "body": b"hello"})


async def failing_startup(scope: Scope, receive: Receive, send: Send) -> None:
    """Reports a failed lifespan startup."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    raise AssertionError("no request should reach an app whose startup failed")


async def plain(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app without lifespan support and without output of its own."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope {scope['type']}")
    await send(_start(2))
    await send({"type": "http.response.body", "body": b"ok"})
