"""Objects the loader tests import by string: apps of each shape, and things that are not."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from aserve.types import ASGIApp, Receive, Scope, Send


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


wsgi_app = validator(_wsgi)


class Holder:
    """Apps reached through an attribute path, as in `module:holder.app`."""

    def __init__(self) -> None:
        self.app = asgi_app
        self.inner = self

    not_an_app = 42


holder = Holder()

NUMBER = 7


def no_arguments() -> None:
    """A callable, but neither interface: it takes no arguments."""


def four_arguments(a: object, b: object, c: object, d: object) -> None:
    """A callable, but neither interface: four positional arguments."""


def make_asgi() -> ASGIApp:
    """A factory for --factory."""
    return asgi_app


def make_wsgi() -> object:
    return wsgi_app


def broken_factory() -> object:
    raise RuntimeError("settings missing")
