"""ASGI WebSocket apps of the tests: an echo that also answers a few commands, and the scopes
it saw."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aserve.types import Message, Receive, Scope, Send


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Accepts (with the first subprotocol offered), then sends back every message; the text
    `close CODE REASON` closes, `big N` sends N bytes, `raise` raises. A plain HTTP request
    gets 200 `plain`."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "http":
        body = b"plain"
        start = {"type": "http.response.start", "status": 200, "headers": [(b"x", b"y")]}
        await send(start)
        await send({"type": "http.response.body", "body": body})
        return
    assert (await receive())["type"] == "websocket.connect"
    subprotocols: list[str] = scope["subprotocols"]
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if subprotocols:
        accept["subprotocol"] = subprotocols[0]
    await send(accept)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await _answer(message, send)


async def _answer(message: Message, send: Send) -> None:
    text = message.get("text")
    if text is not None and text.startswith("close "):
        _, code, reason = text.split(" ", 2)
        await send({"type": "websocket.close", "code": int(code), "reason": reason})
    elif text is not None and text.startswith("big "):
        await send({"type": "websocket.send", "bytes": b"x" * int(text[4:])})
    elif text == "raise":
        raise RuntimeError("the app failed on purpose")
    elif text is not None:
        await send({"type": "websocket.send", "text": text})
    else:
        await send({"type": "websocket.send", "bytes": message["bytes"]})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def held(scope: Scope, receive: Receive, send: Send) -> None:
    """Accepts and waits for the close, writing what it heard on stderr (for the subprocess
    tests of shutdown and reload)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    print("app: accepted", file=sys.stderr, flush=True)
    message = await receive()
    print(f"app: {message['type']} {message.get('code')}", file=sys.stderr, flush=True)
    await asyncio.sleep(0)
