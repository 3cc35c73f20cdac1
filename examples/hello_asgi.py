"""An ASGI hello world: `aserve hello_asgi:app` from this directory."""

from __future__ import annotations

from aserve.types import Receive, Scope, Send

BODY = b"Hello, world!\n"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
