"""The page the reload supervisor serves while the app cannot start: the traceback as HTML for
browsers and as plain text for everything else, always with status 500."""

from __future__ import annotations

import html

from aserve.types import ASGIApp, Receive, Scope, Send

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 0; background: #fff; color: #222; }}
header {{ background: #c0392b; color: #fff; padding: 1em 2em; }}
h1 {{ font-size: 1.3em; margin: 0; }}
header p {{ margin: .3em 0 0; opacity: .9; }}
main {{ padding: 1em 2em; }}
pre {{ background: #f6f6f6; border: 1px solid #ddd; padding: 1em; overflow-x: auto;
       font: 13px/1.4 ui-monospace, monospace; white-space: pre-wrap; }}
</style></head>
<body><header><h1>{title}</h1><p>{summary}</p></header>
<main><pre>{details}</pre>
<p>aserve is watching your files: save a fix and reload this page.</p></main>
</body></html>
"""


def error_app(title: str, summary: str, details: str) -> ASGIApp:
    """An ASGI app answering every request with the error; lifespan is not needed."""
    text = f"{title}\n\n{summary}\n\n{details}\n".encode()
    page = _HTML.format(
        title=html.escape(title), summary=html.escape(summary), details=html.escape(details)
    ).encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        accept = b""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value
        wants_html = b"text/html" in accept
        body = page if wants_html else text
        content_type = b"text/html; charset=utf-8" if wants_html else b"text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", b"%d" % len(body)),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app
