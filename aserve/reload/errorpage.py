"""The app the reload supervisor serves while the app cannot start: every request gets the
error page (aserve.errorpage) with status 500."""

from __future__ import annotations

from aserve.errorpage import WATCHING, render
from aserve.types import ASGIApp, Receive, Scope, Send


def error_app(title: str, summary: str, details: str) -> ASGIApp:
    """An ASGI app answering every request with the error; lifespan is not needed."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        accept = b""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value
        page = render(title, summary, details, WATCHING, accept)
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", page.content_type),
                    (b"content-length", b"%d" % len(page.body)),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": page.body})

    return app
