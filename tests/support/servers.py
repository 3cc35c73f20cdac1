"""aserve servers on 127.0.0.1, a free port, in a background thread for the length of a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

from aserve import Server


class ServeFactory(Protocol):
    def __call__(self, app: object, **settings: Any) -> Server: ...


@contextmanager
def running(app: object, **settings: Any) -> Iterator[Server]:
    """Serve `app` on a free port for the duration of the block."""
    settings.setdefault("port", 0)
    settings.setdefault("access_log", False)
    settings.setdefault("timeout_graceful_shutdown", 2.0)
    server = Server(app, **settings).start()
    try:
        yield server
    finally:
        server.stop(timeout=10)


@contextmanager
def serving() -> Iterator[ServeFactory]:
    """`serve(app, **settings)` starts a server that stops at the end of the block."""
    with ExitStack() as stack:

        def serve(app: object, **settings: Any) -> Server:
            return stack.enter_context(running(app, **settings))

        yield serve
