"""`--server wsgiref`: the standard library's threaded wsgiref server, as Django's runserver
serves, behind aserve's CLI, logging and SIGTERM handling."""

from __future__ import annotations

import logging
import socket
import socketserver
import time
from typing import Any, NoReturn
from wsgiref import simple_server

from aserve import __version__
from aserve.config import Config
from aserve.errors import AppLoadError
from aserve.loader import load
from aserve.logs import access_line, access_logger, configure
from aserve.signals import StopSignals
from aserve.sockets import bind_socket, listening_url
from aserve.types import WSGIApp

logger = logging.getLogger("aserve.error")


class _Stop(BaseException):
    """Raised by the signal handler to leave serve_forever()."""


class ThreadingWSGIServer(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    """wsgiref's server with a thread per connection, as `django.core.servers.basehttp`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sock: socket.socket, app: WSGIApp) -> None:
        super().__init__(sock.getsockname(), WSGIRequestHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        sock.setblocking(True)
        address = sock.getsockname()
        # Not socket.getfqdn(): a DNS lookup at start-up buys nothing on a dev server.
        self.server_name = address[0] if isinstance(address, tuple) else "localhost"
        self.server_port = address[1] if isinstance(address, tuple) else 0
        self.setup_environ()
        self.set_app(app)
        self.access_log: logging.Logger | None = None


class WSGIRequestHandler(simple_server.WSGIRequestHandler):
    server: ThreadingWSGIServer

    def setup(self) -> None:
        super().setup()
        self._started = time.perf_counter()
        if not isinstance(self.client_address, tuple):
            # A Unix socket peer has no address, but wsgiref and the access log index one.
            self.client_address = ("", 0)

    def get_environ(self) -> dict[str, Any]:
        # Like Django's runserver: drop headers with underscores, which would be confused
        # with their dashed twins once turned into HTTP_* keys.
        for name in [k for k in self.headers if "_" in k]:
            del self.headers[name]
        environ: dict[str, Any] = super().get_environ()
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log = self.server.access_log
        if log is not None:
            client = f"{self.client_address[0]}:{self.client_address[1]}"
            elapsed = (time.perf_counter() - self._started) * 1000.0
            log.info("%s", access_line(client, self.requestline, code, size, elapsed))

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s: " + format, self.client_address[0], *args)


def serve_wsgiref(app: object, config: Config) -> int:
    """Serve `app` on the wsgiref server until SIGINT/SIGTERM; exit code 0."""
    configure(config.log_level)
    loaded = load(app, factory=config.factory, interface=config.interface)
    if loaded.kind != "wsgi":
        raise AppLoadError(f"{loaded.name} is an ASGI app; --server wsgiref serves WSGI apps only")
    sock = bind_socket(config)
    server = ThreadingWSGIServer(sock, loaded.wsgi)
    server.access_log = access_logger(config.access_log)
    logger.info(
        "aserve %s serving WSGI app %s with wsgiref on %s; quit with CONTROL-C",
        __version__,
        loaded.name,
        listening_url(config, sock),
    )
    # Connection threads are daemons: leaving serve_forever() is the whole shutdown, so a
    # second signal has nothing more to force.
    signals = StopSignals(_stop, _stop, "stopping")
    try:
        with signals.installed():
            server.serve_forever()
    except _Stop:
        logger.info("aserve (wsgiref) stopped")
    finally:
        server.server_close()
    return 0


def _stop(sig: int) -> NoReturn:
    raise _Stop
