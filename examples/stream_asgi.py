"""ASGI streaming both ways: `aserve stream_asgi:app` from this directory.

GET /events sends a server-sent event every INTERVAL seconds until the client leaves;
POST /upload hashes the request body as it arrives and answers with its size and SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from aserve.types import Receive, Scope, Send

INTERVAL = 0.5


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/events":
        await events(receive, send)
    elif path == "/upload" and method == "POST":
        await upload(receive, send)
    elif path == "/upload":
        await reply(send, 405, b"POST a body here\n", [(b"allow", b"POST")])
    else:
        await reply(send, 404, b"try GET /events or POST /upload\n")


async def events(receive: Receive, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )

    async def client_gone() -> None:
        # Nothing more comes from a GET: the next message is http.disconnect.
        while (await receive())["type"] != "http.disconnect":
            pass

    gone = asyncio.ensure_future(client_gone())
    count = 0
    try:
        while not gone.done():
            count += 1
            event = b"id: %d\ndata: tick %d\n\n" % (count, count)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.wait([gone], timeout=INTERVAL)
    except OSError:
        pass  # the client left while an event was on its way (ASGI spec 2.4)
    finally:
        gone.cancel()


async def upload(receive: Receive, send: Send) -> None:
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    body = json.dumps({"bytes": size, "sha256": digest.hexdigest()}).encode() + b"\n"
    await reply(send, 200, body, [(b"content-type", b"application/json")])


async def reply(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*(headers or []), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
