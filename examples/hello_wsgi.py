"""A WSGI hello world: `aserve hello_wsgi:app` from this directory."""

from __future__ import annotations

from collections.abc import Iterable

from aserve.types import Environ, StartResponse

BODY = b"Hello, world!\n"


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(BODY)))],
    )
    return [BODY]
